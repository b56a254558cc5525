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
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.core.errors import ServingError, StreamTimedOut
from service.core.metrics import StreamRecord, track_stream
from service.core.streaming import StreamClock

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
        clock: StreamClock,
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
        self.clock = clock
        """The stream's limits: also on writes (a client that reads nothing) and in total."""
        self.protocol = protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with track_stream(self.protocol) as record:
            producing = asyncio.ensure_future(self._produce(send, record))
            watching = asyncio.ensure_future(self._watch(receive))
            try:
                await asyncio.wait(
                    {producing, watching},
                    timeout=max(0.0, self.clock.remaining()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                watching.cancel()
                timed_out = not producing.done() and not watching.done()
                if not producing.done():  # the client left, or the stream's time is up
                    record.end = "time_limit" if timed_out else "client_gone"
                    producing.cancel()
                await asyncio.gather(producing, watching, return_exceptions=True)
            if timed_out:
                with contextlib.suppress(Exception):
                    error = self.clock.too_long()
                    self.clock.ends_at = time.monotonic() + 1.0  # a last, short chance
                    await self._error(send, error)
            if record.end != "client_gone":
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        send({"type": "http.response.body", "body": b"", "more_body": False}),
                        timeout=1.0,
                    )

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
                    await self.clock.sent(send(KEEPALIVE))
                try:
                    kind, data = pending.result()
                except StopAsyncIteration:
                    return
                record.first_result()
                body = event(kind, data)
                await self.clock.sent(
                    send({"type": "http.response.body", "body": body, "more_body": True})
                )
        except ClientDisconnect:
            record.end = "client_gone"
        except ServingError as error:
            record.end = error.end if isinstance(error, StreamTimedOut) else "error"
            if not (isinstance(error, StreamTimedOut) and error.writing):
                await self._error(send, error)  # not to a client that reads nothing
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
        message = {"type": "http.response.body", "body": event("error", body), "more_body": True}
        with contextlib.suppress(StreamTimedOut):
            await self.clock.sent(send(message))
