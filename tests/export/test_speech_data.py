"""The espeak-ng speech data builder: vocabulary, transcripts, synthesis, voice-disjoint splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from export.data import speech

needs_espeak = pytest.mark.skipif(shutil.which(speech.ESPEAK) is None, reason="espeak-ng missing")


def test_vocabulary() -> None:
    vocab = speech.VOCABULARY
    assert vocab[speech.BLANK] == "<blank>" and speech.BLANK == 0
    assert vocab[1] == " " and "'" in vocab
    assert set("abcdefghijklmnopqrstuvwxyz") <= set(vocab)
    assert len(vocab) == len(set(vocab)) == 29


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Four  TWO, seven!", "four two seven"),
        ("  volume\tup ", "volume up"),
        ("What\u2019s the weather?", "what's the weather"),
        ("call 42", "call four two"),
        ("", ""),
    ],
)
def test_normalize_transcript(raw: str, normal: str) -> None:
    assert speech.normalize_transcript(raw) == normal


def test_encode_transcript() -> None:
    ids = speech.encode_transcript("Hi, you'll")
    assert "".join(speech.VOCABULARY[i] for i in ids) == "hi you'll"
    assert speech.BLANK not in ids


def test_phrases_are_distinct_and_normalised() -> None:
    assert len(set(speech.PHRASES)) == len(speech.PHRASES) >= 30
    for phrase in speech.PHRASES + speech.DIGIT_WORDS:
        assert speech.normalize_transcript(phrase) == phrase


def test_splits_are_disjoint_by_voice() -> None:
    train, val, test = (set(speech.split_voices(s)) for s in ("train", "val", "test"))
    assert not train & val and not train & test and not val & test
    assert speech.TEST_ACCENT not in {a for a, _ in train | val}
    assert not {v for _, v in train} & set(speech.TEST_VARIANTS)
    specs = speech.make_specs("test", 40, seed=0)
    assert {s.accent for s in specs[::2]} == {speech.TEST_ACCENT}
    assert {(s.accent, s.variant) for s in specs} <= test
    train_specs = speech.make_specs("train", 40, seed=0)
    assert {(s.accent, s.variant) for s in train_specs if not s.variant_def} <= train
    assert {s.variant for s in train_specs if s.variant_def}.isdisjoint(speech.VARIANTS)


def test_generated_variants_only_in_training() -> None:
    variants = speech.random_variants(seed=0)
    assert len(variants) == speech.RANDOM_VARIANTS
    assert variants == speech.random_variants(seed=0)
    train = speech.make_specs("train", 100, seed=0)
    generated = [s for s in train if s.variant_def]
    assert 20 < len(generated) < 80
    assert all(variants[s.variant] == s.variant_def for s in generated)
    for split in ("val", "test"):
        assert not any(s.variant_def for s in speech.make_specs(split, 100, seed=0))


def test_specs_are_seeded() -> None:
    assert speech.make_specs("train", 20, seed=3) == speech.make_specs("train", 20, seed=3)
    assert speech.make_specs("train", 20, seed=3) != speech.make_specs("train", 20, seed=4)
    for spec in speech.make_specs("val", 50, seed=0):
        words = spec.text.split()
        assert spec.text in speech.PHRASES or (
            1 <= len(words) <= speech.MAX_DIGITS and set(words) <= set(speech.DIGIT_WORDS)
        )
        assert speech.SPEED_RANGE[0] <= spec.speed <= speech.SPEED_RANGE[1]
        assert speech.PITCH_RANGE[0] <= spec.pitch <= speech.PITCH_RANGE[1]


@needs_espeak
def test_synthesis_gives_16k_mono_float() -> None:
    spec = speech.make_specs("train", 1, seed=0)[0]
    clean = speech.synthesize(spec.text, spec.voice, spec.speed, spec.pitch)
    assert clean.dtype == np.int16 and clean.ndim == 1
    audio = speech.render(spec, clean)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.2 < audio.size / speech.SAMPLE_RATE < 6.0
    assert np.abs(audio).max() <= 1.0
    speech_samples = np.ceil(clean.size * 100 / round(100 * spec.stretch))
    expected = speech_samples + round(spec.lead_s * 16000) + round(spec.trail_s * 16000)
    assert audio.size == expected
    np.testing.assert_array_equal(audio, speech.render(spec, clean))  # seeded augmentation


def test_noise_only_utterances() -> None:
    train = speech.make_specs("train", 400, seed=0)
    silent = [s for s in train if not s.text]
    assert 0 < len(silent) < 40
    assert not any(not s.text for s in speech.make_specs("test", 200, seed=0))
    spec = next(s for s in silent if s.snr_db is not None)
    assert spec.snr_db is not None
    clean = speech.synthesize(spec.text, spec.voice)
    assert clean.size == 0
    audio = speech.render(spec, clean)
    assert audio.size == round(spec.lead_s * 16000) + round(spec.trail_s * 16000)
    expected_rms = 10 ** ((spec.peak_db - spec.snr_db) / 20)
    assert np.sqrt(np.mean(audio.astype(np.float64) ** 2)) == pytest.approx(expected_rms, rel=0.01)


@needs_espeak
def test_generated_variant_changes_the_voice(tmp_path: Path) -> None:
    name, text = next(iter(speech.random_variants(seed=0).items()))
    data_path = speech.data_dir_with_variants(tmp_path, {name: text})
    plain = speech.synthesize("four two", "en-us")
    varied = speech.synthesize("four two", f"en-us+{name}", data_path=data_path)
    assert varied.size > 0.2 * speech.SAMPLE_RATE
    assert not np.array_equal(plain, varied)


@needs_espeak
def test_synthesis_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = speech.make_specs("val", 2, seed=0)
    first = speech.synthesize_all(specs, tmp_path, workers=2)
    assert len(list(tmp_path.glob("speech-*.npz"))) == 1

    def fail(*_: object) -> np.ndarray:
        raise AssertionError("synthesised again despite the cache")

    monkeypatch.setattr(speech, "synthesize", fail)
    again = speech.synthesize_all(specs, tmp_path, workers=2)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("source", [*speech.OOD_SOURCES, speech.NEAR_MISS_SOURCE])
def test_out_of_domain_specs_are_outside_the_grammar_in_unseen_voices(source: str) -> None:
    specs = speech.make_ood_specs(source, 60, seed=0)
    assert specs == speech.make_ood_specs(source, 60, seed=0)  # seeded
    trained = set(speech.split_voices("train")) | set(speech.split_voices("val"))
    digit_words = set(speech.DIGIT_WORDS)
    for spec in specs:
        assert (spec.accent, spec.variant) not in trained and not spec.variant_def
        text = speech.normalize_transcript(spec.text)
        assert text and text not in speech.PHRASES
        assert not set(text.split()) <= digit_words
        assert speech.SPEED_RANGE[0] <= spec.speed <= speech.SPEED_RANGE[1]
    if source == "foreign":
        assert {s.accent for s in specs} <= set(speech.FOREIGN_SENTENCES)
        assert all(s.text in speech.FOREIGN_SENTENCES[s.accent] for s in specs)
        assert len({s.accent for s in specs}) >= 5
    elif source == "spelled":
        assert all(set(s.text.split()) <= set("abcdefghijklmnopqrstuvwxyz") for s in specs)
    elif source == "reviews":
        low, high = speech.REVIEW_WORDS
        assert all(low <= len(s.text.split()) <= high for s in specs)
        assert len({s.text for s in specs}) == len(specs)


def test_augmented_spec_keeps_every_split_unchanged() -> None:
    """make_specs draws through augmented_spec; the first val utterances stay the same
    whatever the count (the validation monitor is the first val_size of the larger set)."""
    assert speech.make_specs("val", 1000, seed=0)[:200] == speech.make_specs("val", 200, seed=0)
    spec = speech.make_specs("test", 1, seed=0)[0]  # as drawn before augmented_spec existed
    assert (spec.text, spec.voice, spec.speed, spec.pitch) == (
        "resume",
        "en-gb-scotland+whisper",
        193,
        35,
    )
    assert (spec.peak_db, spec.snr_db, spec.seed) == (-17.809, 26.539, 254136833)


@needs_espeak
def test_out_of_domain_set_is_rendered_like_the_test_split(tmp_path: Path) -> None:
    found = speech.build_ood_set("foreign", 3, seed=0, cache_dir=tmp_path)
    assert len(found.audio) == 3 and all(a.dtype == np.float32 for a in found.audio)
    assert all(0.3 < a.size / speech.SAMPLE_RATE < 8.0 for a in found.audio)
    assert found.transcripts == [speech.normalize_transcript(s.text) for s in found.specs]
