"""The locust suite against the real server: every user class runs and nothing fails (CI smoke)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtests.loadtest import ROOT, read_stats

pytestmark = pytest.mark.models


def test_locust_smoke_every_user_class(server, tmp_path) -> None:
    out = tmp_path / "locust"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.loadtest",
            "--host",
            server.url,
            "--grpc",
            server.grpc_target,
            "--clients",
            "5",
            "--time",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [r for r in read_stats(out / "locust_stats.csv") if r.name != "Aggregated"]
    assert sum(r.failures for r in rows) == 0
    protocols = {r.name.split()[0] for r in rows if r.requests}
    assert protocols == {"rest", "v2-rest", "grpc", "v2-grpc"}
    assert {r.name.split()[1] for r in rows if r.requests} >= {"imagenet-cnn", "sentiment-lstm"}
    assert (out / "report.html").stat().st_size > 10_000
