"""BatchCap: the largest batch worth taking, measured from the batches run."""

from __future__ import annotations

import asyncio
import time

from service.batching.sizing import BatchCap
from tests.batching.test_batcher import Recorder, with_batcher


def per_item_ms(size: int, costs: dict[int, float]) -> float:
    return costs[max(c for c in costs if c <= size)] / 1000


def drive(cap: BatchCap, queued: int, costs: dict[int, float], batches: int) -> list[int]:
    """`batches` batches taken from a queue that always holds `queued` items, each timed at
    its size class's per-item cost (ms): the sizes taken."""
    sizes = []
    for _ in range(batches):
        size = min(queued, cap.limit(0, queued))
        cap.record(0, size, size * per_item_ms(size, costs))
        sizes.append(size)
    return sizes


def test_classes_are_powers_of_two_up_to_the_maximum() -> None:
    assert BatchCap(16).classes == [1, 2, 4, 8, 16]
    assert BatchCap(12).classes == [1, 2, 4, 8, 12]
    assert BatchCap(1).classes == [1]


def test_a_device_where_batches_cost_more_per_item_gets_a_smaller_cap() -> None:
    cap = BatchCap(16)
    assert cap.limit(0, 40) == 16  # unmeasured: the maximum
    # imagenet-cnn on one thread here: batches of 1-4 cost the same per image, 8-16 more
    costs = {1: 6.5, 2: 6.6, 4: 6.6, 8: 7.4, 16: 8.3}
    sizes = drive(cap, 40, costs, 400)
    assert cap.cap(0) == 4  # the largest of the cheapest (within 5 %)
    assert sizes[-100:].count(4) >= 80  # the rest are tries of the classes beside it
    assert set(sizes[-100:]) <= {2, 4, 8}
    shown = cap.describe_all()
    assert shown["batch_cap"] == 4 and set(shown["item_ms_by_batch"]) >= {"4", "8", "16"}


def test_a_device_where_batching_pays_keeps_the_maximum() -> None:
    cap = BatchCap(16)
    costs = {1: 4.0, 2: 2.2, 4: 1.3, 8: 0.8, 16: 0.5}  # a GPU: per item falls with the batch
    sizes = drive(cap, 40, costs, 300)
    assert cap.cap(0) == 16 and sizes[-50:].count(16) >= 40


def test_a_cap_follows_the_device_when_it_changes() -> None:
    cap = BatchCap(16)
    drive(cap, 40, {1: 6.5, 4: 6.6, 8: 7.4, 16: 8.3}, 400)
    assert cap.cap(0) == 4
    drive(cap, 40, {1: 4.0, 2: 2.2, 4: 1.3, 8: 0.8, 16: 0.5}, 600)  # now batching pays
    assert cap.cap(0) == 16


def test_each_queue_key_has_its_own_cap_and_nothing_queued_explores_nothing() -> None:
    cap = BatchCap(8)
    for _ in range(20):
        cap.record("short", 8, 8 * 0.001)
        cap.record("short", 2, 2 * 0.0005)
        cap.record("long", 8, 8 * 0.001)
        cap.record("long", 2, 2 * 0.004)
    assert cap.cap("short") == 2 and cap.cap("long") == 8
    assert all(cap.limit("short", 1) == 2 for _ in range(50))  # one queued: no tries
    assert cap.describe_all()["batch_cap"] == {"long": 8, "short": 2}


class SizeCostly(Recorder):
    """A fake model whose per-item time grows with the batch (like a CNN outgrowing a cache)."""

    def __call__(self, key, items):
        time.sleep(0.0004 * len(items) * max(1.0, len(items) / 2) ** 0.7)
        return super().__call__(key, items)


def test_the_batcher_caps_batches_where_they_cost_more_per_item() -> None:
    model = SizeCostly()

    async def scenario(batcher):
        for _ in range(80):  # rounds of 24 at once: batches fill up to what the cap allows
            await asyncio.gather(*(batcher.submit(i) for i in range(24)))
        return batcher.batch_cap.cap(0)

    cap = asyncio.run(with_batcher(model, scenario, max_batch_size=8, workers=1))
    assert cap <= 2
    late = [len(items) for _, items in model.batches[-60:]]
    assert sum(size <= 2 for size in late) >= 45


def test_without_adapting_batches_fill_to_the_maximum() -> None:
    model = SizeCostly()

    async def scenario(batcher):
        for _ in range(10):
            await asyncio.gather(*(batcher.submit(i) for i in range(24)))
        return batcher.batch_cap

    assert asyncio.run(with_batcher(model, scenario, workers=1, adapt_batch_size=False)) is None
    assert max(len(items) for _, items in model.batches) == 8
