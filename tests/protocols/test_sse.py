"""EventStream driven as a raw ASGI app: event framing, headers, errors as `error` events,
disconnects cancelling the producer, keep-alives and the stream metrics."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import ClientDisconnect

from service.core.errors import InvalidInput, Overloaded, ServingError, StreamTimedOut
from service.core.settings import Settings
from service.core.streaming import StreamClock
from service.protocols.http import sse
from service.protocols.http.errors import renderer
from service.protocols.http.sse import EventStream

PROTOCOL = "rest-sse"
SCOPE = {"type": "http", "method": "POST", "path": "/v1/transcribe", "headers": []}


def open_streams() -> float:
    return REGISTRY.get_sample_value("deepserve_open_streams", {"protocol": PROTOCOL}) or 0.0


def ended(end: str) -> float:
    labels = {"protocol": PROTOCOL, "end": end}
    return REGISTRY.get_sample_value("deepserve_streams_total", labels) or 0.0


class Recorder:
    """An events generator's fate: how it ended."""

    def __init__(self) -> None:
        self.ended: str | None = None

    async def events(
        self, items: list[tuple[str, Any]], then: BaseException | None = None, hang: bool = False
    ) -> AsyncIterator[tuple[str, Any]]:
        try:
            for kind, data in items:
                await asyncio.sleep(0)
                yield kind, data
            if then is not None:
                raise then
            if hang:
                await asyncio.sleep(60)
            self.ended = "done"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


async def never() -> dict[str, Any]:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


async def serve(
    events: AsyncIterator[tuple[str, Any]],
    receive: Any = never,
    body_read: asyncio.Event | None = None,
    send_fails_after: int | None = None,
    settings: Settings | None = None,
    send_blocks: bool = False,
) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        if send_fails_after is not None and len(sent) >= send_fails_after:
            raise ClientDisconnect()
        if send_blocks and len(sent) >= 1:  # a client that reads nothing after the headers
            await asyncio.Event().wait()
        sent.append(message)

    if body_read is None:
        body_read = asyncio.Event()
        body_read.set()
    response = EventStream(events, renderer("/v1"), body_read, StreamClock(settings or Settings()))
    await asyncio.wait_for(response(SCOPE, receive, send), 20)
    return sent


def bodies(sent: list[dict[str, Any]]) -> list[bytes]:
    assert all(m["type"] == "http.response.body" for m in sent[1:])
    return [m["body"] for m in sent[1:]]


def parsed(body: bytes) -> tuple[str, Any]:
    text = body.decode()
    assert text.endswith("\n\n") and text.count("\n") == 3
    kind_line, data_line = text[:-2].split("\n")
    assert kind_line.startswith("event: ") and data_line.startswith("data: ")
    return kind_line[len("event: ") :], json.loads(data_line[len("data: ") :])


def test_events_are_framed_and_the_stream_ends_cleanly() -> None:
    items = [
        ("segment", {"index": 0, "text": "four two"}),
        ("segment", {"index": 1, "text": "caf\u00e9 \n line"}),
        ("transcript", {"text": "four two", "segments": []}),
    ]
    recorder = Recorder()
    opened, completed = open_streams(), ended("completed")
    sent = asyncio.run(serve(recorder.events(items)))
    start = sent[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert b"content-length" not in headers
    assert headers[b"cache-control"] == b"no-cache"
    data = bodies(sent)
    assert data[0] == b'event: segment\ndata: {"index":0,"text":"four two"}\n\n'
    assert [parsed(body) for body in data[:-1]] == items
    assert data[-1] == b"" and sent[-1]["more_body"] is False
    assert all(m["more_body"] is True for m in sent[1:-1])
    assert recorder.ended == "done"
    assert open_streams() == opened
    assert ended("completed") == completed + 1


def test_no_events_is_an_empty_stream() -> None:
    sent = asyncio.run(serve(Recorder().events([])))
    assert bodies(sent) == [b""] and sent[-1]["more_body"] is False


@pytest.mark.parametrize(
    ("error", "end"),
    [
        (InvalidInput("the audio holds NaN"), "error"),
        (Overloaded("model busy"), "error"),
        (StreamTimedOut("nothing received for 30 s", "idle_timeout"), "idle_timeout"),
        (StreamTimedOut("open too long", "time_limit"), "time_limit"),
    ],
)
def test_a_serving_error_becomes_an_error_event(error: ServingError, end: str) -> None:
    recorder = Recorder()
    opened, before = open_streams(), ended(end)
    sent = asyncio.run(serve(recorder.events([("segment", {"index": 0})], then=error)))
    data = bodies(sent)
    assert parsed(data[0]) == ("segment", {"index": 0})
    assert parsed(data[1]) == ("error", {"error": {"code": error.code, "message": error.message}})
    assert data[2] == b"" and sent[-1]["more_body"] is False
    assert len(data) == 3
    assert open_streams() == opened
    assert ended(end) == before + 1


def test_an_unexpected_failure_is_an_internal_error_event() -> None:
    opened, before = open_streams(), ended("error")
    sent = asyncio.run(serve(Recorder().events([], then=KeyError("secret detail"))))
    data = bodies(sent)
    kind, body = parsed(data[0])
    assert kind == "error"
    assert body == {"error": {"code": "internal", "message": "internal error (logged)"}}
    assert "secret" not in data[0].decode()
    assert data[1] == b"" and sent[-1]["more_body"] is False
    assert open_streams() == opened
    assert ended("error") == before + 1


def test_a_disconnect_after_the_body_cancels_the_producer() -> None:
    recorder = Recorder()
    opened, before = open_streams(), ended("client_gone")

    async def scenario() -> list[dict[str, Any]]:
        first_sent = asyncio.Event()
        received: list[str] = []

        async def receive() -> dict[str, Any]:
            if not received:  # a late body part first, then the client leaves
                received.append("body")
                return {"type": "http.request", "body": b"", "more_body": False}
            await first_sent.wait()
            received.append("disconnect")
            return {"type": "http.disconnect"}

        events = recorder.events([("segment", {"index": 0})], hang=True)

        async def watched() -> AsyncIterator[tuple[str, Any]]:
            async for item in events:
                yield item
                first_sent.set()

        sent = await serve(watched(), receive)
        assert received == ["body", "disconnect"]
        return sent

    sent = asyncio.run(scenario())
    data = bodies(sent)
    assert [parsed(body) for body in data] == [("segment", {"index": 0})]  # no final empty body
    assert all(m.get("more_body", True) for m in sent[1:])
    assert recorder.ended == "cancelled"
    assert open_streams() == opened
    assert ended("client_gone") == before + 1


def test_receive_is_left_alone_until_the_body_is_read() -> None:
    async def scenario() -> None:
        body_read = asyncio.Event()
        calls: list[str] = []

        async def receive() -> dict[str, Any]:
            calls.append("receive")
            return {"type": "http.disconnect"}

        async def events() -> AsyncIterator[tuple[str, Any]]:
            for index in range(3):
                await asyncio.sleep(0.01)
                yield "segment", {"index": index}
            assert calls == []  # the producer owns receive until body_read is set

        sent = await serve(events(), receive, body_read)
        assert calls == []
        assert [parsed(body)[1]["index"] for body in bodies(sent)[:-1]] == [0, 1, 2]
        assert sent[-1]["more_body"] is False

    asyncio.run(scenario())


def test_a_disconnect_seen_by_the_producer_ends_quietly() -> None:
    opened, before = open_streams(), ended("client_gone")
    recorder = Recorder()
    body_read = asyncio.Event()  # never set: the producer was still reading the body
    sent = asyncio.run(
        serve(recorder.events([("segment", {})], then=ClientDisconnect()), body_read=body_read)
    )
    assert [parsed(body)[0] for body in bodies(sent)] == ["segment"]  # no error, no final body
    assert open_streams() == opened
    assert ended("client_gone") == before + 1


def test_a_send_to_a_gone_client_stops_the_events() -> None:
    opened, before = open_streams(), ended("client_gone")
    recorder = Recorder()
    items = [("segment", {"index": n}) for n in range(5)]
    sent = asyncio.run(serve(recorder.events(items, hang=True), send_fails_after=2))
    assert len(sent) == 2  # the start and one event
    assert recorder.ended in ("closed", "cancelled")
    assert open_streams() == opened
    assert ended("client_gone") == before + 1


def test_an_idle_producer_sends_keep_alive_comments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_S", 0.05)

    async def slow() -> AsyncIterator[tuple[str, Any]]:
        await asyncio.sleep(0.4)
        yield "transcript", {"text": ""}

    sent = asyncio.run(serve(slow()))
    data = bodies(sent)
    assert data[-2:] == [b'event: transcript\ndata: {"text":""}\n\n', b""]
    keepalives = data[:-2]
    assert len(keepalives) >= 1 and set(keepalives) == {b": keep-alive\n\n"}


def test_a_client_that_reads_nothing_ends_the_stream() -> None:
    """Writes are bounded by stream_idle_timeout_s: the producer is stopped (its work freed),
    and no error is queued to a client that takes nothing."""
    recorder = Recorder()
    events = recorder.events([("segment", {"index": 0})], hang=True)
    before = ended("idle_timeout")
    settings = Settings(stream_idle_timeout_s=0.2)
    sent = asyncio.run(serve(events, settings=settings, send_blocks=True))
    assert len(sent) == 1  # the headers only
    assert recorder.ended in ("cancelled", "closed")
    assert ended("idle_timeout") == before + 1
    assert open_streams() == 0


def test_a_stream_ends_at_its_time_limit() -> None:
    recorder = Recorder()
    events = recorder.events([("segment", {"index": 0})], hang=True)
    before = ended("time_limit")
    sent = asyncio.run(serve(events, settings=Settings(stream_max_seconds=0.3)))
    events_sent = [parsed(body) for body in bodies(sent) if body.startswith(b"event:")]
    assert [kind for kind, _ in events_sent] == ["segment", "error"]
    assert "stream_max_seconds" in events_sent[-1][1]["error"]["message"]
    assert recorder.ended in ("cancelled", "closed")
    assert ended("time_limit") == before + 1
