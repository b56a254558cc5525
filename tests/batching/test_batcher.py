"""The adaptive batcher: own results, batching under load, buckets, isolation, shedding."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Hashable

import pytest

from service.batching.batcher import AdaptiveBatcher
from service.batching.solo import SoloChoice
from service.core.errors import DeadlineExceeded, InferenceFailed, InvalidInput, Overloaded
from service.core.statistics import ModelStatistics


class Recorder:
    """A fake model: doubles numbers, records batches, optionally slow or failing on 'bad'."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[tuple[Hashable, list[object]]] = []
        self.lock = threading.Lock()

    def __call__(self, key: Hashable, items: list[object]) -> list[object]:
        with self.lock:
            self.batches.append((key, list(items)))
        time.sleep(self.delay)
        if "bad" in items:
            raise ValueError("bad item")
        if "invalid" in items:
            raise InvalidInput("this one is invalid")
        return [item * 2 for item in items]  # type: ignore[operator]


async def with_batcher(model: Recorder, test, **options):
    settings = dict(max_batch_size=8, max_latency_ms=20, workers=2, max_queue=100)
    settings.update(options)
    batcher = AdaptiveBatcher("fake", model, **settings)
    await batcher.start()
    try:
        return await test(batcher)
    finally:
        await batcher.stop()


def test_every_request_gets_its_own_result_and_batches_form_under_load() -> None:
    model = Recorder(delay=0.01)

    async def scenario(batcher: AdaptiveBatcher):
        return await asyncio.gather(*(batcher.submit(i) for i in range(64)))

    results = asyncio.run(with_batcher(model, scenario))
    assert results == [i * 2 for i in range(64)]
    sizes = [len(items) for _, items in model.batches]
    assert sum(sizes) == 64
    assert max(sizes) > 1 and max(sizes) <= 8


def test_a_lone_request_is_not_held_back() -> None:
    model = Recorder()

    async def scenario(batcher: AdaptiveBatcher):
        started = time.perf_counter()
        assert await batcher.submit(21) == 42
        return time.perf_counter() - started

    elapsed = asyncio.run(with_batcher(model, scenario, max_latency_ms=500))
    assert elapsed < 0.25  # far below the 500 ms latency bound: it did not wait for batch-mates


def test_items_of_different_buckets_never_share_a_batch() -> None:
    model = Recorder(delay=0.005)

    async def scenario(batcher: AdaptiveBatcher):
        jobs = [batcher.submit(i, key=i % 3) for i in range(60)]
        return await asyncio.gather(*jobs)

    results = asyncio.run(with_batcher(model, scenario))
    assert results == [i * 2 for i in range(60)]
    for key, items in model.batches:
        assert all(item % 3 == key for item in items)  # type: ignore[operator]


def test_one_failing_item_does_not_fail_its_batch_neighbours() -> None:
    model = Recorder(delay=0.01)

    async def scenario(batcher: AdaptiveBatcher):
        jobs = [batcher.submit(i) for i in range(10)]
        jobs.insert(5, batcher.submit("bad"))
        jobs.insert(7, batcher.submit("invalid"))
        return await asyncio.gather(*jobs, return_exceptions=True)

    results = asyncio.run(with_batcher(model, scenario, workers=1))
    errors = [r for r in results if isinstance(r, Exception)]
    assert len(errors) == 2
    assert isinstance(results[7], InvalidInput)  # the item's own error class survives
    assert [r for r in results if not isinstance(r, Exception)] == [i * 2 for i in range(10)]


def test_full_queue_is_refused_at_once_with_overloaded() -> None:
    model = Recorder(delay=0.05)

    async def scenario(batcher: AdaptiveBatcher):
        jobs = [asyncio.ensure_future(batcher.submit(i)) for i in range(10)]
        await asyncio.sleep(0)
        assert batcher.pending == 10
        started = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await batcher.submit(999)
        assert time.perf_counter() - started < 0.05
        assert refused.value.headers["Retry-After"]
        return await asyncio.gather(*jobs)

    results = asyncio.run(with_batcher(model, scenario, max_queue=10, max_batch_size=2, workers=1))
    assert results == [i * 2 for i in range(10)]  # the admitted ones all complete
    assert all(999 not in items for _, items in model.batches)


def test_expired_deadline_is_not_computed() -> None:
    model = Recorder(delay=0.05)

    async def scenario(batcher: AdaptiveBatcher):
        blocker = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.01)
        late = batcher.submit(2, deadline=time.monotonic() + 0.001)
        with pytest.raises(DeadlineExceeded):
            await late
        await blocker

    asyncio.run(with_batcher(model, scenario, workers=1, max_batch_size=1))
    assert all(2 not in items for _, items in model.batches)


def test_statistics_count_requests_batches_and_their_times() -> None:
    model, stats = Recorder(delay=0.01), ModelStatistics()

    async def scenario(batcher: AdaptiveBatcher):
        async def request(first: int, rows: int) -> list[object]:
            with stats.request():  # what the runner's admission opens per request
                return await asyncio.gather(*(batcher.submit(first + i) for i in range(rows)))

        return await asyncio.gather(*(request(4 * r, 4) for r in range(16)))

    results = asyncio.run(with_batcher(model, scenario, statistics=stats))
    assert [x for rows in results for x in rows] == [i * 2 for i in range(64)]
    snapshot = stats.snapshot("fake", "1")
    sizes = Counter(len(items) for _, items in model.batches)
    assert snapshot["execution_count"] == len(model.batches) == sum(sizes.values())
    assert snapshot["inference_count"] == 64
    by_size = {b["batch_size"]: b for b in snapshot["batch_stats"]}
    assert {size: b["compute_infer"]["count"] for size, b in by_size.items()} == dict(sizes)
    infer_ns = sum(b["compute_infer"]["ns"] for b in snapshot["batch_stats"])
    assert infer_ns >= len(model.batches) * 10_000_000  # each batch slept 10 ms in the model
    counts = snapshot["inference_stats"]
    assert counts["success"]["count"] == 16 and counts["fail"]["count"] == 0
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert counts[phase]["count"] == 16, phase
    assert counts["compute_infer"]["ns"] >= 16 * 10_000_000
    assert counts["success"]["ns"] >= counts["compute_infer"]["ns"]


def test_statistics_count_failed_requests_and_unscoped_items_as_executions_only() -> None:
    model, stats = Recorder(), ModelStatistics()

    async def scenario(batcher: AdaptiveBatcher):
        with pytest.raises(InferenceFailed), stats.request():
            await asyncio.gather(batcher.submit(3), batcher.submit("bad"))
        with pytest.raises(DeadlineExceeded), stats.request():
            await batcher.submit(4, deadline=time.monotonic() - 1)  # never computed
        assert await batcher.submit(5) == 10  # in no request's scope

    asyncio.run(with_batcher(model, scenario, workers=1, statistics=stats))
    snapshot = stats.snapshot("fake", "1")
    counts = snapshot["inference_stats"]
    assert counts["fail"]["count"] == 2 and counts["success"]["count"] == 0
    assert counts["queue"]["count"] == 0  # phases are a succeeded request's
    assert snapshot["execution_count"] == 2  # [3, "bad"] (retried alone inside) and [5]
    assert snapshot["inference_count"] == 3


def test_stopping_mid_batch_answers_its_requests_not_ready_instead_of_leaving_them_waiting():
    from service.core.errors import NotReady

    async def scenario() -> None:
        batcher = AdaptiveBatcher(
            "fake", Recorder(delay=0.5), max_batch_size=8, max_latency_ms=1, workers=1,
            max_queue=100,
        )  # fmt: skip
        await batcher.start()
        running = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.1)  # its batch is in the model now
        await batcher.stop()
        with pytest.raises(NotReady, match="unloaded"):
            await asyncio.wait_for(running, 5)

    asyncio.run(scenario())


def test_a_request_alone_runs_solo_while_that_is_faster_and_concurrent_ones_shared() -> None:
    shared, solo = Recorder(delay=0.03), Recorder(delay=0.005)

    async def scenario(batcher: AdaptiveBatcher):
        one_by_one = [await batcher.submit(i) for i in range(10)]  # each alone
        together = await asyncio.gather(*(batcher.submit(i) for i in range(10, 30)))
        return one_by_one, together

    one_by_one, together = asyncio.run(with_batcher(shared, scenario, run_solo=solo))
    assert one_by_one == [i * 2 for i in range(10)] and together == [i * 2 for i in range(10, 30)]
    # first both ways in turns until each has FIRST times of its own, then the faster: solo
    first = 2 * SoloChoice.FIRST
    assert [items for _, items in solo.batches[: first // 2]] == [[i] for i in range(0, first, 2)]
    assert [items for _, items in shared.batches[: first // 2]] == [[i] for i in range(1, first, 2)]
    assert [items for _, items in solo.batches[first // 2 : first // 2 + 4]] == [
        [i] for i in range(first, 10)
    ]
    # under load the others ran while one was computing, or were queued: shared runs
    assert sum(len(items) for _, items in shared.batches) >= 10 + SoloChoice.FIRST
    solo_items = sum(len(items) for _, items in solo.batches)
    assert solo_items + sum(len(items) for _, items in shared.batches) == 30


def test_a_solo_run_whose_batch_fails_still_isolates_the_bad_item() -> None:
    shared, solo = Recorder(), Recorder()

    async def scenario(batcher: AdaptiveBatcher):
        alone = await asyncio.gather(batcher.submit("bad"), return_exceptions=True)
        together = await asyncio.gather(
            batcher.submit("bad"), batcher.submit(3), return_exceptions=True
        )
        return alone + together

    bad_alone, bad, good = asyncio.run(with_batcher(shared, scenario, run_solo=solo, workers=1))
    assert isinstance(bad_alone, InferenceFailed)
    assert solo.batches == [(0, ["bad"])]  # alone: solo; its failure is not timed as solo's
    assert isinstance(bad, InferenceFailed) and good == 6
    assert shared.batches[0] == (0, ["bad", 3]) and sorted(map(str, shared.batches[1][1])) in (
        ["bad"],
        ["3"],
    )


def calibrated(choice: SoloChoice, key: object, shared_s: float, solo_s: float) -> None:
    """The first requests, run both ways in turns, timed at `shared_s` and `solo_s`."""
    for _ in range(2 * SoloChoice.FIRST):
        way = choice.pick(key)
        choice.record(key, way, solo_s if way else shared_s)


def test_solo_choice_takes_the_faster_way_and_still_tries_the_other() -> None:
    choice = SoloChoice()
    assert choice.pick(0) is True  # no time yet for either: try solo
    choice.record(0, True, 0.010)
    assert choice.pick(0) is False  # now the shared way has fewer times
    choice.record(0, False, 0.005)
    calibrated(choice, 0, 0.005, 0.010)
    picks = [choice.pick(0) for _ in range(4 * SoloChoice.EXPLORE_CLEAR)]
    assert picks.count(True) == 4  # shared is clearly faster: solo only when exploring, rarely
    for _ in range(SoloChoice.WINDOW):  # the machine changes: solo becomes the faster one
        choice.record(0, True, 0.002)
    assert choice.speedup(0) == pytest.approx(0.005 / 0.002)
    picks = [choice.pick(0) for _ in range(4 * SoloChoice.EXPLORE_CLEAR)]
    assert picks.count(False) == 4
    for _ in range(SoloChoice.WINDOW):  # close: 1.1x apart, so the other way is tried more often
        choice.record(0, False, 0.0022)
    picks = [choice.pick(0) for _ in range(4 * SoloChoice.EXPLORE)]
    assert picks.count(False) == 4


def test_a_wrong_seed_is_corrected_by_the_first_requests() -> None:
    choice = SoloChoice()
    choice.seed("k", 0.004, 0.008)  # warmed up beside another worker: solo looked slower
    assert choice.speedup("k") == 0.5
    picks = []
    for _ in range(2 * SoloChoice.FIRST):  # both ways in turns, the seed's faster first
        picks.append(choice.pick("k"))
        choice.record("k", picks[-1], 0.002 if picks[-1] else 0.004)
    assert picks[0] is False and picks.count(True) == SoloChoice.FIRST
    assert all(pair.count(True) == 1 for pair in zip(picks[::2], picks[1::2]))
    assert choice.speedup("k") == pytest.approx(2.0)
    assert [choice.pick("k") for _ in range(10)] == [True] * 10


def test_a_way_whose_runs_fail_or_are_never_alone_cannot_hold_the_first_turns() -> None:
    choice = SoloChoice()
    picks = [choice.pick(0) for _ in range(2 * SoloChoice.FIRST)]  # none timed
    assert picks.count(True) == picks.count(False) == SoloChoice.FIRST
    for _ in range(3):  # only the shared way ever gets times: it is taken
        choice.record(0, False, 0.004)
    assert [choice.pick(0) for _ in range(10)] == [False] * 10
    other = SoloChoice()
    for _ in range(2 * SoloChoice.FIRST):
        other.pick(1)
    assert other.pick(1) is False  # neither way timed: the shared sessions


def test_a_try_that_beats_the_leader_is_followed_at_once() -> None:
    choice = SoloChoice()
    calibrated(choice, 0, 0.004, 0.008)  # shared leads clearly: solo tried every 64th
    turns = 0
    while not choice.pick(0):
        turns += 1
        choice.record(0, False, 0.004)
    assert turns == SoloChoice.EXPLORE_CLEAR - 1
    choice.record(0, True, 0.002)  # the other cores became free: solo now twice as fast
    followed = []
    while len(followed) < 10 and (not followed or followed[-1]):
        followed.append(choice.pick(0))
        choice.record(0, followed[-1], 0.002 if followed[-1] else 0.004)
    assert followed == [True] * 10  # solo tried again at once until its median led, then kept
    assert choice.speedup(0) == pytest.approx(2.0)
    assert [choice.pick(0) for _ in range(10)] == [True] * 10


# --- submit_prepared: prepare and run in one batch thread when idle ---------------------------


class Preparer:
    """prepare() callables that note the thread they ran on; a preprocess() that counts."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.pooled = 0

    def item(self, value: object, delay: float = 0.0):
        def prepare() -> object:
            self.threads.append(threading.current_thread().name)
            time.sleep(delay)
            if value == "unreadable":
                raise InvalidInput("not an image")
            return value

        return prepare

    async def preprocess(self, prepare):
        self.pooled += 1
        return await asyncio.to_thread(prepare)


class ThreadRecorder(Recorder):
    def __init__(self, delay: float = 0.0):
        super().__init__(delay)
        self.threads: list[str] = []

    def __call__(self, key, items):
        self.threads.append(threading.current_thread().name)
        return super().__call__(key, items)


def test_an_idle_model_prepares_and_runs_an_item_in_one_batch_thread() -> None:
    model, prep = ThreadRecorder(), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        first = await batcher.submit_prepared(prep.item(3), lambda _: 0, prep.preprocess)
        second = await batcher.submit_prepared(prep.item(4), lambda _: 0, prep.preprocess)
        return first, second, batcher.stats.batches, batcher._busy

    assert asyncio.run(with_batcher(model, scenario)) == (6, 8, 2, 0)
    assert prep.pooled == 0  # no hand-off to the preprocessing pool
    assert prep.threads == model.threads and prep.threads[0].startswith("batch-fake")


def test_while_a_batch_computes_items_are_prepared_in_the_pool_and_queue_behind_it() -> None:
    model, prep = ThreadRecorder(delay=0.2), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        first = asyncio.create_task(
            batcher.submit_prepared(prep.item(1), lambda _: 0, prep.preprocess)
        )
        await asyncio.sleep(0.05)  # the first is computing: the others are not alone
        rest = [
            batcher.submit_prepared(prep.item(i), lambda _: 0, prep.preprocess) for i in range(2, 6)
        ]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(with_batcher(model, scenario, workers=1)) == [2, 4, 6, 8, 10]
    assert prep.pooled == 4
    assert [len(items) for _, items in model.batches] == [1, 4]  # queued meanwhile: one batch


def test_a_prepare_error_is_the_callers_and_leaves_the_model_idle() -> None:
    model, prep = Recorder(), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        with pytest.raises(InvalidInput, match="not an image"):
            await batcher.submit_prepared(prep.item("unreadable"), lambda _: 0, prep.preprocess)
        assert batcher._busy == 0 and batcher.stats.batches == 0
        return await batcher.submit_prepared(prep.item(5), lambda _: 0, prep.preprocess)

    assert asyncio.run(with_batcher(model, scenario)) == 10
    assert model.batches == [(0, [5])]


def test_a_caller_gone_mid_run_keeps_the_model_busy_until_its_thread_is_done() -> None:
    model, prep = Recorder(delay=0.3), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        task = asyncio.create_task(
            batcher.submit_prepared(prep.item(1), lambda _: 0, prep.preprocess)
        )
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.01)
        busy_after_cancel = batcher._busy
        await asyncio.sleep(0.4)
        return busy_after_cancel, batcher._busy

    assert asyncio.run(with_batcher(model, scenario)) == (1, 0)


def test_an_expired_deadline_is_refused_before_preparing() -> None:
    model, prep = Recorder(), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        with pytest.raises(DeadlineExceeded):
            await batcher.submit_prepared(
                prep.item(1), lambda _: 0, prep.preprocess, time.monotonic() - 1
            )
        return batcher.stats.expired

    assert asyncio.run(with_batcher(model, scenario)) == 1
    assert prep.threads == []


def test_an_idle_item_runs_solo_when_solo_is_chosen_and_is_timed() -> None:
    shared, solo, prep = Recorder(), Recorder(), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        calibrated(batcher.solo_choice, 0, 0.010, 0.001)  # solo clearly faster
        results = [
            await batcher.submit_prepared(prep.item(i), lambda _: 0, prep.preprocess)
            for i in range(3)
        ]
        return results, batcher.stats.solo, batcher.solo_choice.speedup(0)

    results, solo_count, speedup = asyncio.run(with_batcher(shared, scenario, run_solo=solo))
    assert results == [0, 2, 4] and solo_count == 3
    assert len(solo.batches) == 3 and shared.batches == []
    assert speedup != pytest.approx(10.0)  # the runs were timed: the estimate moved


def test_an_item_whose_deadline_passes_while_it_is_prepared_is_not_run() -> None:
    model, prep = Recorder(), Preparer()

    async def scenario(batcher: AdaptiveBatcher):
        with pytest.raises(DeadlineExceeded, match="prepared"):
            await batcher.submit_prepared(
                prep.item(1, delay=0.3), lambda _: 0, prep.preprocess, time.monotonic() + 0.1
            )
        return batcher.stats.expired, batcher.stats.batches, batcher._busy

    assert asyncio.run(with_batcher(model, scenario)) == (1, 0, 0)
    assert model.batches == []
