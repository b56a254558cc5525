"""Is a recording something the speech recogniser knows? An out-of-grammar score and a calibrated
confidence from its CTC posteriors (numpy only).

speech-ctc knows a closed grammar: its command phrases, digit strings of 1..max_digits digit
words, and silence (the empty transcript). Whatever it hears, greedy decoding returns some string
of characters, so speech outside the grammar comes back as confident nonsense. The grammar
compiles into one CTC graph (every in-grammar transcript with its blanks); a Viterbi pass over it
finds the in-grammar transcript nearest to the posteriors, and the score of an utterance's T
valid frames is

    score = -log P(nearest | x) / T  +  entropy_weight * mean entropy of the speech frames

in nats: the first term is the CTC negative log-likelihood of that transcript (the forward
algorithm: every alignment of it), per frame; the second is the posteriors' mean entropy over the
frames whose most likely symbol is not the blank. In-grammar speech the model hears clearly
scores near 0. The first term grows with whatever the model heard beyond the grammar (the
characters the nearest transcript has to give up) and with the model's own doubt; the second
catches speech the model maps onto an in-grammar transcript while spreading its belief over
several characters (measured: letters spelled out, "k e y", decode as "two one"). Measured on
speech-ctc (export/models/speech_ctc.py) this separates out-of-domain speech better than the
gap between the nearest transcript and the free best path, which ignores that doubt.

Cost per utterance: the Viterbi pass is one vectorised step per frame over the grammar's S states
(speech-ctc: S = 1,207) and keeps a T x S float64 score table for the trace-back (at the
default `max_frames` of 500, 4.8 MB; the service sends at most 5 s, 167 frames, 1.6 MB); the
forward pass is T steps over the 2L + 1 states of one transcript (L <= MAX_LABELS). T is checked
against `max_frames`, and the grammar against MAX_GRAMMAR_STATES, before anything is allocated.

Length: the grammar compiler, the two dynamic programmes over it (Viterbi, forward) and the
calibration fitted on their score are one method; split, each part would only make sense with
the others open beside it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NEG = -1e30
"""log(0) stand-in: finite, so sums of unreachable scores never make NaN."""
MAX_FRAMES = 500
"""Default bound on the frames of one utterance (15 s at speech-ctc's 33.3 frames per second;
the service sends at most 5 s, 167 frames, per item)."""
MAX_GRAMMAR_STATES = 20_000
"""Largest compiled grammar accepted (a bound on the per-frame work and the score table)."""
LOG_PROB_FLOOR = -600.0
"""Log-probs are clipped here (e^-600 ~ 1e-261): the forward pass never underflows a frame."""
MAX_LABELS = 500
"""Longest label sequence `ctc_log_likelihood` accepts."""
ENTROPY_WEIGHT = 0.5
"""Weight of the speech frames' mean entropy in the score (chosen on speech-ctc's data)."""


@dataclass(frozen=True, eq=False)
class Grammar:
    """A closed grammar compiled into a CTC graph over a model's vocabulary.

    Every transcript is a chain of states laid out as CTC lays out a label sequence (a blank
    before each label, a trailing blank after the last), so within a chain a state is entered
    from itself, from the state before it (`step`) or, for a label unlike the previous one, from
    two states before (`skip`). Edges between chains (a digit word after the space after the
    previous digit word) are `cross` edges. Paths begin at `start` states and end at `final`
    states; every alignment of an in-grammar transcript is exactly one path."""

    symbols: np.ndarray
    """[S] the vocabulary index each state emits."""
    is_label: np.ndarray
    """[S] bool: the state emits a character (not the blank)."""
    step: np.ndarray
    """[S] 0 where the state may be entered from the state before it, else NEG."""
    skip: np.ndarray
    """[S] 0 where it may be entered from two states before, else NEG."""
    cross: tuple[tuple[np.ndarray, np.ndarray], ...]
    """States entered from other chains, grouped by how many ways in: (dst [X], src [X, D]),
    src [X] where there is one way in."""
    start: np.ndarray
    """[S] bool."""
    final: np.ndarray
    """[S] bool."""
    preds: tuple[tuple[int, ...], ...]
    """Every state's predecessors (itself first), for the trace-back."""
    vocabulary: tuple[str, ...]
    blank: int

    @property
    def states(self) -> int:
        return int(self.symbols.size)


def compile_grammar(
    vocabulary: Sequence[str],
    phrases: Sequence[str],
    digit_words: Sequence[str],
    max_digits: int,
    blank: int = 0,
    allow_empty: bool = True,
) -> Grammar:
    """The CTC graph of: each phrase; 1..max_digits digit words joined by single spaces; and,
    with allow_empty, the empty transcript (silence)."""
    index = {ch: i for i, ch in enumerate(vocabulary) if i != blank}
    if digit_words and max_digits > 1 and " " not in index:
        raise ValueError("digit strings need a space in the vocabulary")
    size = sum(4 * len(p) + 1 for p in phrases) + max_digits * (
        sum(2 * len(w) + 1 for w in digit_words) + 1
    )
    if size > MAX_GRAMMAR_STATES:  # an upper bound, checked before building anything
        raise ValueError(f"the grammar has ~{size} states; the limit is {MAX_GRAMMAR_STATES}")
    symbols: list[int] = []
    step: list[bool] = []
    skip: list[bool] = []
    starts: list[int] = []
    finals: list[int] = []
    cross: dict[int, list[int]] = {}

    def chain(text: str) -> tuple[int, int]:
        """A transcript's states (with a trailing blank): its first state and its last label."""
        first = len(symbols)
        for pos, ch in enumerate(text):
            if ch not in index:
                raise ValueError(f"grammar character {ch!r} is not in the vocabulary")
            symbols.extend((blank, index[ch]))
            step.extend((pos > 0, True))
            skip.extend((False, pos > 0 and text[pos - 1] != ch))
        last = len(symbols) - 1
        symbols.append(blank)
        step.append(True)
        skip.append(False)
        return first, last

    for phrase in phrases:
        if phrase:
            first, last = chain(phrase)
            starts.extend((first, first + 1))
            finals.extend((last, last + 1))
    space = -1
    for copy in range(max_digits if digit_words else 0):
        ends: list[int] = []
        for word in digit_words:
            first, last = chain(word)
            if copy == 0:
                starts.extend((first, first + 1))
            else:  # its leading blank and first letter follow the space
                cross[first] = cross[first + 1] = [space]
            ends.extend((last, last + 1))
        finals.extend(ends)
        if copy < max_digits - 1:
            space = len(symbols)
            symbols.append(index[" "])
            step.append(False)
            skip.append(False)
            cross[space] = ends
    if allow_empty:  # silence: one blank state
        starts.append(len(symbols))
        finals.append(len(symbols))
        symbols.append(blank)
        step.append(False)
        skip.append(False)
    states = len(symbols)
    groups = []
    for width in sorted({len(v) for v in cross.values()}):
        dst = sorted(s for s, v in cross.items() if len(v) == width)
        src = np.asarray([cross[s] for s in dst], dtype=np.int64)
        if width == 1:
            src = src[:, 0]  # one way in: a plain gather per frame, no max
        groups.append((np.asarray(dst, dtype=np.int64), src))
    preds = tuple(
        (s, *((s - 1,) if step[s] else ()), *((s - 2,) if skip[s] else ()), *cross.get(s, ()))
        for s in range(states)
    )
    start = np.zeros(states, dtype=bool)
    start[starts] = True
    final = np.zeros(states, dtype=bool)
    final[finals] = True
    sym = np.asarray(symbols, dtype=np.int64)
    return Grammar(
        symbols=sym,
        is_label=sym != blank,
        step=np.where(step, 0.0, NEG),
        skip=np.where(skip, 0.0, NEG),
        cross=tuple(groups),
        start=start,
        final=final,
        preds=preds,
        vocabulary=tuple(vocabulary),
        blank=blank,
    )


def grammar_from_spec(vocabulary: Sequence[str], extra: Mapping[str, Any]) -> Grammar:
    """The grammar a speech model's spec describes (extra: phrases, digit_words, max_digits,
    blank_index)."""
    return compile_grammar(
        vocabulary,
        list(extra.get("phrases", [])),
        list(extra.get("digit_words", [])),
        int(extra.get("max_digits", 5)),
        blank=int(extra.get("blank_index", 0)),
    )


def _checked(log_probs: np.ndarray, vocab_size: int | None, max_frames: int) -> np.ndarray:
    """[T, C] float64 log-probs, floored; refuses a wrong shape or too many frames before
    copying anything."""
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 2 or (vocab_size is not None and log_probs.shape[1] != vocab_size):
        raise ValueError(f"log_probs must be [frames, {vocab_size or 'C'}], got {log_probs.shape}")
    if log_probs.shape[0] > max_frames:
        raise ValueError(f"{log_probs.shape[0]} frames; the limit is {max_frames}")
    return np.maximum(log_probs.astype(np.float64), LOG_PROB_FLOOR)


def ctc_log_likelihood(
    log_probs: np.ndarray, labels: Sequence[int], blank: int = 0, max_frames: int = MAX_FRAMES
) -> float:
    """log P(labels | x) under CTC from [T, C] log-probs: the forward algorithm, vectorised over
    the 2L + 1 states, in probability space rescaled every frame (the logs of the scales add up
    to the log-likelihood). -inf when the labels cannot fit in T frames."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; the limit is {MAX_LABELS}")
    lp = _checked(log_probs, None, max_frames)
    frames = lp.shape[0]
    if frames == 0:
        return 0.0 if not labels else -math.inf
    ext = np.full(2 * len(labels) + 1, blank, dtype=np.int64)
    ext[1::2] = labels
    skip = np.zeros(ext.size)  # 1 where s may come from s - 2: a label unlike the one before
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    emit = np.exp(lp[:, ext])  # [T, 2L + 1]
    alpha = np.zeros(ext.size + 2)  # two leading zeros: the shifted reads need no copies
    alpha[2:4] = emit[0, :2]
    total = 0.0
    for t in range(1, frames):
        scale = alpha.sum()
        if scale == 0.0:
            return -math.inf
        total += math.log(scale)
        now = alpha[2:] + alpha[1:-1] + skip * alpha[:-2]
        alpha[2:] = now * (emit[t] / scale)
    end = alpha[-1] + (alpha[-2] if ext.size > 1 else 0.0)
    return total + math.log(end) if end > 0.0 else -math.inf


def nearest_in_grammar(
    log_probs: np.ndarray, grammar: Grammar, max_frames: int = MAX_FRAMES
) -> tuple[list[int], float]:
    """The labels of the in-grammar transcript on the best in-grammar path through [T, C]
    log-probs, and that path's log-probability (Viterbi over the compiled grammar)."""
    lp = _checked(log_probs, len(grammar.vocabulary), max_frames)
    frames, states = lp.shape[0], grammar.states
    if frames == 0:
        return [], 0.0
    emit = lp[:, grammar.symbols]  # [T, S]
    scores = np.empty((frames, states))
    scores[0] = np.where(grammar.start, emit[0], NEG)
    from_step = np.full(states, NEG)
    from_skip = np.full(states, NEG)
    for t in range(1, frames):
        prev, now = scores[t - 1], scores[t]
        np.add(prev[:-1], grammar.step[1:], out=from_step[1:])
        np.add(prev[:-2], grammar.skip[2:], out=from_skip[2:])
        np.maximum(prev, from_step, out=now)
        np.maximum(now, from_skip, out=now)
        for dst, src in grammar.cross:
            entered = prev[src] if src.ndim == 1 else prev[src].max(axis=1)
            now[dst] = np.maximum(now[dst], entered)
        now += emit[t]
    last = np.where(grammar.final, scores[-1], NEG)
    state = int(last.argmax())
    best = float(last[state])
    if best <= NEG / 2:
        return [], -math.inf  # no in-grammar transcript fits in so few frames
    path = [state]
    for t in range(frames - 1, 0, -1):
        row = scores[t - 1]
        state = max(grammar.preds[state], key=lambda p: row[p])
        path.append(state)
    path.reverse()
    labels = [
        int(grammar.symbols[s])
        for i, s in enumerate(path)
        if grammar.is_label[s] and (i == 0 or path[i - 1] != s)
    ]
    return labels, best


def speech_entropy(log_probs: np.ndarray, blank: int = 0) -> float:
    """Mean entropy (nats) of the posteriors over the frames whose most likely symbol is not the
    blank; 0 when there are none."""
    lp = np.asarray(log_probs, dtype=np.float64)
    speech = lp.argmax(axis=1) != blank
    if not speech.any():
        return 0.0
    chosen = lp[speech]
    return float(-(np.exp(chosen) * chosen).sum(axis=1).mean())


@dataclass(frozen=True)
class DomainScore:
    """How far one utterance's posteriors are from the grammar."""

    score: float
    """-log P(nearest | x) / frames + entropy_weight * speech entropy: ~0 in the grammar."""
    nearest: str
    """The in-grammar transcript nearest to the posteriors ("" for silence)."""
    nearest_log_likelihood: float
    """log P(nearest | x), CTC forward."""
    speech_entropy: float
    frames: int


def domain_score(
    log_probs: np.ndarray,
    grammar: Grammar,
    entropy_weight: float = ENTROPY_WEIGHT,
    max_frames: int = MAX_FRAMES,
) -> DomainScore:
    """The out-of-grammar score of one utterance: log_probs [T, C] of its valid frames."""
    lp = _checked(log_probs, len(grammar.vocabulary), max_frames)
    frames = lp.shape[0]
    if frames == 0:
        return DomainScore(0.0, "", 0.0, 0.0, 0)
    labels, _ = nearest_in_grammar(lp, grammar, max_frames)
    likelihood = ctc_log_likelihood(lp, labels, grammar.blank, max_frames)
    entropy = speech_entropy(lp, grammar.blank)
    nll = -likelihood / frames if math.isfinite(likelihood) else -LOG_PROB_FLOOR
    text = "".join(grammar.vocabulary[i] for i in labels)
    return DomainScore(nll + entropy_weight * entropy, text, likelihood, entropy, frames)


@dataclass(frozen=True)
class Calibration:
    """P(transcript exactly right) = sigmoid(a * logit(confidence) + b - c * score), with
    `confidence` the greedy decoder's (exp of the mean best-path log-prob) and `score` the
    domain score; a, c >= 0."""

    a: float
    b: float
    c: float = 0.0

    @classmethod
    def from_spec(cls, params: Mapping[str, Any]) -> Calibration:
        if params.get("method") != "platt":
            raise ValueError(f"unknown calibration method {params.get('method')!r}")
        return cls(float(params["a"]), float(params["b"]), float(params.get("c", 0.0)))

    def to_spec(self) -> dict[str, Any]:
        return {"method": "platt", "a": self.a, "b": self.b, "c": self.c}


CONFIDENCE_CLIP = 1e-6
"""Confidences are clipped to [CONFIDENCE_CLIP, 1 - CONFIDENCE_CLIP] before their logit."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, CONFIDENCE_CLIP, 1.0 - CONFIDENCE_CLIP)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def calibrated_confidence(
    confidence: float | np.ndarray, score: float | np.ndarray, calibration: Calibration
) -> np.ndarray:
    """P(transcript exactly right) in [0, 1] from the raw greedy confidence and the domain score:
    non-decreasing in the confidence, non-increasing in the score (a, c >= 0)."""
    z = calibration.a * _logit(np.asarray(confidence, dtype=np.float64)) + calibration.b
    return _sigmoid(z - calibration.c * np.asarray(score, dtype=np.float64))


def fit_platt(
    confidence: np.ndarray,
    score: np.ndarray,
    correct: np.ndarray,
    use_score: bool = True,
    ridge: float = 1e-3,
    iterations: int = 100,
) -> Calibration:
    """Platt scaling: logistic regression of correctness on logit(confidence) (and the domain
    score) by Newton steps, with Platt's smoothed targets and a small ridge, a and c held >= 0."""
    columns = [_logit(np.asarray(confidence, dtype=np.float64)), np.ones(len(correct))]
    if use_score:
        columns.append(-np.asarray(score, dtype=np.float64))
    x = np.stack(columns, axis=1)
    y = np.asarray(correct, dtype=np.float64)
    positives, negatives = y.sum(), y.size - y.sum()
    y = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (negatives + 2))
    penalty = ridge * np.eye(x.shape[1])
    penalty[1, 1] = 0.0  # no shrinkage of the intercept
    w = np.zeros(x.shape[1])
    w[0] = 1.0
    for _ in range(iterations):
        p = _sigmoid(x @ w)
        gradient = x.T @ (p - y) + penalty @ w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-9 * np.eye(x.shape[1])
        update = np.linalg.solve(hessian, gradient)
        w = w - update
        w[0] = max(w[0], 0.0)
        if use_score:
            w[2] = max(w[2], 0.0)
        if np.abs(update).max() < 1e-10:
            break
    return Calibration(float(w[0]), float(w[1]), float(w[2]) if use_score else 0.0)


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 10
) -> float:
    """ECE over `bins` equal-width confidence bins: |accuracy - mean confidence| per bin,
    weighted by the bin's share of the items."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            total += chosen.sum() * abs(correct[chosen].mean() - confidence[chosen].mean())
    return float(total / confidence.size)


@dataclass(frozen=True)
class Assessment:
    """One utterance judged against the model's grammar."""

    in_domain: bool
    score: float
    threshold: float
    nearest: str
    """The nearest in-grammar transcript (what the speaker most likely meant, if in domain)."""
    confidence: float
    """Calibrated P(the greedy transcript is exactly right); the raw one when not calibrated."""


class SpeechDomain:
    """A speech model's grammar, rejection threshold and confidence calibration, from its spec
    (vocabulary, extra["domain"], extra["confidence_calibration"])."""

    def __init__(
        self,
        grammar: Grammar,
        threshold: float,
        entropy_weight: float = ENTROPY_WEIGHT,
        calibration: Calibration | None = None,
        max_frames: int = MAX_FRAMES,
    ) -> None:
        self.grammar = grammar
        self.threshold = threshold
        self.entropy_weight = entropy_weight
        self.calibration = calibration
        self.max_frames = max_frames

    @classmethod
    def from_spec(
        cls, vocabulary: Sequence[str], extra: Mapping[str, Any], max_frames: int = MAX_FRAMES
    ) -> SpeechDomain | None:
        """None when the spec has no extra["domain"] (a model built before it, or imported)."""
        domain = extra.get("domain")
        if not isinstance(domain, Mapping) or not isinstance(domain.get("threshold"), int | float):
            return None
        if domain.get("score") == "confidence" or not extra.get("phrases"):
            return None  # an import's --domain-threshold judges the confidence alone
        params = extra.get("confidence_calibration")
        return cls(
            grammar_from_spec(vocabulary, extra),
            float(domain["threshold"]),
            float(domain.get("entropy_weight", ENTROPY_WEIGHT)),
            Calibration.from_spec(params) if isinstance(params, Mapping) else None,
            max_frames,
        )

    def assess(self, log_probs: np.ndarray, raw_confidence: float) -> Assessment:
        """Judge one utterance: log_probs [T, C] of its valid frames and the greedy decoder's
        confidence. Raises ValueError for a wrong shape or more than max_frames frames."""
        scored = domain_score(log_probs, self.grammar, self.entropy_weight, self.max_frames)
        confidence = raw_confidence
        if self.calibration is not None:
            confidence = float(
                calibrated_confidence(raw_confidence, scored.score, self.calibration)
            )
        return Assessment(
            scored.score <= self.threshold, scored.score, self.threshold, scored.nearest, confidence
        )
