"""Speech helpers of the server: WAV decoding, padding, greedy CTC decoding, error rates."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import wave

import numpy as np
import pytest

from service.processing.speech import (
    ctc_greedy_decode,
    ctc_greedy_transcripts,
    decode_wav,
    edit_distance,
    error_rates,
    load_audio,
    pad_batch,
    resample,
)

VOCAB = ["<blank>", " ", *"abcdefghijklmnopqrstuvwxyz", "'"]


def path_log_probs(paths: list[str], frames: int, confident: float = 0.9) -> np.ndarray:
    """[B, frames, V] log-probs whose best path spells each string ('_' = blank), then blanks."""
    out = np.full((len(paths), frames, len(VOCAB)), np.log((1 - confident) / (len(VOCAB) - 1)))
    for b, path in enumerate(paths):
        for t in range(frames):
            symbol = path[t] if t < len(path) else "_"
            out[b, t, 0 if symbol == "_" else VOCAB.index(symbol)] = np.log(confident)
    return out.astype(np.float32)


def test_greedy_merges_repeats_and_drops_blanks() -> None:
    log_probs = path_log_probs(["hhe_ll_lloo", "__o_nn_e__"], frames=12)
    assert ctc_greedy_decode(log_probs, np.array([12, 12]), VOCAB) == ["hello", "one"]


def test_greedy_ignores_frames_past_length() -> None:
    log_probs = path_log_probs(["tw_o_  zzz"], frames=10)
    assert ctc_greedy_decode(log_probs, np.array([5]), VOCAB) == ["two"]
    assert ctc_greedy_decode(log_probs, np.array([0]), VOCAB) == [""]


def test_greedy_normalises_spaces() -> None:
    log_probs = path_log_probs(["  up_ _ down  "], frames=14)
    assert ctc_greedy_decode(log_probs, np.array([14]), VOCAB) == ["up down"]


def test_confidence_is_mean_best_path_probability() -> None:
    sure = ctc_greedy_transcripts(path_log_probs(["no"], 4, 0.999), np.array([4]), VOCAB)[0]
    unsure = ctc_greedy_transcripts(path_log_probs(["no"], 4, 0.5), np.array([4]), VOCAB)[0]
    assert sure.text == unsure.text == "no"
    assert sure.confidence == pytest.approx(0.999, abs=1e-4)
    assert unsure.confidence == pytest.approx(0.5, abs=1e-4)


def test_greedy_rejects_wrong_vocabulary_size() -> None:
    with pytest.raises(ValueError):
        ctc_greedy_decode(np.zeros((1, 3, 5), np.float32), np.array([3]), VOCAB)


def test_edit_distance_and_error_rates() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3
    assert edit_distance(["four", "two"], ["for", "two"]) == 1
    rates = error_rates(["four two", "play"], ["for two", "play"])
    assert rates["cer"] == pytest.approx(1 / 12)
    assert rates["wer"] == pytest.approx(1 / 3)
    assert error_rates(["a b"], ["a b"]) == {"cer": 0.0, "wer": 0.0}


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def test_decode_wav_stereo_to_mono() -> None:
    left = np.array([1000, -2000, 3000], dtype=np.int16)
    right = np.array([3000, 2000, -3000], dtype=np.int16)
    audio, rate = decode_wav(wav_bytes(np.stack([left, right], axis=1).reshape(-1), 8000, 2))
    assert rate == 8000
    assert audio.dtype == np.float32
    np.testing.assert_allclose(audio, [2000 / 32768, 0.0, 0.0], atol=1e-6)


def test_decode_wav_with_overlong_data_size() -> None:
    """Streamed WAVs (espeak-ng --stdout) carry a huge data size: read to the end."""
    data = bytearray(wav_bytes(np.arange(10, dtype=np.int16), 22050))
    data[40:44] = (0x7FFFFFFF).to_bytes(4, "little")
    audio, _ = decode_wav(bytes(data))
    assert audio.size == 10


def test_decode_wav_rejects_other_formats() -> None:
    with pytest.raises(ValueError):
        decode_wav(b"ID3 not a wav file at all")


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


TONE = wav_bytes(np.arange(800, dtype=np.int16), 16000)


def float_wav(values: np.ndarray) -> bytes:
    data = values.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)  # IEEE float, mono, 32-bit
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 4 + len(chunks) + len(data)) + b"WAVE" + chunks + data


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"ID3\x04" + bytes(40), "looks like MP3"),
        (TONE[:30], "fmt chunk is truncated"),
        (patched(TONE, 34, (0).to_bytes(2, "little")), "0 bits"),  # no ZeroDivisionError
        (patched(TONE, 24, (1).to_bytes(4, "little")), "sample rate 1 Hz"),
        (patched(TONE, 24, (400_000).to_bytes(4, "little")), "sample rate 400000 Hz"),
        (float_wav(np.full(400, np.nan)), "NaN or infinite"),
        (float_wav(np.full(400, np.inf)), "NaN or infinite"),
    ],
)
def test_decode_wav_says_what_is_wrong(data: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        decode_wav(data)


def test_load_audio_resamples_to_16k() -> None:
    t = np.arange(8000) / 8000
    tone = (np.sin(2 * np.pi * 440 * t) * 16000).astype(np.int16)
    audio = load_audio(wav_bytes(tone, 8000))
    assert audio.shape == (16000,)
    assert audio.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 s at 16 kHz: bin k is k Hz
    assert resample(audio, 16000).shape == (16000,)


def test_pad_batch() -> None:
    waveform, lengths = pad_batch([np.ones(3, np.float32), np.ones(5, np.float32)])
    assert waveform.shape == (2, 5) and waveform.dtype == np.float32
    assert lengths.tolist() == [3, 5] and lengths.dtype == np.int64
    assert waveform[0, 3:].tolist() == [0.0, 0.0]


def test_module_is_torch_free() -> None:
    code = "import sys, service.processing.speech; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
