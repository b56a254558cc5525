"""Long-form and streamed transcription against the real server: a minute of espeak-ng commands
and digit strings (held-out voices) with pauses, sent whole, as server-sent events, and live over
the TranscribeStream RPC in 100 ms chunks, with other traffic beside it."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import service.protocols.proto.stubs  # noqa: F401
from loadtests.payloads import wav
from loadtests.recording import Recording, build_recording
from loadtests.server import Server, start_server, stop_server
from service.processing.speech import SAMPLE_RATE, error_rates
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc

pytestmark = pytest.mark.models

CHUNK_S = 0.1
WER_MARGIN = 0.02
"""Whole-recording WER may exceed the one-by-one WER of the same utterances by this much."""
IDLE_S = 3.0


@pytest.fixture(scope="module")
def recording() -> Recording:
    return build_recording(60.0, seed=2024)


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Speech and sentiment, local placement, short stream idle limit, tight recording limits,
    one segment of a transcription in the queue at a time (so a cancelled stream has work left
    to drop)."""
    env = {
        "DEEPSERVE_MODELS": '["speech-ctc", "sentiment-lstm"]',
        "DEEPSERVE_STREAM_IDLE_TIMEOUT_S": str(IDLE_S),
        "DEEPSERVE_MAX_AUDIO_SECONDS": "90",
        "DEEPSERVE_MAX_SEGMENTS": "32",
        "DEEPSERVE_SEGMENT_WINDOW": "1",
    }
    running = start_server(tmp_path_factory.mktemp("streams"), env)
    yield running
    stop_server(running)


def transcribe(server: Server, data: bytes, timeout: float = 120) -> dict:
    response = requests.post(
        f"{server.url}/v1/transcribe",
        data=data,
        headers={"Content-Type": "audio/wav"},
        timeout=timeout,
    )
    assert response.status_code == 200, response.text
    return response.json()


def one_by_one_wer(server: Server, recording: Recording) -> float:
    texts = [
        transcribe(server, wav(recording.utterance_audio(i)))["text"]
        for i in range(len(recording.utterances))
    ]
    return error_rates([recording.transcript], [" ".join(texts)])["wer"]


def check_segments(answer: dict, seconds: float) -> None:
    segments = answer["segments"]
    assert [s["index"] for s in segments] == list(range(len(segments)))
    for before, after in itertools.pairwise(segments):
        assert before["end_s"] <= after["start_s"]
    for segment in segments:
        assert 0 <= segment["start_s"] < segment["end_s"] <= seconds + 1e-3
        assert segment["end_s"] - segment["start_s"] <= 5.0 + 1e-3  # the model's utterance limit
    assert answer["text"] == " ".join(s["text"] for s in segments if s["text"])


def sse_events(response: requests.Response) -> list[tuple[str, dict]]:
    events, kind = [], ""
    for line in response.iter_lines():
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: "):
            events.append((kind, json.loads(line[6:])))
    return events


def metric(server: Server, name: str, **labels: str) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


# --- whole recordings (both placements) -----------------------------------------------------


def test_long_recording_is_transcribed_whole(server: Server, recording: Recording) -> None:
    answer = transcribe(server, wav(recording.audio))
    check_segments(answer, recording.seconds)
    assert answer["duration_s"] == pytest.approx(recording.seconds, abs=1e-3)
    assert len(recording.utterances) <= len(answer["segments"]) <= len(recording.utterances) + 4
    whole = error_rates([recording.transcript], [answer["text"]])["wer"]
    separate = one_by_one_wer(server, recording)
    print(f"\n{server.placement}: WER whole {whole:.4f}, one by one {separate:.4f}")
    assert whole <= separate + WER_MARGIN


def test_sse_events_are_the_whole_answer(server: Server, recording: Recording) -> None:
    """Every upload form answers the same events: segments in order, then the transcript,
    which equals the answer without ?stream."""
    data = wav(recording.audio[: 20 * SAMPLE_RATE])
    whole = transcribe(server, data)
    forms = {
        "raw": {"data": data, "headers": {"Content-Type": "audio/wav"}},
        "multipart": {"files": {"audio": ("clip.wav", data, "audio/wav")}},
    }
    for form, body in forms.items():
        with requests.post(
            f"{server.url}/v1/transcribe?stream=true", stream=True, timeout=120, **body
        ) as response:
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("text/event-stream")
            assert "content-length" not in response.headers
            events = sse_events(response)
        kinds = [kind for kind, _ in events]
        assert kinds == ["segment"] * (len(events) - 1) + ["transcript"], form
        final = events[-1][1]
        assert final["text"] == whole["text"], form
        assert [data for _, data in events[:-1]] == final["segments"], form
        check_segments(final, 20.0)


def test_sse_refusals_come_before_the_stream(server: Server) -> None:
    """Errors known before any audio is read are plain error answers, not events."""
    url = f"{server.url}/v1/transcribe"
    cases = [
        ("?stream=true&model=nope", b"RIFF", "audio/wav", 404),
        ("?stream=maybe", b"RIFF", "audio/wav", 400),
        ("?stream=true", b"RIFF", "image/png", 415),
    ]
    for query, body, content_type, status in cases:
        response = requests.post(
            url + query, data=body, headers={"Content-Type": content_type}, timeout=30
        )
        assert response.status_code == status, (query, response.text)
        assert "error" in response.json()


def test_sse_error_event_for_bad_audio(server: Server) -> None:
    with requests.post(
        f"{server.url}/v1/transcribe?stream=true",
        data=b"fLaC" + bytes(400),
        headers={"Content-Type": "audio/wav"},
        stream=True,
        timeout=60,
    ) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert [kind for kind, _ in events] == ["error"]
    assert "FLAC" in events[0][1]["error"]["message"]


# --- limits -----------------------------------------------------------------------------------


def test_recording_and_segment_limits(stream_server: Server) -> None:
    too_long = wav(np.zeros(91 * SAMPLE_RATE, np.float32))
    response = requests.post(
        f"{stream_server.url}/v1/transcribe",
        data=too_long,
        headers={"Content-Type": "audio/wav"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    assert "max_audio_seconds" in response.json()["error"]["message"]
    busy = build_recording(85.0, seed=77)  # more utterances than max_segments (32)
    assert len(busy.utterances) > 32
    response = requests.post(
        f"{stream_server.url}/v1/transcribe",
        data=wav(busy.audio),
        headers={"Content-Type": "audio/wav"},
        timeout=120,
    )
    assert response.status_code == 400, response.text
    assert "max_segments" in response.json()["error"]["message"]


# --- live: TranscribeStream and raw chunked uploads ----------------------------------------


def pcm_chunks(audio: np.ndarray) -> list[bytes]:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(CHUNK_S * SAMPLE_RATE) * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


async def live_stream(
    target: str, audio: np.ndarray, speed: float = 1.0
) -> tuple[list[tuple[float, pb.TranscribeEvent]], float]:
    """Send `audio` in 100 ms chunks at `speed` x real time; (events with their arrival time
    from the start, when the last chunk was sent)."""
    chunks = pcm_chunks(audio)
    sent_all = 0.0
    started = time.monotonic()

    async def requests_():
        nonlocal sent_all
        for index, chunk in enumerate(chunks):
            await asyncio.sleep(max(0.0, started + index * CHUNK_S / speed - time.monotonic()))
            first = index == 0
            yield pb.AudioChunk(audio=chunk, model="speech-ctc" if first else "")
        sent_all = time.monotonic() - started

    events = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = deepserve_pb2_grpc.InferenceStub(channel)
        async for event in stub.TranscribeStream(requests_(), timeout=300):
            events.append((time.monotonic() - started, event))
    return events, sent_all


async def unary_load(server: Server, stop: asyncio.Event, outcomes: list[int]) -> None:
    """Transcribe and sentiment requests, one at a time, until `stop`."""
    clip = wav(np.zeros(SAMPLE_RATE, np.float32))

    def one(index: int) -> int:
        if index % 2:
            return requests.post(
                f"{server.url}/v1/sentiment", json={"text": "a fine film"}, timeout=60
            ).status_code
        return requests.post(
            f"{server.url}/v1/transcribe",
            data=clip,
            headers={"Content-Type": "audio/wav"},
            timeout=60,
        ).status_code

    index = 0
    while not stop.is_set() and index < 2000:
        outcomes.append(await asyncio.to_thread(one, index))
        index += 1
        await asyncio.sleep(0.05)


def test_transcribe_stream_live_under_load(stream_server: Server, recording: Recording) -> None:
    """The minute fed in real time: each segment's text arrives while the client is still
    sending, beside three more live streams (at 4x speed) and unary traffic, 0 failures."""

    async def main():
        stop = asyncio.Event()
        outcomes: list[int] = []
        load = asyncio.ensure_future(unary_load(stream_server, stop, outcomes))
        others = [
            asyncio.ensure_future(live_stream(stream_server.grpc_target, recording.audio, 4.0))
            for _ in range(3)
        ]
        live = await live_stream(stream_server.grpc_target, recording.audio)
        side = await asyncio.gather(*others)
        stop.set()
        await load
        return live, side, outcomes

    (events, sent_all), side, outcomes = asyncio.run(main())
    assert outcomes and set(outcomes) == {200}, outcomes
    segments = [(at, e.segment) for at, e in events if e.HasField("segment")]
    final = events[-1][1]
    assert final.HasField("transcript") and len(final.transcript.segments) == len(segments)
    assert [s.index for _, s in segments] == list(range(len(segments)))
    early = [at for at, s in segments if at < sent_all]
    assert len(early) >= len(segments) - 2  # all but the last ones came while sending
    # the time from a segment's end in the audio to its text (this includes the pause the
    # voice-activity detector waits for before it closes a segment, 0.4 s)
    lags = [at - s.end_s for at, s in segments if s.text]
    print(
        f"\nfirst result at {segments[0][0]:.2f} s (segment ends {segments[0][1].end_s:.2f} s); "
        f"after the segment's end: median {np.median(lags):.3f} s, max {max(lags):.3f} s; "
        f"sent for {sent_all:.1f} s"
    )
    whole = error_rates([recording.transcript], [final.transcript.text])["wer"]
    assert whole <= one_by_one_wer(stream_server, recording) + WER_MARGIN
    for other_events, _ in side:
        assert other_events[-1][1].transcript.text == final.transcript.text


def test_cancelled_stream_frees_its_work(stream_server: Server, recording: Recording) -> None:
    before = {
        "gone": metric(
            stream_server, "deepserve_streams_total", protocol="grpc-stream", end="client_gone"
        ),
        "dropped": metric(stream_server, "deepserve_dropped_segments_total"),
    }

    async def main() -> None:
        async with grpc.aio.insecure_channel(stream_server.grpc_target) as channel:
            stub = deepserve_pb2_grpc.InferenceStub(channel)
            call = stub.TranscribeStream(
                iter([pb.AudioChunk(audio=b"".join(pcm_chunks(recording.audio)))]), timeout=60
            )
            async for event in call:
                assert event.HasField("segment")
                call.cancel()  # one segment in; about 25 still to transcribe
                break

    asyncio.run(main())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if metric(stream_server, "deepserve_open_streams", protocol="grpc-stream") == 0:
            break
        time.sleep(0.2)
    assert metric(stream_server, "deepserve_open_streams", protocol="grpc-stream") == 0
    gone = metric(
        stream_server, "deepserve_streams_total", protocol="grpc-stream", end="client_gone"
    )
    assert gone == before["gone"] + 1
    assert metric(stream_server, "deepserve_dropped_segments_total") > before["dropped"]
    transcribe(stream_server, wav(recording.utterance_audio(0)))  # still serving


def test_stream_refusals(stream_server: Server) -> None:
    async def first_error(messages: list) -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(stream_server.grpc_target) as channel:
            stub = deepserve_pb2_grpc.InferenceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.TranscribeStream(iter(messages), timeout=30):
                    pass
            return caught.value

    cases = [
        ([pb.AudioChunk(model="nope", audio=b"\0\0")], grpc.StatusCode.NOT_FOUND, "nope"),
        ([pb.AudioChunk(encoding="mp3")], grpc.StatusCode.INVALID_ARGUMENT, "s16le"),
        ([pb.AudioChunk(sample_rate=4000)], grpc.StatusCode.INVALID_ARGUMENT, "4000 Hz"),
        (
            [pb.AudioChunk(encoding="wav", audio=b"fLaC" + bytes(64))],
            grpc.StatusCode.INVALID_ARGUMENT,
            "FLAC",
        ),
        ([], grpc.StatusCode.INVALID_ARGUMENT, "no audio chunk"),
    ]
    for messages, code, needle in cases:
        error = asyncio.run(first_error(messages))
        assert error.code() == code, (messages, error)
        assert needle in error.details(), error.details()

    # bytes that are not an AudioChunk, after a good one: INVALID_ARGUMENT naming the problem
    async def malformed() -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(stream_server.grpc_target) as channel:
            call = channel.stream_stream(
                "/deepserve.v1.Inference/TranscribeStream",
                request_serializer=lambda raw: raw,
                response_deserializer=pb.TranscribeEvent.FromString,
            )
            good = pb.AudioChunk(audio=bytes(3200)).SerializeToString()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in call(iter([good, b"\xff\xff\xff"]), timeout=30):
                    pass
            return caught.value

    error = asyncio.run(malformed())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert "malformed" in error.details() and "AudioChunk" in error.details(), error.details()


def test_idle_streams_are_ended(stream_server: Server) -> None:
    before = metric(stream_server, "deepserve_streams_total", end="idle_timeout")

    async def stalled() -> grpc.aio.AioRpcError:
        async def messages():
            yield pb.AudioChunk(audio=bytes(3200))
            await asyncio.sleep(IDLE_S * 4)

        async with grpc.aio.insecure_channel(stream_server.grpc_target) as channel:
            stub = deepserve_pb2_grpc.InferenceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stub.TranscribeStream(messages(), timeout=60):
                    pass
            return caught.value

    error = asyncio.run(stalled())
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream_idle_timeout_s" in error.details()

    # the same over SSE: a raw upload that stops sending gets an error event
    with chunked_upload(stream_server) as (sock, send):
        send(streamed_wav_header())
        send(bytes(SAMPLE_RATE))
        body = read_until(sock, b"event: error", timeout=IDLE_S * 5)
    assert b"stream_idle_timeout_s" in body
    assert metric(stream_server, "deepserve_streams_total", end="idle_timeout") == before + 2


# --- raw chunked uploads: events before the body ends ----------------------------------------


def streamed_wav_header(rate: int = SAMPLE_RATE) -> bytes:
    """A WAV header whose sizes are unknown (0xFFFFFFFF), as recorders that stream write it."""
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    return (
        b"RIFF" + b"\xff\xff\xff\xff" + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
        + b"data" + b"\xff\xff\xff\xff"
    )  # fmt: skip


class chunked_upload:
    """A raw socket POST of /v1/transcribe?stream=true with a chunked body sent piece by piece."""

    def __init__(self, server: Server) -> None:
        host, port = server.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=30)

    def __enter__(self):
        self.sock.sendall(
            b"POST /v1/transcribe?stream=true HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: audio/wav\r\nTransfer-Encoding: chunked\r\n\r\n"
        )

        def send(data: bytes) -> None:
            self.sock.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        return self.sock, send

    def __exit__(self, *exc) -> None:
        self.sock.close()


def read_until(sock: socket.socket, needle: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while needle not in data and time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except TimeoutError:
            continue
        if not piece:
            break
        data += piece
    return data


def test_raw_chunked_upload_gets_events_before_it_ends(
    stream_server: Server, recording: Recording
) -> None:
    """A raw WAV body sent as it is recorded: segment events come back while it uploads."""
    audio = recording.audio[: 20 * SAMPLE_RATE]
    received: list[tuple[float, bytes]] = []
    with chunked_upload(stream_server) as (sock, send):
        started = time.monotonic()

        def reader() -> None:
            sock.settimeout(60)
            while True:
                try:
                    piece = sock.recv(65536)
                except OSError:
                    return
                if not piece:
                    return
                received.append((time.monotonic() - started, piece))
                if b"event: transcript" in b"".join(p for _, p in received):
                    return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        send(streamed_wav_header())
        for index, chunk in enumerate(pcm_chunks(audio)):
            time.sleep(max(0.0, started + index * CHUNK_S - time.monotonic()))
            send(chunk)
        sent_all = time.monotonic() - started
        send(b"")  # the last chunk
        thread.join(60)
    body = b"".join(piece for _, piece in received)
    assert body.startswith(b"HTTP/1.1 200"), body[:200]
    assert b"event: transcript" in body
    first_segment = next(at for at, piece in received if b"event: segment" in piece)
    assert first_segment < sent_all - 5.0, (first_segment, sent_all)


def test_stream_metrics(stream_server: Server, recording: Recording) -> None:
    """Streams and segments are counted: first-result times, segments per transcription, and
    the time from a segment's close to its transcript."""
    before = metric(stream_server, "deepserve_transcription_segments_count")
    transcribe(stream_server, wav(recording.audio[: 15 * SAMPLE_RATE]))
    assert metric(stream_server, "deepserve_transcription_segments_count") == before + 1
    assert metric(stream_server, "deepserve_segment_result_seconds_count") > 0
    for protocol in ("grpc-stream", "rest-sse"):
        assert (
            metric(stream_server, "deepserve_stream_first_result_seconds_count", protocol=protocol)
            > 0
        ), protocol


def test_grpcurl_transcribes_a_stream(stream_server: Server, tmp_path) -> None:
    """The real grpcurl (reflection, a WAV file in one AudioChunk): segment events, then the
    transcript, as JSON lines."""
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    recording = build_recording(12.0, seed=5)
    message = {
        "model": "speech-ctc",
        "encoding": "wav",
        "audio": base64.b64encode(wav(recording.audio)).decode(),
    }
    run = subprocess.run(
        [grpcurl, "-plaintext", "-d", "@", stream_server.grpc_target,
         "deepserve.v1.Inference/TranscribeStream"],
        input=json.dumps(message), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    decoder, events, text = json.JSONDecoder(), [], run.stdout.strip()
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].strip()
    assert [next(iter(e)) for e in events] == ["segment"] * (len(events) - 1) + ["transcript"]
    final = events[-1]["transcript"]
    assert final["text"] == transcribe(stream_server, wav(recording.audio))["text"]
    assert len(final["segments"]) == len(events) - 1 >= len(recording.utterances)
