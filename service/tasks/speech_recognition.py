"""Speech recognition: a WAV clip -> its transcript (the LSTM-CTC model, imported CTC models)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from service.core.errors import InvalidInput
from service.core.model_settings import ModelSettings
from service.core.wire import Probability, TaskAnswer
from service.processing.speech import SAMPLE_RATE, decode_wav, to_model_rate
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import SpeechRecognizer
from service.store.importing.contracts import prepare_speech
from service.store.importing.importer import ImportRule
from service.tasks.base import Task
from service.tasks.tensors import InferRequest, Signature, Tensor, batch_of, check_rows

NAME = "speech-recognition"
DEFAULT_MODEL = "speech-ctc"


def check_duration(config: ModelSettings, samples: int, rate: int = SAMPLE_RATE) -> None:
    seconds = samples / rate
    limit = config.max_audio_seconds
    if seconds > limit:
        raise InvalidInput(f"audio is {seconds:.1f} s long; the limit is {limit:g} s")


def check_audio(config: ModelSettings, audio: np.ndarray) -> np.ndarray:
    check_duration(config, len(audio))
    seconds = len(audio) / SAMPLE_RATE
    if len(audio) < SAMPLE_RATE // 20:
        raise InvalidInput(f"audio is {seconds * 1000:.0f} ms long; send at least 50 ms")
    return audio


async def transcribe(
    serving: ServingState,
    wav: bytes,
    model: str | None = None,
    deadline: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """WAV bytes (any common rate, mono or stereo) -> {"text", "confidence", "duration_s"}."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)

    def prepare() -> np.ndarray:
        try:
            audio, rate = decode_wav(wav)
        except ValueError as error:
            raise InvalidInput(f"not a usable WAV file ({error}); send PCM WAV audio") from None
        check_duration(runner.config, len(audio), rate)  # before resampling, which costs per sample
        return check_audio(runner.config, to_model_rate(audio, rate))

    with runner.admission.admit():
        audio = await serving.preprocess(prepare)
        transcript = await runner.submit(audio, runner.bucket(audio), deadline)
    return {
        "model": runner.spec.name,
        "version": runner.spec.version,
        "text": transcript.text,
        "confidence": round(transcript.confidence, 6),
        "duration_s": round(len(audio) / SAMPLE_RATE, 3),
    }


def signature(runner: Runner) -> Signature:
    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        waveform = batch_of(request, "waveform", "FP32", 2)
        count = check_rows(request, runner, waveform)
        samples = waveform.shape[1]
        if "lengths" in request.inputs:
            lengths = batch_of(request, "lengths", "INT64", 1)
            check_rows(request, runner, waveform, lengths)
            if lengths.min() < 1 or lengths.max() > samples:
                raise InvalidInput(f"lengths must be between 1 and {samples} (the waveform width)")
        else:
            lengths = np.full(count, samples)
        if not np.isfinite(waveform).all():
            raise InvalidInput("waveform holds NaN or infinite samples")
        clips = [
            check_audio(runner.config, np.ascontiguousarray(waveform[i, : int(lengths[i])]))
            for i in range(count)
        ]
        transcripts = await asyncio.gather(
            *(runner.submit(clip, runner.bucket(clip), request.deadline) for clip in clips)
        )
        texts = np.array([t.text.encode() for t in transcripts], dtype=object)
        confidence = np.array([t.confidence for t in transcripts], dtype=np.float32)
        return {"transcript": texts, "confidence": confidence}

    return Signature(
        inputs=[
            Tensor("waveform", "FP32", [-1, -1], description=f"mono {SAMPLE_RATE} Hz, [-1, 1]"),
            Tensor("lengths", "INT64", [-1], optional=True, description="valid samples per row"),
        ],
        outputs=[Tensor("transcript", "BYTES", [-1]), Tensor("confidence", "FP32", [-1])],
        infer=infer,
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


class TranscribeResult(TaskAnswer):
    text: str
    confidence: Probability
    duration_s: Annotated[float, Field(ge=0)]
    """The clip's length after resampling."""


TASK = Task(
    name=NAME,
    position=30,
    summary="WAV audio -> transcript",
    kernel=SpeechRecognizer,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(TranscribeResult,),
    builtin_models=("speech-ctc",),
    importing=ImportRule(NAME, prepare_speech, needs_vocabulary=True, strip_vocabulary=False),
)
