"""How long the repository API takes to load and unload each built-in model on this machine.

    .venv/bin/python -m loadtests.repository_times [--placement local|remote] [--rounds 3]

Starts a real server in explicit model control on loopback with the project's store, then for
each built-in model times `load_model` (returns once the model serves: ONNX Runtime session
created and warmed) and `unload_model` (out of routing; draining and stopping continue behind
it), with stock tritonclient over HTTP. Prints the median of the rounds per model.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import tritonclient.http as httpclient

from loadtests.server import start_server, stop_server
from service.tasks.registry import builtin_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--placement", choices=["local", "remote"], default="local")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    models = sorted(builtin_models())
    with tempfile.TemporaryDirectory(prefix="repository-times-") as tmp:
        server = start_server(
            Path(tmp),
            {
                "DEEPSERVE_MODEL_CONTROL": "explicit",
                "DEEPSERVE_MODELS": '["digits-cnn"]',
                "DEEPSERVE_PLACEMENT": args.placement,
            },
        )
        try:
            client = httpclient.InferenceServerClient(
                server.url.removeprefix("http://"), network_timeout=600
            )
            client.unload_model("digits-cnn")
            time.sleep(1)
            print(f"placement {args.placement}, {args.rounds} rounds, median seconds")
            print("| model | load | unload |\n|---|---|---|")
            for model in models:
                loads, unloads = [], []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    client.load_model(model)
                    loads.append(time.perf_counter() - started)
                    assert client.is_model_ready(model)
                    started = time.perf_counter()
                    client.unload_model(model)
                    unloads.append(time.perf_counter() - started)
                    time.sleep(0.5)  # let the drained version stop before the next load
                print(
                    f"| `{model}` | {statistics.median(loads):.2f} | "
                    f"{statistics.median(unloads):.3f} |",
                    flush=True,
                )
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
