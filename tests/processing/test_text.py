from __future__ import annotations

import numpy as np

from service.processing.text import PAD, UNK, collate_padded, encode, tokenize


def test_tokenize_lowercases_strips_accents_and_keeps_contractions() -> None:
    assert tokenize("It's a CAFÉ-style mess!") == ["it's", "a", "cafe", "style", "mess", "!"]
    assert tokenize("   ") == []


def test_encode_maps_unknown_words_truncates_and_never_returns_empty() -> None:
    index = {PAD: 0, UNK: 1, "good": 2}
    assert encode(["good", "zzz"], index, max_tokens=8) == [2, 1]
    assert encode(["good"] * 10, index, max_tokens=3) == [2, 2, 2]
    assert encode([], index, max_tokens=3) == [1]


def test_collate_pads_to_the_longest_item_only() -> None:
    tokens, lengths = collate_padded([[5, 6, 7], [8]])
    assert tokens.dtype == np.int64 and lengths.dtype == np.int64
    assert tokens.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1]
