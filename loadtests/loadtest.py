"""`make loadtest`: a headless, time-bounded locust run with an SLO gate.

Starts the service on loopback (or targets --host / --grpc), checks with the Python client that
it is ready and serves the models the run sends (else exits 2 at once: such a run would only
fail), runs loadtests/locustfile.py, writes locust's CSV and HTML report, then checks the SLO:
exits 1 when any request type's p99 latency or the overall failure ratio exceeds its threshold.
Examples:

    python -m loadtests.loadtest                              # all user classes, 16 users, 30 s
    python -m loadtests.loadtest --users RestUser --clients 32 --time 60
    python -m loadtests.loadtest --shape step --time 80       # saturation search
    python -m loadtests.loadtest --host http://10.0.0.5:3000 --grpc 10.0.0.5:50051
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtests.server import start_server, stop_server  # noqa: E402

USER_CLASSES = ["RestUser", "V2RestUser", "GrpcTaskUser", "V2GrpcUser", "MixedUser"]
DEFAULT_MAX_P99_MS = 2000.0
"""Default SLO: p99 per request type, generous enough for speech and beam search on 2 cores."""
DEFAULT_MAX_FAILURE_RATIO = 0.01


@dataclass
class Row:
    kind: str
    name: str
    requests: int
    failures: int
    p50_ms: float
    p99_ms: float
    rps: float


def read_stats(path: Path) -> list[Row]:
    rows = []
    with path.open() as handle:
        for record in csv.DictReader(handle):
            rows.append(
                Row(
                    record["Type"],
                    record["Name"],
                    int(record["Request Count"]),
                    int(record["Failure Count"]),
                    float(record["50%"] or 0),
                    float(record["99%"] or 0),
                    float(record["Requests/s"] or 0),
                )
            )
    return rows


def slo_gate(rows: list[Row], max_p99_ms: float, max_failure_ratio: float) -> list[str]:
    """The SLO violations (empty = pass)."""
    problems = []
    total = next((r for r in rows if r.name == "Aggregated"), None)
    if total is None or total.requests == 0:
        return ["no requests were made"]
    ratio = total.failures / total.requests
    if ratio > max_failure_ratio:
        problems.append(f"failure ratio {ratio:.4f} > {max_failure_ratio}")
    for row in rows:
        if row.name != "Aggregated" and row.requests and row.p99_ms > max_p99_ms:
            problems.append(f"{row.name}: p99 {row.p99_ms:.0f} ms > {max_p99_ms:.0f} ms")
    return problems


def preflight(host: str, models: list[str] | None) -> str | None:
    """Why a run against `host` could only fail (not reachable, not ready, a model of the run
    not served), or None. `models`: the run's (None: the built-in models, as the locustfile)."""
    from service.client import Client, DeepserveError, Retry

    if models is None:
        from service.tasks.registry import builtin_models

        models = builtin_models()
    try:
        with Client(host, timeout=10, retry=Retry(attempts=2)) as client:
            if not client.ready():
                return f"{host} is not ready (/readyz)"
            served = {model.name for model in client.models() if model.ready}
    except DeepserveError as error:
        return f"{host}: {error}"
    missing = sorted(set(models) - served)
    if missing:
        return f"{host} does not serve {missing} (it serves {sorted(served)}; see --models)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="service URL (default: start one on loopback)")
    parser.add_argument("--grpc", help="gRPC host:port (default: the started service's)")
    parser.add_argument("--users", default="all", help=f"user classes: all or of {USER_CLASSES}")
    parser.add_argument("--clients", type=int, default=16, help="concurrent users (constant)")
    parser.add_argument("--spawn-rate", type=float, default=16.0)
    parser.add_argument("--time", type=float, default=30.0, help="seconds (bounded run)")
    parser.add_argument("--shape", choices=["constant", "step", "spike"], default="constant")
    parser.add_argument("--models", help="comma-separated models (default: all)")
    parser.add_argument(
        "--max-p99-ms",
        type=float,
        default=float(os.environ.get("SLO_MAX_P99_MS", DEFAULT_MAX_P99_MS)),
        help=f"SLO: p99 per request type (default {DEFAULT_MAX_P99_MS:g}, env SLO_MAX_P99_MS)",
    )
    parser.add_argument(
        "--max-failure-ratio",
        type=float,
        default=float(os.environ.get("SLO_MAX_FAILURE_RATIO", DEFAULT_MAX_FAILURE_RATIO)),
        help="SLO: failed / all requests (default 0.01, env SLO_MAX_FAILURE_RATIO)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "loadtest")
    args = parser.parse_args(argv)
    users = USER_CLASSES if args.users == "all" else args.users.split(",")
    unknown = sorted(set(users) - set(USER_CLASSES))
    if unknown:
        parser.error(f"unknown user classes {unknown}; choose from {USER_CLASSES}")
    args.out.mkdir(parents=True, exist_ok=True)

    server = None
    if args.host is None:
        server = start_server(Path(tempfile.mkdtemp(prefix="deepserve-loadtest-")), {})
        host, target = server.url, server.grpc_target
    else:
        host, target = args.host, args.grpc or ""
    try:
        problem = preflight(host, args.models.split(",") if args.models else None)
    except BaseException:  # a bug or Ctrl-C: the server started here goes too
        if server is not None:
            stop_server(server)
        raise
    if problem is not None:
        if server is not None:
            stop_server(server)
        print(f"not run: {problem}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if target:
        env["DEEPSERVE_GRPC_TARGET"] = target
    if args.models:
        env["DEEPSERVE_LOAD_MODELS"] = args.models
    if args.shape != "constant":
        env["DEEPSERVE_LOAD_SHAPE"] = args.shape
        env["DEEPSERVE_SHAPE_USERS"] = str(args.clients)
        env["DEEPSERVE_SHAPE_SECONDS"] = str(args.time)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "loadtests" / "locustfile.py"),
        "--headless",
        "--host",
        host,
        "-u",
        str(args.clients),
        "-r",
        str(args.spawn_rate),
        "-t",
        f"{max(1, round(args.time))}s",
        "--stop-timeout",
        "10",
        "--csv",
        str(args.out / "locust"),
        "--html",
        str(args.out / "report.html"),
        "--only-summary",
        "--exit-code-on-error",
        "0",  # the SLO gate below decides
        *users,
    ]
    try:
        print("running:", " ".join(command[2:]), flush=True)
        subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=args.time + 120)
    finally:
        if server is not None:
            stop_server(server)
    rows = read_stats(args.out / "locust_stats.csv")
    print(f"\n{'type':<6} {'name':<28} {'reqs':>7} {'fails':>6} {'req/s':>8} {'p50':>6} {'p99':>6}")
    for row in rows:
        print(
            f"{row.kind:<6} {row.name:<28} {row.requests:>7} {row.failures:>6} {row.rps:>8.1f} "
            f"{row.p50_ms:>6.0f} {row.p99_ms:>6.0f}"
        )
    problems = slo_gate(rows, args.max_p99_ms, args.max_failure_ratio)
    verdict = "FAIL" if problems else "PASS"
    print(
        f"\nSLO (p99 <= {args.max_p99_ms:g} ms per request type, failures <= "
        f"{args.max_failure_ratio:.2%}): {verdict}"
    )
    for problem in problems:
        print(f"  - {problem}")
    print(f"report: {args.out / 'report.html'}, stats: {args.out / 'locust_stats.csv'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
