"""HTTP connection timeouts and transport-shaped error bodies, inside uvicorn's protocol.

uvicorn 0.54 arms no timer on a new connection and has no timeout for unfinished headers or a
stalled body, so a client that connects and sends nothing (or half a request) holds a socket,
and a stalled body holds a request until BentoML's 60 s TimeoutMiddleware. BentoML builds
uvicorn's Config itself (no `http=` argument), so the protocol is swapped where uvicorn looks it
up: `install` points uvicorn.config.HTTP_PROTOCOLS["auto"] (and "httptools") at
TimedHttpToolsProtocol; service/gateway.py calls it at import time, which BentoML's worker does
before it builds the Config. The protocol leans on uvicorn internals (`_start_asgi_task`,
`timeout_keep_alive_task`, the request cycle's fields), so uvicorn and httptools are pinned
exactly in pyproject.toml and `install` refuses another uvicorn.

NOTE: not a reverse proxy (nginx's client_header_timeout / client_body_timeout): the service is
deployed as one container (docker compose, Kubernetes) whose port clients and ingresses reach
directly; a proxy would be a second process per pod to configure, ship and monitor, one more
copy of every body, and it would not know the /v1 and /v2 error shapes. A deployment that has
a proxy in front anyway keeps these timers as a second line.

Timers (each closes the connection):
- idle: a new or kept-alive connection that has not started a request (also replaces uvicorn's
  keep-alive timeout); bytes that start no request (stray CRLFs) do not reset it.
- headers: from a request's first byte until its headers are complete (a total, so trickling a
  byte at a time does not extend it).
- body: no body bytes for this long while the app waits for them (not while the app is busy, so
  flow control pausing reads is never blamed on the client); answered 408 in the path's error
  shape when no response has started. The app's receive() then reports a disconnect.

Error bodies: the protocol also runs each request's app inside `reshape_errors`, outermost
(outside BentoML's middlewares), which rewrites the bare `{"error": "..."}` 504 of BentoML's
TimeoutMiddleware, its 429 (MaxConcurrencyMiddleware) and uvicorn's plain-text 503 (connection
limit) into the transport's shape: `{"error": {"code", "message"}}` outside /v2, `{"error":
"..."}` on /v2.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import uvicorn
import uvicorn.config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from service.core.errors import DeadlineExceeded, Overloaded, RequestTimeout, ServingError
from service.core.settings import Settings
from service.protocols.http.errors import error_body

log = logging.getLogger("deepserve.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

UVICORN_VERSION = "0.54.0"
"""The uvicorn whose internals TimedHttpToolsProtocol was written against (pinned in pyproject)."""

RESHAPED: dict[int, type[ServingError]] = {429: Overloaded, 503: Overloaded, 504: DeadlineExceeded}
"""Statuses whose BentoML / uvicorn error bodies are rewritten, and the errors they are."""
UVICORN_UNAVAILABLE = b"Service Unavailable"
"""The plain-text body of uvicorn's 503 when limit_concurrency is exceeded."""
MAX_HELD_BODY = 64 * 1024
"""A response of a reshaped status with a longer body is passed on as it is."""


def foreign_error_message(headers: list[tuple[bytes, bytes]], body: bytes) -> str | None:
    """The message of a BentoML (`{"error": "..."}`) or uvicorn (plain text) error body; None
    for any other body, ours included."""
    content_type = next((v for k, v in headers if k.lower() == b"content-type"), b"").lower()
    if content_type.startswith(b"text/plain") and body == UVICORN_UNAVAILABLE:
        return body.decode()
    if not content_type.startswith(b"application/json"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and list(data) == ["error"] and isinstance(data["error"], str):
        return data["error"]
    return None


def reshape(path: str, start: Message, body: bytes) -> tuple[Message, bytes]:
    """A held error response (start message, body) in the transport's shape when its body is
    BentoML's or uvicorn's; unchanged otherwise."""
    headers = list(start.get("headers", []))
    found = foreign_error_message(headers, body)
    if found is None:
        return start, body
    status = start["status"]
    body = error_body(path, RESHAPED[status](found))
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    if status != 504 and not any(k.lower() == b"retry-after" for k, _ in kept):
        kept.append((b"retry-after", b"1"))  # as Overloaded answers
    kept += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return {**start, "headers": kept}, body


def reshape_errors(app: App) -> App:
    """`app`, with BentoML's and uvicorn's 429/503/504 error bodies in the transport's shape."""

    async def reshaped(scope: Scope, receive: Receive, send: Send) -> None:
        held: Message | None = None  # the start of a response whose body decides its shape
        chunks: list[bytes] = []

        async def send_reshaped(message: Message) -> None:
            nonlocal held
            if message["type"] == "http.response.start" and message["status"] in RESHAPED:
                held = message
                return
            if held is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
            if more and sum(map(len, chunks)) <= MAX_HELD_BODY:
                return
            start, body = held, b"".join(chunks)
            held = None
            if not more:
                start, body = reshape(scope["path"], start, body)
            await send(start)
            await send({"type": "http.response.body", "body": body, "more_body": more})

        await app(scope, receive, send_reshaped)

    return reshaped


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with idle, header and body timeouts (class attributes, set
    by `install`) and `reshape_errors` around the app."""

    idle_timeout_s: ClassVar[float] = 5.0
    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._waiting_for: tuple[str, float] | None = None
        """What the connection waits for from the client ("a request", "headers") and how long."""
        self._deadline = 0.0
        """loop.time() when the connection is cut unless that arrives."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._local = False
        """A Unix-socket peer (the gateway calling its runner services on this host): one of
        our processes, not a client, so no timers (its pooled connections idle at will)."""

    def _wait_for(self, what: str, seconds: float) -> None:
        """Cut the connection unless `what` arrives within `seconds` (replaces any other wait)."""
        if self._local:
            return
        self._waiting_for = (what, seconds)
        self._deadline = self.loop.time() + seconds
        if self._timer is None or self._timer_at > self._deadline:
            self._arm_timer()

    def _stop_waiting(self) -> None:
        # NOTE: the timer stays armed and finds nothing to do (or a later deadline) when it fires:
        # re-arming uvloop timers per request cost more than the rest of this class together
        self._waiting_for = None

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = self._deadline
        self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        if self._waiting_for is None:
            return
        if self.loop.time() < self._deadline:
            self._arm_timer()
            return
        what, seconds = self._waiting_for
        self._cut(f"{what} not received within {seconds:g} s")

    def _cut(self, why: str) -> None:
        if not self.transport.is_closing():
            log.debug("closing connection from %s: %s", self.client, why)
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._local = not isinstance(transport.get_extra_info("peername"), tuple)
        self._wait_for("a request", self.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._wait_for("headers", self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None and not self._local:  # ours replaces it
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
            if self._waiting_for is None:  # a next request already begun keeps its deadline
                self._wait_for("a request", self.idle_timeout_s)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        wrapped: Any = reshape_errors(self._timed_receive(cycle, app))  # uvicorn's ASGI types
        cycle.transport = HeldHead(self.transport, self.loop)  # type: ignore[assignment]
        super()._start_asgi_task(cycle, wrapped)

    def _timed_receive(self, cycle: RequestResponseCycle, app: App) -> App:
        """`app`, whose receive() gives up after body_timeout_s without body bytes."""

        async def timed(scope: Scope, receive: Receive, send: Send) -> None:
            async def receive_timed() -> Message:
                if (
                    self._local
                    or not cycle.more_body
                    or cycle.body
                    or cycle.disconnected
                    or cycle.response_complete
                ):
                    return await receive()  # the common case: nothing to wait for
                timer = self.loop.call_later(self.body_timeout_s, self._body_stalled, cycle)
                try:
                    return await receive()
                finally:
                    timer.cancel()

            await app(scope, receive_timed, send)

        return timed

    def _body_stalled(self, cycle: RequestResponseCycle) -> None:
        """Answer 408 unless a response has started, close, and wake the app's receive()."""
        if cycle.disconnected or cycle.response_complete or self.transport.is_closing():
            return
        if not cycle.response_started:
            message = f"no request body bytes for {self.body_timeout_s:g} s"
            body = error_body(cycle.scope["path"], RequestTimeout(message))
            head = [b"HTTP/1.1 408 Request Timeout\r\n"]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        cycle.disconnected = True  # the app's receive() returns http.disconnect, sends are dropped
        cycle.message_event.set()
        self._cut(f"request body stalled for {self.body_timeout_s:g} s")


class HeldHead:
    """A request cycle's view of the connection's transport: a response's status line and
    headers are held back until its first body bytes and written with them, so a response goes
    out in one write (one segment; the client is woken once, not twice), or at the end of this
    event-loop iteration when no body follows at once (a stream's headers are not delayed).
    Everything else is the transport's own."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data.startswith(b"HTTP/1.1 ") and not data.startswith(b"HTTP/1.1 100 "):
            self._head = data
            self._loop.call_soon(self.flush)
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            if not self._transport.is_closing():  # the client may have left meanwhile
                self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


PROTOCOL_PATH = f"{__name__}:{TimedHttpToolsProtocol.__name__}"


def install(settings: Settings) -> None:
    """Make uvicorn in this process serve HTTP with TimedHttpToolsProtocol and `settings`'
    timeouts (call before uvicorn.Config.load, i.e. before the server starts)."""
    if uvicorn.__version__ != UVICORN_VERSION:
        raise RuntimeError(
            f"service/protocols/http/server.py subclasses uvicorn {UVICORN_VERSION} internals, "
            f"found uvicorn {uvicorn.__version__}: review the subclass, then its pin"
        )
    TimedHttpToolsProtocol.idle_timeout_s = settings.http_idle_timeout_s
    TimedHttpToolsProtocol.header_timeout_s = settings.http_header_timeout_s
    TimedHttpToolsProtocol.body_timeout_s = settings.http_body_timeout_s
    uvicorn.config.HTTP_PROTOCOLS["auto"] = PROTOCOL_PATH
    uvicorn.config.HTTP_PROTOCOLS["httptools"] = PROTOCOL_PATH
