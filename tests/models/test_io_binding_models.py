"""Every built-in model answers the same through IO binding (io_binding on; the default for the
CUDA provider, here on the CPU one) as through session.run, on random inputs of its kind."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest

from service.store.specs import ModelSpec
from service.tasks.registry import make_kernel

MODELS = ("digits-cnn", "imagenet-cnn", "sentiment-lstm", "speech-ctc", "captioner")


def random_queues(spec: ModelSpec, rng: np.random.Generator) -> list[tuple[Hashable, list[Any]]]:
    """(queue key, items) for the model's task, with values that make every output move."""
    if spec.task == "image-classification":
        shape = [int(d) for d in spec.graphs["model"].inputs[0].shape[1:]]
        return [(0, [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3)])]
    if spec.task == "text-classification":
        words = len(spec.vocabulary or [])
        items = [rng.integers(2, words, n).tolist() for n in (5, 5, 12)]
        return [(1, items[:2]), (2, items[2:])]
    if spec.task == "speech-recognition":
        clips = [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (16_000, 11_000)]
        return [(0, clips)]
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2)]
    return [(1, images), (3, images[:1])]  # greedy and beam search


@pytest.mark.parametrize("name", MODELS)
def test_io_binding_answers_as_session_run(specs, name) -> None:
    spec = specs[name]
    plain = make_kernel(spec, "cpu", io_binding="off")
    bound = make_kernel(spec, "cpu", io_binding="on")
    assert all(g.io_binding for g in bound.graphs.values())
    for key, items in random_queues(spec, np.random.default_rng(7)):
        for a, b in zip(plain.run(key, items), bound.run(key, items), strict=True):
            want, got = plain.to_wire(a), bound.to_wire(b)
            if isinstance(want, list) and want and isinstance(want[0], str):
                assert got[0] == want[0]  # a transcript or a caption
                want, got = want[1:], got[1:]  # its score (and domain distance)
            elif name in ("digits-cnn", "imagenet-cnn"):  # [probabilities, domain distance]
                np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-7)
                want, got = want[1:], got[1:]
            assert [w is None for w in want] == [g is None for g in got]
            numbers = [(w, g) for w, g in zip(want, got, strict=True) if w is not None]
            for w, g in numbers:
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
