"""Real servers on loopback: `bentoml serve` started as a subprocess, called with real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtests.server import Server, start_server, stop_server


@pytest.fixture(scope="session", params=["local", "remote"])
def server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Server]:
    """The whole service, once per runner placement (every model placed the same way)."""
    placement = request.param
    # NOTE: BentoML sheds (503) remote requests it predicts to take over remote_max_latency_ms
    # (1 s); these tests count exact answers, and 32 imagenet-cnn requests at once on a busy
    # 2-core machine crossed that once in CI (local shedding: tests/integration/test_faults.py).
    env = {"DEEPSERVE_PLACEMENT": placement, "DEEPSERVE_REMOTE_MAX_LATENCY_MS": "10000"}
    running = start_server(tmp_path_factory.mktemp(placement), env)
    running.placement = placement
    yield running
    stop_server(running)
