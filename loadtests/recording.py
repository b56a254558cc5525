"""A long recording for long-form and streaming transcription: espeak-ng commands and digit
strings from the speech model's held-out voices (the unseen accent and unseen variants, as its
test set), with pauses between them and one background noise under all of it, as a microphone
left running would hear it.

Needs espeak-ng and the train extra (export/data/speech.py synthesises; the clean synthesis is
cached as the export pipeline caches it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from service.processing.speech import SAMPLE_RATE

PAUSE_S = (0.5, 1.5)
SNR_DB = 30.0


@dataclass
class Recording:
    audio: np.ndarray
    """16 kHz mono float32."""
    utterances: list[tuple[float, float, str]]
    """(start_s, end_s, transcript) of each utterance, in order."""
    voices: list[str]

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def transcript(self) -> str:
        return " ".join(text for _, _, text in self.utterances)

    def utterance_audio(self, index: int, margin_s: float = 0.25) -> np.ndarray:
        """Utterance `index` cut from the recording with `margin_s` of its pauses around it
        (what a client sending the utterances one by one would send)."""
        start, end, _ = self.utterances[index]
        first = max(0, round((start - margin_s) * SAMPLE_RATE))
        return self.audio[first : round((end + margin_s) * SAMPLE_RATE)]


def build_recording(seconds: float = 60.0, seed: int = 2024) -> Recording:
    """Utterances of the held-out voices with pauses between them until `seconds` are filled."""
    from export.data import speech

    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = []
    utterances: list[tuple[float, float, str]] = []
    voices: list[str] = []
    position = 0
    specs = iter(speech.make_specs("test", 400, seed))
    while position < (seconds - PAUSE_S[1] - 4.0) * SAMPLE_RATE:
        spec = next(specs)
        clean = speech.synthesize(spec.text, spec.voice, spec.speed, spec.pitch)
        quiet = dataclasses.replace(spec, snr_db=None, lead_s=0.0, trail_s=0.0)
        clip = speech.render(quiet, clean)
        pause = np.zeros(round(rng.uniform(*PAUSE_S) * SAMPLE_RATE), dtype=np.float32)
        parts.extend([pause, clip])
        position += len(pause)
        utterances.append((position / SAMPLE_RATE, (position + len(clip)) / SAMPLE_RATE, spec.text))
        voices.append(spec.voice)
        position += len(clip)
    tail = max(round(PAUSE_S[0] * SAMPLE_RATE), round(seconds * SAMPLE_RATE) - position)
    parts.append(np.zeros(tail, dtype=np.float32))
    audio = np.concatenate(parts).astype(np.float64)
    speech_rms = float(np.sqrt(np.mean(np.concatenate(parts[1::2]).astype(np.float64) ** 2)))
    noise = rng.standard_normal(audio.size)
    noise *= speech_rms * 10.0 ** (-SNR_DB / 20.0) / float(np.sqrt(np.mean(noise**2)))
    audio = np.clip(audio + noise, -1.0, 1.0).astype(np.float32)
    return Recording(audio, utterances, voices)
