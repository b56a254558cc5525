"""Triton's own perf_analyzer (the real C++ binary, `make perf-analyzer`) against a real server,
over V2 HTTP and V2 gRPC, per runner placement (local with two gateway workers, the default on a
machine of several cores; remote with its one): it reads the model's metadata and config, sends
its own requests (random UINT8 images; texts from an --input-data file) and reads the statistics
extension before and after each window for its server-side section.

What it expects and deepserve holds: integer version numbers in the statistics (it parses them),
a shape besides the batch dim for every input (a text is [rows, 1]), statistics covering every
gateway worker (a window whose requests a worker's own counts miss fails it), and equal
compute_input / compute_infer / compute_output counts (it stops otherwise).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from loadtests.server import ROOT, Server, running_server
from tests.integration.test_gateway_workers import wait_until_both_listen, worker_processes

pytestmark = pytest.mark.models

PERF_ANALYZER = ROOT / "build" / "perf_analyzer" / "perf_analyzer"
MODELS = ["digits-cnn", "sentiment-lstm"]
TEXTS = {"data": [{"text": ["a moving, beautifully acted film"]}, {"text": ["dull and too long"]}]}
"""sentiment-lstm's input: perf_analyzer's random BYTES would also fill its optional inputs."""
BOUNDS = [
    *("--concurrency-range", "1:2", "--measurement-mode", "time_windows"),
    *("--measurement-interval", "500", "--max-trials", "4", "--stability-percentage", "1000"),
]
"""Two concurrency levels, windows of half a second, at most 4 of them per level; any three
consecutive windows count as stable (the numbers are not what is tested here)."""


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if not PERF_ANALYZER.exists():
        pytest.fail(f"{PERF_ANALYZER} is missing: `make perf-analyzer` fetches it (make test does)")
    version = subprocess.run(
        [PERF_ANALYZER, "--version"], capture_output=True, text=True, timeout=30
    )
    assert version.returncode == 0, (
        f"{PERF_ANALYZER} does not start (libb64-0d missing? `make apt` installs it): "
        + version.stderr
    )
    return PERF_ANALYZER


@pytest.fixture(scope="module", params=["local", "remote"])
def served(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Server]:
    env = {
        "DEEPSERVE_PLACEMENT": request.param,
        "DEEPSERVE_MODELS": json.dumps(MODELS),
        "DEEPSERVE_REMOTE_MAX_LATENCY_MS": "10000",  # as tests/integration/conftest.py's server
    }
    if request.param == "local":  # the statistics must add up the workers' counts
        env["DEEPSERVE_GATEWAY_WORKERS"] = "2"
    with running_server(tmp_path_factory.mktemp(f"perf-{request.param}"), env) as server:
        if request.param == "local":
            workers = worker_processes(server.process.pid)
            wait_until_both_listen(workers, int(server.grpc_target.rsplit(":", 1)[1]))
        yield server


def windows(output: str) -> dict[int, dict[str, Any]]:
    """perf_analyzer's report per concurrency: the client's and the server's figures."""
    report = {}
    for block in re.split(r"^Request concurrency: ", output, flags=re.MULTILINE)[1:]:
        concurrency = int(block.split("\n", 1)[0])
        client, _, server = block.partition("\n  Server: \n")

        def number(pattern: str, text: str) -> float:
            found = re.search(pattern, text)
            assert found, f"no {pattern!r} in:\n{text}"
            return float(found[1])

        report[concurrency] = {
            "requests": number(r"Request count: (\d+)", client),
            "throughput": number(r"Throughput: ([\d.]+) infer/sec", client),
            "server": server,
            "inferences": number(r"Inference count: (\d+)", server) if server else None,
            "executions": number(r"Execution count: (\d+)", server) if server else None,
            "succeeded": number(r"Successful request count: (\d+)", server) if server else None,
        }
    return report


def succeeded(server: Server, model: str) -> int:
    stats = requests.get(f"{server.url}/v2/models/{model}/stats", timeout=30).json()
    return sum(s["inference_stats"]["success"]["count"] for s in stats["model_stats"])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_deepserve(perf_analyzer, served, tmp_path, protocol, model):
    server = served
    target = server.grpc_target if protocol == "grpc" else server.url.removeprefix("http://")
    command = [perf_analyzer, "-m", model, "-i", protocol, "-u", target, *BOUNDS]
    if model == "sentiment-lstm":
        data = tmp_path / "texts.json"
        data.write_text(json.dumps(TEXTS))
        command += ["--input-data", str(data)]
    before = succeeded(server, model)
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    report = windows(run.stdout)
    assert sorted(report) == [1, 2], output
    for concurrency, figures in report.items():
        assert figures["throughput"] > 0 and figures["requests"] > 0, output
        # the server-side section, from the statistics extension (every gateway worker's)
        assert figures["server"], f"no server-side section at concurrency {concurrency}:\n{output}"
        assert "Avg request latency" in figures["server"] and "compute infer" in figures["server"]
        # the same window seen from both sides: the requests the client saw answered are the
        # ones the server counted, but for those at the window's edges (the ones in flight, and
        # those answered while perf_analyzer fetched the statistics: a remote model's fetch
        # asks its runner service first)
        slack = concurrency + 2 + 0.02 * figures["requests"]
        assert abs(figures["succeeded"] - figures["requests"]) <= slack, (figures, output)
        # one row per request: as many rows computed, in batches of at least one row
        assert abs(figures["inferences"] - figures["succeeded"]) <= slack, (figures, output)
        assert 0 < figures["executions"] <= figures["inferences"], (figures, output)
    measured = sum(figures["requests"] for figures in report.values())
    # every gateway worker answers for all: connections made at once (which the workers share
    # out; one after the other they mostly reach the same one) read the same counts, and these
    # hold every request perf_analyzer sent
    with ThreadPoolExecutor(16) as pool:
        after = set(pool.map(lambda _: succeeded(server, model), range(16)))
    assert len(after) == 1, after
    assert after.pop() - before >= measured  # and more: its unmeasured requests
