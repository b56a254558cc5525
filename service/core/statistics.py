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

Hot path: an item costs a context-variable lookup and a few integer comparisons, a batch and a
request a lock and integer additions; a request allocates its scope object only.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar, Token
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
"""The inference_stats a request adds to (count, ns), in Triton's order."""
NOT_CACHED = ("cache_hit", "cache_miss")
"""Triton's response-cache durations: always zero (deepserve caches no responses)."""


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


class ModelStatistics:
    """The accumulator of one runner (one served model version); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._durations = {name: [0, 0] for name in DURATIONS}  # name -> [count, ns]
        self._batches: dict[int, list[int]] = {}  # size -> [count, input ns, infer ns, output ns]
        self.last_inference_ms = 0
        """When the last request that reached the model was answered (ms since the epoch)."""
        self.inference_count = 0
        self.execution_count = 0
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
            durations = self._durations
            if succeeded:
                self._add(durations["success"], elapsed)
                self._add(durations["queue"], scope.queue)
                self._add(durations["compute_input"], scope.compute_input)
                self._add(durations["compute_infer"], scope.compute_infer)
                self._add(durations["compute_output"], scope.compute_output)
            else:
                self._add(durations["fail"], elapsed)
            self.last_inference_ms = max(self.last_inference_ms, now_ms)

    @staticmethod
    def _add(duration: list[int], elapsed: int) -> None:
        duration[0] += 1
        duration[1] += elapsed

    # --- executions -------------------------------------------------------------------------

    def batch_done(self, size: int, compute_input: int, compute_infer: int, output: int) -> None:
        """The model ran a batch of `size` items; ns spent in each phase."""
        with self._lock:
            self.execution_count += 1
            self.inference_count += size
            totals = self._batches.get(size)
            if totals is None:
                totals = self._batches[size] = [0, 0, 0, 0]
            totals[0] += 1
            totals[1] += compute_input
            totals[2] += compute_infer
            totals[3] += output

    def answered(self, rows: int) -> None:
        """Rows computed in batches this process does not see (a remote runner service):
        inference_count without executions, until `executed_elsewhere` gives the totals."""
        with self._lock:
            self.inference_count += rows

    def executed_elsewhere(self, executions: int, inferences: int) -> None:
        """The execution totals counted where the batches run (a remote runner service); they
        replace this object's own counts in snapshots."""
        with self._lock:
            self._elsewhere = (executions, inferences)

    # --- the report -------------------------------------------------------------------------

    def snapshot(self, name: str, version: str) -> dict[str, Any]:
        """Triton's ModelStatistics of this model version (JSON form)."""
        with self._lock:
            durations = {k: {"count": c, "ns": t} for k, (c, t) in self._durations.items()}
            batches = [(size, *totals) for size, totals in sorted(self._batches.items())]
            executions, inferences = self._elsewhere or (
                self.execution_count,
                self.inference_count,
            )
            last = self.last_inference_ms
        for name_ in NOT_CACHED:
            durations[name_] = {"count": 0, "ns": 0}
        return {
            "name": name,
            "version": version,
            "last_inference": last,
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
