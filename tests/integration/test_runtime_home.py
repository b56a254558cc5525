"""Two real servers started from one store: each keeps its own metrics files (BentoML wipes its
home's multiprocess folder at start), and serving never writes into the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from loadtests.server import running_server

pytestmark = pytest.mark.models

STORE = Path(os.environ["BENTOML_HOME"])
SERVED = {"DEEPSERVE_MODELS": '["sentiment-lstm"]', "DEEPSERVE_GRPC": "false"}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under the store (links not followed) with its size and mtime."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root, name)
            info = path.lstat()
            found[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns)
    return found


def answered(url: str) -> float:
    """/v1/sentiment requests answered 200, by the server's own /metrics."""
    lines = requests.get(f"{url}/metrics", timeout=30).text.splitlines()
    wanted = ("deepserve_http_requests_total{", 'route="/v1/sentiment"', 'code="200"')
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if all(w in line for w in wanted))


def sentiment(url: str, times: int) -> None:
    for _ in range(times):
        answer = requests.post(f"{url}/v1/sentiment", json={"text": "great"}, timeout=30)
        assert answer.status_code == 200, answer.text


def test_servers_sharing_a_store_keep_their_own_metrics_and_never_write_the_store(tmp_path):
    before = snapshot(STORE)
    with running_server(tmp_path, dict(SERVED)) as first:
        sentiment(first.url, 5)
        assert answered(first.url) == 5
        home = tmp_path / f"runtime-{first.url.rsplit(':', 1)[1]}"
        assert (home / "models").resolve() == (STORE / "models").resolve()
        assert any((home / "prometheus_multiproc_dir").iterdir())  # its metrics live there
        with running_server(tmp_path, dict(SERVED)) as second:
            sentiment(second.url, 2)
            assert answered(second.url) == 2
            assert answered(first.url) == 5  # the second start wiped nothing of the first's
    assert snapshot(STORE) == before
