"""Solo runs (Kernel.run_solo): a request alone on a session with more intra-op threads gives the
same answers as the shared sessions, and warm-up keeps those sessions only where they pay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime.kernels import GenericKernel
from service.tasks.registry import import_model
from tests.runtime.graphs import matmul_graph


@pytest.fixture
def spec(scratch_store, tmp_path: Path):
    return import_model(matmul_graph(tmp_path / "matmul.onnx"), "matmul")


def rows(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(count)
    return [{"x": rng.standard_normal(256).astype(np.float32)} for _ in range(count)]


def test_solo_sessions_answer_as_the_shared_ones(spec) -> None:
    kernel = GenericKernel(spec, "cpu", intra_op_threads=1, solo_threads=2)
    assert kernel.solo and kernel.solo_threads == 2
    items = rows(3)
    key = GenericKernel.bucket(items[0])
    shared = kernel.run(key, items)
    solo = kernel.run_solo(key, items)
    for a, b in zip(shared, solo):
        np.testing.assert_allclose(a["y"], b["y"], rtol=1e-5, atol=1e-6)
    assert kernel.graphs is kernel._graphs  # run_solo leaves this thread on the shared ones


def test_no_solo_sessions_without_more_threads_than_the_shared_ones(spec) -> None:
    assert not GenericKernel(spec, "cpu", intra_op_threads=1, solo_threads=1).solo
    assert not GenericKernel(spec, "cpu", intra_op_threads=2, solo_threads=2).solo
    kernel = GenericKernel(spec, "cpu", intra_op_threads=1, solo_threads=1)
    kernel.warmup()
    assert kernel.solo_speedup is None  # nothing measured
    items = rows(1)
    assert kernel.run_solo(GenericKernel.bucket(items[0]), items)[0]["y"].shape == (256,)


def test_warmup_times_one_item_both_ways_and_keeps_the_solo_sessions(spec) -> None:
    kernel = GenericKernel(spec, "cpu", intra_op_threads=1, solo_threads=2)
    kernel.warmup()
    assert kernel.solo_times is not None
    key, shared, solo = kernel.solo_times
    assert key == GenericKernel.bucket(rows(1)[0]) and shared > 0 and solo > 0
    assert kernel.solo and kernel.solo_speedup == pytest.approx(shared / solo)
