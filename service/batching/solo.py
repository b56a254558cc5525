"""Whether a batch that runs alone goes to the solo sessions (Kernel.run_solo), by measurement."""

from __future__ import annotations

from collections.abc import Hashable


class SoloChoice:
    """Whether a batch that runs alone goes to the solo sessions, by measurement, per queue key.

    Both ways are timed whenever a batch of one runs alone (an exponential average each), and
    the faster one is taken; every EXPLORE-th such batch takes the other way, so the choice
    follows the machine (a node whose other cores become busy makes the solo sessions slower)
    at the cost of that one batch in EXPLORE. While one way leads clearly (by CLEAR: imagenet-cnn
    on 2 cores, solo 1.6-1.8x), the other is tried only every EXPLORE_CLEAR-th batch: each try
    costs a request the difference (2-3 ms there), and a lead that large takes more than a few
    batches to vanish. Until both ways have a time the two alternate; the kernel's warm-up gives
    first times (seed)."""

    EXPLORE = 16
    EXPLORE_CLEAR = 64
    CLEAR = 1.25
    WEIGHT = 0.2

    def __init__(self) -> None:
        self._times: dict[Hashable, list[float | None]] = {}  # key -> [shared, solo] seconds
        self._count: dict[Hashable, int] = {}

    def seed(self, key: Hashable, shared_s: float, solo_s: float) -> None:
        self._times[key] = [shared_s, solo_s]

    def pick(self, key: Hashable) -> bool:
        shared, solo = self._times.get(key, [None, None])
        count = self._count[key] = self._count.get(key, 0) + 1
        if shared is None or solo is None:
            return solo is None  # try whichever has no time yet
        faster = solo < shared
        clear = max(shared, solo) > self.CLEAR * min(shared, solo)
        every = self.EXPLORE_CLEAR if clear else self.EXPLORE
        return not faster if count % every == 0 else faster

    def record(self, key: Hashable, solo: bool, seconds: float) -> None:
        times = self._times.setdefault(key, [None, None])
        old = times[solo]
        times[solo] = seconds if old is None else old + self.WEIGHT * (seconds - old)

    def speedup(self, key: Hashable) -> float | None:
        """Shared over solo time for `key`, when both are known."""
        shared, solo = self._times.get(key, [None, None])
        return shared / solo if shared is not None and solo else None
