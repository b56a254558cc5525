"""The step batcher (continuous batching) on a fake step model: joining mid-flight, leaving at
once, keys sharing steps, the row cap, callers going away, deadlines, stop, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from service.batching.iteration import StepBatcher, StepModel
from service.core.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.core.statistics import ModelStatistics


class Observer:
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.rejections: list[str] = []
        self.pendings: list[int] = []

    def batch_done(self, size: int, queue_waits: list[float], compute_seconds: float) -> None:
        assert len(queue_waits) == size and compute_seconds >= 0
        self.batches.append(size)

    def pending(self, count: int) -> None:
        self.pendings.append(count)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)


class FakeSteps:
    """A fake step model: an item is the number of steps it needs; its result is ("done", item).
    An item of key k takes k rows. Records every step's running {id: rows}."""

    def __init__(self, step_delay: float = 0.0) -> None:
        self.step_delay = step_delay
        self.lock = threading.Lock()
        self.steps: list[dict[int, int]] = []
        self.joins: list[list[int]] = []
        self.left: list[int] = []

    def rows(self, key: Hashable) -> int:
        return max(1, int(key))  # type: ignore[call-overload]

    def running(self) -> FakeRunning:
        return FakeRunning(self)


class FakeRunning:
    def __init__(self, model: FakeSteps) -> None:
        self.model = model
        self.remaining: dict[int, int] = {}
        self.item: dict[int, Any] = {}
        self.width: dict[int, int] = {}

    def join(self, key: Hashable, ids: Sequence[int], items: Sequence[Any]) -> None:
        if "bad" in items:
            raise ValueError("bad item")
        with self.model.lock:
            self.model.joins.append(list(ids))
        for sequence_id, item in zip(ids, items):
            self.remaining[sequence_id] = int(item)
            self.item[sequence_id] = item
            self.width[sequence_id] = int(key)  # type: ignore[call-overload]

    def leave(self, ids: Sequence[int]) -> None:
        for sequence_id in ids:
            self.remaining.pop(sequence_id, None)
        with self.model.lock:
            self.model.left.extend(ids)

    def step(self) -> list[tuple[int, Any]]:
        with self.model.lock:
            self.model.steps.append({i: self.width[i] for i in self.remaining})
        time.sleep(self.model.step_delay)
        done = []
        for sequence_id in list(self.remaining):
            self.remaining[sequence_id] -= 1
            if self.remaining[sequence_id] <= 0:
                del self.remaining[sequence_id]
                done.append((sequence_id, ("done", self.item[sequence_id])))
        return done


async def with_steps(model: FakeSteps, test, **options):
    settings: dict[str, Any] = dict(max_rows=16, max_join=8, workers=1, max_queue=100)
    settings.update(options)
    batcher = StepBatcher("fake", model, **settings)
    await batcher.start()
    try:
        return await test(batcher)
    finally:
        await batcher.stop()


def test_the_fake_is_a_step_model() -> None:
    assert isinstance(FakeSteps(), StepModel)


def test_every_request_gets_its_own_result() -> None:
    async def scenario(batcher: StepBatcher):
        return await asyncio.gather(*(batcher.submit(n, key=1 + n % 3) for n in range(1, 30)))

    results = asyncio.run(with_steps(FakeSteps(), scenario))
    assert results == [("done", n) for n in range(1, 30)]


def test_a_newcomer_joins_mid_flight_and_a_short_one_leaves_at_once() -> None:
    model = FakeSteps(step_delay=0.002)

    async def scenario(batcher: StepBatcher):
        long = asyncio.create_task(batcher.submit(60))
        while not model.steps:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.02)  # the long one is several steps in
        short = await batcher.submit(3)
        assert not long.done()  # answered while its step-mate still runs
        return await long, short

    assert asyncio.run(with_steps(model, scenario)) == (("done", 60), ("done", 3))
    shared = [step for step in model.steps if len(step) == 2]
    assert len(shared) == 3  # the short one ran its 3 steps beside the long one, then left
    first_shared = model.steps.index(shared[0])
    assert first_shared > 1  # it joined the running set, not a new batch
    assert all(len(step) == 1 for step in model.steps[first_shared + 3 :])
    assert len(model.steps) == 60


def test_greedy_and_beam_sequences_share_one_step() -> None:
    model = FakeSteps(step_delay=0.001)

    async def scenario(batcher: StepBatcher):
        return await asyncio.gather(batcher.submit(4, key=1), batcher.submit(4, key=3))

    assert asyncio.run(with_steps(model, scenario)) == [("done", 4), ("done", 4)]
    assert model.steps[0] == {1: 1, 2: 3}  # one call: 1 greedy row + 3 beam rows
    assert len(model.steps) == 4


def test_rows_per_step_are_capped_and_the_rest_waits_its_turn() -> None:
    model = FakeSteps(step_delay=0.001)
    observer = Observer()

    async def scenario(batcher: StepBatcher):
        return await asyncio.gather(*(batcher.submit(5, key=2) for _ in range(5)))

    results = asyncio.run(with_steps(model, scenario, max_rows=4, observer=observer))
    assert results == [("done", 5)] * 5
    assert max(sum(step.values()) for step in model.steps) == 4
    assert max(observer.pendings) >= 3  # three waited in the queue while two ran
    assert observer.pendings[-1] == 0


def test_one_item_wider_than_the_cap_still_runs_alone() -> None:
    model = FakeSteps()

    async def scenario(batcher: StepBatcher):
        return await asyncio.gather(batcher.submit(2, key=8), batcher.submit(2, key=1))

    assert asyncio.run(with_steps(model, scenario, max_rows=4)) == [("done", 2)] * 2
    assert all(len(step) == 1 for step in model.steps)


def test_a_caller_that_went_away_leaves_the_running_set() -> None:
    model = FakeSteps(step_delay=0.002)
    observer = Observer()

    async def scenario(batcher: StepBatcher):
        gone = asyncio.create_task(batcher.submit(1000))
        stays = asyncio.create_task(batcher.submit(30))
        while len(model.steps) < 3:
            await asyncio.sleep(0.001)
        gone.cancel()
        result = await stays
        return result, batcher.stats.abandoned

    result, abandoned = asyncio.run(with_steps(model, scenario, observer=observer))
    assert result == ("done", 30) and abandoned == 1
    assert observer.rejections == ["abandoned"]
    assert model.left == [1]
    assert len(model.steps) < 100  # it did not run to its 1000 steps


def test_a_passed_deadline_ends_the_sequence_at_once() -> None:
    model = FakeSteps(step_delay=0.002)
    observer = Observer()

    async def scenario(batcher: StepBatcher):
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(1000, deadline=time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(1, deadline=time.monotonic() - 1)
        return batcher.stats.expired

    assert asyncio.run(with_steps(model, scenario, observer=observer)) == 2
    assert observer.rejections == ["deadline", "deadline"]
    assert model.left == [1] and len(model.steps) < 200


def test_stop_answers_running_and_queued_requests_not_ready() -> None:
    model = FakeSteps(step_delay=0.002)

    async def scenario():
        batcher = StepBatcher("fake", model, max_rows=1, max_join=1, workers=1, max_queue=10)
        await batcher.start()
        running = asyncio.create_task(batcher.submit(10_000))
        queued = asyncio.create_task(batcher.submit(1))
        while not model.steps:
            await asyncio.sleep(0.001)
        assert batcher.pending == 1
        await batcher.stop()
        outcomes = await asyncio.gather(running, queued, return_exceptions=True)
        with pytest.raises(NotReady):
            await batcher.submit(1)
        return outcomes, batcher.pending

    outcomes, pending = asyncio.run(scenario())
    assert [type(o) for o in outcomes] == [NotReady, NotReady] and pending == 0


def test_a_full_queue_sheds_at_once() -> None:
    model = FakeSteps(step_delay=0.002)
    observer = Observer()

    async def scenario(batcher: StepBatcher):
        running = asyncio.create_task(batcher.submit(50))
        while not model.steps:
            await asyncio.sleep(0.001)
        queued = [asyncio.create_task(batcher.submit(1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(1)
        return await asyncio.gather(running, *queued)

    options = dict(max_rows=1, max_queue=2, observer=observer)
    assert asyncio.run(with_steps(model, scenario, **options))[0] == ("done", 50)
    assert observer.rejections == ["queue_full"]


def test_a_bad_item_fails_alone_and_its_join_mates_run() -> None:
    model = FakeSteps()

    async def scenario(batcher: StepBatcher):
        running = asyncio.create_task(batcher.submit(40))
        await asyncio.sleep(0)
        jobs = [batcher.submit(item) for item in (3, "bad", 4)]
        return await running, await asyncio.gather(*jobs, return_exceptions=True)

    first, results = asyncio.run(with_steps(model, scenario))
    assert first == ("done", 40)
    assert results[0] == ("done", 3) and results[2] == ("done", 4)
    assert isinstance(results[1], InferenceFailed)


def test_two_lanes_step_side_by_side() -> None:
    model = FakeSteps(step_delay=0.005)

    async def scenario(batcher: StepBatcher):
        started = time.perf_counter()
        results = await asyncio.gather(batcher.submit(20, key=4), batcher.submit(20, key=4))
        return results, time.perf_counter() - started

    results, _ = asyncio.run(with_steps(model, scenario, max_rows=4, workers=2))
    assert results == [("done", 20)] * 2
    assert all(len(step) == 1 for step in model.steps)  # each alone in its lane (rows cap)


def test_statistics_count_requests_and_joins() -> None:
    statistics = ModelStatistics()
    observer = Observer()
    model = FakeSteps(step_delay=0.001)

    async def scenario(batcher: StepBatcher):
        async def one(n: int):
            with statistics.request():
                return await batcher.submit(n, key=1 + n % 2)

        return await asyncio.gather(*(one(n) for n in range(1, 13)))

    options = dict(statistics=statistics, observer=observer)
    assert len(asyncio.run(with_steps(model, scenario, **options))) == 12
    snapshot = statistics.snapshot("fake", "1")
    assert snapshot["inference_count"] == 12 == sum(observer.batches)
    assert snapshot["execution_count"] == len(observer.batches) == len(model.joins)
    assert snapshot["inference_stats"]["success"]["count"] == 12
    assert snapshot["inference_stats"]["compute_infer"]["count"] == 12
