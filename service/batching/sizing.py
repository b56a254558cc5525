"""How large a batch pays on this device, by measurement as the model serves (BatchCap).

A bigger batch is not always cheaper per item. On the 2-core development machine imagenet-cnn
on one ONNX Runtime thread did 150-154 items/s at batch 1-4 but 136 at 8 and 121 at 16
(2026-12-02: its activations outgrow the cache), so under load, when batches filled to the
default 16, the server answered 144 req/s at 32 clients where batch 1 gave 171. On a GPU, or
for small models, per-item time keeps falling with the batch, and the cap stays at the maximum.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Hashable


class BatchCap:
    """The largest batch worth taking, per queue key, from the per-item time of the batches run.

    Batch sizes fall in classes 1, 2, 4, 8, ... (a batch of n counts in the largest power of two
    not above n). Each class keeps its last WINDOW per-item times; the cap is the class with the
    lowest median among those with FIRST times or more, the larger one when two are within
    TOLERANCE (fewer runs, the same cost). It starts at the maximum, so a device on which
    batching pays never loses it, and every EXPLORE-th batch that could be larger than the cap
    takes the class above it, or below it (in turns), so that a change of load or machine is
    seen. Solo runs (other sessions) are not counted."""

    FIRST = 3
    WINDOW = 8
    EXPLORE = 8
    TOLERANCE = 0.05

    def __init__(self, max_batch_size: int) -> None:
        self.max_batch_size = max_batch_size
        self.classes = [1 << i for i in range(max_batch_size.bit_length())]
        if self.classes[-1] != max_batch_size:
            self.classes.append(max_batch_size)
        self._times: dict[Hashable, dict[int, deque[float]]] = {}
        self._cap: dict[Hashable, int] = {}
        self._taken: dict[Hashable, int] = {}

    def cap(self, key: Hashable) -> int:
        """The current cap for `key` (the maximum until measured otherwise)."""
        return self._cap.get(key, self.max_batch_size)

    def limit(self, key: Hashable, queued: int) -> int:
        """How many of the `queued` items of `key` the next batch may take: the cap, or every
        EXPLORE-th time a neighbouring class (above and below in turns) when enough is queued
        to tell them apart."""
        cap = self.cap(key)
        if queued <= 1:
            return cap
        taken = self._taken[key] = self._taken.get(key, 0) + 1
        if taken % self.EXPLORE:
            return cap
        index = self.classes.index(cap)
        if (taken // self.EXPLORE) % 2 and index + 1 < len(self.classes) and queued > cap:
            return self.classes[index + 1]
        if index > 0 and queued > self.classes[index - 1]:
            return self.classes[index - 1]
        return cap

    def _class_of(self, size: int) -> int:
        return max(c for c in self.classes if c <= size)

    def record(self, key: Hashable, size: int, seconds: float) -> None:
        """A batch of `size` items of `key` ran on the shared sessions in `seconds`."""
        if size < 1 or seconds <= 0:
            return
        times = self._times.setdefault(key, {})
        times.setdefault(self._class_of(size), deque(maxlen=self.WINDOW)).append(seconds / size)
        known = {c: statistics.median(t) for c, t in times.items() if len(t) >= self.FIRST}
        if len(known) < 2:
            return
        best = min(known.values())
        near = [c for c, per_item in known.items() if per_item <= best * (1 + self.TOLERANCE)]
        self._cap[key] = max(near)

    def describe_all(self) -> dict[str, object]:
        """/v1/models: `batch_cap` (the cap of the one queue key, or key -> cap) and each
        class's median per-item time in ms (`item_ms_by_batch`, likewise)."""

        def per_class(key: Hashable) -> dict[str, float]:
            return {
                str(c): round(statistics.median(t) * 1000, 3)
                for c, t in sorted(self._times.get(key, {}).items())
                if t
            }

        keys = sorted(set(self._times) | set(self._cap), key=str)
        if len(keys) <= 1:
            key = keys[0] if keys else 0
            return {"batch_cap": self.cap(key), "item_ms_by_batch": per_class(key)}
        return {
            "batch_cap": {str(k): self.cap(k) for k in keys},
            "item_ms_by_batch": {str(k): per_class(k) for k in keys},
        }
