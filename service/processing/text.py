"""Text preprocessing shared by training and serving: the same tokenizer on both sides."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np

TOKEN_PATTERN = r"[a-z0-9]+(?:'[a-z]+)?|[!?]"
PAD, UNK = "<pad>", "<unk>"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


def tokenize(text: str) -> list[str]:
    """Lowercase, strip accents, split into words (with contractions) and ! / ? marks."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _TOKEN_RE.findall(text)


def encode(tokens: Sequence[str], index: dict[str, int], max_tokens: int) -> list[int]:
    """Token ids (unknown words map to <unk>), truncated to max_tokens, at least one id."""
    unk = index[UNK]
    ids = [index.get(token, unk) for token in tokens[:max_tokens]]
    return ids or [unk]


def collate_padded(sequences: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pad id lists to the longest one: (tokens int64 [B, T], lengths int64 [B])."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    tokens = np.zeros((len(sequences), int(lengths.max(initial=1))), dtype=np.int64)
    for row, ids in enumerate(sequences):
        tokens[row, : len(ids)] = ids
    return tokens, lengths
