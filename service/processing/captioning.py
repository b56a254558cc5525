"""Caption decoding over two ONNX graphs (torch-free): an image encoder and a one-step decoder.

The encoder maps uint8 NHWC images to `features`, `h0`, `c0`; the decoder maps the previous
token, the features and the LSTM state to next-token `log_probs` and the new state. The loop
runs here so greedy search and beam search share the same graphs. Both decode a whole batch of
images at once (the beam search runs batch x beam rows through the decoder per step). One step's
bookkeeping (greedy_advance, beam_advance, beam_settled) is shared with the step-by-step decoding
of service/processing/caption_steps.py, so both give the same captions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

ENCODER_INPUT = "image"
ENCODER_OUTPUTS = ["features", "h0", "c0"]
DECODER_OUTPUTS = ["log_probs", "h_out", "c_out"]


class Session(Protocol):
    """What the decoders need from an onnxruntime.InferenceSession."""

    def run(
        self, output_names: list[str], input_feed: dict[str, np.ndarray], /
    ) -> Sequence[Any]: ...


def resize_images(images: Sequence[np.ndarray], size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Stack RGB images of any size into uint8 [N, H, W, 3], bilinear-resizing where needed."""
    out = np.empty((len(images), size[0], size[1], 3), dtype=np.uint8)
    for row, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        array = array[..., :3].astype(np.uint8, copy=False)
        if array.shape[:2] != size:
            picture = Image.fromarray(array).resize((size[1], size[0]), Image.Resampling.BILINEAR)
            array = np.asarray(picture)
        out[row] = array
    return out


def tokens_to_text(
    ids: Sequence[int] | np.ndarray, vocabulary: Sequence[str], extra: Mapping[str, Any]
) -> str:
    """Words up to the first <eos>, special tokens dropped."""
    eos = int(extra["eos_index"])
    special = {int(extra["pad_index"]), int(extra["bos_index"]), eos}
    words = []
    for token in ids:
        if int(token) == eos:
            break
        if int(token) not in special:
            words.append(vocabulary[int(token)])
    return " ".join(words)


def encode_images(encoder: Session, images: np.ndarray) -> tuple[np.ndarray, ...]:
    """Run the encoder: (features [N, D], h0 [N, L, H], c0 [N, L, H])."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    features, h, c = encoder.run(ENCODER_OUTPUTS, {ENCODER_INPUT: np.ascontiguousarray(images)})
    return features, h, c


def decoder_step(
    decoder: Session, tokens: np.ndarray, features: np.ndarray, h: np.ndarray, c: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One decoder call over every row: (log_probs [R, V], h_out, c_out)."""
    feed = {"tokens": tokens.astype(np.int64), "features": features, "h": h, "c": c}
    log_probs, h_out, c_out = decoder.run(DECODER_OUTPUTS, feed)
    return np.asarray(log_probs, dtype=np.float32), h_out, c_out


def greedy_advance(
    log_probs: np.ndarray, finished: np.ndarray, scores: np.ndarray, pad: int, eos: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One greedy step for n rows: (chosen tokens, finished, scores); a finished row takes <pad>
    at no cost."""
    best = log_probs.argmax(axis=1)
    scores = scores + np.where(finished, 0.0, log_probs[np.arange(len(best)), best])
    tokens = np.where(finished, pad, best).astype(np.int64)
    return tokens, finished | (tokens == eos), scores


def beam_advance(
    log_probs: np.ndarray, scores: np.ndarray, finished: np.ndarray, pad: int, eos: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One beam step for n images x k beams (log_probs rows image-major, [n * k, V]):
    (scores, finished, parent beam, token), each [n, k]; the caller reorders its per-beam state
    (sequences, LSTM rows) by the parent beam."""
    n, k = scores.shape
    vocab_size = log_probs.shape[1]
    step_scores = log_probs.reshape(n, k, vocab_size).astype(np.float64)
    # A finished beam may only continue with <pad>, at no cost, so its score is kept.
    done_row = np.full(vocab_size, -np.inf)
    done_row[pad] = 0.0
    step_scores = np.where(finished[..., None], done_row, step_scores)
    candidates = (scores[..., None] + step_scores).reshape(n, k * vocab_size)
    best = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    beam, token = best // vocab_size, best % vocab_size
    scores = np.take_along_axis(candidates, best, axis=1)
    finished = np.take_along_axis(finished, beam, axis=1) | (token == eos)
    return scores, finished, beam, token


def beam_settled(scores: np.ndarray, finished: np.ndarray) -> np.ndarray:
    """Per image: whether its answer can no longer change. Log-probs are <= 0, so an open beam
    can only lose score: once the best finished beam is ahead of all open beams, it has won."""
    best_done = np.where(finished, scores, -np.inf).max(axis=1)
    best_open = np.where(finished, -np.inf, scores).max(axis=1)
    return best_done >= best_open


def greedy_decode(
    encoder: Session,
    decoder: Session,
    images_uint8_nhwc: np.ndarray,
    spec_extra: Mapping[str, Any],
    vocabulary: Sequence[str],
) -> list[str]:
    """Most likely token at every step, until <eos> or max_length tokens, for every image."""
    scored = greedy_decode_scored(encoder, decoder, images_uint8_nhwc, spec_extra, vocabulary)
    return [text for text, _ in scored]


def greedy_decode_scored(
    encoder: Session,
    decoder: Session,
    images_uint8_nhwc: np.ndarray,
    spec_extra: Mapping[str, Any],
    vocabulary: Sequence[str],
) -> list[tuple[str, float]]:
    """Greedy captions with their score: the sum of the chosen tokens' log-probabilities."""
    images = np.asarray(images_uint8_nhwc)
    if len(images) == 0:
        return []
    features, h, c = encode_images(encoder, images)
    bos, eos, pad = (int(spec_extra[k]) for k in ("bos_index", "eos_index", "pad_index"))
    n, max_length = len(images), int(spec_extra["max_length"])
    out = np.full((n, max_length), pad, dtype=np.int64)
    tokens = np.full(n, bos, dtype=np.int64)
    finished = np.zeros(n, dtype=bool)
    scores = np.zeros(n, dtype=np.float64)
    for step in range(max_length):
        log_probs, h, c = decoder_step(decoder, tokens, features, h, c)
        tokens, finished, scores = greedy_advance(log_probs, finished, scores, pad, eos)
        out[:, step] = tokens
        if finished.all():
            break
    return [
        (tokens_to_text(row, vocabulary, spec_extra), float(score))
        for row, score in zip(out, scores)
    ]


def beam_search_decode(
    encoder: Session,
    decoder: Session,
    images_uint8_nhwc: np.ndarray,
    spec_extra: Mapping[str, Any],
    vocabulary: Sequence[str],
    beam_size: int = 3,
) -> list[str]:
    """Beam search (sum of token log-probs) per image; all images and beams in one batch."""
    scored = beam_search_decode_scored(
        encoder, decoder, images_uint8_nhwc, spec_extra, vocabulary, beam_size
    )
    return [text for text, _ in scored]


def beam_search_decode_scored(
    encoder: Session,
    decoder: Session,
    images_uint8_nhwc: np.ndarray,
    spec_extra: Mapping[str, Any],
    vocabulary: Sequence[str],
    beam_size: int = 3,
) -> list[tuple[str, float]]:
    """Beam search captions with the winning beam's score (sum of token log-probs)."""
    if beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    images = np.asarray(images_uint8_nhwc)
    if len(images) == 0:
        return []
    features, h, c = encode_images(encoder, images)
    bos, eos, pad = (int(spec_extra[k]) for k in ("bos_index", "eos_index", "pad_index"))
    n, k, max_length = len(images), beam_size, int(spec_extra["max_length"])
    features, h, c = (np.repeat(a, k, axis=0) for a in (features, h, c))  # row = image * k + beam
    scores = np.full((n, k), -np.inf, dtype=np.float64)
    scores[:, 0] = 0.0  # every beam starts identical: keep one so the top k are distinct
    sequences = np.zeros((n, k, 0), dtype=np.int64)
    finished = np.zeros((n, k), dtype=bool)
    tokens = np.full(n * k, bos, dtype=np.int64)
    for _ in range(max_length):
        log_probs, h, c = decoder_step(decoder, tokens, features, h, c)
        scores, finished, beam, token = beam_advance(log_probs, scores, finished, pad, eos)
        sequences = np.concatenate(
            [np.take_along_axis(sequences, beam[..., None], axis=1), token[..., None]], axis=2
        )
        rows = (np.arange(n)[:, None] * k + beam).reshape(-1)
        h, c = h[rows], c[rows]
        tokens = token.reshape(-1)
        if np.all(beam_settled(scores, finished)):  # every image's answer is final
            break
    choice = scores.argmax(axis=1)
    winners = sequences[np.arange(n), choice]
    return [
        (tokens_to_text(row, vocabulary, spec_extra), float(score))
        for row, score in zip(winners, scores[np.arange(n), choice])
    ]
