"""Out-of-grammar scores and calibrated confidence from CTC posteriors (speech_domain.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from service.processing import speech_domain as sd

TINY_VOCAB = ["<blank>", " ", "a", "b"]
SPEECH_VOCAB = ["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz", "'"]
PHRASES = ["play", "stop", "volume up", "turn on the lights", "no"]
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def collapse(path: tuple[int, ...], blank: int = 0) -> tuple[int, ...]:
    merged = [s for i, s in enumerate(path) if i == 0 or path[i - 1] != s]
    return tuple(s for s in merged if s != blank)


def random_log_probs(rng: np.random.Generator, frames: int, classes: int) -> np.ndarray:
    logits = rng.standard_normal((frames, classes)) * 2.0
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def encode(text: str, vocab: list[str] = SPEECH_VOCAB) -> list[int]:
    return [vocab.index(ch) for ch in text]


def peaked(labels: list[int], classes: int, frames_per_label: int = 3) -> np.ndarray:
    """Confident posteriors for labels: each label for a few frames, blanks between."""
    path = [0, 0]
    for label in labels:
        path += [label] * frames_per_label + [0]
    path += [0]
    log_probs = np.full((len(path), classes), math.log(0.01 / (classes - 1)))
    log_probs[np.arange(len(path)), path] = math.log(0.99)
    return log_probs


@pytest.mark.parametrize("labels", [[2, 3], [2, 2], [3], [], [2, 1, 2]])
def test_ctc_forward_equals_brute_force_over_every_alignment(labels: list[int]) -> None:
    rng = np.random.default_rng(len(labels))
    log_probs = random_log_probs(rng, 5, 4)
    total = 0.0
    for path in itertools.product(range(4), repeat=5):
        if collapse(path) == tuple(labels):
            total += math.exp(sum(log_probs[t, s] for t, s in enumerate(path)))
    assert sd.ctc_log_likelihood(log_probs, labels) == pytest.approx(math.log(total), abs=1e-9)


def test_ctc_forward_is_minus_infinity_when_labels_cannot_fit() -> None:
    log_probs = random_log_probs(np.random.default_rng(0), 2, 4)
    assert sd.ctc_log_likelihood(log_probs, [2, 2]) == -math.inf  # needs a blank between: 3
    assert sd.ctc_log_likelihood(log_probs[:0], []) == 0.0


def test_viterbi_finds_the_best_in_grammar_path_of_a_brute_force_search() -> None:
    grammar = sd.compile_grammar(TINY_VOCAB, ["ab", "b"], ["a"], max_digits=2)
    allowed = {(), (2, 3), (3,), (2,), (2, 1, 2)}  # "", ab, b, a, "a a"
    rng = np.random.default_rng(3)
    for _ in range(5):
        log_probs = random_log_probs(rng, 6, 4)
        best, best_labels = -math.inf, ()
        for path in itertools.product(range(4), repeat=6):
            if collapse(path) in allowed:
                score = sum(log_probs[t, s] for t, s in enumerate(path))
                if score > best:
                    best, best_labels = score, collapse(path)
        labels, score = sd.nearest_in_grammar(log_probs, grammar)
        assert score == pytest.approx(best, abs=1e-9)
        assert tuple(labels) == best_labels


def test_grammar_without_silence_refuses_too_few_frames() -> None:
    grammar = sd.compile_grammar(TINY_VOCAB, ["ab"], [], max_digits=0, allow_empty=False)
    labels, score = sd.nearest_in_grammar(random_log_probs(np.random.default_rng(0), 1, 4), grammar)
    assert labels == [] and score == -math.inf


def test_in_grammar_posteriors_score_below_out_of_grammar_ones() -> None:
    grammar = sd.compile_grammar(SPEECH_VOCAB, PHRASES, DIGITS, max_digits=5)
    inside = {
        text: sd.domain_score(peaked(encode(text), len(SPEECH_VOCAB)), grammar)
        for text in ["play", "turn on the lights", "four two nine", "no"]
    }
    outside = {
        text: sd.domain_score(peaked(encode(text), len(SPEECH_VOCAB)), grammar)
        for text in ["hello how are you today", "plxy", "four two nine six one three", "yes"]
    }
    for text, scored in inside.items():
        assert scored.nearest == text
    assert outside["plxy"].nearest == "play"  # the nearest in-grammar transcript
    assert outside["four two nine six one three"].nearest.count(" ") <= 4  # at most 5 digits
    assert max(s.score for s in inside.values()) < min(s.score for s in outside.values())
    silence = np.zeros((20, len(SPEECH_VOCAB))) + math.log(1e-6)
    silence[:, 0] = math.log(1 - 1e-6 * (len(SPEECH_VOCAB) - 1))
    quiet = sd.domain_score(silence, grammar)
    assert quiet.nearest == "" and quiet.score < 1e-3


def test_speech_entropy_counts_only_frames_that_emit_a_character() -> None:
    log_probs = np.log(np.array([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4], [1 - 2e-9, 1e-9, 1e-9]]))
    expected = -(0.2 * math.log(0.2) + 2 * 0.4 * math.log(0.4))
    assert sd.speech_entropy(log_probs) == pytest.approx(expected)
    assert sd.speech_entropy(log_probs[[0, 2]]) == 0.0


def test_sizes_are_refused_before_anything_is_allocated() -> None:
    grammar = sd.compile_grammar(SPEECH_VOCAB, PHRASES, DIGITS, max_digits=5)
    huge = np.broadcast_to(np.zeros(len(SPEECH_VOCAB), dtype=np.float32), (10**9, 29))  # a view
    with pytest.raises(ValueError, match="frames; the limit is 500"):
        sd.domain_score(huge, grammar)
    with pytest.raises(ValueError, match="frames; the limit is 500"):
        sd.ctc_log_likelihood(huge, [2])
    with pytest.raises(ValueError, match="log_probs must be"):
        sd.domain_score(np.zeros((10, 5)), grammar)
    with pytest.raises(ValueError, match="labels; the limit"):
        sd.ctc_log_likelihood(np.zeros((10, 29)), [2] * (sd.MAX_LABELS + 1))
    with pytest.raises(ValueError, match="states; the limit"):
        sd.compile_grammar(SPEECH_VOCAB, ["a" * sd.MAX_GRAMMAR_STATES], [], max_digits=0)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        sd.compile_grammar(SPEECH_VOCAB, ["caf\u00e9"], [], max_digits=0)
    assert sd.domain_score(np.zeros((0, 29)), grammar).frames == 0


def test_calibration_is_monotonic_and_maps_into_unit_interval() -> None:
    calibration = sd.Calibration(a=1.4, b=0.3, c=17.0)
    confidences = np.linspace(0.0, 1.0, 101)
    mapped = sd.calibrated_confidence(confidences, 0.05, calibration)
    assert np.all(np.diff(mapped) >= 0)
    assert np.all((mapped >= 0) & (mapped <= 1))
    scores = np.linspace(0.0, 50.0, 101)
    by_score = sd.calibrated_confidence(0.97, scores, calibration)
    assert np.all(np.diff(by_score) <= 0) and np.all((by_score >= 0) & (by_score <= 1))
    extreme = sd.calibrated_confidence(np.array([0.0, 1.0]), np.array([1e6, 0.0]), calibration)
    assert np.all(np.isfinite(extreme)) and extreme[0] == pytest.approx(0.0, abs=1e-12)
    spec = {"method": "platt", "a": 1.4, "b": 0.3, "c": 17.0}
    assert sd.Calibration.from_spec(spec) == calibration
    assert sd.Calibration.from_spec(calibration.to_spec()) == calibration
    with pytest.raises(ValueError):
        sd.Calibration.from_spec({"method": "isotonic"})


def test_platt_fit_corrects_overconfidence_and_keeps_monotone_signs() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.6, 1.0, size=4000)
    score = rng.exponential(0.05, size=4000)
    truth = 1 / (1 + np.exp(-(2.0 * np.log(confidence / (1 - confidence)) - 1.0 - 10 * score)))
    correct = rng.random(4000) < truth
    fitted = sd.fit_platt(confidence, score, correct)
    assert fitted.a >= 0 and fitted.c >= 0
    assert fitted.a == pytest.approx(2.0, rel=0.2) and fitted.c == pytest.approx(10, rel=0.3)
    calibrated = sd.calibrated_confidence(confidence, score, fitted)
    before = sd.expected_calibration_error(confidence, correct)
    after = sd.expected_calibration_error(calibrated, correct)
    assert after < before / 3 and after < 0.03
    # A score that says nothing gets no weight below zero (c is held >= 0).
    noise = sd.fit_platt(confidence, -score, correct)
    assert noise.c >= 0


def test_expected_calibration_error() -> None:
    assert sd.expected_calibration_error(np.array([0.95, 0.95]), np.array([1, 0])) == (
        pytest.approx(0.45)
    )
    assert sd.expected_calibration_error(np.array([0.05, 0.95]), np.array([0, 1])) == (
        pytest.approx(0.05)
    )
    assert sd.expected_calibration_error(np.array([]), np.array([])) == 0.0
    assert sd.expected_calibration_error(np.array([1.0]), np.array([1])) == 0.0  # top bin


def test_speech_domain_from_spec_assesses_one_utterance() -> None:
    extra = {"blank_index": 0, "phrases": PHRASES, "digit_words": DIGITS, "max_digits": 5}
    assert sd.SpeechDomain.from_spec(SPEECH_VOCAB, extra) is None  # built before the check
    extra |= {
        "domain": {"threshold": 0.2, "entropy_weight": 0.5},
        "confidence_calibration": {"method": "platt", "a": 1.4, "b": 0.3, "c": 17.0},
    }
    checker = sd.SpeechDomain.from_spec(SPEECH_VOCAB, extra)
    assert checker is not None
    known = checker.assess(peaked(encode("volume up"), 29), 0.97)
    assert known.in_domain and known.nearest == "volume up" and known.threshold == 0.2
    unknown = checker.assess(peaked(encode("hello how are you today"), 29), 0.97)
    assert not unknown.in_domain and unknown.score > 0.2
    assert unknown.confidence < 0.01 < known.confidence
    with pytest.raises(ValueError):
        checker.assess(np.zeros((sd.MAX_FRAMES + 1, 29)), 0.9)
