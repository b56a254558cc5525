"""Readiness when some models cannot serve: the others are served unless all are required."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service.settings import Settings
from service.state import ServingState


def runner(ready: bool, error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(ready=ready, error=error)


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
    state = ServingState(Settings(require_all_models=require_all))
    state.runners, state.missing, state.started = runners, missing, True
    assert state.ready is expected
    assert set(state.failed()) == set(missing) | {n for n, r in runners.items() if r.error}
    state.preprocess_pool.shutdown()


def test_not_ready_before_start() -> None:
    state = ServingState(Settings())
    state.runners = {"a": runner(True)}
    assert state.ready is False
    state.preprocess_pool.shutdown()
