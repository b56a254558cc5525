"""Iteration-level (continuous) batching, for models that decode step by step.

AdaptiveBatcher runs a batch until every item in it is done, so a request arriving meanwhile
waits for the whole batch, and a short caption waits for the longest one beside it. Here each
lane keeps a running set of sequences (StepModel.running()): between two steps, queued requests
join it (their inputs encoded as one batch), every step advances all its sequences by one model
call, and a sequence that is done leaves at once and its caller is answered - what LLM servers do
for tokens (Orca's iteration-level scheduling, vLLM's continuous batching). Sequences of every
queue key share the steps (greedy and beam captions alike).

A lane is a thread that loops over: drop sequences whose caller went away or whose deadline
passed (rejected "abandoned" / "deadline"), admit newcomers, run one step, hand the finished
results to the event loop (call_soon_threadsafe). NOTE: the loop never waits for the event
loop between steps: a round trip per step through a busy event loop (HTTP parsing, image
decoding) halved throughput when lanes were coroutines handing each step to an executor.

Bounds: a lane's step runs at most `max_rows` model rows (an item of key k takes
`model.rows(k)`; one item alone may exceed it) and at most `max_join` items join at one step;
the others wait in one FIFO queue, whose length max_queue bounds as for AdaptiveBatcher. Lanes
(`workers`) step concurrently, each with its own running set, as AdaptiveBatcher's workers run
batches.

What is counted: a *batch* (BatchObserver.batch_done, ModelStatistics.batch_done, stats) is one
join - one encoder call, for the items of one key joining a running set together - so samples
still count requests; its compute time is that encoder call plus its first step. Steps are
counted apart (stats.steps, stats.step_rows). Triton statistics: a batch's compute_input is its
encoder call, compute_infer its first step; a request's queue time ends when its lane takes it,
its compute_input is its encoder call and its compute_infer runs from then until the step that
finished it.

Length: one scheduler (StepBatcher, its lanes and their step loop) whose parts share its locks
and counters; split, they would have to reach into each other's state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from service.batching.results import BatchObserver, BatchStats, hand_over
from service.core.errors import (
    DeadlineExceeded,
    NotReady,
    Overloaded,
)
from service.core.statistics import ModelStatistics, RequestScope, ns

log = logging.getLogger("deepserve.batching")

IDLE_WAIT_S = 0.5
"""How long an idle lane sleeps before it looks again (submit and stop wake it at once)."""
STOP_WAIT_S = 10.0
"""How long stop() waits for a lane to finish its current step."""


class RunningSet(Protocol):
    """Sequences decoded together, one model step at a time; used by one thread at a time."""

    def join(self, key: Hashable, ids: Sequence[int], items: Sequence[Any]) -> None:
        """Start these items (one encoder batch): all join, or none (then it raises)."""
        ...

    def leave(self, ids: Sequence[int]) -> None: ...

    def step(self) -> list[tuple[int, Any]]:
        """One model call over every running row: (id, result) of the sequences that finished
        (they have left)."""
        ...


@runtime_checkable
class StepModel(Protocol):
    """A kernel that decodes step by step (service/runtime/kernels.py Captioner)."""

    def rows(self, key: Hashable) -> int: ...

    def running(self) -> RunningSet: ...


@dataclass
class StepStats(BatchStats):
    """BatchStats, with a batch = one join; plus the steps run."""

    steps: int = 0
    step_rows: int = 0
    """Model rows summed over steps: step_rows / steps is the average step size."""
    largest_step: int = 0


@dataclass
class _Sequence:
    item: Any
    key: Hashable
    rows: int
    future: asyncio.Future[Any]
    enqueued: float
    deadline: float | None
    request: RequestScope | None = None
    id: int = 0
    taken: float = 0.0
    """When its lane took it from the queue (time.monotonic())."""
    encoding: float = 0.0
    """Seconds its encoder call took."""


@dataclass
class _Lane:
    running: RunningSet
    members: dict[int, _Sequence] = field(default_factory=dict)
    rows: int = 0

    def remove(self, sequence: _Sequence) -> None:
        if self.members.pop(sequence.id, None) is not None:
            self.rows -= sequence.rows


@dataclass
class _Step:
    """What one lane iteration did: joins, then one step."""

    joins: list[tuple[list[int], float]]
    """Each encoder batch that joined: its ids, and seconds it took to encode."""
    failed: dict[int, Exception]
    finished: list[tuple[int, Any]]
    rows: int
    seconds: float
    """How long the step took (0 when no step ran)."""
    ended: float


class StepBatcher:
    """The AdaptiveBatcher surface (submit / start / stop / pending / stats) over lanes that
    decode step by step."""

    def __init__(
        self,
        name: str,
        model: StepModel,
        *,
        max_rows: int,
        max_join: int,
        workers: int,
        max_queue: int,
        observer: BatchObserver | None = None,
        statistics: ModelStatistics | None = None,
    ) -> None:
        if max_rows < 1 or max_join < 1 or workers < 1:
            raise ValueError(f"{name}: max_rows, max_join and workers must be at least 1")
        self.name = name
        self.model = model
        self.max_rows = max_rows
        self.max_join = max_join
        self.workers = workers
        self.max_queue = max_queue
        self.observer = observer
        self.statistics = statistics
        self.stats = StepStats()
        self._queue: deque[_Sequence] = deque()
        self._lock = threading.Lock()
        """Guards the queue and stats (the event loop and every lane thread touch them)."""
        self._arrived = threading.Condition(self._lock)
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lanes: list[_Lane] = []
        self._threads: list[threading.Thread] = []
        self._closed = False

    @property
    def max_batch_size(self) -> int:
        """Most items encoded in one join (the batch here)."""
        return self.max_join

    @property
    def pending(self) -> int:
        """Requests waiting to join a running set (not counting those running)."""
        return len(self._queue)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._lanes = [_Lane(self.model.running()) for _ in range(self.workers)]
        self._threads = [
            threading.Thread(
                target=self._run_lane, args=(lane,), name=f"steps-{self.name}-{i}", daemon=True
            )
            for i, lane in enumerate(self._lanes)
        ]
        for thread in self._threads:
            thread.start()

    async def stop(self) -> None:
        """Every request still queued or running is answered NotReady."""
        with self._arrived:
            self._closed = True
            self._arrived.notify_all()
        for thread in self._threads:  # each finishes its current step
            await asyncio.to_thread(thread.join, STOP_WAIT_S)
        with self._lock:
            left = [*self._queue, *(s for lane in self._lanes for s in lane.members.values())]
            self._queue.clear()
        for sequence in left:
            if not sequence.future.done():
                sequence.future.set_exception(NotReady(f"{self.name} is shutting down"))
        self._report_pending()

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        """Queue one item and wait for its own result. `deadline` is a time.monotonic() value."""
        if self._closed or self._loop is None:
            raise NotReady(f"model {self.name} is not serving")
        request = self.statistics.reached() if self.statistics is not None else None
        if len(self._queue) >= self.max_queue:
            self._reject("queue_full")
            raise Overloaded(
                f"model {self.name} has {len(self._queue)} requests queued "
                f"(limit {self.max_queue}); retry later"
            )
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            self._reject("deadline")
            raise DeadlineExceeded(f"deadline passed before {self.name} was queued")
        future: asyncio.Future[Any] = self._loop.create_future()
        rows = max(1, self.model.rows(key))  # every sequence takes a step
        with self._arrived:
            self._queue.append(_Sequence(item, key, rows, future, now, deadline, request))
            self._arrived.notify()
        self._report_pending()
        return await future

    # --- a lane (its own thread) ----------------------------------------------------------------

    def _run_lane(self, lane: _Lane) -> None:
        while not self._closed:
            try:
                self._sweep(lane)
                joining = self._admit(lane)
                if not lane.members:
                    continue
                step = self._step(lane, joining)
                self._settle(lane, joining, step)
            except Exception as error:  # every sequence in the lane fails; the lane goes on
                if self._loop is None or self._loop.is_closed():  # closed without stop()
                    log.warning("%s: lane stopped: %s", self.name, error)
                    return
                log.error("%s: step failed: %r", self.name, error)
                try:
                    self._deliver([(s, error, None) for s in lane.members.values()])
                    with self._lock:
                        lane.members.clear()
                    lane.rows = 0
                    lane.running = self.model.running()
                except Exception:  # NOTE: never leave the lane: its callers would hang
                    log.exception("%s: lane reset failed", self.name)

    def _admit(self, lane: _Lane) -> list[_Sequence]:
        """Move queued requests into the lane, FIFO, while its rows allow; an idle lane waits
        for one."""
        joining: list[_Sequence] = []
        expired: list[_Sequence] = []
        now = time.monotonic()
        with self._arrived:
            queue = self._queue
            if not queue and not lane.members and not self._closed:
                self._arrived.wait(IDLE_WAIT_S)
            while queue and len(joining) < self.max_join:
                head = queue[0]
                if head.future.done():  # the client went away
                    queue.popleft()
                    self._count_reject("abandoned")
                    continue
                if head.deadline is not None and now >= head.deadline:
                    queue.popleft()
                    self._count_reject("deadline")
                    expired.append(head)
                    continue
                if lane.rows and lane.rows + head.rows > self.max_rows:
                    break
                queue.popleft()
                head.id, head.taken = next(self._ids), now
                lane.members[head.id] = head
                lane.rows += head.rows
                joining.append(head)
            if queue and joining:
                self._arrived.notify()  # another lane may have room
        self._expire(expired, now)
        if joining or expired:
            self._report_pending()
        return joining

    def _sweep(self, lane: _Lane) -> None:
        """Sequences whose caller went away or whose deadline passed leave the running set."""
        now = time.monotonic()
        gone, expired = [], []
        for sequence in list(lane.members.values()):
            if sequence.future.done():  # NOTE: a read of the future's state; safe off the loop
                self._reject("abandoned")
            elif sequence.deadline is not None and now >= sequence.deadline:
                self._reject("deadline")
                expired.append(sequence)
            else:
                continue
            with self._lock:
                lane.remove(sequence)
            gone.append(sequence.id)
        if gone:
            lane.running.leave(gone)
        self._expire(expired, now)

    def _step(self, lane: _Lane, joining: list[_Sequence]) -> _Step:
        """Join the newcomers (one encoder batch per key; a failed batch is retried item by
        item, so one bad item fails alone), then run one step."""
        failed: dict[int, Exception] = {}
        joins: list[tuple[list[int], float]] = []
        by_key: dict[Hashable, list[_Sequence]] = {}
        for sequence in joining:
            by_key.setdefault(sequence.key, []).append(sequence)

        def join(key: Hashable, group: list[_Sequence]) -> None:
            started = time.monotonic()
            ids = [s.id for s in group]
            lane.running.join(key, ids, [s.item for s in group])
            encoding = time.monotonic() - started
            for sequence in group:
                sequence.encoding = encoding
            joins.append((ids, encoding))

        for key, group in by_key.items():
            try:
                join(key, group)
            except Exception as batch_error:
                if len(group) == 1:
                    failed[group[0].id] = batch_error
                    continue
                log.warning(
                    "%s: join of %d failed (%s); retrying alone", self.name, len(group), batch_error
                )
                for sequence in group:
                    try:
                        join(key, [sequence])
                    except Exception as error:
                        failed[sequence.id] = error
        rows = lane.rows - sum(lane.members[i].rows for i in failed)
        started = time.monotonic()
        finished = lane.running.step() if rows else []
        ended = time.monotonic()
        return _Step(joins, failed, finished, rows, ended - started if rows else 0.0, ended)

    def _settle(self, lane: _Lane, joining: list[_Sequence], step: _Step) -> None:
        """Count the step and its joins; hand the failed and the finished their answers."""
        answers: list[tuple[_Sequence, Any, float | None]] = []
        with self._lock:
            for sequence in joining:
                if sequence.id in step.failed:
                    lane.remove(sequence)
                    answers.append((sequence, step.failed[sequence.id], None))
            for sequence_id, result in step.finished:
                done = lane.members.get(sequence_id)
                if done is not None:
                    lane.remove(done)
                    answers.append((done, result, step.ended))
            for ids, _ in step.joins:
                self.stats.record(len(ids))
            if step.rows:
                self.stats.steps += 1
                self.stats.step_rows += step.rows
                self.stats.largest_step = max(self.stats.largest_step, step.rows)
        for ids, encoding in step.joins:  # a batch: one encoder call, and its first step
            if self.observer is not None:
                waits = [s.taken - s.enqueued for s in joining if s.id in ids]
                self.observer.batch_done(len(ids), waits, encoding + step.seconds)
            if self.statistics is not None:
                self.statistics.batch_done(len(ids), ns(encoding), ns(step.seconds), 0)
        if answers:
            self._deliver(answers)

    def _expire(self, sequences: list[_Sequence], now: float) -> None:
        self._deliver(
            [
                (s, DeadlineExceeded(f"deadline passed after {now - s.enqueued:.3f} s"), None)
                for s in sequences
            ]
        )

    def _deliver(self, answers: list[tuple[_Sequence, Any, float | None]]) -> None:
        """Hand results (or exceptions) to the event loop: (sequence, result, when its step
        ended, for statistics; None for a request that was not computed)."""
        if answers and self._loop is not None:
            self._loop.call_soon_threadsafe(self._answer, answers)

    # --- the event loop's side ------------------------------------------------------------------

    def _answer(self, answers: list[tuple[_Sequence, Any, float | None]]) -> None:
        now = time.monotonic()
        for sequence, result, ended in answers:
            if sequence.future.done():
                continue
            hand_over(sequence.future, result, self.name)
            if sequence.request is not None and ended is not None:
                sequence.request.item_done(
                    ns(sequence.taken - sequence.enqueued),
                    ns(sequence.encoding),
                    ns(ended - sequence.taken - sequence.encoding),
                    ns(now - ended),
                )

    def _reject(self, reason: str) -> None:
        with self._lock:
            self._count_reject(reason)

    def _count_reject(self, reason: str) -> None:
        """_reject with the lock held."""
        self.stats.rejected(reason)
        if self.observer is not None:
            self.observer.rejected(reason)

    def _report_pending(self) -> None:
        if self.observer is not None:
            with self._lock:  # NOTE: lanes report from their threads: one at a time
                self.observer.pending(len(self._queue))
