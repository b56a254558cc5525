"""Split speech at silences: a streaming voice-activity segmenter over 16 kHz mono audio.

Frames of 30 ms are classified by WebRTC's voice-activity detector (`webrtcvad-wheels`: Google's
GMM detector in C, no model download, no torch) and must also be 6 dB above the recent noise floor
(the quietest frame of the last 1.5 s: the detector calls any first frames of a stream voiced,
and a click's few following frames), then smoothed:

- a segment opens when `START_VOICED` of the last `START_WINDOW` frames are voiced (a click or a
  single noisy frame does not open one);
- it closes after `min_silence_s` of unvoiced frames (the gaps between the words of a digit
  string are shorter);
- it keeps `pad_s` of audio on both sides (word onsets and releases are quiet), never reaching
  into the previous segment; at the very start or end of the audio the pad is digital silence;
- speech that runs on past `max_segment_s` is cut at its quietest frame in the last third of that
  window, so that no segment exceeds what the model was trained on.

The same object serves a whole recording (`feed` it all, then `finish`) and a live stream (`feed`
each chunk as it arrives: segments are returned as soon as their trailing silence is heard). It
keeps only the audio of the open segment and its leading pad, so memory is bounded by
`max_segment_s` however long the stream runs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

FRAME_MS = 30
START_WINDOW = 5
START_VOICED = 3
PRIME_FRAMES = 10
FLOOR_WINDOW_S = 1.5
"""The noise floor is the quietest frame of this much recent audio (minimum statistics: speech
has quiet gaps between syllables, so the floor stays below it)."""
DIGITAL_SILENCE = 1e-10
"""Frame energy below this (-100 dBFS) is digital silence, left out of the noise floor."""
LOUD = 3e-4
"""Frames above this energy (-35 dBFS) need no margin over the floor (speech right after
digital silence has no noise floor below it yet)."""
GATE = 4.0
"""A voiced frame must carry this many times the floor's energy (6 dB)."""


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: [start, end) in samples from the start of the audio."""

    index: int
    start: int
    end: int
    audio: np.ndarray

    def seconds(self, rate: int) -> tuple[float, float]:
        return self.start / rate, self.end / rate


class Segmenter:
    def __init__(
        self,
        rate: int = 16000,
        *,
        max_segment_s: float = 5.0,
        min_silence_s: float = 0.4,
        pad_s: float = 0.35,
        aggressiveness: int = 2,
    ) -> None:
        if rate not in (8000, 16000, 32000, 48000):
            raise ValueError(f"voice-activity detection runs at 8/16/32/48 kHz, not {rate} Hz")
        self.rate = rate
        self.frame = rate * FRAME_MS // 1000
        self.max_frames = max(2 * START_WINDOW, int(max_segment_s * 1000) // FRAME_MS)
        self.silence_frames = max(1, round(min_silence_s * 1000 / FRAME_MS))
        self.pad = round(pad_s * rate)
        self._vad = webrtcvad.Vad(aggressiveness)
        # NOTE: the detector calls its first frames voiced whatever they hold: let it start on
        # faint noise (-70 dBFS) instead of on the audio
        prime = np.random.default_rng(0).normal(0.0, 10, (PRIME_FRAMES, self.frame))
        for frame in prime.astype("<i2"):
            self._vad.is_speech(frame.tobytes(), rate)
        self._buffer = np.zeros(0, dtype=np.float32)
        """Audio kept: from `_origin` (samples since the start) to the last fed sample."""
        self._origin = 0
        self._done = 0
        """Samples classified so far (whole frames)."""
        self._recent: list[bool] = []
        self._open: int | None = None
        """Start (samples) of the first voiced frame of the open segment."""
        self._last_voiced = 0
        """End (samples) of the open segment's last voiced frame."""
        self._unvoiced = 0
        self._energy: list[float] = []
        """Per frame of the open segment: its energy (where to cut an overlong one)."""
        self._floor = 0
        """No segment may start before this sample (the previous one's end)."""
        self._count = 0
        self._levels: deque[float] = deque(maxlen=max(1, round(FLOOR_WINDOW_S * 1000 / FRAME_MS)))
        """Energy of the last frames: their minimum is the noise floor."""

    @property
    def position(self) -> int:
        """Samples fed so far."""
        return self._origin + len(self._buffer)

    def feed(self, audio: np.ndarray) -> list[Segment]:
        """Add audio (float32 in [-1, 1]); the segments it closed."""
        if len(audio):
            self._buffer = np.concatenate([self._buffer, np.asarray(audio, dtype=np.float32)])
        closed: list[Segment] = []
        while self.position - self._done >= self.frame:
            closed.extend(self._classify(self._done))
            self._done += self.frame
        self._trim()
        return closed

    def finish(self) -> list[Segment]:
        """The audio has ended: close the open segment, if any."""
        if self._open is None:
            return []
        return [self._close(min(self.position, self._last_voiced + self.pad), ended=True)]

    def _samples(self, start: int, end: int) -> np.ndarray:
        return self._buffer[start - self._origin : end - self._origin]

    def _classify(self, start: int) -> list[Segment]:
        frame = self._samples(start, start + self.frame)
        pcm = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        energy = float(np.mean(frame.astype(np.float64) ** 2))
        floor = min(self._levels, default=0.0)  # of the frames before this one
        if energy > DIGITAL_SILENCE:  # zeros say nothing about the room's noise
            self._levels.append(energy)
        # NOTE: WebRTC's detector calls the first frames of a stream voiced whatever they hold
        # (its noise model starts empty) and holds "voiced" for a few frames after a click; a
        # frame counts only if it is also well above the recent noise floor
        voiced = self._vad.is_speech(pcm, self.rate) and (energy > GATE * floor or energy > LOUD)
        self._recent = [*self._recent[-(START_WINDOW - 1) :], voiced]
        end = start + self.frame
        if self._open is None:
            if voiced and sum(self._recent) >= START_VOICED:
                first = start - (len(self._recent) - 1 - self._recent.index(True)) * self.frame
                self._open = max(first, self._floor)
                self._energy = [
                    float(np.mean(self._samples(s, s + self.frame) ** 2))
                    for s in range(self._open, end, self.frame)
                ]
                self._last_voiced, self._unvoiced = end, 0
            return []
        self._energy.append(float(np.mean(frame**2)))
        if voiced:
            self._last_voiced, self._unvoiced = end, 0
        else:
            self._unvoiced += 1
        if self._unvoiced >= self.silence_frames:
            return [self._close(min(end, self._last_voiced + self.pad))]
        if len(self._energy) >= self.max_frames:
            return [self._cut()]
        return []

    def _close(self, end: int, *, ended: bool = False) -> Segment:
        assert self._open is not None
        start = max(self._floor, self._open - self.pad, self._origin)
        audio = self._samples(start, end)
        # NOTE: speech at the very start or end of the audio gets its pad as digital silence:
        # the model was trained on utterances with some silence around them
        lead = self.pad - (self._open - start) if self._open - self.pad < 0 else 0
        trail = self._last_voiced + self.pad - end if ended else 0
        if lead > 0 or trail > 0:
            audio = np.concatenate([np.zeros(max(0, lead), np.float32), audio])
            audio = np.concatenate([audio, np.zeros(max(0, trail), np.float32)])
        segment = Segment(self._count, start, end, audio.copy())
        self._count += 1
        self._floor = end
        self._open = None
        self._energy = []
        self._recent = []
        return segment

    def _cut(self) -> Segment:
        """The open segment reached max_segment_s: end it at its quietest frame in the last
        third and open the next one there."""
        assert self._open is not None
        begin = len(self._energy) * 2 // 3
        quietest = begin + int(np.argmin(self._energy[begin:]))
        cut = self._open + (quietest + 1) * self.frame
        pad, self.pad = self.pad, 0  # the cut is inside speech: no pad on either side
        segment = self._close(cut)
        self.pad = pad
        self._open, self._floor = cut, cut
        self._energy = [
            float(np.mean(self._samples(s, s + self.frame) ** 2))
            for s in range(cut, self._done + self.frame, self.frame)
        ]
        self._last_voiced, self._unvoiced = self._done + self.frame, 0
        return segment

    def _trim(self) -> None:
        """Drop audio no segment can reach any more."""
        keep = self._done - self.pad - START_WINDOW * self.frame
        if self._open is not None:
            keep = min(keep, self._open - self.pad)
        keep = max(keep, self._floor, self._origin)
        if keep > self._origin:
            self._buffer = self._buffer[keep - self._origin :]
            self._origin = keep
