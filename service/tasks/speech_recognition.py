"""Speech recognition: a WAV clip -> its transcript (the LSTM-CTC model, imported CTC models).

Length: the task's three faces (/v1 answers, V2 infer and its streamed parts, the JSON wire
models) over one set of audio checks; the segmenting machinery itself is transcription.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any, ClassVar, Protocol

import numpy as np
from pydantic import Field

from service.core.errors import InvalidInput, OutOfDomain
from service.core.model_settings import ModelSettings
from service.core.streaming import StreamClock
from service.core.wire import Absent, Probability, ResponseModel, TaskAnswer, absent
from service.processing.speech import (
    RATE_RANGE,
    SAMPLE_RATE,
    Transcript,
    WavStream,
    decode_wav,
    to_model_rate,
)
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import SpeechRecognizer
from service.store.importing.contracts import prepare_speech
from service.store.importing.importer import ImportRule
from service.store.specs import ModelSpec
from service.tasks.base import (
    REJECT_HELP,
    REJECT_PARAMETER,
    Task,
    domain_outputs,
    reject_parameter,
    verdict_tensors,
)
from service.tasks.tensors import InferRequest, Part, Signature, Tensor, batch_of, check_rows
from service.tasks.transcription import (
    Transcription,
    check_recording,
    joined,
    segment_of,
    utterance_seconds,
)

NAME = "speech-recognition"
DEFAULT_MODEL = "speech-ctc"


def check_audio(config: ModelSettings, audio: np.ndarray) -> np.ndarray:
    """One utterance at the model's rate: at least 50 ms."""
    seconds = len(audio) / SAMPLE_RATE
    if len(audio) < SAMPLE_RATE // 20:
        raise InvalidInput(f"audio is {seconds * 1000:.0f} ms long; send at least 50 ms")
    return audio


def check_utterance(runner: Runner, audio: np.ndarray) -> np.ndarray:
    """A V2 waveform row: one utterance (V2 rows are never split), 50 ms up to the model's
    utterance limit."""
    limit = utterance_seconds(runner)
    if len(audio) > limit * SAMPLE_RATE:
        raise InvalidInput(
            f"waveform row is {len(audio) / SAMPLE_RATE:.1f} s long; one row is one utterance "
            f"of at most {limit:g} s (longer audio: /v1/transcribe, TranscribeStream, or "
            "ModelStreamInfer with the stream parameter)"
        )
    return check_audio(runner.config, audio)


def decode(runner: Runner, wav: bytes) -> tuple[np.ndarray, int]:
    """WAV bytes -> (mono audio, rate), its length checked before anything costs per sample."""
    try:
        audio, rate = decode_wav(wav)
    except ValueError as error:
        raise InvalidInput(f"not a usable WAV file ({error}); send PCM WAV audio") from None
    check_recording(runner.config, len(audio), rate)
    return audio, rate


def one_segment(spec: ModelSpec, transcript: Transcript, seconds: float) -> dict[str, Any]:
    """The answer of audio sent to the model whole (one utterance)."""
    result = segment_of(spec, 0, 0.0, seconds, transcript)
    return joined([result], seconds) | {"text": transcript.text}


KNOWS = "digit strings and the command phrases GET /v1/models lists under understands"


def refuse_outside(spec: ModelSpec, answer: dict[str, Any], reject: bool) -> dict[str, Any]:
    """With reject_out_of_domain, a transcript any of whose speech is outside the model's domain
    is refused (422 / INVALID_ARGUMENT); else the answer, as it is."""
    if reject and answer.get("in_domain") is False:
        raise OutOfDomain(
            f"model {spec.name} judges this speech outside what it knows ({KNOWS}): domain "
            f"score {answer['domain_score']:.4g} against its threshold "
            f"{float(spec.extra['domain']['threshold']):.4g}; without reject_out_of_domain the "
            "answer comes with in_domain=false"
        )
    return answer


async def transcribe(
    serving: ServingState,
    wav: bytes,
    model: str | None = None,
    deadline: float | None = None,
    version: str | None = None,
    reject_out_of_domain: bool = False,
) -> dict[str, Any]:
    """WAV bytes (any common rate, mono or stereo) -> {"text", "confidence", "duration_s",
    "segments"} (and "in_domain", "domain_score" for a model with a verdict). Audio up to the
    model's utterance limit is one item; longer audio is split at silences
    (service/tasks/transcription.py)."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)

    def prepare() -> tuple[np.ndarray, int | None]:
        """(the model's input, None) for one utterance, else (the decoded audio, its rate)."""
        audio, rate = decode(runner, wav)
        if len(audio) <= utterance_seconds(runner) * rate:
            return check_audio(runner.config, to_model_rate(audio, rate)), None
        return audio, rate

    with runner.admission.admit():
        audio, rate = await serving.preprocess(prepare)
        if rate is None:  # one utterance: one item, as before
            clip = audio
            transcript = await runner.submit(clip, runner.bucket(clip), deadline)
    if rate is None:  # judged after admission, which counts the answer
        answer = one_segment(runner.spec, transcript, len(clip) / SAMPLE_RATE)
        answer = refuse_outside(runner.spec, answer, reject_out_of_domain)
        return {"model": runner.spec.name, "version": runner.spec.version, **answer}
    # NOTE: outside the admission scope: each segment is admitted as a request of its own, so
    # a long recording never looks like one request stuck in the queue
    transcription = Transcription(runner, serving.preprocess, deadline)
    try:
        await transcription.feed(audio, rate)
        await transcription.finish()
        answer = await transcription.all()
    finally:
        transcription.close()
    answer = refuse_outside(runner.spec, answer, reject_out_of_domain)
    return {"model": runner.spec.name, "version": runner.spec.version, **answer}


# --- streamed transcription (SSE, TranscribeStream, ModelStreamInfer) ----------------------


class AudioDecoder(Protocol):
    """Bytes as they arrive -> mono float32 samples; `rate` is known once samples come out."""

    @property
    def rate(self) -> int: ...

    def feed(self, data: bytes) -> np.ndarray: ...


DECODE_BYTES = 64 * 1024
"""Audio bytes decoded at a time on the event loop (a few hundred microseconds)."""
FEED_S = 0.1
"""Streamed audio is handed to the transcription in pieces of at least this length."""


class PcmStream:
    """Headerless little-endian PCM: "s16le" (16-bit integers) or "f32le" (32-bit floats)."""

    ENCODINGS: ClassVar[dict[str, tuple[str, float]]] = {
        "s16le": ("<i2", 32768.0),
        "f32le": ("<f4", 1.0),
    }

    def __init__(self, rate: int, encoding: str = "s16le") -> None:
        if encoding not in self.ENCODINGS:
            raise InvalidInput(f"encoding {encoding!r} is not supported; send s16le, f32le or wav")
        if not RATE_RANGE[0] <= rate <= RATE_RANGE[1]:
            raise InvalidInput(
                f"sample rate {rate} Hz not supported; send {RATE_RANGE[0]} to {RATE_RANGE[1]} Hz"
            )
        self.rate = rate
        self.dtype, self.scale = self.ENCODINGS[encoding]
        self.width = np.dtype(self.dtype).itemsize
        self._rest = b""

    def feed(self, data: bytes) -> np.ndarray:
        data = self._rest + data
        usable = len(data) - len(data) % self.width
        self._rest = data[usable:]
        audio = np.frombuffer(data[:usable], self.dtype).astype(np.float32) / self.scale
        if not np.isfinite(audio).all():
            raise InvalidInput("the audio holds NaN or infinite samples")
        return audio


class WavBytes:
    """A WAV file as it arrives (service/processing/speech.py WavStream), errors as 400s."""

    def __init__(self) -> None:
        self._stream = WavStream()

    @property
    def rate(self) -> int:
        return self._stream.rate

    def feed(self, data: bytes) -> np.ndarray:
        try:
            return self._stream.feed(data)
        except ValueError as error:
            raise InvalidInput(f"not a usable WAV stream ({error}); send PCM WAV audio") from None


async def stream_transcription(
    serving: ServingState,
    runner: Runner,
    source: AsyncIterator[bytes],
    decoder: AudioDecoder,
    deadline: float | None = None,
    clock: StreamClock | None = None,
    *,
    whole_if_short: bool = False,
) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
    """Transcribe audio bytes as they arrive: ("segment", its answer) as each segment is done,
    in order, then ("transcript", the whole answer). `clock` bounds how long the source may
    idle (while no segment is in progress) and how long it may run. Whatever ends the iteration
    early (the client went away, an error) drops the unfinished segments."""
    transcription = Transcription(
        runner, serving.preprocess, deadline, whole_if_short=whole_if_short
    )
    if clock is not None:
        clock.busy = lambda: transcription.busy
        source = clock.bounded(source)

    async def pump() -> None:
        pending: list[np.ndarray] = []
        held = 0

        async def flush() -> None:
            nonlocal held
            if held:
                audio = pending[0] if len(pending) == 1 else np.concatenate(pending)
                pending.clear()
                held = 0
                await transcription.feed(audio, decoder.rate)

        try:
            async for data in source:
                # NOTE: decoded a bounded piece at a time, so that the recording's length is
                # checked before a big message becomes float32; and fed on in pieces of at least
                # FEED_S, so that a client sending tiny chunks does not cost a thread hop each
                for start in range(0, len(data), DECODE_BYTES):
                    audio = decoder.feed(data[start : start + DECODE_BYTES])
                    if len(audio):
                        pending.append(audio)
                        held += len(audio)
                        if held >= FEED_S * decoder.rate or held * 4 >= DECODE_BYTES:
                            await flush()
            await flush()
            await transcription.finish()
        except asyncio.CancelledError:
            raise
        except Exception as failure:  # handed to the reader of the results
            transcription.fail(failure)

    pumping = asyncio.ensure_future(pump())
    try:
        async for result in transcription.results():
            yield "segment", result.answer()
        answer = joined(transcription.results_so_far, transcription.duration_s)
        yield "transcript", {"model": runner.spec.name, "version": runner.spec.version, **answer}
    finally:
        pumping.cancel()
        transcription.close()


def signature(runner: Runner) -> Signature:
    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        reject = reject_parameter(request)  # before anything runs
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
            check_utterance(runner, np.ascontiguousarray(waveform[i, : int(lengths[i])]))
            for i in range(count)
        ]
        transcripts = await asyncio.gather(
            *(runner.submit(clip, runner.bucket(clip), request.deadline) for clip in clips)
        )
        texts = np.array([t.text.encode() for t in transcripts], dtype=object)
        confidence = np.array([t.confidence for t in transcripts], dtype=np.float32)
        verdicts = domain_outputs(
            runner.spec,
            confidence.tolist(),
            [t.domain_score for t in transcripts],
            reject,
            KNOWS,
        )
        verdicts.pop("confidence", None)  # already an output of this task
        return {"transcript": texts, "confidence": confidence, **verdicts}

    async def stream(serving: ServingState, runner: Runner, request: InferRequest):
        """One recording of any length (one waveform row), answered segment by segment as
        each is transcribed, then whole; each part's parameters say which segment it is."""
        if reject_parameter(request):
            raise InvalidInput(
                f"{REJECT_PARAMETER} refuses a whole answer; a stream answers as it goes, with "
                "in_domain in each part: leave one of them out"
            )
        waveform = batch_of(request, "waveform", "FP32", 2)
        if waveform.shape[0] != 1:
            raise InvalidInput(
                f"with the stream parameter, send one waveform row (one recording of any "
                f"length), got {waveform.shape[0]}"
            )
        samples = waveform.shape[1]
        if "lengths" in request.inputs:
            lengths = batch_of(request, "lengths", "INT64", 1)
            check_rows(request, runner, waveform, lengths)
            samples = int(lengths[0])
            if not 1 <= samples <= waveform.shape[1]:
                raise InvalidInput(f"lengths must be between 1 and {waveform.shape[1]}")
        audio = np.ascontiguousarray(waveform[0, :samples], dtype="<f4")
        if not np.isfinite(audio).all():
            raise InvalidInput("waveform holds NaN or infinite samples")
        check_recording(runner.config, len(audio), SAMPLE_RATE)

        async def source() -> AsyncIterator[bytes]:
            yield audio.tobytes()

        decoder = PcmStream(SAMPLE_RATE, "f32le")
        judging = bool(verdict_tensors(runner.spec))
        events = stream_transcription(
            serving, runner, source(), decoder, request.deadline, whole_if_short=True
        )
        async for kind, answer in events:
            outputs = {
                "transcript": np.array([answer["text"].encode()], dtype=object),
                "confidence": np.array([answer["confidence"]], dtype=np.float32),
            }
            if judging:  # a part without speech (or a refused segment) has nothing judged
                outputs["in_domain"] = np.array([answer.get("in_domain", True)], dtype=bool)
                score = answer.get("domain_score", 0.0)
                outputs["domain_score"] = np.array([score], dtype=np.float32)
            if kind == "segment":
                parameters: dict[str, bool | int | float | str] = {
                    "segment_index": answer["index"],
                    "segment_start_s": float(answer["start_s"]),
                    "segment_end_s": float(answer["end_s"]),
                }
                if "error" in answer:
                    parameters["segment_error"] = answer["error"]
            else:
                parameters = {"segments": len(answer["segments"])}
            yield Part(outputs, parameters)

    return Signature(
        stream=stream,
        parameters={
            "stream": "ModelStreamInfer only: true answers one recording (one waveform row, any "
            "length) segment by segment, then whole (parameters segment_index, "
            "segment_start_s, segment_end_s; the last response: segments)",
            **({REJECT_PARAMETER: REJECT_HELP} if verdict_tensors(runner.spec) else {}),
        },
        inputs=[
            Tensor("waveform", "FP32", [-1, -1], description=f"mono {SAMPLE_RATE} Hz, [-1, 1]"),
            Tensor("lengths", "INT64", [-1], optional=True, description="valid samples per row"),
        ],
        outputs=[
            Tensor("transcript", "BYTES", [-1]),
            Tensor("confidence", "FP32", [-1]),
            *[t for t in verdict_tensors(runner.spec) if t.name != "confidence"],
        ],
        infer=infer,
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


Seconds = Annotated[float, Field(ge=0)]


class TranscribedSegment(ResponseModel):
    """One stretch of speech between silences (the whole clip when it is one utterance)."""

    index: Annotated[int, Field(ge=0)]
    start_s: Seconds
    end_s: Seconds
    text: str
    confidence: Probability
    error: str | None = None
    """Why this segment has no transcript (the others are unaffected)."""
    in_domain: bool | Absent = absent()
    """Only for a model with a domain verdict: false when this speech is outside what the model
    knows (GET /v1/models: understands)."""
    domain_score: float | Absent = absent()


class TranscribeResult(TaskAnswer):
    text: str
    """The segments' texts in order."""
    confidence: Probability
    """The segments' confidences, weighted by their length (0 without speech); calibrated where
    the model's spec says so."""
    in_domain: bool | Absent = absent()
    """Only for a model with a domain verdict: false when any segment's speech is outside what
    the model knows; ?reject_out_of_domain=true turns that into a 422."""
    domain_score: float | Absent = absent()
    """The highest of the segments' domain scores."""
    duration_s: Seconds
    """The audio's length."""
    segments: list[TranscribedSegment]
    """Audio longer than the model's utterance limit is split at silences, each segment
    transcribed on its own; shorter audio is one segment."""


def understands(spec: ModelSpec) -> dict[str, Any] | None:
    """The phrases and digit words a built-in recogniser was trained on (spec.extra); None for
    an imported model, which records none."""
    phrases, digits = spec.extra.get("phrases"), spec.extra.get("digit_words")
    if not phrases and not digits:
        return None
    return {
        "phrases": [str(p) for p in phrases or []],
        "digit_words": [str(w) for w in digits or []],
        "note": "digit strings are these words in any order; other speech is outside what the "
        "model learnt, and its transcript will be wrong",
    }


TASK = Task(
    name=NAME,
    position=30,
    summary="WAV audio -> transcript",
    kernel=SpeechRecognizer,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(TranscribeResult, TranscribedSegment),
    builtin_models=("speech-ctc",),
    importing=ImportRule(NAME, prepare_speech, needs_vocabulary=True, strip_vocabulary=False),
    understands=understands,
)
