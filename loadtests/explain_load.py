"""/v1/explain under load: how explanations share a model with each other and with classifications,
admission counting each one as grid² + 1 items.

    python loadtests/explain_load.py [--seconds 5]

Starts a real server (local placement, one gateway worker) and runs, one after another: explain
clients alone (digits-cnn at grids 8 and 16, imagenet-cnn at grid 8 with 2 and 4 clients), then
4 clients classifying digits while 1 client explains (digits-cnn, then imagenet-cnn, grid 8).
Each client (the Python client, service/client/, without retries) sends its next request as soon
as the last is answered, 0.1 s after a 503. Reported per run: answers and refusals (503) per
kind, and the explanations' median latency.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadtests.payloads import png  # noqa: E402
from loadtests.server import start_server, stop_server  # noqa: E402
from service.client import Client, DeepserveError, Retry, Unavailable  # noqa: E402
from service.store.specs import latest_specs  # noqa: E402

RUNS = [  # (explained model, grid, explain clients, classify clients)
    ("digits-cnn", 8, 4, 0),
    ("digits-cnn", 16, 4, 0),
    ("imagenet-cnn", 8, 2, 0),
    ("imagenet-cnn", 8, 4, 0),
    ("digits-cnn", 8, 1, 4),
    ("imagenet-cnn", 8, 1, 4),
]


def load(url: str, bodies: list[bytes], run: tuple[str, int, int, int], seconds: float) -> str:
    model, grid, explainers, classifiers = run
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    latencies: list[float] = []
    stop = time.monotonic() + seconds

    def client(kind: str) -> None:
        with Client(url, retry=Retry(attempts=1), timeout=60) as deepserve:
            sent = 0
            while time.monotonic() < stop:
                began, body = time.monotonic(), bodies[sent % len(bodies)]
                sent += 1
                try:
                    if kind == "explain":
                        deepserve.explain(body, model, grid=grid)
                    else:
                        deepserve.classify(body, "digits-cnn")
                except Unavailable:  # overloaded (or not ready): 503
                    counts[kind, 503] += 1
                    time.sleep(0.1)
                    continue
                except DeepserveError as error:
                    counts[kind, error.status or 0] += 1
                    continue
                counts[kind, 200] += 1
                if kind == "explain":
                    latencies.append(time.monotonic() - began)

    threads = [threading.Thread(target=client, args=("explain",)) for _ in range(explainers)] + [
        threading.Thread(target=client, args=("classify",)) for _ in range(classifiers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kinds = ", ".join(
        f"{kind} {counts[kind, 200]} answered / {counts[kind, 503]} refused"
        for kind in ("explain", "classify")
        if counts[kind, 200] or counts[kind, 503]
    )
    median = f"{statistics.median(latencies):.3f} s" if latencies else "-"
    return (
        f"{model} grid {grid}, {explainers} explain + {classifiers} classify clients: "
        f"{kinds}; explanation median {median}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    args = parser.parse_args()
    bodies = [png(image) for image in latest_specs()["digits-cnn"].heldout()["image"][:20]]
    server = start_server(
        Path(tempfile.mkdtemp()), {"DEEPSERVE_PLACEMENT": "local", "DEEPSERVE_GATEWAY_WORKERS": "1"}
    )
    try:
        for run in RUNS:
            time.sleep(1.0)  # a pause: each run starts a busy period of its own
            print(load(server.url, bodies, run, args.seconds), flush=True)
    finally:
        stop_server(server)


if __name__ == "__main__":
    main()
