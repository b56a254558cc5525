import numpy as np
import pytest

from service.processing.ranking import top_k


@pytest.mark.parametrize("k", [1, 3, 5, 999, 1000, 1200])
def test_top_k_matches_a_stable_full_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    # coarse values force many ties, which a stable sort breaks by index
    scores = rng.integers(0, 50, size=1000).astype(np.float32)
    expected = np.argsort(-scores, kind="stable")[:k].tolist()
    assert top_k(scores, k) == expected


def test_top_k_of_probabilities() -> None:
    scores = np.array([0.1, 0.5, 0.05, 0.35], np.float32)
    assert top_k(scores, 2) == [1, 3]
    assert top_k(scores, 0) == []
