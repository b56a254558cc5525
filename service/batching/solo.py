"""Whether a batch that runs alone goes to the solo sessions (Kernel.run_solo), by measurement."""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Hashable


class SoloChoice:
    """Whether a batch that runs alone goes to the solo sessions, by measurement, per queue key.

    Both ways are timed whenever a batch of one runs alone, and the faster one (the median of
    its last WINDOW times) is taken. The first 2 x FIRST such batches take the two ways in
    turns: the kernel's warm-up gives a first estimate (seed), but the gateway's workers
    warm up at the same time, so a seed can be far off (imagenet-cnn's solo session, warmed
    beside another worker's, looked slower than the shared one; trusted, it kept one client on
    one thread for hundreds of requests: 11 ms p50 instead of 7.5, 2026-12-02). Afterwards
    every EXPLORE-th such batch takes the other way, so the choice follows the machine (a node
    whose other cores become busy makes the solo sessions slower); while one way leads clearly
    (by CLEAR: imagenet-cnn on 2 cores, solo 1.5-1.9x) only every EXPLORE_CLEAR-th, since each
    try costs a request the difference (2-3 ms there). A try that beats the leader is followed
    by another at once, so a changed machine turns the choice within a few batches, not a few
    hundred."""

    FIRST = 3
    WINDOW = 5
    EXPLORE = 16
    EXPLORE_CLEAR = 64
    CLEAR = 1.25

    def __init__(self) -> None:
        self._seeds: dict[Hashable, tuple[float, float]] = {}  # key -> (shared, solo) seconds
        self._times: dict[Hashable, tuple[deque[float], deque[float]]] = {}
        self._tries: dict[Hashable, list[int]] = {}  # key -> [shared, solo] picks while calibrating
        self._count: dict[Hashable, int] = {}
        self._again: dict[Hashable, bool] = {}  # key -> the way whose last try beat the leader

    def seed(self, key: Hashable, shared_s: float, solo_s: float) -> None:
        """A first estimate (the warm-up's), used until both ways have times of their own."""
        self._seeds[key] = (shared_s, solo_s)

    def _estimate(self, key: Hashable) -> tuple[float | None, float | None]:
        """(shared, solo) seconds: the median of each way's recent times, else the seed's."""
        seeds = self._seeds.get(key, (None, None))
        times = self._times.get(key)
        if times is None:
            return seeds
        shared, solo = (statistics.median(t) if t else s for t, s in zip(times, seeds))
        return shared, solo

    def _calibrated(self, key: Hashable) -> bool:
        return min(self._tries.get(key, (0, 0))) >= self.FIRST

    def pick(self, key: Hashable) -> bool:
        """Whether the next batch of `key` that runs alone goes solo."""
        shared, solo = self._estimate(key)
        if not self._calibrated(key):
            # both ways in turns, FIRST tries each; tries, not times, so that a way whose runs
            # fail (never timed) or end up beside another batch cannot hold the turns
            tries = self._tries.setdefault(key, [0, 0])
            if tries[0] != tries[1]:
                way = tries[1] < tries[0]
            else:
                way = solo is None or (shared is not None and solo < shared)
            tries[way] += 1
            return way
        if shared is None or solo is None:  # a way never timed: the other (shared if neither)
            return shared is None and solo is not None
        if key in self._again:
            return self._again.pop(key)
        faster = solo < shared
        count = self._count[key] = self._count.get(key, 0) + 1
        clear = max(shared, solo) > self.CLEAR * min(shared, solo)
        every = self.EXPLORE_CLEAR if clear else self.EXPLORE
        return not faster if count % every == 0 else faster

    def record(self, key: Hashable, solo: bool, seconds: float) -> None:
        """A batch of `key` that ran alone took `seconds`, solo or on the shared sessions."""
        times = self._times.get(key)
        if times is None:
            times = self._times[key] = (deque(maxlen=self.WINDOW), deque(maxlen=self.WINDOW))
        shared_s, solo_s = self._estimate(key)
        times[solo].append(seconds)
        if (
            self._calibrated(key)
            and shared_s is not None
            and solo_s is not None
            and solo != (solo_s < shared_s)
            and seconds < min(shared_s, solo_s)
        ):
            self._again[key] = solo  # a try of the other way beat the leader: another next

    def speedup(self, key: Hashable) -> float | None:
        """Shared over solo time for `key`, when both are known."""
        shared, solo = self._estimate(key)
        return shared / solo if shared is not None and solo else None
