"""Top-k of a score vector without sorting all of it (1000 ImageNet classes per request)."""

from __future__ import annotations

import numpy as np


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest scores, highest first; ties keep the lower index first.

    A partition is O(n) and only the survivors are sorted; it runs on the event loop per request.
    """
    count = scores.shape[0]
    k = max(0, min(k, count))
    if k == 0:
        return []
    if k == count:
        return [int(i) for i in np.argsort(-scores, kind="stable")]
    # everything tied with the k-th best competes on index (ascending), as in a stable sort
    threshold = np.partition(scores, count - k)[count - k]
    candidates = np.flatnonzero(scores >= threshold)
    order = np.argsort(-scores[candidates], kind="stable")[:k]
    return [int(i) for i in candidates[order]]
