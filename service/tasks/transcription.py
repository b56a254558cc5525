"""Long-form and streamed transcription: audio of any length, split at silences, each segment a
batcher item of its own.

A `Transcription` takes audio as it comes (a whole recording at once, or a live stream chunk by
chunk): it resamples it to the model's rate block by block, runs the voice-activity segmenter
(service/processing/vad.py) and submits every segment to the model's runner as soon as the
segmenter closes it. So the segments of one recording are batched together and with other users'
requests, and a live stream's segments are transcribed while the speaker goes on. Results come
out in order (`results`), each as soon as it and every earlier segment are done.

Bounds: the recording's length (max_audio_seconds, 413) is checked as audio arrives, before it is
resampled; the number of segments (max_segments, 400) as they close; at most `segment_window`
segments of one transcription are in the model's queue at once, so a long recording cannot fill
the queue that other requests share. A segment the model refuses (InvalidInput) is answered with
its error and the others go on; any other failure (overload, deadline, unload) ends the whole
transcription. `close` drops whatever is unfinished (the client went away): queued items are
abandoned in the batcher, waiting segments never submitted, and the count is a metric.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from service.core.errors import InvalidInput, PayloadTooLarge
from service.core.metrics import note_dropped_segments, observe_segment_result, observe_segments
from service.core.model_settings import ModelSettings
from service.processing.speech import SAMPLE_RATE, Resampler, Transcript, to_model_rate
from service.processing.vad import Segment, Segmenter
from service.runners.base import Runner
from service.store.specs import ModelSpec
from service.tasks.base import judged, outside_by

T = TypeVar("T")
Offload = Callable[[Callable[[], T]], Awaitable[T]]
"""Runs CPU work (resampling, voice-activity detection) off the event loop."""

MIN_SEGMENT_SAMPLES = SAMPLE_RATE // 20
"""What the model accepts (50 ms); the segmenter never closes a shorter segment."""


def utterance_seconds(runner: Runner) -> float:
    """The longest audio the model takes as one item: max_segment_seconds, capped by the model
    spec's own limit (what it was trained on)."""
    trained = runner.spec.preprocessing.get("max_seconds")
    limit = runner.config.max_segment_seconds
    return min(limit, float(trained)) if isinstance(trained, int | float) else limit


def check_recording(config: ModelSettings, samples: int, rate: int) -> None:
    seconds = samples / rate
    if seconds > config.max_audio_seconds:
        raise PayloadTooLarge(
            f"audio is {seconds:.1f} s long; the limit is {config.max_audio_seconds:g} s "
            "(setting max_audio_seconds)"
        )


@dataclass
class SegmentResult:
    """One segment's transcript, with where it is in the audio."""

    index: int
    start_s: float
    end_s: float
    text: str
    confidence: float
    error: str = ""
    """Why this segment has no transcript (the others are unaffected)."""
    verdict: dict[str, Any] = field(default_factory=dict)
    """in_domain and domain_score, for a model with a domain verdict (tasks.base.judged)."""

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "text": self.text,
            "confidence": round(self.confidence, 6),
        }
        if self.error:
            out["error"] = self.error
        out.update((k, v) for k, v in self.verdict.items() if k in ("in_domain", "domain_score"))
        return out


def segment_of(
    spec: ModelSpec, index: int, start_s: float, end_s: float, transcript: Transcript
) -> SegmentResult:
    """A segment's result from its transcript, with the model's verdict on it (and how far its
    score is past the threshold, outside_by, so that joined() can name the worst segment)."""
    verdict = judged(spec, float(transcript.confidence), transcript.domain_score)
    if "in_domain" in verdict:
        verdict["outside_by"] = outside_by(spec, verdict["domain_score"])
    return SegmentResult(
        index, start_s, end_s, transcript.text, float(transcript.confidence), verdict=verdict
    )


def joined(segments: list[SegmentResult], duration_s: float) -> dict[str, Any]:
    """The whole transcript: the segments' texts in order; confidence is the segments' mean
    weighted by their length (0 without speech)."""
    spoken = [s for s in segments if s.text]
    weights = [s.end_s - s.start_s for s in spoken]
    confidence = (
        float(np.average([s.confidence for s in spoken], weights=weights))
        if spoken and sum(weights) > 0
        else 0.0
    )
    answer = {
        "text": " ".join(s.text for s in spoken),
        "confidence": round(confidence, 6),
        "duration_s": round(duration_s, 3),
        "segments": [s.answer() for s in segments],
    }
    verdicts = [s.verdict for s in segments if "in_domain" in s.verdict]
    if verdicts:  # the whole is outside the domain when any segment is: the worst one speaks
        worst = min(verdicts, key=lambda v: (v["in_domain"], -v["outside_by"]))
        answer["in_domain"] = worst["in_domain"]
        answer["domain_score"] = worst["domain_score"]
    return answer


class Transcription:
    """One transcription in progress (see the module docstring). Feed audio with `feed`, end it
    with `finish`, read results with `results`; always `close` it (drops unfinished work)."""

    def __init__(
        self,
        runner: Runner,
        offload: Offload[Any],
        deadline: float | None = None,
        *,
        whole_if_short: bool = False,
    ) -> None:
        self.runner = runner
        self.offload = offload
        self.config = runner.config
        self.rate = 0
        """The input's sample rate, set by the first `feed`."""
        self.deadline = deadline
        self.resampler = Resampler(SAMPLE_RATE)
        self.segmenter = Segmenter(SAMPLE_RATE, max_segment_s=utterance_seconds(runner))
        self._received = 0
        """Samples fed, at the input rate."""
        self._held: list[np.ndarray] | None = [] if whole_if_short else None
        """whole_if_short: the input so far while it is no longer than one utterance; if the
        audio ends within that, it is one segment, sent whole as /v1/transcribe sends it (no
        voice-activity detection). For audio known whole up front, not for live streams."""
        self._window = asyncio.Semaphore(self.config.segment_window)
        self._tasks: deque[asyncio.Task[SegmentResult]] = deque()
        self._count = 0
        self._finished = False
        self._failure: BaseException | None = None
        self._changed = asyncio.Event()
        self.results_so_far: list[SegmentResult] = []

    @property
    def duration_s(self) -> float:
        return self._received / self.rate if self.rate else 0.0

    @property
    def busy(self) -> bool:
        """Segments submitted and not yet answered."""
        return any(not task.done() for task in self._tasks)

    async def feed(self, audio: np.ndarray, rate: int) -> None:
        """Add decoded mono audio at `rate` (the same for every call); the segments it closes
        are submitted at once."""
        if not self.rate:
            self.rate, self.resampler = rate, Resampler(rate)
        elif rate != self.rate:
            raise InvalidInput(f"the sample rate changed from {self.rate} to {rate} Hz")
        check_recording(self.config, self._received + len(audio), self.rate)
        self._received += len(audio)
        if self._held is not None:
            self._held.append(audio)
            if self._received <= utterance_seconds(self.runner) * self.rate:
                return
            audio, self._held = np.concatenate(self._held), None  # too long: segment it

        def segments() -> list[Segment]:
            return self.segmenter.feed(np.clip(self.resampler.feed(audio), -1.0, 1.0))

        for segment in await self.offload(segments):
            self._submit(segment)

    async def finish(self) -> None:
        """The audio has ended: submit what is left."""
        if self._finished:
            return

        held = self._held

        def segments() -> list[Segment]:
            if held is not None:  # one utterance: whole, resampled as one clip
                if not self._received:
                    return []
                clip = to_model_rate(np.concatenate([np.zeros(0, np.float32), *held]), self.rate)
                return [Segment(0, 0, len(clip), clip)]
            tail = np.clip(self.resampler.finish(), -1.0, 1.0)
            return [*self.segmenter.feed(tail), *self.segmenter.finish()]

        for segment in await self.offload(segments):
            self._submit(segment)
        self._finished = True
        self._changed.set()

    def fail(self, failure: BaseException) -> None:
        """The audio source failed (bad bytes, a limit, a timeout): `results` raises it."""
        self._failure = failure
        self._changed.set()

    def _submit(self, segment: Segment) -> None:
        if self._count >= self.config.max_segments:
            raise InvalidInput(
                f"the audio has more than {self.config.max_segments} speech segments, the limit "
                "(setting max_segments); send shorter recordings"
            )
        self._count += 1
        closed_at = time.perf_counter()
        task = asyncio.ensure_future(self._run(segment, closed_at))
        self._tasks.append(task)
        self._changed.set()

    async def _run(self, segment: Segment, closed_at: float) -> SegmentResult:
        start_s, end_s = segment.seconds(SAMPLE_RATE)
        audio = segment.audio
        async with self._window:
            try:
                if len(audio) < MIN_SEGMENT_SAMPLES:
                    raise InvalidInput(
                        f"segment is {len(audio) * 1000 // SAMPLE_RATE} ms long; the model needs "
                        "at least 50 ms"
                    )
                with self.runner.admission.admit():  # each segment is a request of its own
                    transcript = await self.runner.submit(
                        audio, self.runner.bucket(audio), self.deadline
                    )
            except InvalidInput as error:
                return SegmentResult(segment.index, start_s, end_s, "", 0.0, error.message)
        spec = self.runner.spec
        observe_segment_result(spec.name, spec.version, time.perf_counter() - closed_at)
        return segment_of(spec, segment.index, start_s, end_s, transcript)

    async def results(self) -> AsyncIterator[SegmentResult]:
        """Each segment's result in order, as soon as it and the ones before are done; ends
        once `finish` was called and every segment is answered. A failure of the source
        (`fail`) or of a segment (other than a refused one) is raised here."""
        while True:
            if self._failure is not None:
                raise self._failure
            if self._tasks:
                result = await asyncio.shield(self._tasks[0])
                self._tasks.popleft()
                self.results_so_far.append(result)
                yield result
                continue
            if self._finished:
                spec = self.runner.spec
                observe_segments(spec.name, spec.version, len(self.results_so_far))
                return
            self._changed.clear()
            await self._changed.wait()

    async def all(self) -> dict[str, Any]:
        """Every result (after `finish`), joined."""
        async for _ in self.results():
            pass
        return joined(self.results_so_far, self.duration_s)

    def close(self) -> None:
        """Drop unfinished work: cancelled segments leave the batcher's queue unrun."""
        dropped = 0
        for task in self._tasks:
            if not task.done():
                task.cancel()
                dropped += 1
            elif not task.cancelled():
                task.exception()  # retrieved: a failure already raised elsewhere is not logged
        self._tasks.clear()
        spec = self.runner.spec
        note_dropped_segments(spec.name, spec.version, dropped)
