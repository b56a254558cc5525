"""Speech helpers shared by training and serving (numpy only): WAV decoding, resampling,
batch padding, greedy CTC decoding and error rates."""

from __future__ import annotations

import math
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
            fmt = _read_fmt(data, body, size)
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


class Resampler:
    """Streaming resampling to `target`: FFT resampling of short blocks (about `block_s`) that
    overlap by about `margin_s` on each side, the overlaps discarded (no seams from the FFT's
    periodic edges). Block and margin are whole multiples of rate / gcd(rate, target) samples,
    so each maps to a whole number of output samples (no stretch at the seams). Memory and time
    per block are constant however long the audio; a live stream's audio comes out at most a
    block plus a margin (about 0.3 s) after it went in."""

    def __init__(
        self, rate: int, target: int = SAMPLE_RATE, margin_s: float = 0.1, block_s: float = 0.2
    ) -> None:
        self.rate, self.target = rate, target
        unit = rate // math.gcd(rate, target)
        self.margin = unit * max(1, math.ceil(rate * margin_s / unit))
        self.block = unit * max(1, math.ceil(rate * block_s / unit))
        self._buffer = np.zeros(self.margin, dtype=np.float32)  # left margin: silence
        self._fed = 0

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Add audio at `rate`; resampled audio that is final so far."""
        if self.rate == self.target:
            return np.asarray(audio, dtype=np.float32)
        self._buffer = np.concatenate([self._buffer, np.asarray(audio, dtype=np.float32)])
        self._fed += len(audio)
        out = []
        while len(self._buffer) >= self.block + 2 * self.margin:
            out.append(self._block(self._buffer[: self.block + 2 * self.margin], self.block))
            self._buffer = self._buffer[self.block :]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """The rest, once the audio has ended."""
        if self.rate == self.target:
            return np.zeros(0, dtype=np.float32)
        body = len(self._buffer) - self.margin
        if body <= 0:
            return np.zeros(0, dtype=np.float32)
        padded = np.concatenate([self._buffer, np.zeros(self.margin, dtype=np.float32)])
        self._buffer = np.zeros(self.margin, dtype=np.float32)
        return self._block(padded, body)

    def _block(self, block: np.ndarray, body: int) -> np.ndarray:
        """Resample a block of margin + body + margin samples; the body's share of it."""
        out = resample(block, self.rate, self.target)
        scale = len(out) / len(block)
        start = round(self.margin * scale)
        return out[start : start + round(body * self.target / self.rate)]


LONG_RESAMPLE_S = 30.0
"""Longer audio is resampled block by block (Resampler): one FFT over 10 minutes at 48 kHz
would hold ~0.5 GB of complex spectra."""


def to_model_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """Decoded mono audio -> the model's input: 16 kHz float32, clipped to [-1, 1]."""
    if rate != SAMPLE_RATE and len(audio) > LONG_RESAMPLE_S * rate:
        resampler = Resampler(rate)
        audio = np.concatenate([resampler.feed(audio), resampler.finish()])
        return np.clip(audio, -1.0, 1.0)
    return np.clip(resample(audio, rate), -1.0, 1.0)


class WavStream:
    """A WAV file read as its bytes arrive (a streamed upload, a live recording): `feed` bytes,
    get the mono float32 samples decoded so far. The header (every chunk up to `data`) must fit
    in `max_header_bytes` and MAX_HEADER_CHUNKS chunks; it is parsed once, chunk by chunk as its
    bytes arrive (a header trickled a byte at a time costs no more than one sent whole). The
    audio ends where the data chunk's size says (anything after it is not audio), or with the
    bytes when that size is 0 or 0xFFFFFFFF (what streamed WAVs write, not knowing it). Errors
    as decode_wav's (ValueError)."""

    MAX_HEADER_CHUNKS = 32

    def __init__(self, max_header_bytes: int = 64 * 1024) -> None:
        self.max_header_bytes = max_header_bytes
        self.rate = 0
        """The sample rate, once the header is read (0 before)."""
        self._header = bytearray()
        self._pos = 12
        """Where the next header chunk starts in `_header`."""
        self._chunks = 0
        self._fmt: tuple[int, int, int, int] | None = None
        self._format: tuple[int, int, int, int] | None = None
        self._rest = b""
        self._left: int | None = None
        """Bytes of the data chunk still to come; None: to the end of the stream."""

    @property
    def frame_bytes(self) -> int:
        """Bytes per sample frame (all channels), once the header is read (0 before)."""
        return self._format[3] // 8 * self._format[1] if self._format else 0

    def feed(self, data: bytes) -> np.ndarray:
        if self._format is None:
            self._header += data
            data = self._parse()
            if self._format is None:
                return np.zeros(0, dtype=np.float32)
        if self._left is not None:  # the data chunk's declared size: a pad byte or chunks
            data, self._left = data[: self._left], max(0, self._left - len(data))  # after it
        tag, channels, rate, bits = self._format
        data = self._rest + data
        frame = bits // 8 * channels
        usable = len(data) - len(data) % frame
        self._rest = data[usable:]
        if not usable:
            return np.zeros(0, dtype=np.float32)
        return _pcm_to_float(data[:usable], tag, channels, rate, bits)

    def _parse(self) -> bytes:
        """Read the header's complete chunks so far; the data bytes after it once it ends."""
        data = self._header
        if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
            decode_wav(bytes(data[:12]))  # raises, saying what the bytes look like
        while len(data) >= 12 and self._pos + 8 <= len(data):
            pos = self._pos
            chunk_id = bytes(data[pos : pos + 4])
            (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
            body = pos + 8
            if chunk_id == b"data":
                if self._fmt is None:
                    raise ValueError("WAV data chunk before its fmt chunk")
                _pcm_to_float(b"", *self._fmt)  # checks the format before any audio
                self._format, self.rate = self._fmt, self._fmt[2]
                # NOTE: streamed WAVs cannot know the size: they write 0 or 0xFFFFFFFF
                self._left = None if size in (0, 0xFFFFFFFF) else size
                rest = bytes(data[body:])
                self._header = bytearray()
                return rest
            if body + size > len(data):
                if body + size > self.max_header_bytes:
                    break  # refused below
                return b""  # the chunk is not complete yet
            if chunk_id == b"fmt ":
                self._fmt = _read_fmt(bytes(data), body, size)
            self._pos = body + size + (size & 1)
            self._chunks += 1
            if self._chunks > self.MAX_HEADER_CHUNKS:
                raise ValueError(f"no WAV data chunk in the first {self.MAX_HEADER_CHUNKS} chunks")
        if len(data) > self.max_header_bytes or self._pos > self.max_header_bytes:
            raise ValueError(f"no WAV data chunk in the first {self.max_header_bytes} bytes")
        return b""


def _read_fmt(data: bytes, body: int, size: int) -> tuple[int, int, int, int]:
    if size < 16 or body + 16 > len(data):
        raise ValueError("WAV fmt chunk is truncated")
    tag, channels, rate = struct.unpack("<HHI", data[body : body + 8])
    (bits,) = struct.unpack("<H", data[body + 14 : body + 16])
    if tag == 0xFFFE and size >= 26 and body + 26 <= len(data):  # WAVE_FORMAT_EXTENSIBLE
        (tag,) = struct.unpack("<H", data[body + 24 : body + 26])
    return tag, channels, rate, bits


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
    """A decoded utterance: text and a confidence in [0, 1] (and, for a model with a domain
    verdict, its score: service/processing/speech_domain.py)."""

    text: str
    confidence: float
    domain_score: float | None = None


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
