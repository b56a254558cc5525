"""Real servers on loopback: `bentoml serve` started as a subprocess, called with real clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtests.server import Server, start_server, stop_server


@pytest.fixture(scope="session", params=["local", "remote"])
def server(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Server]:
    """The whole service, once per runner placement (every model placed the same way)."""
    placement = request.param
    running = start_server(tmp_path_factory.mktemp(placement), {"DEEPSERVE_PLACEMENT": placement})
    running.placement = placement
    yield running
    stop_server(running)
