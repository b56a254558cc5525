"""Readiness when some models cannot serve: the others are served unless all are required."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.core.settings import Settings
from service.runners.repository import ServingState
from service.tasks import registry


def runner(ready: bool, error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(ready=ready, error=error, spec=SimpleNamespace(tag="m:v1"))


def serving(runners: dict, settings: Settings | None = None) -> ServingState:
    state = ServingState(settings or Settings(), registry.kernel_of)
    state.versions = {name: {"v1": r} for name, r in runners.items()}
    state.runners = dict(runners)
    return state


@pytest.mark.parametrize(
    ("runners", "missing", "require_all", "expected"),
    [
        ({"a": runner(True), "b": runner(True)}, {}, False, True),
        ({"a": runner(True), "b": runner(False)}, {}, False, False),  # b still loading
        ({"a": runner(True), "b": runner(False, "SHA-256 mismatch")}, {}, False, True),
        ({"a": runner(True)}, {"c": "not in the model store"}, False, True),
        ({"a": runner(True), "b": runner(False, "broken")}, {}, True, False),
        ({"a": runner(True)}, {"c": "not in the model store"}, True, False),
        ({"a": runner(False, "broken")}, {}, False, False),  # nothing to serve
        ({}, {"c": "not in the model store"}, False, False),
    ],
)
def test_ready(runners, missing, require_all, expected) -> None:
    state = serving(runners, Settings(require_all_models=require_all))
    state.missing, state.started = missing, True
    assert state.ready is expected
    errors = {r.error for r in runners.values() if r.error}
    assert set(state.failed().values()) == set(missing.values()) | errors
    state.preprocess_pool.shutdown()


def test_not_ready_before_start() -> None:
    state = serving({"a": runner(True)})
    assert state.ready is False
    state.preprocess_pool.shutdown()


class NoopKernel:
    """A kernel that loads nothing: enough for a LocalRunner to start."""

    provider = "CPUExecutionProvider"

    def __init__(self, spec, device="auto", intra_op_threads=1) -> None:
        self.spec = spec

    @classmethod
    def bucket(cls, item):
        return 0

    def warmup(self) -> None:
        pass

    def run(self, key, items):
        return list(items)


def test_a_model_of_an_unknown_task_fails_alone(monkeypatch) -> None:
    """One stored spec whose task this build has no kernel for: that model is reported missing
    with the reason, the others start (it must not stop the whole gateway)."""
    specs = {
        "good": [
            SimpleNamespace(
                name="good", version="v1", task="known", tag="good:v1", extra={}, settings={}
            )
        ],
        "odd": [
            SimpleNamespace(
                name="odd", version="v1", task="future", tag="odd:v1", extra={}, settings={}
            )
        ],
    }

    def kernel_of(task: str):
        if task != "known":
            raise KeyError(f"unknown task {task!r}; one of known")
        return NoopKernel

    monkeypatch.setattr("service.runners.repository.select_versions", lambda *a, **k: specs)
    monkeypatch.setattr("service.runners.local.record_model", lambda *a, **k: None)
    for spec in (*specs["good"], *specs["odd"]):
        spec.graphs = {}
    state = ServingState(Settings(), kernel_of)

    async def start_and_stop() -> None:
        await state.start()
        try:
            assert state.ready
            assert list(state.runners) == ["good"]
            assert "unknown task 'future'" in state.missing["odd"]
        finally:
            await state.stop()

    asyncio.run(start_and_stop())
