"""Speech helpers shared by training and serving (numpy only): WAV decoding, resampling,
batch padding, greedy CTC decoding and error rates."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
RATE_RANGE = (8000, 192000)
"""Sample rates accepted (Hz): telephony up to studio; others are refused, not resampled."""
OTHER_AUDIO = {b"ID3": "MP3", b"\xff\xfb": "MP3", b"OggS": "Ogg", b"fLaC": "FLAC"}


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (float32 mono audio in [-1, 1], sample rate).

    Accepts 8/16/24/32-bit integer PCM and 32/64-bit float WAVs; channels are averaged. A data
    chunk whose size field overruns the file (streamed WAVs, e.g. `espeak-ng --stdout`) is read
    to the end of the bytes. Anything else raises ValueError saying what is wrong.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        other = next((name for magic, name in OTHER_AUDIO.items() if data.startswith(magic)), "")
        raise ValueError("not a RIFF/WAVE file" + (f" (this looks like {other})" if other else ""))
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body = pos + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + 16 > len(data):
                raise ValueError("WAV fmt chunk is truncated")
            tag, channels, rate = struct.unpack("<HHI", data[body : body + 8])
            (bits,) = struct.unpack("<H", data[body + 14 : body + 16])
            if tag == 0xFFFE and size >= 26 and body + 26 <= len(data):  # WAVE_FORMAT_EXTENSIBLE
                (tag,) = struct.unpack("<H", data[body + 24 : body + 26])
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk before its fmt chunk")
            end = body + size if size <= len(data) - body else len(data)
            return _pcm_to_float(data[body:end], *fmt), fmt[2]
        pos = body + size + (size & 1)
    raise ValueError("WAV has no data chunk")


def _pcm_to_float(raw: bytes, tag: int, channels: int, rate: int, bits: int) -> np.ndarray:
    if channels < 1 or rate < 1:
        raise ValueError(f"bad WAV format: {channels} channels at {rate} Hz")
    if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
        raise ValueError(
            f"sample rate {rate} Hz not supported; send {RATE_RANGE[0]} to {RATE_RANGE[1]} Hz"
        )
    if (tag, bits) not in ((1, 8), (1, 16), (1, 24), (1, 32), (3, 32), (3, 64)):
        raise ValueError(f"unsupported WAV encoding (format tag {tag}, {bits} bits)")
    width = bits // 8
    usable = len(raw) - len(raw) % (width * channels)
    raw = raw[:usable]
    if tag == 1 and bits == 8:
        audio = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and bits == 16:
        audio = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 24:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        values = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        values = np.where(values >= 1 << 23, values - (1 << 24), values)
        audio = values.astype(np.float32) / float(1 << 23)
    elif tag == 1 and bits == 32:
        audio = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:  # float
        audio = np.frombuffer(raw, "<f4" if bits == 32 else "<f8").astype(np.float32)
        if not np.isfinite(audio).all():
            raise ValueError("WAV holds NaN or infinite samples")
    return audio.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited (FFT) resampling of a mono clip; good enough for short utterances."""
    audio = np.asarray(audio, dtype=np.float32)
    if rate == target or audio.size == 0:
        return audio
    n_out = max(1, round(audio.size * target / rate))
    spectrum = np.fft.rfft(audio.astype(np.float64))
    keep = min(spectrum.size, n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=np.complex128)
    out[:keep] = spectrum[:keep]
    return (np.fft.irfft(out, n=n_out) * (n_out / audio.size)).astype(np.float32)


def to_model_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Decoded mono audio -> the model's input: 16 kHz float32, clipped to [-1, 1]."""
    return np.clip(resample(audio, rate), -1.0, 1.0)


def load_audio(data: bytes) -> np.ndarray:
    """WAV bytes -> the model's input: 16 kHz mono float32, clipped to [-1, 1]."""
    return to_model_rate(*decode_wav(data))


def pad_batch(clips: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad clips into (waveform float32 [B, max_len], lengths int64 [B])."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    waveform = np.zeros((len(clips), int(lengths.max(initial=1))), dtype=np.float32)
    for row, clip in enumerate(clips):
        waveform[row, : len(clip)] = clip
    return waveform, lengths


@dataclass
class Transcript:
    """A decoded utterance: text and a confidence in [0, 1]."""

    text: str
    confidence: float


def ctc_greedy_decode(
    log_probs: np.ndarray, frame_lengths: np.ndarray, vocabulary: Sequence[str], blank: int = 0
) -> list[str]:
    """Best path per item: argmax per valid frame, merge repeats, drop blanks."""
    return [t.text for t in ctc_greedy_transcripts(log_probs, frame_lengths, vocabulary, blank)]


def ctc_greedy_transcripts(
    log_probs: np.ndarray, frame_lengths: np.ndarray, vocabulary: Sequence[str], blank: int = 0
) -> list[Transcript]:
    """Greedy CTC decoding with a confidence: the best path's probability per frame,
    geometric mean over the valid frames (exp of the mean best log-probability)."""
    log_probs = np.asarray(log_probs)
    if log_probs.ndim != 3 or log_probs.shape[2] != len(vocabulary):
        raise ValueError(
            f"log_probs must be [batch, frames, {len(vocabulary)}], got {log_probs.shape}"
        )
    results = []
    for row, length in zip(log_probs, np.asarray(frame_lengths).reshape(-1), strict=True):
        frames = row[: max(0, min(int(length), row.shape[0]))]
        if frames.shape[0] == 0:
            results.append(Transcript("", 0.0))
            continue
        best = frames.argmax(axis=1)
        keep = np.ones(best.size, dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        keep &= best != blank
        text = " ".join("".join(vocabulary[i] for i in best[keep]).split())
        mean_log_prob = float(frames[np.arange(best.size), best].mean())
        results.append(Transcript(text, float(np.exp(min(0.0, mean_log_prob)))))
    return results


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (characters or words)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus CER and WER: total edits over total reference characters / words."""
    char_edits = char_total = word_edits = word_total = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        char_edits += edit_distance(ref, hyp)
        char_total += len(ref)
        word_edits += edit_distance(ref.split(), hyp.split())
        word_total += len(ref.split())
    return {"cer": char_edits / max(1, char_total), "wer": word_edits / max(1, word_total)}
