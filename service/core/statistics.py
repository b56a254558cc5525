"""Inference statistics of one served model version, as Triton's statistics extension reports
them (GET /v2/models/{name}/stats, gRPC ModelStatistics).

Two levels, as in Triton:
- per request (`inference_stats`): a request is one call of a protocol (a V2 infer, a /v1 or task
  gRPC call), however many rows it holds. `request()` scopes it (the runner's admission opens
  the scope, so every front end's requests are counted) and it counts once it reaches the model,
  i.e. its first item is submitted to the runner: as `success` or `fail`, timed from then until
  it is answered. A succeeded request also adds the `queue` and `compute_*` time attributed to
  it. A request that fails before reaching the model (refused by admission, invalid input) is
  not counted, as in Triton.
- per execution (`execution_count`, `inference_count`, `batch_stats`): every batch the model
  runs, by batch size (bounded by the model's max_batch_size).

A request's rows may run in more than one batch; the time attributed to it in each phase is the
longest any of its rows spent there (rows in one batch: that batch's times, as in Triton).

Gateway workers (Settings.gateway_workers) each run their own batchers, so each keeps its own
counts; with a shared folder every worker keeps them in a file of its own there (memory-mapped)
and a snapshot adds up every worker's file, so any worker answers for the whole server, as
perf_analyzer assumes (it reads the counts before and after a window and needs its own
requests in them). A worker's counts stay after it exits (they happened), as Prometheus'
multiprocess counters do; the folder is in the server's runtime home, emptied at its start.

Hot path: an item costs a context-variable lookup and a few integer comparisons, a batch and a
request a lock and integer additions; a request allocates its scope object only.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from contextvars import ContextVar, Token
from pathlib import Path
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
"""The inference_stats a request adds to (count, ns), in Triton's order."""
NOT_CACHED = ("cache_hit", "cache_miss")
"""Triton's response-cache durations: always zero (deepserve caches no responses)."""

# The counters' layout (int64 each): a write sequence, the totals, the (count, ns) of each
# duration, then (count, input ns, infer ns, output ns) per executed batch size from 1 up.
SEQUENCE, LAST_INFERENCE, INFERENCES, EXECUTIONS = range(4)
DURATION_AT = {name: 4 + 2 * i for i, name in enumerate(DURATIONS)}
BATCHES_AT = 4 + 2 * len(DURATIONS)
FIRST_BATCH_SLOTS = 64
"""Batch sizes a fresh file has room for; a larger batch grows it."""
WORD = 8


def ns(seconds: float) -> int:
    """A duration in whole nanoseconds (never negative)."""
    return max(0, int(seconds * 1e9))


class RequestScope:
    """One request at the model: entered by `ModelStatistics.request()`, finished on exit
    (success when the scope ends without an exception)."""

    __slots__ = (
        "compute_infer",
        "compute_input",
        "compute_output",
        "owner",
        "queue",
        "reached",
        "token",
    )

    def __init__(self, owner: ModelStatistics) -> None:
        self.owner = owner
        self.reached = 0
        """time.monotonic_ns() when its first item reached the model (0: none has)."""
        self.queue = self.compute_input = self.compute_infer = self.compute_output = 0
        """The longest time (ns) any of its items spent in each phase."""
        self.token: Token[RequestScope | None] | None = None

    def __enter__(self) -> RequestScope:
        self.token = _current.set(self)
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if self.token is not None:
            _current.reset(self.token)
        self.owner.finish(self, succeeded=kind is None)

    def item_done(self, queue: int, compute_input: int, compute_infer: int, output: int) -> None:
        """One of its items was computed: ns it waited and its batch took in each phase."""
        self.queue = max(self.queue, queue)
        self.compute_input = max(self.compute_input, compute_input)
        self.compute_infer = max(self.compute_infer, compute_infer)
        self.compute_output = max(self.compute_output, output)


_current: ContextVar[RequestScope | None] = ContextVar("deepserve_statistics", default=None)


class Counters:
    """The int64 counters of one process, in memory or in a memory-mapped file (shared); each
    change is bracketed by the write sequence (odd while it is written), so that a reader in
    another process never adds up half a change (a seqlock)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: Any = None
        self._map: mmap.mmap | bytearray = bytearray()
        self.words = memoryview(self._map).cast("q")
        self.grow(BATCHES_AT + 4 * FIRST_BATCH_SLOTS)

    def grow(self, count: int) -> None:
        """Room for `count` counters (never less than now); the new ones are zero."""
        if count <= len(self.words):
            return
        self.words.release()
        if self.path is None:
            self._map = bytearray(self._map) + bytes(WORD * count - len(self._map))
        else:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("w+b")  # counts of this process since this load
            else:
                self._map.close()  # type: ignore[union-attr]
            self._file.truncate(WORD * count)
            self._map = mmap.mmap(self._file.fileno(), WORD * count)
        self.words = memoryview(self._map).cast("q")

    def begin(self) -> memoryview:
        self.words[SEQUENCE] += 1
        return self.words

    def end(self) -> None:
        self.words[SEQUENCE] += 1

    def read(self) -> list[int]:
        return list(self.words)


def read_consistent(path: Path, tries: int = 1000) -> list[int]:
    """The counters in `path` as of one moment (between two of its writer's changes); after
    `tries` reads that each overlapped a change (a writer killed in mid-change), the last.

    NOTE: the sequence is read on its own before and after the data (three reads: a bulk copy
    loads its words in no set order); the writer's plain stores reach the file in program order
    on x86-64 (TSO), which this relies on."""
    words: list[int] = []
    file = os.open(path, os.O_RDONLY)
    try:
        for _ in range(tries):
            before = int.from_bytes(os.pread(file, WORD, 0), "little", signed=True)
            data = os.pread(file, os.fstat(file).st_size, 0)
            after = int.from_bytes(os.pread(file, WORD, 0), "little", signed=True)
            words = memoryview(data[: len(data) - len(data) % WORD]).cast("q").tolist()
            if words and before == after and before % 2 == 0:
                break
            time.sleep(0)
    finally:
        os.close(file)
    return words


class ModelStatistics:
    """The accumulator of one runner (one served model version); thread-safe. `shared`: a
    folder the gateway workers share (one file each); None: this process's counts only."""

    def __init__(self, shared: Path | None = None) -> None:
        self._lock = threading.Lock()
        self.shared = shared
        self._counters = Counters(shared / f"{os.getpid()}.stats" if shared else None)
        self._elsewhere: tuple[int, int] | None = None

    # --- requests ---------------------------------------------------------------------------

    def request(self) -> RequestScope:
        """`with statistics.request():` around one request's whole path to the model."""
        return RequestScope(self)

    def reached(self) -> RequestScope | None:
        """An item of the request in scope reaches the model (the first starts the request's
        clock); the scope, to give its item's times to, or None outside a scope of this model."""
        scope = _current.get()
        if scope is None or scope.owner is not self:
            return None
        if not scope.reached:
            scope.reached = time.monotonic_ns()
        return scope

    def finish(self, scope: RequestScope, succeeded: bool) -> None:
        if not scope.reached:
            return  # never reached the model: not its request
        elapsed = time.monotonic_ns() - scope.reached
        now_ms = time.time_ns() // 1_000_000
        with self._lock:
            words = self._counters.begin()
            if succeeded:
                self._add(words, "success", elapsed)
                self._add(words, "queue", scope.queue)
                self._add(words, "compute_input", scope.compute_input)
                self._add(words, "compute_infer", scope.compute_infer)
                self._add(words, "compute_output", scope.compute_output)
            else:
                self._add(words, "fail", elapsed)
            words[LAST_INFERENCE] = max(words[LAST_INFERENCE], now_ms)
            self._counters.end()

    @staticmethod
    def _add(words: memoryview, duration: str, elapsed: int) -> None:
        at = DURATION_AT[duration]
        words[at] += 1
        words[at + 1] += elapsed

    # --- executions -------------------------------------------------------------------------

    def batch_done(self, size: int, compute_input: int, compute_infer: int, output: int) -> None:
        """The model ran a batch of `size` items; ns spent in each phase."""
        at = BATCHES_AT + 4 * (size - 1)
        with self._lock:
            self._counters.grow(at + 4)
            words = self._counters.begin()
            words[EXECUTIONS] += 1
            words[INFERENCES] += size
            words[at] += 1
            words[at + 1] += compute_input
            words[at + 2] += compute_infer
            words[at + 3] += output
            self._counters.end()

    def answered(self, rows: int) -> None:
        """Rows computed in batches this process does not see (a remote runner service):
        inference_count without executions, until `executed_elsewhere` gives the totals."""
        with self._lock:
            self._counters.begin()[INFERENCES] += rows
            self._counters.end()

    def executed_elsewhere(self, executions: int, inferences: int) -> None:
        """The execution totals counted where the batches run (a remote runner service); they
        replace this object's own counts in snapshots."""
        with self._lock:
            self._elsewhere = (executions, inferences)

    # --- the report -------------------------------------------------------------------------

    def totals(self) -> list[int]:
        """Every counter, added up over the gateway workers that share the folder (the last
        inference: the latest)."""
        if self.shared is None:
            with self._lock:
                return self._counters.read()
        every = [read_consistent(path) for path in sorted(self.shared.glob("*.stats"))]
        every = [words for words in every if words]
        if not every:  # the folder was emptied under the server
            with self._lock:
                return self._counters.read()
        totals = [0] * max(map(len, every))
        for words in every:
            for at, value in enumerate(words):
                totals[at] += value
        totals[LAST_INFERENCE] = max(words[LAST_INFERENCE] for words in every)
        return totals

    def snapshot(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics of this model version (JSON form)."""
        words = self.totals()
        durations = {d: {"count": words[at], "ns": words[at + 1]} for d, at in DURATION_AT.items()}
        for name_ in NOT_CACHED:
            durations[name_] = {"count": 0, "ns": 0}
        executions, inferences = self._elsewhere or (words[EXECUTIONS], words[INFERENCES])
        batches = [
            (1 + (at - BATCHES_AT) // 4, *words[at : at + 4])
            for at in range(BATCHES_AT, len(words), 4)
            if words[at]
        ]
        return {
            "name": name,
            "version": version,
            "last_inference": words[LAST_INFERENCE],
            "inference_count": inferences,
            "execution_count": executions,
            "inference_stats": durations,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": {"count": count, "ns": input_ns},
                    "compute_infer": {"count": count, "ns": infer_ns},
                    "compute_output": {"count": count, "ns": output_ns},
                }
                for size, count, input_ns, infer_ns, output_ns in batches
            ],
        }
