"""Readiness when some models cannot serve: the others are served unless all are required."""

from __future__ import annotations

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
