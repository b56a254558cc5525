"""ASGI pieces that bound what any HTTP request may cost, for every route and content type,
before a route handler sees it (errors rendered by service/protocols/http/errors.py).

Route handlers check sizes against `Content-Length` too, but a chunked body has none: the limit
is enforced here on the bytes as they arrive, so no route (multipart parsing included) can read
more than `max_body_bytes` of a request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service.core.errors import PayloadTooLarge
from service.protocols.http.errors import send_error

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def plain_int(text: str | bytes) -> int | None:
    """A header's non-negative decimal number, or None when it is anything else: signs, spaces,
    non-ASCII digits ("²".isdigit() is true and int("²") fails), or more than 18 digits."""
    raw = text.encode("latin-1", "replace") if isinstance(text, str) else text
    if not 0 < len(raw) <= 18 or not all(48 <= c <= 57 for c in raw):
        return None
    return int(raw)


def declared_length(scope: Scope) -> int | None:
    """Content-Length as sent, None when absent or not one plain number (then the server's
    HTTP parser has already refused the request, or the streamed count applies)."""
    values = [v for k, v in scope.get("headers") or () if k.lower() == b"content-length"]
    return plain_int(values[0]) if len(values) == 1 else None


class BodyLimitMiddleware:
    """Refuses request bodies over `max_bytes` (413): at once when Content-Length says so, else
    as soon as the streamed bytes pass it (the app's next receive raises PayloadTooLarge, which
    route handlers answer in their protocol's shape; answered here if it escapes them)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = declared_length(scope)
        if declared is not None and declared > limit:  # NOTE: before reading a byte of it
            await send_error(
                scope,
                send,
                PayloadTooLarge(
                    f"body is {declared} bytes; the limit is {limit}", unread_body=True
                ),
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            if received > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", unread_body=True)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(
                        f"body exceeds the limit of {limit} bytes", unread_body=True
                    )
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, sending)
        except PayloadTooLarge as error:
            if started:
                raise
            await send_error(scope, send, error)
