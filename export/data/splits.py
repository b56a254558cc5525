"""Seeded, stratified data splits."""

from __future__ import annotations

import numpy as np


def stratified_splits(
    labels: np.ndarray, fractions: tuple[float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test): per class, shuffled, `fractions` = (val, test)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_val = round(len(members) * fractions[0])
        n_test = round(len(members) * fractions[1])
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test
