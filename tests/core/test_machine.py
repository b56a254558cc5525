"""The cores this process may use: affinity capped by a container's CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.core import machine


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cgroup_v2_quota_in_cores(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    cpu_max = write(tmp_path / "cpu.max", "150000 100000\n")
    assert machine.cgroup_cpu_limit(cpu_max, missing, missing) == 1.5
    unlimited = write(tmp_path / "max", "max 100000\n")
    assert machine.cgroup_cpu_limit(unlimited, missing, missing) is None


def test_cgroup_v1_quota_and_no_cgroup_at_all(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    quota = write(tmp_path / "quota", "200000\n")
    period = write(tmp_path / "period", "100000\n")
    assert machine.cgroup_cpu_limit(missing, quota, period) == 2.0
    no_quota = write(tmp_path / "no_quota", "-1\n")
    assert machine.cgroup_cpu_limit(missing, no_quota, period) is None
    assert machine.cgroup_cpu_limit(missing, missing, missing) is None
    garbage = write(tmp_path / "garbage", "lots\n")
    assert machine.cgroup_cpu_limit(garbage, missing, missing) is None


@pytest.mark.parametrize("limit, expected", [(None, 8), (1.5, 2), (0.2, 1), (64.0, 8)])
def test_usable_cores_rounds_the_quota_up_within_the_affinity(
    monkeypatch, limit: float | None, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(machine, "cgroup_cpu_limit", lambda: limit)
    assert machine.usable_cores() == expected


def test_the_startup_heap_is_frozen_out_of_the_collectors_reach() -> None:
    import gc

    from service.core.machine import freeze_startup_heap

    try:
        kept = [[index] for index in range(10_000)]  # alive at startup: frozen
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= len(kept)
        assert all(obj is not kept for obj in gc.get_objects())  # no collection scans it
    finally:
        gc.unfreeze()


def test_what_was_frozen_and_dropped_is_collected_after_a_refreeze() -> None:
    import gc
    import weakref

    from service.core.machine import freeze_startup_heap, refreeze_heap

    class Model:
        pass

    try:
        model = Model()
        model.me = model  # type: ignore[attr-defined]  (a reference cycle)
        gone = weakref.ref(model)
        freeze_startup_heap()
        del model  # unloaded
        gc.collect()
        assert gone() is not None  # frozen: no collection reaches the cycle
        refreeze_heap()
        assert gone() is None and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
