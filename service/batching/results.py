"""What a batch yields, whoever runs it (the adaptive batcher, the step batcher, a remote runner
service): one result or error per item, handed to its own caller, and the counts kept."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.core.errors import InferenceFailed, ServingError

log = logging.getLogger("deepserve.batching")


class BatchObserver(Protocol):
    """What the batcher reports as it works (service/core/metrics.py ModelMetrics implements it)."""

    def batch_done(self, size: int, queue_waits: list[float], compute_seconds: float) -> None: ...

    def pending(self, count: int) -> None: ...

    def rejected(self, reason: str) -> None: ...


@dataclass
class BatchStats:
    batches: int = 0
    samples: int = 0
    solo: int = 0
    """Batches run alone, on the solo sessions (AdaptiveBatcher.run_solo)."""
    largest: int = 0
    expired: int = 0
    """Requests dropped unrun because their deadline passed while they queued."""
    abandoned: int = 0
    """Requests dropped unrun because their caller went away (disconnect, gRPC cancel)."""
    sizes: dict[int, int] = field(default_factory=dict)

    def rejected(self, reason: str) -> None:
        """Count a request dropped unrun (the reasons the stats keep)."""
        if reason == "deadline":
            self.expired += 1
        elif reason == "abandoned":
            self.abandoned += 1

    def record(self, size: int) -> None:
        self.batches += 1
        self.samples += size
        self.largest = max(self.largest, size)
        self.sizes[size] = self.sizes.get(size, 0) + 1


def hand_over(future: asyncio.Future[Any], result: Any, name: str) -> None:
    """Give one item its result, or its error (a ServingError as it is, any other exception as
    InferenceFailed, logged), unless its caller went away."""
    if future.done():
        return
    if isinstance(result, ServingError):
        future.set_exception(result)
    elif isinstance(result, Exception):
        log.error("%s: inference failed: %r", name, result)
        future.set_exception(InferenceFailed(f"{name}: inference failed"))
    else:
        future.set_result(result)


def run_isolated(
    run_batch: Callable[[Hashable, list[Any]], Sequence[Any]],
    key: Hashable,
    items: list[Any],
    name: str,
) -> list[Any]:
    """One result or exception per item. If the batch fails, its items run one by one, so one
    bad item fails alone (Triton's one-response-per-request); the count is checked (Ray Serve's
    invariant)."""
    try:
        results = list(run_batch(key, items))
    except Exception as batch_error:
        if len(items) == 1:
            return [batch_error]
        log.warning("%s: batch of %d failed (%s); retrying alone", name, len(items), batch_error)
        results = []
        for item in items:
            try:
                results.extend(run_batch(key, [item]))
            except Exception as error:
                results.append(error)
    if len(results) != len(items):
        mismatch = InferenceFailed(f"{name}: {len(results)} results for {len(items)} requests")
        return [mismatch] * len(items)
    return results
