"""Load shapes for loadtests/locustfile.py (DEEPSERVE_LOAD_SHAPE=step|spike); every one ends.

Sizes scale with DEEPSERVE_SHAPE_USERS (peak users, default 64) and DEEPSERVE_SHAPE_SECONDS
(total run time, default 60).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

PEAK = int(os.environ.get("DEEPSERVE_SHAPE_USERS", "64"))
SECONDS = float(os.environ.get("DEEPSERVE_SHAPE_SECONDS", "60"))


class StepLoadShape(LoadTestShape):
    """Users rise in 8 equal steps to PEAK: where throughput stops rising is saturation."""

    steps = 8

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= SECONDS:
            return None
        step = min(self.steps, int(elapsed // (SECONDS / self.steps)) + 1)
        users = max(1, round(PEAK * step / self.steps))
        return users, float(users)  # spawn each step at once


class SpikeLoadShape(LoadTestShape):
    """A steady eighth of PEAK, a spike to PEAK for the middle fifth of the run, then back:
    shows shedding (fast 503 / RESOURCE_EXHAUSTED) and recovery."""

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= SECONDS:
            return None
        base = max(1, PEAK // 8)
        spiking = 0.4 * SECONDS <= elapsed < 0.6 * SECONDS
        return (PEAK, float(PEAK)) if spiking else (base, float(PEAK))
