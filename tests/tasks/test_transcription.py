"""Long-form and streamed transcription against a fake speech model: segment order, per-segment
refusals, limits, the segment window, dropping unfinished work, and the streaming decoders."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from service.batching.admission import Admission
from service.core.errors import InvalidInput, Overloaded, PayloadTooLarge, StreamTimedOut
from service.core.model_settings import ModelSettings
from service.core.settings import Settings
from service.core.streaming import StreamClock
from service.processing.speech import Transcript
from service.tasks.speech_recognition import (
    PcmStream,
    WavBytes,
    check_utterance,
    stream_transcription,
)
from service.tasks.transcription import (
    SegmentResult,
    Transcription,
    check_recording,
    joined,
    utterance_seconds,
)
from tests.processing.test_vad import PAD, RATE, compose

MODEL, VERSION = "fake-ctc", "v1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DEEPSERVE_"):
            monkeypatch.delenv(name)


@dataclass
class FakeSpec:
    name: str = MODEL
    version: str = VERSION
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # no domain verdict


class FakeRunner:
    """Duck-typed Runner: answers each segment with its length in samples ("n<length>") after
    `delay(call number)` seconds; `refuse(call number)` raises what it returns."""

    def __init__(
        self,
        config: ModelSettings | None = None,
        delay: Callable[[int], float] = lambda call: 0.0,
        refuse: Callable[[int], Exception | None] = lambda call: None,
        preprocessing: dict[str, Any] | None = None,
    ) -> None:
        self.spec = FakeSpec(preprocessing=preprocessing or {})
        self.config = config or ModelSettings()
        self.admission = Admission(MODEL, max_requests=1000, max_wait_s=0)
        self.delay, self.refuse = delay, refuse
        self.calls = 0
        self.inside = 0
        self.most_inside = 0
        self.cancelled = 0
        self.deadlines: list[float | None] = []
        self.gate: asyncio.Event | None = None
        """When set, every call waits for it (after its delay)."""

    def bucket(self, item: np.ndarray) -> int:
        return len(item) // RATE

    async def submit(self, item: np.ndarray, key: int, deadline: float | None) -> Transcript:
        call = self.calls
        self.calls += 1
        self.deadlines.append(deadline)
        assert key == self.bucket(item)
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            await asyncio.sleep(self.delay(call))
            if self.gate is not None:
                await self.gate.wait()
            refusal = self.refuse(call)
            if refusal is not None:
                raise refusal
            return Transcript(f"n{len(item)}", 0.5 + 0.4 * (len(item) % 2))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.inside -= 1


async def inline(func: Callable[[], Any]) -> Any:
    return func()


async def threaded(func: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(func)


class FakeServing:
    def __init__(self) -> None:
        self.calls = 0

    async def preprocess(self, func: Callable[..., Any], *args: Any) -> Any:
        self.calls += 1
        return func(*args)


def bursts(count: int, speech_s: float = 0.5, pause_s: float = 0.6) -> np.ndarray:
    """`count` bursts of speech-like sound, each 60 ms longer than the one before (segments of
    different lengths: the fake's answers tell them apart), between pauses of low noise, after
    0.1 s of zeros."""
    parts: list[tuple[str, float]] = [("zeros", 0.1)]
    for n in range(count):
        parts += [("speech", speech_s + 0.06 * n), ("pause", pause_s)]
    return compose(*parts)[0]


def s16le(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def run(scenario: Any, timeout: float = 30.0) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, timeout))


def dropped() -> float:
    labels = {"model": MODEL, "version": VERSION}
    return REGISTRY.get_sample_value("deepserve_dropped_segments_total", labels) or 0.0


def check_in_order(results: list[SegmentResult], count: int) -> None:
    assert [r.index for r in results] == list(range(count))
    for before, after in itertools.pairwise(results):
        assert before.end_s <= after.start_s
    for result in results:
        if result.error:
            continue
        # the fake's text is the length of the segment's audio: its span, and digital silence
        # where its pad reaches past the start or the end of the audio (the first and last)
        span = round((result.end_s - result.start_s) * RATE)
        sent = int(result.text.removeprefix("n"))
        if result.index in (0, count - 1):
            assert span <= sent <= span + 2 * PAD
        else:
            assert sent == span


async def transcribe_all(
    runner: FakeRunner, audio: np.ndarray, rate: int = RATE, chunk: int | None = None, **kw: Any
) -> tuple[dict[str, Any], list[SegmentResult]]:
    transcription = Transcription(runner, kw.pop("offload", inline), **kw)
    try:
        step = chunk or len(audio)
        for start in range(0, len(audio), step):
            await transcription.feed(audio[start : start + step], rate)
        await transcription.finish()
        answer = await transcription.all()
    finally:
        transcription.close()
    return answer, transcription.results_so_far


# --- Transcription -------------------------------------------------------------------------


@pytest.mark.parametrize("offload", [inline, threaded], ids=["inline", "to_thread"])
def test_results_in_segment_order_when_later_segments_answer_first(offload: Any) -> None:
    rng = random.Random(7)
    runner = FakeRunner(delay=lambda call: max(0.0, 0.15 - 0.03 * call) + rng.uniform(0, 0.02))
    answer, results = run(transcribe_all(runner, bursts(5), offload=offload, deadline=123.0))
    check_in_order(results, 5)
    assert runner.calls == 5
    assert set(runner.deadlines) == {123.0}
    assert answer["text"] == " ".join(r.text for r in results)
    assert [s["index"] for s in answer["segments"]] == list(range(5))
    assert answer["duration_s"] == pytest.approx(len(bursts(5)) / RATE, abs=1e-3)


def test_results_come_as_soon_as_earlier_segments_are_done() -> None:
    async def scenario() -> None:
        runner = FakeRunner(delay=lambda call: 10.0 if call == 1 else 0.0)
        transcription = Transcription(runner, inline)
        try:
            await transcription.feed(bursts(3), RATE)
            await transcription.finish()
            results = transcription.results()
            first = await asyncio.wait_for(anext(results), 5)
            assert first.index == 0 and first.text
            with pytest.raises(TimeoutError):  # segment 1 holds back 2, though 2 is done
                await asyncio.wait_for(asyncio.shield(anext(results)), 0.3)
            assert transcription.busy
        finally:
            transcription.close()

    run(scenario())


def test_resampled_input_gives_the_same_segments() -> None:
    audio = bursts(3)
    at_48k = np.repeat(audio, 3)  # crude, but speech to the detector after resampling
    _, direct = run(transcribe_all(FakeRunner(), audio))
    _, resampled = run(transcribe_all(FakeRunner(), at_48k, rate=48000, chunk=4801))
    assert len(resampled) == len(direct) == 3
    for a, b in zip(direct, resampled, strict=True):
        assert a.start_s == pytest.approx(b.start_s, abs=0.1)
        assert a.end_s == pytest.approx(b.end_s, abs=0.1)


def test_a_refused_segment_has_its_error_and_the_others_go_on() -> None:
    runner = FakeRunner(refuse=lambda call: InvalidInput("no speech here") if call == 1 else None)
    answer, results = run(transcribe_all(runner, bursts(3)))
    check_in_order(results, 3)
    assert [bool(r.error) for r in results] == [False, True, False]
    assert results[1].error == "no speech here" and results[1].text == ""
    assert answer["segments"][1]["error"] == "no speech here"
    assert "error" not in answer["segments"][0]
    assert answer["text"] == f"{results[0].text} {results[2].text}"


def test_overload_ends_the_transcription() -> None:
    async def scenario() -> None:
        runner = FakeRunner(refuse=lambda call: Overloaded("busy") if call == 1 else None)
        transcription = Transcription(runner, inline)
        seen = []
        try:
            await transcription.feed(bursts(3), RATE)
            await transcription.finish()
            with pytest.raises(Overloaded, match="busy"):
                async for result in transcription.results():
                    seen.append(result.index)
        finally:
            transcription.close()
        assert seen == [0]

    run(scenario())


def test_more_segments_than_max_segments_is_refused() -> None:
    runner = FakeRunner(ModelSettings(max_segments=2))
    with pytest.raises(InvalidInput, match="max_segments") as caught:
        run(transcribe_all(runner, bursts(4), chunk=RATE // 10))
    assert caught.value.http_status == 400
    assert runner.calls <= 2


def test_more_audio_than_max_audio_seconds_is_refused_before_processing() -> None:
    async def scenario() -> None:
        offloaded = []

        async def counting(func: Callable[[], Any]) -> Any:
            offloaded.append(func)
            return func()

        runner = FakeRunner(ModelSettings(max_audio_seconds=2.0))
        transcription = Transcription(runner, counting)
        try:
            with pytest.raises(PayloadTooLarge, match="max_audio_seconds") as caught:
                await transcription.feed(np.zeros(3 * 48000, np.float32), 48000)
            assert caught.value.http_status == 413
            assert offloaded == [] and transcription.segmenter.position == 0
            await transcription.feed(np.zeros(48000, np.float32), 48000)  # 1 s: fine
            with pytest.raises(PayloadTooLarge):  # 1 s + 1.5 s: over, counted across feeds
                await transcription.feed(np.zeros(72000, np.float32), 48000)
            assert len(offloaded) == 1
        finally:
            transcription.close()

    run(scenario())


def test_never_more_than_segment_window_inside_the_model() -> None:
    rng = random.Random(3)
    runner = FakeRunner(ModelSettings(segment_window=2), delay=lambda _: rng.uniform(0.01, 0.05))
    _, results = run(transcribe_all(runner, bursts(7, speech_s=0.4, pause_s=0.5)))
    check_in_order(results, 7)
    assert runner.most_inside == 2


def test_close_cancels_pending_segments_and_counts_them() -> None:
    async def scenario() -> None:
        runner = FakeRunner(ModelSettings(segment_window=2))
        runner.gate = asyncio.Event()  # never set: the model never answers
        transcription = Transcription(runner, inline)
        before = dropped()
        await transcription.feed(bursts(3), RATE)
        await transcription.finish()
        for _ in range(100):
            if runner.inside == 2:
                break
            await asyncio.sleep(0.01)
        assert runner.inside == 2 and transcription.busy
        transcription.close()
        for _ in range(100):
            if runner.inside == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.cancelled == 2  # the third never reached the model
        assert runner.calls == 2
        assert dropped() == before + 3
        assert not transcription.busy

    run(scenario())


def test_rate_change_between_feeds_is_refused() -> None:
    async def scenario() -> None:
        transcription = Transcription(FakeRunner(), inline)
        try:
            await transcription.feed(np.zeros(4410, np.float32), 44100)
            with pytest.raises(InvalidInput, match="44100 to 48000"):
                await transcription.feed(np.zeros(4800, np.float32), 48000)
        finally:
            transcription.close()

    run(scenario())


def test_silence_gives_an_empty_transcript() -> None:
    answer, results = run(transcribe_all(FakeRunner(), np.zeros(3 * RATE, np.float32)))
    assert results == []
    assert answer == {"text": "", "confidence": 0.0, "duration_s": 3.0, "segments": []}


def test_whole_if_short_sends_short_audio_whole() -> None:
    audio = bursts(2)  # 2.3 s, two bursts: under the 5 s utterance limit
    runner = FakeRunner()
    answer, results = run(transcribe_all(runner, audio, chunk=4000, whole_if_short=True))
    assert len(results) == 1 and runner.calls == 1
    assert (results[0].start_s, results[0].end_s) == (0.0, len(audio) / RATE)
    assert results[0].text == f"n{len(audio)}"
    assert answer["duration_s"] == pytest.approx(len(audio) / RATE, abs=1e-3)


def test_whole_if_short_resamples_the_clip_and_skips_voice_detection() -> None:
    silence = np.zeros(3 * 48000, np.float32)  # no speech: segmented, it would be no segment
    _, results = run(
        transcribe_all(FakeRunner(), silence, rate=48000, chunk=7000, whole_if_short=True)
    )
    assert [r.text for r in results] == [f"n{3 * RATE}"]


def test_whole_if_short_segments_audio_over_the_limit() -> None:
    config = ModelSettings(max_segment_seconds=2.0)
    audio = bursts(3)  # 3.4 s
    _, segmented = run(transcribe_all(FakeRunner(config), audio, chunk=4000))
    _, held = run(transcribe_all(FakeRunner(config), audio, chunk=4000, whole_if_short=True))
    assert len(held) == 3
    assert [(r.start_s, r.end_s, r.text) for r in held] == [
        (r.start_s, r.end_s, r.text) for r in segmented
    ]


# --- joined, utterance_seconds, check_recording, check_utterance ---------------------------


def test_joined_weights_confidence_by_length() -> None:
    segments = [
        SegmentResult(0, 0.0, 1.0, "one", 0.9),
        SegmentResult(1, 1.5, 4.5, "two", 0.5),
        SegmentResult(2, 5.0, 9.0, "", 0.0, error="refused"),  # no text: no weight
    ]
    answer = joined(segments, 10.0)
    assert answer["text"] == "one two"
    assert answer["confidence"] == pytest.approx((0.9 * 1 + 0.5 * 3) / 4)
    assert answer["duration_s"] == 10.0
    assert answer["segments"][2] == {
        "index": 2,
        "start_s": 5.0,
        "end_s": 9.0,
        "text": "",
        "confidence": 0.0,
        "error": "refused",
    }
    assert joined([], 1.23456) == {
        "text": "",
        "confidence": 0.0,
        "duration_s": 1.235,
        "segments": [],
    }
    zero_length = [SegmentResult(0, 1.0, 1.0, "x", 0.7)]
    assert joined(zero_length, 2.0)["confidence"] == 0.0


@pytest.mark.parametrize(
    ("preprocessing", "setting", "expected"),
    [
        ({}, 5.0, 5.0),
        ({"max_seconds": 3}, 5.0, 3.0),
        ({"max_seconds": 10.0}, 5.0, 5.0),
        ({"max_seconds": "3"}, 4.0, 4.0),  # not a number: the setting alone
    ],
)
def test_utterance_seconds(preprocessing: dict, setting: float, expected: float) -> None:
    runner = FakeRunner(ModelSettings(max_segment_seconds=setting), preprocessing=preprocessing)
    assert utterance_seconds(runner) == expected


def test_check_recording() -> None:
    config = ModelSettings(max_audio_seconds=10.0)
    check_recording(config, 10 * 48000, 48000)
    with pytest.raises(PayloadTooLarge, match=r"10\.1 s long.*limit is 10 s"):
        check_recording(config, 10 * 48000 + 4800, 48000)


def test_check_utterance() -> None:
    runner = FakeRunner(ModelSettings(max_segment_seconds=2.0), preprocessing={"max_seconds": 5})
    audio = np.zeros(2 * RATE, np.float32)
    assert check_utterance(runner, audio) is audio
    with pytest.raises(InvalidInput, match="one utterance of at most 2 s"):
        check_utterance(runner, np.zeros(2 * RATE + 1, np.float32))
    with pytest.raises(InvalidInput, match="at least 50 ms"):
        check_utterance(runner, np.zeros(RATE // 20 - 1, np.float32))


# --- PcmStream, WavBytes -------------------------------------------------------------------


def fed_in(decoder: Any, data: bytes, sizes: list[int]) -> np.ndarray:
    out, position, turn = [], 0, 0
    while position < len(data):
        size = sizes[turn % len(sizes)]
        out.append(decoder.feed(data[position : position + size]))
        position += size
        turn += 1
    return np.concatenate(out)


@pytest.mark.parametrize("sizes", [[1], [3], [7, 1, 2], [1001]])
def test_pcm_s16le_across_odd_chunk_boundaries(sizes: list[int]) -> None:
    values = np.random.default_rng(0).integers(-32768, 32768, 999).astype("<i2")
    out = fed_in(PcmStream(8000, "s16le"), values.tobytes(), sizes)
    np.testing.assert_array_equal(out, values.astype(np.float32) / 32768)
    assert out.dtype == np.float32


@pytest.mark.parametrize("sizes", [[1], [3], [5, 6, 7], [4000]])
def test_pcm_f32le_across_odd_chunk_boundaries(sizes: list[int]) -> None:
    values = np.random.default_rng(1).uniform(-1, 1, 999).astype("<f4")
    stream = PcmStream(48000, "f32le")
    np.testing.assert_array_equal(fed_in(stream, values.tobytes(), sizes), values)
    assert stream.rate == 48000


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_pcm_f32le_refuses_non_finite_samples(bad: float) -> None:
    data = np.array([0.1, bad, 0.2], "<f4").tobytes()
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        fed_in(PcmStream(16000, "f32le"), data, [5])


@pytest.mark.parametrize(
    ("rate", "encoding", "needle"),
    [
        (16000, "mp3", "encoding 'mp3'"),
        (16000, "S16LE", "encoding"),
        (7999, "s16le", "7999 Hz"),
        (192001, "f32le", "192001 Hz"),
        (0, "s16le", "0 Hz"),
    ],
)
def test_pcm_stream_refuses_bad_encoding_or_rate(rate: int, encoding: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        PcmStream(rate, encoding)


def test_wav_bytes_errors_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"not a usable WAV stream.*Ogg"):
        WavBytes().feed(b"OggS" + bytes(40))
    decoder = WavBytes()
    header = b"RIFF\x00\x00\x00\x00WAVE" + b"data\x00\x00\x00\x00"
    with pytest.raises(InvalidInput, match="data chunk before its fmt chunk"):
        decoder.feed(header)


def test_wav_bytes_decodes_as_it_arrives() -> None:
    values = np.arange(-500, 500, dtype="<i2")
    fmt = b"fmt \x10\x00\x00\x00" + np.array([1, 1], "<u2").tobytes()
    fmt += np.array([22050, 44100], "<u4").tobytes() + np.array([2, 16], "<u2").tobytes()
    data = b"RIFF\xff\xff\xff\xffWAVE" + fmt + b"data\xff\xff\xff\xff" + values.tobytes()
    decoder = WavBytes()
    assert decoder.rate == 0
    out = fed_in(decoder, data, [9])
    assert decoder.rate == 22050
    np.testing.assert_array_equal(out, values.astype(np.float32) / 32768)


# --- stream_transcription ------------------------------------------------------------------


async def chunks_of(data: bytes, size: int, pause_s: float = 0.0) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if pause_s:
            await asyncio.sleep(pause_s)
        yield data[start : start + size]


async def collect(events: AsyncIterator[tuple[str, dict[str, Any]]]) -> list[Any]:
    return [event async for event in events]


def test_stream_yields_segments_in_order_then_the_transcript() -> None:
    rng = random.Random(5)
    runner = FakeRunner(delay=lambda call: max(0.0, 0.1 - 0.03 * call) + rng.uniform(0, 0.02))
    audio = bursts(4)
    source = chunks_of(s16le(audio), 3201)  # odd: samples split across chunks
    events = run(collect(stream_transcription(FakeServing(), runner, source, PcmStream(RATE))))
    kinds = [kind for kind, _ in events]
    assert kinds == ["segment"] * 4 + ["transcript"]
    assert [data["index"] for _, data in events[:4]] == [0, 1, 2, 3]
    transcript = events[-1][1]
    assert transcript["model"] == MODEL and transcript["version"] == VERSION
    assert transcript["segments"] == [data for _, data in events[:4]]
    assert transcript["text"] == " ".join(data["text"] for _, data in events[:4])
    assert transcript["duration_s"] == pytest.approx(len(audio) / RATE, abs=1e-3)


def test_stream_of_a_wav_at_another_rate() -> None:
    audio = np.repeat(bursts(2), 3)
    fmt = b"fmt \x10\x00\x00\x00" + np.array([1, 1], "<u2").tobytes()
    fmt += np.array([48000, 96000], "<u4").tobytes() + np.array([2, 16], "<u2").tobytes()
    wav = b"RIFF\xff\xff\xff\xffWAVE" + fmt + b"data\xff\xff\xff\xff" + s16le(audio)
    source = chunks_of(wav, 10007)
    events = run(collect(stream_transcription(FakeServing(), FakeRunner(), source, WavBytes())))
    assert [kind for kind, _ in events] == ["segment", "segment", "transcript"]


def test_stream_whole_if_short_is_one_segment() -> None:
    audio = bursts(2)
    source = chunks_of(np.asarray(audio, "<f4").tobytes(), 4001)
    events = run(
        collect(
            stream_transcription(
                FakeServing(), FakeRunner(), source, PcmStream(RATE, "f32le"), whole_if_short=True
            )
        )
    )
    assert [kind for kind, _ in events] == ["segment", "transcript"]
    assert events[0][1]["text"] == f"n{len(audio)}" == events[1][1]["text"]


def test_a_failing_source_ends_the_stream_with_its_error() -> None:
    async def source() -> AsyncIterator[bytes]:
        data = s16le(bursts(2))
        yield data[: len(data) // 2]
        raise ConnectionResetError("the client went away")

    async def scenario() -> None:
        runner = FakeRunner()
        events = stream_transcription(FakeServing(), runner, source(), PcmStream(RATE))
        with pytest.raises(ConnectionResetError, match="went away"):
            await collect(events)

    run(scenario())


def test_bad_bytes_end_the_stream_with_invalid_input() -> None:
    async def scenario() -> None:
        source = chunks_of(np.array([0.5, np.nan], "<f4").tobytes(), 8)
        events = stream_transcription(FakeServing(), FakeRunner(), source, PcmStream(RATE, "f32le"))
        with pytest.raises(InvalidInput, match="NaN"):
            await collect(events)

    run(scenario())


def test_leaving_the_stream_early_drops_unfinished_segments() -> None:
    async def scenario() -> None:
        runner = FakeRunner(delay=lambda call: 0.0 if call == 0 else 30.0)
        before = dropped()
        source = chunks_of(s16le(bursts(3)), RATE // 10)
        events = stream_transcription(FakeServing(), runner, source, PcmStream(RATE))
        kind, first = await anext(events)
        assert (kind, first["index"]) == ("segment", 0)
        for _ in range(200):  # let the rest of the audio be read and submitted
            if runner.calls == 3:
                break
            await asyncio.sleep(0.01)
        await events.aclose()
        for _ in range(100):
            if runner.inside == 0:
                break
            await asyncio.sleep(0.01)
        assert runner.cancelled == 2
        assert dropped() == before + 2

    run(scenario())


def test_a_stalled_source_times_out() -> None:
    async def stalling() -> AsyncIterator[bytes]:
        yield s16le(bursts(1, pause_s=0.1))[:9600]
        await asyncio.sleep(30)
        yield b""

    async def scenario() -> None:
        clock = StreamClock(Settings(stream_idle_timeout_s=0.2))
        events = stream_transcription(
            FakeServing(),
            FakeRunner(),
            stalling(),
            PcmStream(RATE),
            clock=clock,
        )
        with pytest.raises(StreamTimedOut) as caught:
            await collect(events)
        assert caught.value.end == "idle_timeout"

    run(scenario(), timeout=10)


def test_a_stalled_source_does_not_time_out_while_a_segment_is_in_the_model() -> None:
    audio = s16le(bursts(2))
    split = len(audio) // 2  # after the first burst and its pause: segment 0 is closed

    async def scenario() -> None:
        runner = FakeRunner()
        gate = runner.gate = asyncio.Event()

        async def stalling() -> AsyncIterator[bytes]:
            yield audio[:split]
            await asyncio.sleep(0.8)  # four idle timeouts, while segment 0 waits in the model
            assert runner.calls == 1 and runner.inside == 1
            gate.set()
            yield audio[split:]

        clock = StreamClock(Settings(stream_idle_timeout_s=0.2))
        events = stream_transcription(
            FakeServing(),
            runner,
            stalling(),
            PcmStream(RATE),
            clock=clock,
        )
        kinds = [kind for kind, _ in await collect(events)]
        assert kinds == ["segment", "segment", "transcript"]

    run(scenario(), timeout=10)
