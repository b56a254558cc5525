"""What each runner placement records in its statistics, requests scoped by its admission as every
front end does: local (the batcher's executions and phases), remote (gateway-side call times, the
runner service's execution counters)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.core.errors import InvalidInput
from service.core.settings import Settings
from service.runners.client import RemoteRunner
from service.runners.local import LocalRunner
from service.runners.service import FAILED
from service.runtime.kernels import Kernel


def spec(name: str) -> Any:
    return SimpleNamespace(
        name=name,
        version="v1",
        tag=f"{name}:v1",
        task="t",
        extra={},
        settings={},
        tuned={},
        graphs={},
    )


class DoublingKernel:
    """Doubles numbers; an item "bad" fails (alone, after its batch is retried item by item)."""

    provider = "CPUExecutionProvider"
    solo, solo_speedup, solo_times = False, None, None

    def __init__(
        self,
        spec: Any,
        device: str = "auto",
        intra_op_threads: int = 1,
        solo_threads: int = 1,
        io_binding: str = "auto",
    ) -> None:
        self.spec = spec

    @classmethod
    def bucket(cls, item: Any) -> int:
        return 0

    def warmup(self) -> None:
        pass

    def run(self, key: Any, items: list[Any]) -> list[Any]:
        if "bad" in items:
            raise InvalidInput("bad item")
        return [item * 2 for item in items]


async def request(runner: Any, items: list[Any]) -> list[Any]:
    """One request of several rows, as a task's V2 signature submits it."""
    with runner.admission.admit():
        return await asyncio.gather(*(runner.submit(item) for item in items))


def test_local_runner_records_requests_and_batches(monkeypatch) -> None:
    monkeypatch.setattr("service.runners.local.record_model", lambda *a, **k: None)
    runner = LocalRunner(spec("local-stats"), Settings(max_batch_size=4), DoublingKernel)

    async def scenario() -> None:
        await runner.start()
        try:
            assert await request(runner, [1, 2, 3]) == [2, 4, 6]
            assert await request(runner, [4]) == [8]
            with pytest.raises(InvalidInput):
                await request(runner, [5, "bad"])
        finally:
            await runner.stop()

    asyncio.run(scenario())
    snapshot = runner.statistics.snapshot("local-stats", "v1")
    counts = snapshot["inference_stats"]
    assert counts["success"]["count"] == 2 and counts["fail"]["count"] == 1
    assert counts["queue"]["count"] == counts["compute_infer"]["count"] == 2
    assert snapshot["inference_count"] == 6  # every executed row, the failed request's too
    assert 3 <= snapshot["execution_count"] <= 6
    rows = sum(b["batch_size"] * b["compute_infer"]["count"] for b in snapshot["batch_stats"])
    assert rows == snapshot["inference_count"]
    assert max(b["batch_size"] for b in snapshot["batch_stats"]) <= 4


class FakeRunnerService:
    """The BentoML dependency client of a runner service: describe and infer (one row each)."""

    def __init__(self) -> None:
        self.to_async = self

    async def call(self, api: str, payload: Any = None) -> Any:
        if api == "describe":
            return {"providers": {"v1": "CPU"}, "errors": {}, "batches": 2, "samples": 3}
        ((_, item, _, _),) = payload
        if item == "bad":
            return [{FAILED: {"status": 400, "message": "bad item"}}]
        await asyncio.sleep(0.005)
        return [[float(item) * 2]]


def test_remote_runner_records_call_times_and_the_runner_services_counts(monkeypatch) -> None:
    monkeypatch.setattr("service.runners.client.record_model", lambda *a, **k: None)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    service = FakeRunnerService()
    runner = RemoteRunner(spec("remote-stats"), Settings(), Kernel, lambda m, v: service)
    # every worker process of the runner service holds v1 (their status files)
    monkeypatch.setattr("service.runners.client.desire", lambda *a: None)
    holding = [{"pid": n, "versions": {"v1": None}} for n in range(runner.processes)]
    monkeypatch.setattr("service.runners.client.held", lambda *a: holding)

    async def scenario() -> None:
        await runner.start()
        try:
            while not runner.ready:
                await asyncio.sleep(0.01)
            answers = await request(runner, [1, 2])
            np.testing.assert_allclose(np.concatenate(answers), [2.0, 4.0])
            with pytest.raises(InvalidInput):
                await request(runner, ["bad"])
            counted = runner.statistics.snapshot("remote-stats", "v1")
            assert counted["inference_count"] == 2 and counted["execution_count"] == 0
            await runner.refresh()  # the runner service's own counters replace the gateway's
        finally:
            await runner.stop()

    asyncio.run(scenario())
    snapshot = runner.statistics.snapshot("remote-stats", "v1")
    counts = snapshot["inference_stats"]
    assert counts["success"]["count"] == 1 and counts["fail"]["count"] == 1
    assert counts["compute_infer"]["count"] == 1
    assert counts["compute_infer"]["ns"] >= 5_000_000  # the call, its queue and batch included
    assert counts["queue"]["ns"] == counts["compute_input"]["ns"] == 0  # not seen from here
    assert (snapshot["execution_count"], snapshot["inference_count"]) == (2, 3)
    assert snapshot["batch_stats"] == []
