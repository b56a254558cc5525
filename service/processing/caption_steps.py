"""Step-by-step caption decoding over a running set of sequences (continuous batching).

Sequences join between decoder steps (their images encoded in one batch) and leave as soon as
their caption is final; every `step` runs the decoder once over all running rows: a greedy
sequence is one row, a beam-k sequence k rows. Each sequence keeps the batch decoders' own
bookkeeping (captioning.greedy_advance, beam_advance, beam_settled, on its own rows), so its
caption and score are those of decoding its image with greedy_decode_scored /
beam_search_decode_scored.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.processing.captioning import (
    Session,
    beam_advance,
    beam_settled,
    decoder_step,
    encode_images,
    greedy_advance,
    tokens_to_text,
)


def width_of(key: Hashable) -> int:
    """Decoder rows of one sequence decoded with beam width `key` (1 or less = greedy)."""
    return max(1, int(key))  # type: ignore[call-overload]


@dataclass
class _Group:
    """The running sequences of one width k, in join order; sequence i owns rows i*k .. i*k+k-1
    of the row arrays (as the batch beam search lays out image x beam)."""

    width: int
    ids: np.ndarray  # [n] int64
    features: np.ndarray  # [n*k, D]
    h: np.ndarray  # [n*k, L, H]
    c: np.ndarray  # [n*k, L, H]
    tokens: np.ndarray  # [n*k] the previous token of every row
    scores: np.ndarray  # [n, k] float64
    finished: np.ndarray  # [n, k]
    sequences: np.ndarray  # [n, k, max_length] tokens so far, <pad> beyond `length`
    length: np.ndarray  # [n] steps taken

    @property
    def rows(self) -> int:
        return len(self.tokens)

    def keep(self, kept: np.ndarray) -> None:
        """Keep only the sequences where `kept` [n] is true."""
        rows = np.repeat(kept, self.width)
        self.ids, self.scores, self.finished = (
            self.ids[kept],
            self.scores[kept],
            self.finished[kept],
        )
        self.sequences, self.length = self.sequences[kept], self.length[kept]
        self.features, self.h, self.c = self.features[rows], self.h[rows], self.c[rows]
        self.tokens = self.tokens[rows]

    def extend(self, other: _Group) -> None:
        for name in ("ids", "features", "h", "c", "tokens", "scores", "finished", "sequences"):
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))
        self.length = np.concatenate([self.length, other.length])


class RunningCaptions:
    """The sequences being decoded together; not thread-safe (one caller at a time)."""

    def __init__(
        self,
        encoder: Session,
        decoder: Session,
        spec_extra: Mapping[str, Any],
        vocabulary: Sequence[str],
    ) -> None:
        self.encoder, self.decoder = encoder, decoder
        self.extra, self.vocabulary = spec_extra, vocabulary
        self.bos, self.eos, self.pad = (
            int(spec_extra[k]) for k in ("bos_index", "eos_index", "pad_index")
        )
        self.max_length = int(spec_extra["max_length"])
        self.groups: dict[int, _Group] = {}

    @property
    def rows(self) -> int:
        """Decoder rows the next step runs."""
        return sum(group.rows for group in self.groups.values())

    def join(self, key: Hashable, ids: Sequence[int], images: Sequence[np.ndarray]) -> None:
        """Encode `images` (one batch) as new sequences of beam width `key`; they run from the
        next step. All or nothing: if encoding fails, none joins."""
        if len(ids) != len(images):
            raise ValueError(f"{len(ids)} ids for {len(images)} images")
        if not images:
            return
        k, n = width_of(key), len(images)
        features, h, c = encode_images(self.encoder, np.stack(images))
        scores = np.zeros((n, k), dtype=np.float64)
        scores[:, 1:] = -np.inf  # every beam starts identical: keep one so the top k are distinct
        group = _Group(
            width=k,
            ids=np.asarray(ids, dtype=np.int64),
            features=np.repeat(features, k, axis=0),
            h=np.repeat(h, k, axis=0),
            c=np.repeat(c, k, axis=0),
            tokens=np.full(n * k, self.bos, dtype=np.int64),
            scores=scores,
            finished=np.zeros((n, k), dtype=bool),
            sequences=np.full((n, k, self.max_length), self.pad, dtype=np.int64),
            length=np.zeros(n, dtype=np.int64),
        )
        if k in self.groups:
            self.groups[k].extend(group)
        else:
            self.groups[k] = group

    def leave(self, ids: Sequence[int]) -> None:
        """Drop these sequences (their callers went away); unknown ids are ignored."""
        gone = np.asarray(list(ids), dtype=np.int64)
        for group in self.groups.values():
            group.keep(~np.isin(group.ids, gone))
        self._drop_empty()

    def step(self) -> list[tuple[int, tuple[str, float]]]:
        """One decoder call over every running row; the sequences whose caption became final,
        with (caption, score). They have left the running set."""
        groups = [group for group in self.groups.values() if group.rows]
        if not groups:
            return []
        log_probs, h, c = decoder_step(
            self.decoder,
            np.concatenate([g.tokens for g in groups]),
            np.concatenate([g.features for g in groups]),
            np.concatenate([g.h for g in groups]),
            np.concatenate([g.c for g in groups]),
        )
        done: list[tuple[int, tuple[str, float]]] = []
        start = 0
        for group in groups:
            rows = slice(start, start + group.rows)
            start += group.rows
            done += self._advance(group, log_probs[rows], h[rows], c[rows])
        if start != len(log_probs):
            raise RuntimeError(f"decoder answered {len(log_probs)} rows for {start}")
        self._drop_empty()
        return done

    def _advance(
        self, group: _Group, log_probs: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> list[tuple[int, tuple[str, float]]]:
        n, k = group.scores.shape
        position = (np.arange(n), slice(None), group.length)
        if k == 1:  # greedy, exactly as greedy_decode_scored
            tokens, finished, scores = greedy_advance(
                log_probs, group.finished[:, 0], group.scores[:, 0], self.pad, self.eos
            )
            group.h, group.c = h, c
            group.tokens, group.finished, group.scores = tokens, finished[:, None], scores[:, None]
            group.sequences[position] = tokens[:, None]
            final = finished
        else:  # beam search, exactly as beam_search_decode_scored, per image
            scores, finished, beam, token = beam_advance(
                log_probs, group.scores, group.finished, self.pad, self.eos
            )
            group.sequences = np.take_along_axis(group.sequences, beam[..., None], axis=1)
            group.sequences[position] = token
            rows = (np.arange(n)[:, None] * k + beam).reshape(-1)
            group.h, group.c = h[rows], c[rows]
            group.tokens, group.scores, group.finished = token.reshape(-1), scores, finished
            final = beam_settled(scores, finished)
        group.length += 1
        final = final | (group.length >= self.max_length)
        if not final.any():
            return []
        done = []
        for index in np.flatnonzero(final):
            choice = int(group.scores[index].argmax())
            text = tokens_to_text(group.sequences[index, choice], self.vocabulary, self.extra)
            done.append((int(group.ids[index]), (text, float(group.scores[index, choice]))))
        group.keep(~final)
        return done

    def _drop_empty(self) -> None:
        self.groups = {k: g for k, g in self.groups.items() if g.rows}
