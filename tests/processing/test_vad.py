"""The streaming voice-activity segmenter, on synthetic speech-like audio (no espeak, no models)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import webrtcvad

from service.processing.vad import FRAME_MS, Segment, Segmenter

RATE = 16000
FRAME = RATE * FRAME_MS // 1000
PAD = round(0.35 * RATE)  # Segmenter's default pad_s
SLACK = PAD + 3 * FRAME
"""How far a segment's edge may lie beyond its speech: the pad, and WebRTC's own hangover (it
calls a frame or two after speech voiced) with the frame grid."""
FORMANTS = ((700.0, 130.0), (1200.0, 150.0), (2600.0, 250.0))
"""(centre, bandwidth) in Hz: roughly an open vowel."""


def speech_like(seconds: float, f0: float = 130.0, level: float = 0.3) -> np.ndarray:
    """A voiced, vowel-like sound: the harmonics of a wobbling pitch shaped by three formant
    resonances, amplitude-modulated into four syllables a second, faded in and out."""
    t = np.arange(round(seconds * RATE)) / RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))) / RATE
    signal = np.zeros_like(t)
    for k in range(1, int(3800 / f0)):
        gain = sum(1 / (1 + ((k * f0 - centre) / width) ** 2) for centre, width in FORMANTS)
        signal += gain / np.sqrt(k) * np.sin(k * phase)
    syllables = 0.3 + 0.7 * np.abs(np.sin(np.pi * 4 * t))
    fade = np.clip(np.minimum(t, seconds - t) / 0.03, 0, 1)  # 30 ms on- and offsets
    signal *= syllables * fade
    return (level * signal / np.abs(signal).max()).astype(np.float32)


def pause(seconds: float, level: float = 0.002, seed: int = 0) -> np.ndarray:
    """Low background noise (about -54 dBFS)."""
    noise = np.random.default_rng(seed).normal(0.0, level, round(seconds * RATE))
    return noise.astype(np.float32)


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE), dtype=np.float32)


def compose(*parts: tuple[str, float]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Audio of ("speech" | "pause" | "zeros", seconds) parts; the speech parts' [start, end)
    in samples. Starts with digital zeros or speech in the tests: WebRTC's detector calls its
    first few non-silent frames voiced, whatever they hold (see test_low_noise_opens_no_segment)."""
    audio, bursts, position = [], [], 0
    for seed, (kind, seconds) in enumerate(parts):
        if kind == "speech":
            piece = speech_like(seconds, f0=110.0 + 20 * (seed % 5))
            bursts.append((position, position + len(piece)))
        else:
            piece = pause(seconds, seed=seed) if kind == "pause" else zeros(seconds)
        audio.append(piece)
        position += len(piece)
    return np.concatenate(audio), bursts


def segments_of(audio: np.ndarray, chunk: int | None = None, **options: float) -> list[Segment]:
    segmenter = Segmenter(RATE, **options)
    step = chunk or max(1, len(audio))
    out = []
    for start in range(0, len(audio), step):
        out.extend(segmenter.feed(audio[start : start + step]))
    return out + segmenter.finish()


def check_audio(segment: Segment, audio: np.ndarray) -> None:
    """A segment's audio is its span of the audio; where its pad would reach past the start or
    the end of the audio, digital silence stands in for it."""
    span = audio[segment.start : segment.end]
    extra = len(segment.audio) - len(span)
    assert 0 <= extra <= 2 * PAD
    at_start, at_end = segment.start == 0, segment.end == len(audio)
    if extra == 0:
        assert np.array_equal(segment.audio, span)
    elif at_start and not at_end:
        assert not segment.audio[:extra].any()
        assert np.array_equal(segment.audio[extra:], span)
    elif at_end and not at_start:
        assert not segment.audio[len(span) :].any()
        assert np.array_equal(segment.audio[: len(span)], span)
    else:
        assert at_start and at_end
        assert np.array_equal(np.trim_zeros(segment.audio), np.trim_zeros(span))


def spans(segments: list[Segment]) -> list[tuple[int, int, int]]:
    return [(s.index, s.start, s.end) for s in segments]


THREE_BURSTS = compose(
    ("zeros", 0.2),
    ("speech", 1.2),
    ("pause", 1.0),
    ("speech", 0.8),
    ("pause", 0.9),
    ("speech", 1.5),
    ("pause", 0.8),
)


def test_the_synthetic_sound_is_speech_to_webrtc() -> None:
    vad = webrtcvad.Vad(2)
    audio = np.concatenate([speech_like(1.0), pause(1.0), speech_like(1.0, f0=200.0)])
    pcm = (audio * 32767).astype("<i2")
    voiced = [
        vad.is_speech(pcm[i : i + FRAME].tobytes(), RATE)
        for i in range(0, len(pcm) - FRAME + 1, FRAME)
    ]
    third = len(voiced) // 3
    assert np.mean(voiced[:third]) > 0.9
    assert np.mean(voiced[third + 5 : 2 * third]) < 0.1
    assert np.mean(voiced[2 * third :]) > 0.9


def test_one_segment_per_burst_around_it() -> None:
    audio, bursts = THREE_BURSTS
    segments = segments_of(audio)
    assert len(segments) == len(bursts)
    for segment, (start, end) in zip(segments, bursts, strict=True):
        assert start - SLACK <= segment.start <= start
        assert end <= segment.end <= end + SLACK
        check_audio(segment, audio)
        assert segment.seconds(RATE) == (segment.start / RATE, segment.end / RATE)


@pytest.mark.parametrize("chunk", [160, 4801, 480, 33333])
def test_chunk_size_does_not_matter(chunk: int) -> None:
    audio, _ = THREE_BURSTS
    whole = segments_of(audio)
    chunked = segments_of(audio, chunk)
    assert spans(chunked) == spans(whole)
    for a, b in zip(chunked, whole, strict=True):
        assert np.array_equal(a.audio, b.audio)


def test_sample_by_sample_feeding_equals_one_feed() -> None:
    audio, bursts = compose(("zeros", 0.1), ("speech", 0.6), ("pause", 0.5), ("speech", 0.5))
    whole = segments_of(audio)
    assert len(whole) == len(bursts)
    one_by_one = segments_of(audio, 1)
    assert spans(one_by_one) == spans(whole)
    for a, b in zip(one_by_one, whole, strict=True):
        assert np.array_equal(a.audio, b.audio)


def test_segments_are_in_order_and_never_overlap() -> None:
    audio, _ = compose(
        ("speech", 0.7),
        ("pause", 0.45),  # just over min_silence_s: the pads of both sides compete for it
        ("speech", 0.9),
        ("pause", 0.4),
        ("speech", 7.0),  # cut at max_segment_s
        ("pause", 0.5),
        ("speech", 0.5),
        ("zeros", 0.5),
    )
    for chunk in (None, 1600):
        segments = segments_of(audio, chunk)
        assert len(segments) >= 5
        assert [s.index for s in segments] == list(range(len(segments)))
        for before, after in itertools.pairwise(segments):
            assert before.start < before.end <= after.start < after.end
        for segment in segments:
            check_audio(segment, audio)


@pytest.mark.parametrize(
    "audio",
    [zeros(3.0), np.zeros(0, dtype=np.float32), zeros(0.01)],
    ids=["digital-zeros", "empty", "shorter-than-a-frame"],
)
def test_silence_opens_no_segment(audio: np.ndarray) -> None:
    assert segments_of(audio) == []
    assert segments_of(audio, 160) == []


def test_low_noise_after_speech_opens_no_segment() -> None:
    audio, _ = compose(("speech", 1.0), ("pause", 4.0))
    segmenter = Segmenter(RATE)
    closed = segmenter.feed(audio[: 2 * RATE])
    assert len(closed) == 1
    assert segmenter.feed(audio[2 * RATE :]) == []
    assert segmenter.finish() == []


@pytest.mark.parametrize("level", [0.0003, 0.002, 0.01])
def test_low_noise_opens_no_segment(level: float) -> None:
    assert segments_of(pause(3.0, level=level)) == []


@pytest.mark.parametrize("where", ["after-zeros", "in-noise-after-speech"])
def test_a_click_opens_no_segment(where: str) -> None:
    click = np.zeros(RATE // 100, dtype=np.float32)
    click[::8] = 0.9
    click[4::8] = -0.9
    if where == "after-zeros":
        audio = np.concatenate([zeros(1.0), click, zeros(1.0)])
        expected = 0
    else:
        audio = np.concatenate([speech_like(1.0), pause(1.0), click, pause(1.0, seed=1)])
        expected = 1  # the speech
    segments = segments_of(audio)
    assert len(segments) == expected
    assert all(s.end <= RATE + SLACK for s in segments)


@pytest.mark.parametrize("max_segment_s", [2.0, 5.0])
def test_long_speech_is_cut_into_pieces_that_cover_it(max_segment_s: float) -> None:
    audio, [(start, end)] = compose(("zeros", 0.5), ("speech", 13.0), ("pause", 1.0))
    segments = segments_of(audio, 4000, max_segment_s=max_segment_s)
    assert len(segments) >= int(13.0 / max_segment_s) + 1
    assert all(s.end - s.start <= max_segment_s * RATE + PAD for s in segments)
    assert segments[0].start <= start and segments[-1].end >= end
    for before, after in itertools.pairwise(segments):
        assert before.end == after.start  # cut inside speech: contiguous, no gap, no overlap


def test_memory_is_bounded_by_the_longest_segment() -> None:
    max_segment_s = 5.0
    cycle, _ = compose(("speech", 2.0), ("pause", 1.0), ("speech", 7.0), ("pause", 1.0))
    chunk = RATE // 10
    segmenter = Segmenter(RATE, max_segment_s=max_segment_s)
    longest, count = 0, 0
    for _ in range(round(600 * RATE / len(cycle))):  # 10 minutes
        for start in range(0, len(cycle), chunk):
            count += len(segmenter.feed(cycle[start : start + chunk]))
            longest = max(longest, len(segmenter._buffer))
    count += len(segmenter.finish())
    assert segmenter.position >= 600 * RATE - len(cycle)
    assert count >= 3 * 600 // 11
    assert longest < max_segment_s * RATE + 4 * PAD


def test_finish_closes_the_open_segment() -> None:
    audio, [(start, _)] = compose(("zeros", 0.3), ("speech", 1.0))
    segmenter = Segmenter(RATE)
    assert segmenter.feed(audio) == []
    [segment] = segmenter.finish()
    assert segment.index == 0
    assert start - SLACK <= segment.start <= start
    assert segment.end == len(audio)  # the pad is cut short by the end of the audio
    check_audio(segment, audio)
    assert len(segment.audio) > segment.end - segment.start  # made up with digital silence
    assert segmenter.finish() == []


def test_speech_at_the_very_start_gets_its_pad_as_digital_silence() -> None:
    audio, _ = compose(("speech", 0.8), ("pause", 1.0))
    [segment] = segments_of(audio)
    assert segment.start == 0
    # the first frame cannot be told from the noise floor yet: voiced from the second at latest
    lead = len(segment.audio) - segment.end
    assert PAD - 2 * FRAME <= lead <= PAD
    assert not segment.audio[:lead].any()
    assert np.array_equal(segment.audio[lead:], audio[: segment.end])


def test_finish_without_speech_returns_nothing() -> None:
    segmenter = Segmenter(RATE)
    segmenter.feed(zeros(1.0))
    assert segmenter.finish() == []


@pytest.mark.parametrize("rate", [8000, 32000, 48000])
def test_other_supported_rates(rate: int) -> None:
    audio, _ = compose(("zeros", 0.2), ("speech", 1.0), ("pause", 1.0))
    at_rate = np.interp(
        np.arange(round(len(audio) * rate / RATE)) * RATE / rate, np.arange(len(audio)), audio
    ).astype(np.float32)
    segmenter = Segmenter(rate)
    assert len(segmenter.feed(at_rate) + segmenter.finish()) == 1


@pytest.mark.parametrize("rate", [0, 11025, 16001, 22050, 44100, 96000])
def test_unsupported_rate_is_refused(rate: int) -> None:
    with pytest.raises(ValueError, match=str(rate)):
        Segmenter(rate)
