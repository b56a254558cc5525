"""Streaming speech helpers: block resampling (Resampler, to_model_rate on long audio) and
incremental WAV parsing (WavStream), each compared to its whole-signal counterpart."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service.processing.speech import (
    LONG_RESAMPLE_S,
    SAMPLE_RATE,
    Resampler,
    WavStream,
    decode_wav,
    resample,
    to_model_rate,
)

EDGE = 100
"""Samples at either end where block and whole-signal resampling may differ (the whole
signal's FFT treats it as periodic; the blocks pad it with silence)."""


def band_limited(
    seconds: float, rate: int, seed: int = 0, samples: int | None = None
) -> np.ndarray:
    """Random tones below 4 kHz (every rate's Nyquist), faded in and out over 10 ms: the
    whole-signal FFT then sees no jump where it wraps around, so it is a fair reference."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate) if samples is None else samples) / rate
    signal = sum(
        rng.uniform(0.02, 0.1) * np.sin(2 * np.pi * f * t + rng.uniform(0, 6))
        for f in rng.uniform(60, 3900, 24)
    )
    fade = np.clip(np.minimum(t, t[-1] - t) / 0.01, 0, 1) if len(t) else t
    return np.asarray(signal * (0.5 - 0.5 * np.cos(np.pi * fade)), dtype=np.float32)


def streamed(resampler: Resampler, audio: np.ndarray, chunk: int) -> np.ndarray:
    pieces = [resampler.feed(audio[i : i + chunk]) for i in range(0, len(audio), chunk)]
    return np.concatenate([*pieces, resampler.finish()])


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("chunk", [1, 777, 16000, None], ids=["1", "777", "16000", "whole"])
def test_block_resampling_matches_whole_signal(rate: int, chunk: int | None) -> None:
    audio = band_limited(1.3, rate)  # 20800 samples at 16 kHz from each rate: no rounding
    expected = resample(audio, rate)
    out = streamed(Resampler(rate), audio, chunk or len(audio))
    assert out.dtype == np.float32
    assert len(out) == len(expected)
    assert np.abs(out - expected)[EDGE:-EDGE].max() < 2e-3


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_block_resampling_length_equals_whole_signal_for_any_length(rate: int) -> None:
    # values are compared above, at lengths whose output length is exact: FFT resampling to a
    # rounded length stretches time by up to half an output sample, differently whole or in blocks
    for samples in [0, 3, 7, rate - 1, rate, rate + 1, rate + 7, 2 * rate + 1000, 3 * rate + 3]:
        audio = band_limited(0, rate, samples=samples)
        for chunk in (4096, rate):
            out = streamed(Resampler(rate), audio, chunk)
            assert len(out) == len(resample(audio, rate)), (samples, chunk)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_block_resampling_of_short_and_empty_audio(rate: int) -> None:
    assert len(Resampler(rate).finish()) == 0
    short = band_limited(0.05, rate)
    assert len(streamed(Resampler(rate), short, 100)) == len(resample(short, rate))


def test_resampler_is_reusable_after_finish() -> None:
    resampler = Resampler(8000)
    audio = band_limited(1.2, 8000)
    first = streamed(resampler, audio, 1000)
    again = streamed(resampler, audio, 1000)
    np.testing.assert_array_equal(first, again)


def test_resampler_identity_at_the_model_rate() -> None:
    audio = band_limited(1.1, SAMPLE_RATE)
    resampler = Resampler(SAMPLE_RATE)
    out = [resampler.feed(audio[i : i + 777]) for i in range(0, len(audio), 777)]
    np.testing.assert_array_equal(np.concatenate(out), audio)
    assert len(resampler.finish()) == 0


@pytest.mark.parametrize("rate", [48000, 8000])
def test_long_audio_is_resampled_in_blocks_close_to_whole(rate: int) -> None:
    audio = band_limited(LONG_RESAMPLE_S + 1.5, rate, seed=3)
    audio[rate : rate + 10] = 1.5  # clipped, as short audio is
    out = to_model_rate(audio, rate)
    expected = np.clip(resample(audio, rate), -1.0, 1.0)
    assert out.dtype == np.float32
    assert len(out) == len(expected)
    assert np.abs(out).max() <= 1.0
    assert np.abs(out - expected)[EDGE:-EDGE].max() < 2e-3


def test_long_audio_at_the_model_rate_is_only_clipped() -> None:
    audio = band_limited(LONG_RESAMPLE_S + 0.5, SAMPLE_RATE)
    audio[5] = -3.0
    out = to_model_rate(audio, SAMPLE_RATE)
    np.testing.assert_array_equal(out, np.clip(audio, -1.0, 1.0))


# --- WavStream -----------------------------------------------------------------------------


def chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def fmt_body(tag: int, channels: int, rate: int, bits: int, extensible: bool = False) -> bytes:
    block = channels * bits // 8
    plain = struct.pack(
        "<HHIIHH", 0xFFFE if extensible else tag, channels, rate, rate * block, block, bits
    )
    if not extensible:
        return plain
    subformat = struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return plain + struct.pack("<HHI", 22, bits, (1 << channels) - 1) + subformat


def wav_file(
    pcm: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    extensible: bool = False,
    before_data: bytes = b"",
) -> bytes:
    chunks = chunk(b"fmt ", fmt_body(tag, channels, rate, bits, extensible))
    chunks += before_data + chunk(b"data", pcm)
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def int_pcm(values: np.ndarray, bits: int) -> bytes:
    """Integers in [-2**(bits-1), 2**(bits-1)) as little-endian PCM (8 bit: unsigned)."""
    if bits == 8:
        return (values + 128).astype(np.uint8).tobytes()
    if bits == 24:
        as_bytes = values.astype("<i4").view(np.uint8).reshape(-1, 4)
        return as_bytes[:, :3].tobytes()
    return values.astype(f"<i{bits // 8}").tobytes()


def random_ints(count: int, bits: int, seed: int = 0) -> np.ndarray:
    top = 1 << (bits - 1)
    return np.random.default_rng(seed).integers(-top, top, count, dtype=np.int64)


def sample_wavs() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    floats = rng.uniform(-1, 1, 2 * 1201).astype("<f4")
    info = chunk(b"LIST", b"INFOISFT\x05\x00\x00\x00deep\x00")  # odd size: a pad byte follows
    return {
        "int8": wav_file(int_pcm(random_ints(1200, 8), 8), bits=8, rate=8000),
        "int16": wav_file(int_pcm(random_ints(1601, 16), 16)),
        "int24": wav_file(int_pcm(random_ints(1203, 24), 24), bits=24, rate=44100),
        "int32": wav_file(int_pcm(random_ints(999, 32), 32), bits=32, rate=48000),
        "float32-stereo": wav_file(floats.tobytes(), tag=3, channels=2, bits=32),
        "int16-stereo": wav_file(int_pcm(random_ints(2 * 801, 16), 16), channels=2),
        "int24-3ch": wav_file(int_pcm(random_ints(3 * 401, 24), 24), channels=3, bits=24),
        "extensible-int16": wav_file(int_pcm(random_ints(1000, 16), 16), extensible=True),
        "extensible-float": wav_file(floats.tobytes(), tag=3, bits=32, extensible=True),
        "list-before-data": wav_file(int_pcm(random_ints(700, 16), 16), before_data=info),
    }


WAVS = sample_wavs()


def fed(stream: WavStream, data: bytes, sizes: list[int]) -> np.ndarray:
    out, position, turn = [], 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        out.append(stream.feed(data[position : position + size]))
        position += size
        turn += 1
    assert all(piece.dtype == np.float32 for piece in out)
    return np.concatenate(out)


@pytest.mark.parametrize("name", list(WAVS))
def test_wav_fed_byte_by_byte_equals_decode_wav(name: str) -> None:
    audio, rate = decode_wav(WAVS[name])
    stream = WavStream()
    out = fed(stream, WAVS[name], [1])
    assert stream.rate == rate
    np.testing.assert_array_equal(out, audio)


@pytest.mark.parametrize("name", list(WAVS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wav_fed_in_random_chunks_equals_decode_wav(name: str, seed: int) -> None:
    sizes = [int(s) for s in np.random.default_rng(seed).integers(1, 700, 50)]
    audio, _ = decode_wav(WAVS[name])
    np.testing.assert_array_equal(fed(WavStream(), WAVS[name], sizes), audio)
    np.testing.assert_array_equal(WavStream().feed(WAVS[name]), audio)


def test_wav_stream_decodes_values() -> None:
    stereo = np.array([[1000, 3000], [-2000, 2000], [3000, -3000]])
    data = wav_file(int_pcm(stereo.reshape(-1), 16), channels=2, rate=8000)
    stream = WavStream()
    np.testing.assert_allclose(stream.feed(data), [2000 / 32768, 0.0, 0.0], atol=1e-7)
    assert stream.rate == 8000
    ints24 = np.array([-(1 << 23), 0, (1 << 23) - 1])
    out = WavStream().feed(wav_file(int_pcm(ints24, 24), bits=24))
    np.testing.assert_allclose(out, [-1.0, 0.0, 1.0], atol=1e-6)


def test_wav_stream_rate_is_unknown_until_the_data_chunk() -> None:
    data = WAVS["int16"]
    stream = WavStream()
    header = data.index(b"data") + 8
    assert len(stream.feed(data[: header - 1])) == 0
    assert stream.rate == 0
    assert len(stream.feed(data[header - 1 : header])) == 0
    assert stream.rate == 16000
    assert len(stream.feed(data[header : header + 3])) == 1  # one whole sample, one byte kept
    assert len(stream.feed(data[header + 3 : header + 4])) == 1


@pytest.mark.parametrize("unknown", [0, 0xFFFFFFFF])
def test_wav_stream_reads_to_the_end_when_the_data_size_is_unknown(unknown: int) -> None:
    data = bytearray(WAVS["int16"])
    size_at = data.index(b"data") + 4
    data[size_at : size_at + 4] = unknown.to_bytes(4, "little")  # a live recording
    audio, _ = decode_wav(WAVS["int16"])
    more = int_pcm(random_ints(50, 16, seed=9), 16)
    out = fed(WavStream(), bytes(data) + more, [333])
    assert len(out) == len(audio) + 50
    np.testing.assert_array_equal(out[: len(audio)], audio)


def test_pad_byte_after_odd_sized_data_is_not_audio() -> None:
    """8-bit mono with an odd sample count: the RIFF pad byte would be a sample of -1.0."""
    data = wav_file(int_pcm(random_ints(1201, 8), 8), bits=8, rate=8000)
    audio, _ = decode_wav(data)
    assert len(audio) == 1201
    for sizes in ([len(data)], [1], [7, 300]):
        np.testing.assert_array_equal(fed(WavStream(), data, sizes), audio)


def test_chunk_after_data_is_not_audio() -> None:
    """Some editors write metadata (LIST, id3) after the data: the data size says where to stop."""
    data = wav_file(int_pcm(random_ints(800, 16), 16))
    trailer = chunk(b"LIST", b"INFOICMT" + struct.pack("<I", 20) + b"recorded by a test!\0")
    whole = data[:4] + struct.pack("<I", len(data) - 8 + len(trailer)) + data[8:] + trailer
    audio, _ = decode_wav(whole)
    assert len(audio) == 800
    for sizes in ([len(whole)], [1], [5, 999]):
        np.testing.assert_array_equal(fed(WavStream(), whole, sizes), audio)


@pytest.mark.parametrize(
    ("start", "looks_like"),
    [
        (b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(30), "MP3"),
        (b"\xff\xfb\x90\x64" + bytes(40), "MP3"),
        (b"OggS\x00\x02" + bytes(40), "Ogg"),
        (b"fLaC\x00\x00\x00\x22" + bytes(40), "FLAC"),
    ],
)
def test_non_wav_start_is_named(start: bytes, looks_like: str) -> None:
    stream = WavStream()
    with pytest.raises(ValueError, match=f"not a RIFF/WAVE file.*{looks_like}"):
        fed(stream, start, [5])


def test_non_wav_without_a_known_magic() -> None:
    with pytest.raises(ValueError, match="not a RIFF/WAVE file"):
        WavStream().feed(b"RIFF\x00\x00\x00\x00AVI LIST" + bytes(20))


def test_no_data_chunk_within_the_header_limit() -> None:
    junk = chunk(b"junk", bytes(5000))
    data = wav_file(bytes(100), before_data=junk)
    stream = WavStream(max_header_bytes=1024)
    with pytest.raises(ValueError, match="no WAV data chunk in the first 1024 bytes"):
        fed(stream, data, [200])
    # a whole file at once with the data chunk inside the limit is fine
    assert len(WavStream(max_header_bytes=1024).feed(wav_file(bytes(4000)))) == 2000


def test_header_that_never_ends_is_refused() -> None:
    start = b"RIFF\xff\xff\xff\xffWAVE" + b"fmt " + struct.pack("<I", 0xFFFFFF00)
    stream = WavStream(max_header_bytes=4096)
    with pytest.raises(ValueError, match="no WAV data chunk"):
        fed(stream, start + bytes(5000), [512])


def test_data_before_fmt_is_refused() -> None:
    data = b"RIFF\x00\x00\x00\x00WAVE" + chunk(b"data", bytes(10))
    with pytest.raises(ValueError, match="data chunk before its fmt chunk"):
        WavStream().feed(data)


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ({"tag": 2, "bits": 4}, "format tag 2, 4 bits"),  # ADPCM
        ({"tag": 1, "bits": 12}, "format tag 1, 12 bits"),
        ({"tag": 3, "bits": 16}, "format tag 3, 16 bits"),
        ({"tag": 1, "bits": 0}, "0 bits"),
        ({"channels": 0}, "0 channels"),
        ({"rate": 4000}, "sample rate 4000 Hz"),
        ({"tag": 7, "bits": 8, "extensible": True}, "format tag 7"),  # mu-law, extensible
    ],
)
def test_unsupported_format_is_refused_before_any_audio(fmt: dict, needle: str) -> None:
    data = wav_file(bytes(64), **fmt)
    header = data[: data.index(b"data") + 8]
    stream = WavStream()
    with pytest.raises(ValueError, match=needle):
        fed(stream, header, [1])


def test_float_wav_with_nan_is_refused() -> None:
    data = wav_file(np.array([0.1, np.nan, 0.2], "<f4").tobytes(), tag=3, bits=32)
    with pytest.raises(ValueError, match="NaN"):
        WavStream().feed(data)
