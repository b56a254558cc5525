"""The locust suite against the real server: every user class runs and nothing fails (CI smoke)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtests.loadtest import ROOT, read_stats

pytestmark = pytest.mark.models


def loadtest(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`python -m loadtests.loadtest ARGS`, as make loadtest runs it."""
    command = [sys.executable, "-m", "loadtests.loadtest", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_locust_smoke_every_user_class(server, tmp_path) -> None:
    out = tmp_path / "locust"
    run = loadtest(
        "--host", server.url, "--grpc", server.grpc_target, "--clients", "5", "--time", "5",
        "--out", str(out),
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [r for r in read_stats(out / "locust_stats.csv") if r.name != "Aggregated"]
    assert sum(r.failures for r in rows) == 0
    protocols = {r.name.split()[0] for r in rows if r.requests}
    assert protocols == {"rest", "v2-rest", "grpc", "v2-grpc"}
    assert {r.name.split()[1] for r in rows if r.requests} >= {"imagenet-cnn", "sentiment-lstm"}
    assert (out / "report.html").stat().st_size > 10_000


def test_a_model_the_server_does_not_serve_stops_the_run_before_it_starts(server, tmp_path) -> None:
    models = "digits-cnn,no-such-model"
    run = loadtest("--host", server.url, "--models", models, "--out", str(tmp_path), timeout=60)
    assert run.returncode == 2, run.stdout + run.stderr
    assert "does not serve ['no-such-model']" in run.stderr
    assert not (tmp_path / "locust_stats.csv").exists()
