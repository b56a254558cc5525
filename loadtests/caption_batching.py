"""Captions: batch-at-once vs continuous (step) decoding, side by side in one run.

Starts the real server (local placement, captioner only, loopback) once per decoding mode
(DEEPSERVE_CAPTION_DECODING=batch and step, both up, measured in turn) and drives
POST /v1/caption with wrk: held-out PNG scenes, half greedy (beam=1) and half beam 3, at 8, 32
and 64 clients, a bounded time per point after a short warm-up. Reports throughput, p50 and
p99 per mode and load, the average batch (requests per encoder batch, from /metrics) and, in
step mode, the average decoder step (rows, from /v1/models). wrk reports latency over all
requests, so there is no per-beam split.
Writes reports/caption_batching/caption_batching.md, .json and .png (matplotlib, if installed).
Not a test: numbers depend on the machine. About 2.5 minutes with the defaults.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests import bench  # noqa: E402
from loadtests.bench import batch_counts  # noqa: E402
from loadtests.payloads import payloads  # noqa: E402
from loadtests.server import Server, start_server, stop_server  # noqa: E402

MODES = ("batch", "step")
BEAMS = (1, 3)


@dataclass
class Point:
    mode: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    avg_batch: float | None
    """Requests per executed batch (encoder batches in step mode)."""
    avg_step_rows: float | None
    """Decoder rows per step (step mode only)."""


def run_wrk(url: str, bodies: list[bytes], clients: int, seconds: float, tmp: Path) -> dict:
    """Mixed greedy / beam-3 requests: body i goes to beam BEAMS[i % 2]."""
    paths = [f"/v1/caption?beam={BEAMS[i % len(BEAMS)]}" for i in range(len(bodies))]
    headers = {"Content-Type": "image/png"}
    return bench.run_wrk(url, bodies, headers, clients, seconds, tmp, paths)


def step_counts(server: Server) -> tuple[int, float]:
    """(decoder steps, their rows) so far, from /v1/models (step mode; zeros otherwise)."""
    models = requests.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    batching = next(m["batching"] for m in models if m["name"] == "captioner")
    steps = int(batching.get("steps", 0))
    return steps, steps * float(batching.get("average_step_rows", 0))


def measure(levels: list[int], seconds: float, warmup: float, tmp: Path) -> list[Point]:
    """Both servers up at once, idle but for the one measured; the modes take turns at every
    load (in alternating order), so the machine's drift over the run hits both alike."""
    bodies = [p.file for p in payloads("captioner")]
    servers: dict[str, Server] = {}
    points = []
    try:
        for mode in MODES:
            env = {
                "DEEPSERVE_MODELS": '["captioner"]',
                "DEEPSERVE_PLACEMENT": "local",
                "DEEPSERVE_CAPTION_DECODING": mode,
            }
            servers[mode] = start_server(tmp, env)
            run_wrk(servers[mode].url + "/", bodies, 8, warmup, tmp)
        for turn, clients in enumerate(levels):
            for mode in MODES if turn % 2 == 0 else MODES[::-1]:
                points.append(point(servers[mode], mode, bodies, clients, seconds, tmp))
    finally:
        for server in servers.values():
            stop_server(server)
    return sorted(points, key=lambda p: (p.clients, MODES.index(p.mode)))


def point(
    server: Server, mode: str, bodies: list[bytes], clients: int, seconds: float, tmp: Path
) -> Point:
    before, steps_before = batch_counts(server.url, "captioner"), step_counts(server)
    result = run_wrk(server.url + "/", bodies, clients, seconds, tmp)
    after, steps_after = batch_counts(server.url, "captioner"), step_counts(server)
    batches, samples = after[0] - before[0], after[1] - before[1]
    steps, rows = steps_after[0] - steps_before[0], steps_after[1] - steps_before[1]
    measured = Point(
        mode, clients, result["rps"], result["p50_ms"], result["p99_ms"],
        int(result["errors"]), samples / batches if batches else None,
        rows / steps if steps else None,
    )  # fmt: skip
    print(
        f"{mode:<6} c={clients:<3} {measured.rps:7.1f} req/s p50 {measured.p50_ms:6.1f} "
        f"p99 {measured.p99_ms:6.1f} ms errors {measured.errors} batch "
        f"{measured.avg_batch or 0:.1f} step rows {measured.avg_step_rows or 0:.1f}",
        flush=True,
    )
    return measured


def markdown(points: list[Point], seconds: float) -> str:
    lines = [
        f"Captioner, local placement, /v1/caption over REST, half greedy / half beam 3, "
        f"{seconds:.0f} s per point (`python loadtests/caption_batching.py`).",
        "",
        "| clients | decoding | req/s | p50 ms | p99 ms | errors | avg batch | avg step rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients in sorted({p.clients for p in points}):
        for p in (p for p in points if p.clients == clients):
            batch = f"{p.avg_batch:.1f}" if p.avg_batch else "-"
            rows = f"{p.avg_step_rows:.1f}" if p.avg_step_rows else "-"
            lines.append(
                f"| {p.clients} | {p.mode} | {p.rps:.1f} | {p.p50_ms:.1f} | {p.p99_ms:.1f} | "
                f"{p.errors} | {batch} | {rows} |"
            )
    return "\n".join(lines)


def plot(points: list[Point], out: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for mode in MODES:
        mine = [p for p in points if p.mode == mode]
        clients = [p.clients for p in mine]
        for ax, values in zip(
            axes, ([p.rps for p in mine], [p.p50_ms for p in mine], [p.p99_ms for p in mine])
        ):
            ax.plot(clients, values, marker="o", label=mode)
    for ax, label in zip(axes, ("requests/s", "p50 latency (ms)", "p99 latency (ms)")):
        ax.set_xlabel("clients")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.legend()
    fig.suptitle("captioner: batch-at-once vs step decoding (half greedy, half beam 3)")
    fig.tight_layout()
    fig.savefig(out / "caption_batching.png", dpi=100)
    plt.close(fig)
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per load point")
    parser.add_argument("--warmup", type=float, default=3.0, help="per server, before the points")
    parser.add_argument("--concurrency", default="8,32,64")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "caption_batching")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk (make setup does it)", file=sys.stderr)
        return 2
    levels = [int(c) for c in args.concurrency.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        points = measure(levels, args.seconds, args.warmup, Path(tmp_name))
    table = markdown(points, args.seconds)
    print("\n" + table)
    (args.out / "caption_batching.md").write_text(table + "\n")
    (args.out / "caption_batching.json").write_text(
        json.dumps(
            {"seconds_per_point": args.seconds, "points": [asdict(p) for p in points]}, indent=2
        )
    )
    plotted = plot(points, args.out)
    print(f"\nwrote {args.out}/caption_batching.md, .json" + (", .png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
