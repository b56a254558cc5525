"""Readiness when some models cannot serve (the others are served unless all are required), and
live changes of what is served: new versions beside the old, drains, refusals, control modes."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.core.errors import Conflict, ModelNotFound, NotReady
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


def test_a_call_before_the_first_load_is_told_to_retry_not_that_the_model_is_unknown() -> None:
    state = serving({})  # versions still being chosen: no runner yet
    with pytest.raises(NotReady, match="starting"):
        state.runner("a")
    state.started = True
    with pytest.raises(ModelNotFound, match="served models: none"):
        state.runner("a")
    state.preprocess_pool.shutdown()


class NoopKernel:
    """A kernel that loads nothing: enough for a LocalRunner to start."""

    provider = "CPUExecutionProvider"
    solo, solo_speedup, solo_times = False, None, None

    def __init__(self, spec, device="auto", intra_op_threads=1, solo_threads=1, io_binding="auto"):
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
                name="good",
                version="v1",
                task="known",
                tag="good:v1",
                extra={},
                settings={},
                tuned={},
            )
        ],
        "odd": [
            SimpleNamespace(
                name="odd",
                version="v1",
                task="future",
                tag="odd:v1",
                extra={},
                settings={},
                tuned={},
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


# --- live changes: new versions beside the old, drains, refusals ---------------------------------


class FakeAdmission:
    def __init__(self) -> None:
        self.inside = 0


class FakeRunner:
    """A runner whose load succeeds or fails as told, counting admitted requests."""

    def __init__(self, spec: SimpleNamespace, fails: bool) -> None:
        self.spec, self.fails = spec, fails
        self.ready, self.error, self.stopped = False, None, False
        self.admission = FakeAdmission()

    async def start(self) -> None:
        if self.fails:
            self.error = "SHA-256 of model.onnx does not match its spec"
        else:
            self.ready = True

    async def stop(self) -> None:
        self.stopped, self.ready = True, False


def spec(version: str) -> SimpleNamespace:
    return SimpleNamespace(name="m", version=version, tag=f"m:{version}", settings={}, tuned={})


def live_state(mode: str = "explicit", failing: tuple[str, ...] = ()) -> ServingState:
    state = ServingState(Settings(model_control=mode, unload_drain_s=5), registry.kernel_of)
    state.make_runner = lambda s: FakeRunner(s, s.version in failing)  # type: ignore[method-assign]
    state.started = True
    return state


def test_a_new_version_takes_traffic_once_ready_and_the_old_one_drains_first() -> None:
    async def scenario() -> None:
        state = live_state()
        await state._serve("m", [spec("v1")])
        old = state.runner("m")
        old.admission.inside = 1  # a request admitted on v1, still running
        await state._serve("m", [spec("v2")])
        assert state.runner("m").spec.version == "v2"  # new requests go to v2 at once
        assert list(state.versions["m"]) == ["v2"]
        await asyncio.sleep(0.1)
        assert not old.stopped  # v1 waits for its admitted request
        old.admission.inside = 0
        await asyncio.wait_for(state.drained(), 5)
        assert old.stopped
        state.preprocess_pool.shutdown()

    asyncio.run(scenario())


def test_a_version_that_fails_to_load_is_refused_and_the_old_one_keeps_serving() -> None:
    async def scenario() -> None:
        state = live_state(failing=("v2",))
        await state._serve("m", [spec("v1")])
        await state._serve("m", [spec("v2")])
        assert state.runner("m").spec.version == "v1"
        assert "does not match" in state.refused["m:v2"]
        assert not state.runner("m").stopped
        state.preprocess_pool.shutdown()

    asyncio.run(scenario())


def test_explicit_mode_is_ready_with_nothing_loaded_the_others_are_not() -> None:
    for mode, expected in (("explicit", True), ("poll", False), ("none", False)):
        state = live_state(mode)
        assert state.ready is expected, mode
        state.preprocess_pool.shutdown()


def test_load_and_unload_need_explicit_mode() -> None:
    async def scenario() -> None:
        state = live_state("poll")
        with pytest.raises(Conflict, match="explicit"):
            await state.load("m")
        with pytest.raises(Conflict, match="explicit"):
            await state.unload("m")
        state.preprocess_pool.shutdown()

    asyncio.run(scenario())


def test_unload_takes_the_model_out_of_routing_at_once() -> None:
    async def scenario() -> None:
        state = live_state()
        await state._serve("m", [spec("v1")])
        runner = state.runner("m")
        await state.unload("m")
        with pytest.raises(ModelNotFound, match="not loaded"):
            state.runner("m")
        await asyncio.wait_for(state.drained(), 5)
        assert runner.stopped
        state.preprocess_pool.shutdown()

    asyncio.run(scenario())


def test_a_refused_version_is_not_retried_by_every_poll_but_by_an_explicit_load() -> None:
    async def scenario() -> None:
        state = live_state(failing=("v2",))
        made: list[str] = []
        make = state.make_runner

        def counting(s):
            made.append(s.version)
            return make(s)

        state.make_runner = counting  # type: ignore[method-assign]
        await state._serve("m", [spec("v1")])
        await state._serve("m", [spec("v2")])
        assert not await state._serve("m", [spec("v2")])  # the next poll: nothing to do
        assert made == ["v1", "v2"]
        assert state.runner("m").spec.version == "v1"
        state.preprocess_pool.shutdown()

    asyncio.run(scenario())


def test_a_version_wanted_by_two_remote_runners_stays_wanted_until_both_stop(monkeypatch):
    from service.runners import client

    written: list[list[str]] = []
    monkeypatch.setattr(client, "_wanted", {})
    monkeypatch.setattr(
        client, "desire", lambda settings, model, versions: written.append(versions)
    )
    client.want(Settings(), "m", "v1", True)  # the old runner of v1, still draining
    client.want(Settings(), "m", "v1", True)  # v1 loaded again meanwhile
    client.want(Settings(), "m", "v1", False)  # the old one stops
    assert written[-1] == ["v1"]
    client.want(Settings(), "m", "v1", False)
    assert written[-1] == []
