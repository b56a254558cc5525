"""The statistics accumulator: per request (scoped, counted once it reaches the model), per
executed batch, thread-safe totals and Triton's JSON shape."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import pytest

from service.core.statistics import DURATIONS, ModelStatistics


def durations(stats: ModelStatistics) -> dict[str, tuple[int, int]]:
    snapshot = stats.snapshot("m", "1")["inference_stats"]
    return {name: (value["count"], value["ns"]) for name, value in snapshot.items()}


def test_a_request_counts_once_whatever_its_items_and_gets_its_longest_times() -> None:
    stats = ModelStatistics()
    before_ms = time.time_ns() // 1_000_000
    with stats.request():
        first, second = stats.reached(), stats.reached()
        assert first is second is not None
        first.item_done(10, 1, 100, 5)
        second.item_done(30, 2, 50, 7)  # a row in a later batch: waited longer
    got = durations(stats)
    assert got["success"][0] == 1 and got["success"][1] > 0
    assert got["queue"] == (1, 30)
    assert got["compute_input"] == (1, 2)
    assert got["compute_infer"] == (1, 100)
    assert got["compute_output"] == (1, 7)
    assert got["fail"] == (0, 0)
    assert stats.snapshot("m", "1")["last_inference"] >= before_ms


def test_a_failed_request_counts_as_fail_only() -> None:
    stats = ModelStatistics()
    with pytest.raises(ValueError), stats.request():
        stats.reached()
        raise ValueError("inference failed")
    got = durations(stats)
    assert got["fail"][0] == 1
    assert all(got[name] == (0, 0) for name in DURATIONS if name != "fail")
    assert stats.snapshot("m", "1")["last_inference"] > 0


def test_a_request_that_never_reached_the_model_is_not_counted() -> None:
    stats = ModelStatistics()
    with stats.request():
        pass
    with pytest.raises(ValueError), stats.request():
        raise ValueError("invalid input, refused before the model")
    assert all(value == (0, 0) for value in durations(stats).values())
    assert stats.snapshot("m", "1")["last_inference"] == 0


def test_items_outside_a_scope_of_this_model_belong_to_no_request() -> None:
    stats, other = ModelStatistics(), ModelStatistics()
    assert stats.reached() is None
    with other.request():
        assert stats.reached() is None  # another model's request
        assert other.reached() is not None
    assert durations(stats)["success"] == (0, 0)
    assert durations(other)["success"][0] == 1


def test_the_scope_reaches_the_tasks_of_a_request_and_no_other_request() -> None:
    stats = ModelStatistics()

    async def row(delay: float) -> None:
        scope = stats.reached()
        assert scope is not None
        await asyncio.sleep(delay)
        scope.item_done(0, 0, int(delay * 1e9), 0)

    async def request(rows: int) -> None:
        with stats.request():
            await asyncio.gather(*(row(0.001 * (i + 1)) for i in range(rows)))

    async def scenario() -> None:
        await asyncio.gather(request(3), request(1))

    asyncio.run(scenario())
    count, infer_ns = durations(stats)["compute_infer"]
    assert count == 2 and infer_ns == 3_000_000 + 1_000_000  # each request's longest row


def test_batches_count_executions_rows_and_times_by_size() -> None:
    stats = ModelStatistics()
    for size, infer in ((4, 40), (1, 10), (4, 44)):
        stats.batch_done(size, 1, infer, 2)
    snapshot = stats.snapshot("digits", "3")
    assert (snapshot["name"], snapshot["version"]) == ("digits", "3")
    assert snapshot["execution_count"] == 3 and snapshot["inference_count"] == 9
    assert snapshot["batch_stats"] == [
        {
            "batch_size": 1,
            "compute_input": {"count": 1, "ns": 1},
            "compute_infer": {"count": 1, "ns": 10},
            "compute_output": {"count": 1, "ns": 2},
        },
        {
            "batch_size": 4,
            "compute_input": {"count": 2, "ns": 2},
            "compute_infer": {"count": 2, "ns": 84},
            "compute_output": {"count": 2, "ns": 4},
        },
    ]
    total = sum(b["batch_size"] * b["compute_infer"]["count"] for b in snapshot["batch_stats"])
    assert total == snapshot["inference_count"]
    assert durations(stats)["success"] == (0, 0)  # executions are not requests
    assert durations(stats)["cache_hit"] == durations(stats)["cache_miss"] == (0, 0)


def test_counts_from_many_threads_add_up_exactly() -> None:
    stats = ModelStatistics()

    def hammer() -> None:
        for size in range(1, 1001):
            stats.batch_done(size % 8 + 1, 1, 1, 1)
            with stats.request():
                stats.reached()

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = stats.snapshot("m", "1")
    assert snapshot["execution_count"] == 8000
    assert snapshot["inference_count"] == 8 * sum(size % 8 + 1 for size in range(1, 1001))
    assert len(snapshot["batch_stats"]) == 8  # bounded: one entry per batch size
    assert sum(b["compute_infer"]["count"] for b in snapshot["batch_stats"]) == 8000
    assert snapshot["inference_stats"]["success"]["count"] == 8000


def test_totals_counted_elsewhere_replace_the_gateways_own() -> None:
    stats = ModelStatistics()
    stats.answered(1)
    stats.answered(1)
    assert stats.snapshot("m", "1")["inference_count"] == 2
    assert stats.snapshot("m", "1")["execution_count"] == 0
    stats.executed_elsewhere(executions=2, inferences=5)
    snapshot = stats.snapshot("m", "1")
    assert (snapshot["execution_count"], snapshot["inference_count"]) == (2, 5)
    assert snapshot["batch_stats"] == []


WORKER = """
import sys
from pathlib import Path
from service.core.statistics import ModelStatistics

stats = ModelStatistics(Path(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    with stats.request():
        stats.reached().item_done(1, 2, 3, 4)
    stats.batch_done(100, 1, 1, 1)  # past the first slots: the file grows
print("done", flush=True)
sys.stdin.read()  # stay alive until told: a reader sees a live worker's file
"""


ROUNDS = 50_000
"""The other worker's requests: long enough (about a second) to be read while it runs."""


def test_workers_sharing_a_folder_answer_for_every_worker(tmp_path) -> None:
    """Gateway workers are processes: each keeps its counts in its own file of the shared
    folder, and any of them adds up all (here: this process and another, changing them while
    they are read)."""
    here = ModelStatistics(tmp_path)
    other = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), str(ROUNDS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        seen = [0]
        while seen[-1] < ROUNDS:  # read while the other process writes
            assert other.poll() is None and time.monotonic() < deadline, seen[-5:]
            stats = here.snapshot("m", "1")["inference_stats"]
            counts = {stats[d]["count"] for d in ("success", "queue", "compute_infer")}
            assert len(counts) == 1, stats  # never half a change (perf_analyzer checks)
            seen.append(counts.pop())
        assert len(set(seen)) > 2  # it was read mid-run, not only before and after
        assert other.stdout is not None and other.stdout.readline() == "done\n"
        with here.request():
            here.reached()
        here.batch_done(2, 1, 1, 1)
        snapshot = here.snapshot("m", "1")
    finally:
        other.communicate("", timeout=30)
    assert snapshot["inference_stats"]["success"]["count"] == ROUNDS + 1
    assert snapshot["inference_stats"]["queue"] == {"count": ROUNDS + 1, "ns": ROUNDS}
    assert (snapshot["execution_count"], snapshot["inference_count"]) == (
        ROUNDS + 1,
        100 * ROUNDS + 2,
    )
    sizes = {b["batch_size"]: b["compute_infer"]["count"] for b in snapshot["batch_stats"]}
    assert sizes == {2: 1, 100: ROUNDS}
    # the other worker has exited: what it counted stays (it happened)
    assert here.snapshot("m", "1") == snapshot
    assert ModelStatistics().snapshot("m", "1")["inference_count"] == 0  # not shared: its own
