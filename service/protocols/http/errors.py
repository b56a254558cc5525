"""The one renderer of HTTP errors: a ServingError as the body of the protocol its path belongs to
(V2 `{"error": message}` under /v2, `{"error": {"code", "message"}}` everywhere else), built
through the wire models the OpenAPI document publishes. Used by the route handlers (Starlette
responses), the ASGI middleware (raw sends) and the HTTP server's own answers (408, 503, ...)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.core.errors import MethodNotAllowed, ServingError
from service.core.wire import ResponseModel
from service.protocols.http.wire import Error, ErrorDetail
from service.protocols.v2.wire import V2Error

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_model(path: str, error: ServingError) -> ResponseModel:
    if is_v2(path):
        return V2Error(error=error.message)
    return Error(error=ErrorDetail(code=error.code, message=error.message))


def error_body(path: str, error: ServingError) -> bytes:
    """The JSON body of `error` answered on `path`."""
    return error_model(path, error).body()


def error_response(path: str, error: ServingError) -> Response:
    """`error` as a Starlette response: status, its headers (Retry-After, Allow, ...), body."""
    return Response(
        error_body(path, error), int(error.http_status), error.headers, "application/json"
    )


def renderer(path: str) -> Callable[[ServingError], Response]:
    """The error renderer of an app mounted at `path` ("/v1", "/v2")."""
    return lambda error: error_response(path, error)


async def method_not_allowed(request: Request, exc: Exception) -> Response:
    """Starlette's 405 in our error shape; RFC 9110 requires Allow, which its exception carries."""
    error = MethodNotAllowed(
        f"{request.method} not allowed on {request.url.path}",
        headers=dict(getattr(exc, "headers", None) or {}),
    )
    return error_response(request.url.path, error)


async def send_error(scope: Scope, send: Send, error: ServingError) -> None:
    """Answer `error` as a whole response from ASGI middleware (status, headers, JSON body)."""
    body = error_body(str(scope.get("path", "")), error)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
    ]
    status = int(error.http_status)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
