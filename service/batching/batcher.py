"""An in-process adaptive batcher (the "local" runner placement).

Requests are validated and preprocessed before they get here; each `submit` carries one item and
gets exactly its own result back. Workers (one per parallel inference slot) take batches from
per-key queues (length buckets, decoding modes), so a short item never pads to a long one.

When to wait: a free worker takes everything already queued (up to max_batch_size) at once. It
waits for more only while waiting pays - when every other worker is busy (no idle capacity would
be wasted) and requests are arriving faster than the latency budget - and never longer than
max_latency_ms after the oldest request arrived. At low load a request runs alone and at once;
under load batches grow because work queues while the workers compute. BentoML's CORK dispatcher
is the reference for this idea; this one needs no model of compute time. How large a batch may
grow is measured as it serves (sizing.py: a CPU where big batches cost more per item caps them).

Length: one class whose queue, idle path, workers and accounting share the same counters (busy,
pending, started); the measured choices (solo.py, sizing.py) and the results' hand-over
(results.py) live in modules of their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.batching.results import BatchObserver, BatchStats, hand_over, run_isolated
from service.batching.sizing import BatchCap
from service.batching.solo import SoloChoice
from service.core.errors import (
    DeadlineExceeded,
    NotReady,
    Overloaded,
)
from service.core.statistics import ModelStatistics, RequestScope, ns

log = logging.getLogger("deepserve.batching")

RunBatch = Callable[[Hashable, list[Any]], Sequence[Any]]
"""(queue key, items) -> one result per item, in order. Runs in a worker thread."""


@dataclass
class _Pending:
    item: Any
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float | None
    request: RequestScope | None = None
    """The request the item belongs to, given the item's times (statistics)."""


Prepare = Callable[[], Any]
"""Makes a request's item (decode, validate, preprocess); its errors are the caller's."""
KeyOf = Callable[[Any], Hashable]
"""An item's queue key (length bucket, decoding mode)."""
Preprocess = Callable[[Prepare], Awaitable[Any]]
"""Runs a Prepare off the event loop (the preprocessing pool) and gives its item."""


class AdaptiveBatcher:
    def __init__(
        self,
        name: str,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_latency_ms: float,
        workers: int,
        max_queue: int,
        observer: BatchObserver | None = None,
        statistics: ModelStatistics | None = None,
        run_solo: RunBatch | None = None,
        adapt_batch_size: bool = True,
    ) -> None:
        if max_batch_size < 1 or workers < 1:
            raise ValueError(f"{name}: max_batch_size and workers must be at least 1")
        self.name = name
        self.run_batch = run_batch
        self.run_solo = run_solo
        """Runs a batch with all the threads a request alone should get (Kernel.run_solo):
        used when no other batch is computing and nothing is queued, and measured faster
        (solo_choice)."""
        self.solo_choice = SoloChoice()
        self.max_batch_size = max_batch_size
        self.batch_cap = BatchCap(max_batch_size) if adapt_batch_size else None
        """The largest batch worth taking per queue key, measured as it serves (sizing.py);
        None: always up to max_batch_size."""
        self.max_latency = max_latency_ms / 1000.0
        self.workers = workers
        self.max_queue = max_queue
        self.observer = observer
        self.statistics = statistics
        """Triton-style statistics: per executed batch, and per request that reached the model."""
        self.stats = BatchStats()
        self._queues: dict[Hashable, deque[_Pending]] = {}
        self._pending = 0
        self._busy = 0
        self._holding = 0  # workers holding a pulled batch while they wait for batch-mates
        self._started = 0  # batches taken so far (tells whether one ran beside another)
        self._arrival_gap = float("inf")  # EMA of seconds between submissions
        self._last_arrival = 0.0
        self._wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Requests waiting for a batch (not counting those being computed)."""
        return self._pending

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix=f"batch-{self.name}")
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-worker-{i}")
            for i in range(self.workers)
        ]

    async def stop(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for queue in self._queues.values():
            while queue:
                pending = queue.popleft()
                if not pending.future.done():
                    pending.future.set_exception(NotReady(f"{self.name} is shutting down"))
        self._pending = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        """Queue one item and wait for its own result. `deadline` is a time.monotonic() value."""
        if self._closed or self._wakeup is None:
            raise NotReady(f"model {self.name} is not serving")
        request = self.statistics.reached() if self.statistics is not None else None
        if self._pending >= self.max_queue:
            self._reject("queue_full")
            raise Overloaded(
                f"model {self.name} has {self._pending} requests queued (limit {self.max_queue}); "
                "retry later"
            )
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            self._reject("deadline")
            raise DeadlineExceeded(f"deadline passed before {self.name} was queued")
        self._note_arrival(now)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append(_Pending(item, future, now, deadline, request))
        self._pending += 1
        if self.observer is not None:
            self.observer.pending(self._pending)
        self._wakeup.set()
        return await future

    async def submit_prepared(
        self,
        prepare: Prepare,
        key_of: KeyOf,
        preprocess: Preprocess,
        deadline: float | None = None,
    ) -> Any:
        """Prepare an item in a thread (decode, preprocess: `prepare`), then run it as `submit`
        does. When nothing is queued or computing, both happen in one hand-off to a batch
        thread, which runs the item at once (on the solo sessions when chosen): no second
        thread hop, no queue, no worker wake-up; a request arriving meanwhile queues as it
        would behind any running batch. Otherwise `preprocess` (the shared preprocessing pool)
        prepares the item and it queues. An error of `prepare` (the caller's 4xx) is raised."""
        if not self._idle():
            item = await preprocess(prepare)
            return await self.submit(item, key_of(item), deadline)
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            self._reject("deadline")
            raise DeadlineExceeded(f"deadline passed before {self.name} was queued")
        self._note_arrival(now)
        self._started += 1
        started_before = self._started
        self._busy += 1
        running = asyncio.get_running_loop().run_in_executor(
            self._executor, self._prepare_and_run, prepare, key_of, deadline
        )
        # busy until the thread is done, even if this caller is cancelled (client gone)
        running.add_done_callback(self._inline_done)
        item, key, solo, results, began, ended = await asyncio.shield(running)
        if results is None:  # prepared too late: not run
            self._reject("deadline")
            raise DeadlineExceeded(f"deadline passed while {self.name}'s input was prepared")
        request = self.statistics.reached() if self.statistics is not None else None
        if request is not None:  # its clock starts when the run began, as a queued item's would
            request.reached = min(request.reached, int(began * 1e9))
        pending = _Pending(
            item, asyncio.get_running_loop().create_future(), began, deadline, request
        )
        alone = self._started == started_before
        self._account(key, [pending], results, solo, alone, True, began, began, ended)
        return await pending.future

    def _note_arrival(self, now: float) -> None:
        """The gap between submissions (an exponential average): waiting for batch-mates pays
        only while requests come faster than the latency budget."""
        if self._last_arrival:
            gap = now - self._last_arrival
            self._arrival_gap = (
                gap if self._arrival_gap == float("inf") else (0.8 * self._arrival_gap + 0.2 * gap)
            )
        self._last_arrival = now

    def _inline_done(self, _: asyncio.Future[Any]) -> None:
        self._busy -= 1
        if self._pending and self._wakeup is not None:
            self._wakeup.set()  # what queued meanwhile

    def _idle(self) -> bool:
        """Nothing queued, held or computing: a new item may run at once (submit_prepared)."""
        return (
            not self._closed
            and self._executor is not None
            and self._busy == 0
            and self._pending == 0
            and self._holding == 0
        )

    def _prepare_and_run(
        self, prepare: Prepare, key_of: KeyOf, deadline: float | None
    ) -> tuple[Any, Hashable, bool, list[Any] | None, float, float]:
        """In a batch thread: (item, key, solo, results, began, ended); results None when the
        deadline passed while preparing."""
        item = prepare()
        key = key_of(item)
        if deadline is not None and time.monotonic() >= deadline:
            return item, key, False, None, 0.0, 0.0
        # NOTE: picked here, not on the loop: no other batch picks while this one is running
        solo = self.run_solo is not None and self.solo_choice.pick(key)
        results, began, ended = self._run_timed(key, [item], solo)
        return item, key, solo, results, began, ended

    def _reject(self, reason: str) -> None:
        self.stats.rejected(reason)
        if self.observer is not None:
            self.observer.rejected(reason)

    def _oldest_key(self) -> Hashable | None:
        best_key, best_time = None, float("inf")
        for key, queue in self._queues.items():
            if queue and queue[0].enqueued < best_time:
                best_key, best_time = key, queue[0].enqueued
        return best_key

    def _pull(self, key: Hashable, batch: list[_Pending], limit: int) -> None:
        queue = self._queues[key]
        now = time.monotonic()
        while queue and len(batch) < limit:
            pending = queue.popleft()
            self._pending -= 1
            if pending.future.done():  # the client went away
                self._reject("abandoned")
                continue
            if pending.deadline is not None and now >= pending.deadline:
                self._reject("deadline")
                pending.future.set_exception(
                    DeadlineExceeded(
                        f"deadline passed after {now - pending.enqueued:.3f} s in queue"
                    )
                )
                continue
            batch.append(pending)

    def _waiting_pays(self, batch: list[_Pending], limit: int) -> bool:
        return (
            len(batch) < limit
            # the others are computing (with one worker there are none: waiting would only add
            # latency, and batches still form from what queues while it computes)
            and self._busy >= max(1, self.workers - 1)
            and self._arrival_gap < self.max_latency
        )

    async def _take(self) -> tuple[Hashable, list[_Pending]]:
        assert self._wakeup is not None
        while True:
            key = self._oldest_key()
            # NOTE: every batch thread may be taken by submit_prepared runs: then what queued
            # waits here and becomes one batch, as behind this worker's own run
            if key is None or self._busy >= self.workers:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[_Pending] = []
            queued = len(self._queues[key])
            limit = (
                self.batch_cap.limit(key, queued)
                if self.batch_cap is not None
                else self.max_batch_size
            )
            self._pull(key, batch, limit)
            if not batch:
                continue
            until = batch[0].enqueued + self.max_latency
            self._holding += 1
            try:
                while self._waiting_pays(batch, limit):
                    remaining = min(until - time.monotonic(), 2 * self._arrival_gap)
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except TimeoutError:
                        break
                    self._pull(key, batch, limit)
            finally:
                self._holding -= 1
            if self._pending:
                self._wakeup.set()  # let another free worker see what is left
            if self.observer is not None:
                self.observer.pending(self._pending)
            return key, batch

    def _run_timed(
        self, key: Hashable, items: list[Any], solo: bool
    ) -> tuple[list[Any], float, float]:
        """(one result per item, when the model started, when it finished): in a worker thread."""
        began = time.monotonic()
        run = self.run_solo if solo and self.run_solo is not None else self.run_batch
        results = run_isolated(run, key, items, self.name)
        return results, began, time.monotonic()

    def _alone(self) -> bool:
        """Whether a batch taken now runs alone: no other batch computing, nothing queued.
        (One arriving meanwhile runs beside it on the shared sessions: the cores are briefly
        oversubscribed, which costs less than holding it back.)"""
        return self.run_solo is not None and self._busy == 0 and self._pending == 0

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            key, batch = await self._take()
            alone = self._alone() and len(batch) == 1
            solo = alone and self.solo_choice.pick(key)
            self._started += 1
            started_before = self._started
            self._busy += 1
            started = time.monotonic()
            ran = True
            try:
                results, began, ended = await loop.run_in_executor(
                    self._executor, self._run_timed, key, [p.item for p in batch], solo
                )
            except Exception as error:  # executor shut down, etc.
                results, began, ended = [error] * len(batch), started, started
                ran = False
            except asyncio.CancelledError:  # stopped mid-batch: its requests get 503, not a hang
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(NotReady(f"{self.name} was unloaded"))
                raise
            finally:
                self._busy -= 1
            alone = alone and self._started == started_before
            self._account(key, batch, results, solo, alone, ran, started, began, ended)

    def _account(
        self,
        key: Hashable,
        batch: list[_Pending],
        results: list[Any],
        solo: bool,
        alone: bool,
        ran: bool,
        started: float,
        began: float,
        ended: float,
    ) -> None:
        """After a batch: time its way (solo or shared) if it ran alone, count it, hand out
        its results. `started`: when it was taken; `began`/`ended`: its run in the thread."""
        finished = time.monotonic()
        # timed only if it really ran alone to the end (no batch started beside it) and
        # succeeded (a refused item fails fast and would make its way look quick)
        clean = ran and not any(isinstance(r, Exception) for r in results)
        if alone and clean and self.run_solo is not None:
            self.solo_choice.record(key, solo, ended - began)
        if clean and not solo and self.batch_cap is not None:
            self.batch_cap.record(key, len(batch), ended - began)
        self.stats.record(len(batch))
        self.stats.solo += solo
        if self.observer is not None:
            self.observer.batch_done(
                len(batch), [started - p.enqueued for p in batch], finished - started
            )
            self.observer.pending(self._pending)
        for pending, result in zip(batch, results):
            hand_over(pending.future, result, self.name)
        if self.statistics is not None and ran:
            record_batch(self.statistics, batch, started, began, ended)


def record_batch(
    statistics: ModelStatistics, batch: list[_Pending], started: float, began: float, ended: float
) -> None:
    """Statistics of a batch whose results were just handed out (time.monotonic() values:
    `started` when its worker took it, `began`/`ended` its run in the worker thread).
    compute_input is the hand-off to the thread, compute_infer the model's run (collate, ONNX
    Runtime and split are one kernel call), compute_output the hand-back and handing each item
    its result; an item's queue time ends when its batch is taken."""
    phases = (ns(began - started), ns(ended - began), ns(time.monotonic() - ended))
    statistics.batch_done(len(batch), *phases)
    for pending in batch:
        if pending.request is not None:
            pending.request.item_done(ns(started - pending.enqueued), *phases)
