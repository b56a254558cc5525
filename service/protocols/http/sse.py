"""Server-sent events (text/event-stream) answers: results as they are ready.

Each event is `event: <kind>` + `data: <one line of JSON>`; an error after the stream started is
an `error` event whose data is the API's error body. Comment lines keep an idle stream alive
through proxies. The stream is exempt from BentoML's request timeout (that timer stops at the
first byte of the answer) and bounded by the stream settings instead (service/core/streaming.py).

Unlike Starlette's StreamingResponse, which reads `receive` to notice a disconnect and so would
swallow the request body, this answer may start while the request body is still arriving: the
producer reads the body itself, and only once `body_read` is set does a watcher take over
`receive` to notice the client leaving. Either way a client that goes away cancels the
producer, which drops its unfinished work.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.core.errors import ServingError, StreamTimedOut
from service.core.metrics import StreamRecord, track_stream

log = logging.getLogger("deepserve.http")

KEEPALIVE_S = 15.0
"""An idle stream sends a comment line this often (proxies close silent connections)."""

KEEPALIVE = {"type": "http.response.body", "body": b": keep-alive\n\n", "more_body": True}

Events = AsyncIterator[tuple[str, dict[str, Any]]]


def event(kind: str, data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class EventStream(Response):
    """A 200 text/event-stream answer of `events`; `render` makes an error's body."""

    media_type = "text/event-stream"

    def __init__(
        self,
        events: Events,
        render: Callable[[ServingError], Response],
        body_read: asyncio.Event,
        protocol: str = "rest-sse",
    ) -> None:
        super().__init__(status_code=200, media_type="text/event-stream")
        # NOTE: no content-length (Response sets 0 for an empty body): the answer is chunked
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        self.events = events
        self.render_error = render
        self.body_read = body_read
        self.protocol = protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with track_stream(self.protocol) as record:
            producing = asyncio.ensure_future(self._produce(send, record))
            watching = asyncio.ensure_future(self._watch(receive))
            try:
                await asyncio.wait({producing, watching}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watching.cancel()
                if not producing.done():  # the client left: stop the work
                    record.end = "client_gone"
                    producing.cancel()
                await asyncio.gather(producing, watching, return_exceptions=True)
            if record.end != "client_gone":
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _watch(self, receive: Receive) -> None:
        await self.body_read.wait()
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _produce(self, send: Send, record: StreamRecord) -> None:
        events = aiter(self.events)
        pending: asyncio.Future[tuple[str, dict[str, Any]]] | None = None
        try:
            while True:
                pending = asyncio.ensure_future(anext(events))
                while not (await asyncio.wait({pending}, timeout=KEEPALIVE_S))[0]:
                    await send(KEEPALIVE)
                try:
                    kind, data = pending.result()
                except StopAsyncIteration:
                    return
                record.first_result()
                body = event(kind, data)
                await send({"type": "http.response.body", "body": body, "more_body": True})
        except ClientDisconnect:
            record.end = "client_gone"
        except ServingError as error:
            record.end = error.end if isinstance(error, StreamTimedOut) else "error"
            await self._error(send, error)
        except Exception:
            log.exception("event stream failed")
            record.end = "error"
            await self._error(send, ServingError("internal error (logged)"))
        finally:
            if pending is not None and not pending.done():  # cancelled: end the events too
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _error(self, send: Send, error: ServingError) -> None:
        body = json.loads(bytes(self.render_error(error).body))
        await send({"type": "http.response.body", "body": event("error", body), "more_body": True})
