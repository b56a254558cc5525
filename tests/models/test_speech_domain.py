"""speech-ctc's out-of-domain check and calibrated confidence, recomputed through onnxruntime on
the sample stored with the model (in-domain test voices; out-of-domain speech in unseen voices)."""

from __future__ import annotations

import numpy as np
import pytest

from service.processing.speech import ctc_greedy_transcripts
from service.processing.speech_domain import Assessment, SpeechDomain

IN_DOMAIN_MAX_FLAGGED = 0.05
OUT_OF_DOMAIN_MIN_FLAGGED = 0.90
NEAR_MISS = "near_miss"
"""Reported apart by the build, not part of the bar."""


def assess_all(sessions, checker: SpeechDomain, vocabulary, waveform, lengths) -> list[Assessment]:
    out = []
    for start in range(0, len(lengths), 16):
        rows = slice(start, start + 16)
        width = int(lengths[rows].max())
        log_probs, frames = sessions("speech-ctc").run(
            ["log_probs", "frame_lengths"],
            {"waveform": waveform[rows, :width], "lengths": lengths[rows]},
        )
        for row, n in enumerate(frames):
            valid = log_probs[row, : int(n)]
            greedy = ctc_greedy_transcripts(valid[None], np.array([n]), vocabulary)[0]
            out.append(checker.assess(valid, greedy.confidence))
    return out


@pytest.fixture(scope="module")
def judged(specs, sessions):
    spec = specs["speech-ctc"]
    held = spec.heldout()
    checker = SpeechDomain.from_spec(spec.vocabulary or [], spec.extra)
    assert checker is not None, "speech-ctc was built without extra['domain']: rebuild it"
    ood_waveform = held["ood_waveform"].astype(np.float32) / 32768.0  # stored as 16-bit PCM
    inside = assess_all(sessions, checker, spec.vocabulary, held["waveform"], held["lengths"])
    outside = assess_all(sessions, checker, spec.vocabulary, ood_waveform, held["ood_lengths"])
    return spec, held, checker, inside, outside


def test_out_of_domain_speech_is_flagged_and_in_domain_speech_is_not(judged) -> None:
    spec, held, checker, inside, outside = judged
    assert len(inside) >= 150 and len(outside) >= 80
    assert checker.threshold == spec.extra["domain"]["threshold"]
    in_flagged = np.array([not a.in_domain for a in inside])
    sources = held["ood_source"]
    in_bar = sources != NEAR_MISS
    assert len(set(sources[in_bar].tolist())) >= 3
    out_flagged = np.array([not a.in_domain for a in outside])
    assert in_flagged.mean() <= IN_DOMAIN_MAX_FLAGGED, in_flagged.mean()
    assert out_flagged[in_bar].mean() >= OUT_OF_DOMAIN_MIN_FLAGGED, [
        (t, a.nearest, round(a.score, 3))
        for t, a, keep in zip(held["ood_text"], outside, in_bar, strict=True)
        if keep and a.in_domain
    ]
    # The nearest in-grammar transcript of in-domain speech is mostly what was said.
    nearest_right = np.mean([a.nearest == t for a, t in zip(inside, held["transcript"])])
    assert nearest_right >= 0.9


def test_onnxruntime_scores_agree_with_the_build(judged) -> None:
    _, held, checker, inside, outside = judged
    for assessed, stored in ((inside, held["domain_score"]), (outside, held["ood_score"])):
        scores = np.array([a.score for a in assessed])
        np.testing.assert_allclose(scores, stored, atol=1e-3)
        clear = np.abs(stored - checker.threshold) > 1e-3  # verdicts right at the line may flip
        assert ((scores > checker.threshold) == (stored > checker.threshold))[clear].all()


def test_stored_numbers_meet_the_bars_and_agree(specs) -> None:
    spec = specs["speech-ctc"]
    metrics, domain = spec.metrics, spec.extra["domain"]
    measured = domain["measured"]
    assert measured["in_domain_count"] >= 200 and measured["out_of_domain_count"] >= 200
    assert measured["in_domain_flagged"] == metrics["in_domain_flagged"] <= IN_DOMAIN_MAX_FLAGGED
    assert measured["out_of_domain_flagged"] == metrics["ood_flagged"]
    assert metrics["ood_flagged"] >= OUT_OF_DOMAIN_MIN_FLAGGED
    per_source = measured["per_source"]
    bar = {name: s for name, s in per_source.items() if s.get("in_bar")}
    assert len(bar) >= 3 and NEAR_MISS not in bar
    assert sum(s["count"] for s in bar.values()) == measured["out_of_domain_count"]
    pooled = sum(s["flagged"] * s["count"] for s in bar.values()) / sum(
        s["count"] for s in bar.values()
    )
    assert pooled == pytest.approx(metrics["ood_flagged"], abs=1e-4)
    for name, source in bar.items():
        assert metrics[f"ood_flagged_{name}"] == source["flagged"]
    assert per_source["test"]["count"] == measured["in_domain_count"] == metrics["utterances"]
    assert per_source["validation"]["flagged"] <= 0.011  # a 99-99.5 % quantile of its scores


def test_calibrated_confidence_tracks_correctness(judged) -> None:
    spec, _, _, inside, outside = judged
    metrics = spec.metrics
    assert metrics["ece_calibrated"] < metrics["ece_raw"]
    assert spec.extra["confidence_calibration"]["method"] == "platt"
    # The complaint: nonsense for unknown speech came with confidence ~0.85.
    assert np.mean([a.confidence for a in outside]) < 0.2 < metrics["ood_mean_confidence"]
    confidences = np.array([a.confidence for a in inside])
    assert np.all((confidences >= 0) & (confidences <= 1))
    assert np.mean(confidences) > 0.8
