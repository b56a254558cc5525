"""IO binding (LoadedGraph.run with io_binding on; the default for the CUDA provider): the same
answers as session.run, output buffers preallocated per batch size and reused, never handed out
(a later run cannot change an earlier answer), and bounded in number. It runs on the CPU provider
here; the GPU check (loadtests/gpu_check.py) times it on CUDA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.runtime import sessions
from service.runtime.kernels import GenericKernel
from service.runtime.sessions import CPU, CUDA, wants_io_binding
from service.tasks.registry import import_model
from tests.runtime.graphs import matmul_and_transpose_graph


@pytest.fixture
def spec(scratch_store, tmp_path: Path):
    return import_model(matmul_and_transpose_graph(tmp_path / "two.onnx"), "two-outputs")


def batch(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 8)).astype(np.float32)


def test_bound_runs_answer_as_plain_runs_and_keep_earlier_answers(spec) -> None:
    plain = GenericKernel(spec, "cpu", io_binding="off").graphs["model"]
    bound = GenericKernel(spec, "cpu", io_binding="on").graphs["model"]
    assert bound.io_binding and not plain.io_binding
    every = ["y", "t", "s", "m"]
    for rows in (3, 1, 3):  # scalars and fixed first dims come out as ORT makes them
        for a, b in zip(
            bound.run(every, {"x": batch(rows, 9)}), plain.run(every, {"x": batch(rows, 9)})
        ):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5)
    first = bound.run(["y", "t"], {"x": batch(3, 0)})
    np.testing.assert_allclose(first[0], plain.run(["y", "t"], {"x": batch(3, 0)})[0], rtol=1e-6)
    np.testing.assert_array_equal(first[1], batch(3, 0).T)
    kept = [array.copy() for array in first]
    for seed, rows in ((1, 3), (2, 1), (3, 3)):  # the same batch size again: the same buffer
        got = bound.run(["y", "t"], {"x": batch(rows, seed)})
        want = plain.run(["y", "t"], {"x": batch(rows, seed)})
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    for a, b in zip(first, kept):  # answers are copies, not the reused buffers
        np.testing.assert_array_equal(a, b)
    assert bound.run(None, {"x": batch(2, 4)})[1].shape == (8, 2)  # None: every output


def test_only_outputs_whose_shape_follows_from_the_batch_get_buffers_and_they_are_bounded(
    spec, monkeypatch
) -> None:
    monkeypatch.setattr(sessions, "OUTPUT_BUFFERS", 4)
    graph = GenericKernel(spec, "cpu", io_binding="on").graphs["model"]
    graph.run(["y", "t"], {"x": batch(3, 0)})
    buffers = graph._local.buffers
    assert list(buffers) == [("y", 3)]  # t's batch dim is not first: ORT allocates it
    graph.run(["s", "m"], {"x": batch(3, 0)})
    assert list(buffers) == [("y", 3)]  # a scalar, a fixed first dim: no buffers either
    reused = buffers[("y", 3)]
    graph.run(["y"], {"x": batch(3, 1)})
    assert graph._local.buffers[("y", 3)] is reused
    for rows in range(1, 10):
        graph.run(["y"], {"x": batch(rows, rows)})
    assert len(buffers) == 4 and ("y", 9) in buffers  # the least recently used went first


@pytest.mark.parametrize(
    ("setting", "provider", "bound"),
    [
        ("auto", CUDA, True),
        ("auto", CPU, False),
        ("on", CPU, True),
        ("off", CUDA, False),
    ],
)
def test_the_setting_turns_io_binding_on_for_cuda_by_default(setting, provider, bound) -> None:
    assert wants_io_binding(setting, provider) is bound
