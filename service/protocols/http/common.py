"""What every HTTP front end (/v1, /v2, the docs app) shares: reading bodies within limits, the
request deadline, answering through wire models, the error guard around handlers and the
fallback route that answers unknown paths in the API's error shape."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound
from starlette.types import Receive, Scope, Send

from service.core.errors import InvalidInput, PayloadTooLarge, RouteNotFound, ServingError
from service.core.metrics import track_request
from service.core.wire import ResponseModel
from service.protocols.http.errors import renderer
from service.protocols.http.limits import plain_int

log = logging.getLogger("deepserve.http")


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all."""
    declared = plain_int(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit}", unread_body=True)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", unread_body=True)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except RecursionError:
        raise InvalidInput("malformed JSON body: nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError, int digits limit
        raise InvalidInput(f"malformed JSON body: {error}") from None


TIMEOUT_HEADER = "X-Request-Timeout-Ms"
TIMEOUT_PARAM = "timeout_ms"
MAX_TIMEOUT_MS = 600_000


def deadline_of(request: Request) -> float | None:
    """The request's deadline as a time.monotonic() value, from the X-Request-Timeout-Ms header
    or the timeout_ms query parameter (milliseconds from arrival); None when neither is sent.
    Work still queued when it passes is dropped unrun and answered 504."""
    arrived = time.monotonic()
    sent = [
        (f"{TIMEOUT_HEADER} header", request.headers.get(TIMEOUT_HEADER)),
        (f"{TIMEOUT_PARAM} parameter", request.query_params.get(TIMEOUT_PARAM)),
    ]
    timeouts = []
    for where, raw in sent:
        if raw is None:
            continue
        try:
            milliseconds = float(raw)
        except ValueError:
            milliseconds = float("nan")
        if not 0 < milliseconds <= MAX_TIMEOUT_MS:  # also refuses nan
            raise InvalidInput(
                f"timeout {raw!r} ({where}) must be milliseconds between 0 and {MAX_TIMEOUT_MS}"
            )
        timeouts.append(milliseconds)
    return arrived + min(timeouts) / 1000 if timeouts else None


def answer(
    body: ResponseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response built through its wire model (so it is what the document says)."""
    return Response(body.body(), status, headers, media_type="application/json")


error_json = renderer("/v1")
"""A /v1 error response (the default renderer of `guarded` and the /v1 fallback)."""


def guarded(
    handler: Callable[[Request], Awaitable[Response]],
    render: Callable[[ServingError], Response] = error_json,
    protocol: str | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint that answers ServingErrors with `render`; with a `protocol`, it is an
    inference endpoint whose requests are counted and timed in the metrics."""

    async def endpoint(request: Request) -> Response:
        with track_request(protocol) as record:
            try:
                response = await handler(request)
            except ServingError as error:
                if error.http_status >= 500:
                    log.warning("%s %s: %s", request.method, request.url.path, error.message)
                response = render(error)
            except ClientDisconnect:
                # NOTE: the client left mid-body (or stalled past http_body_timeout_s and was
                # answered 408): no one reads this answer; 499 is nginx's "client closed request"
                log.debug(
                    "%s %s: client gone before its body arrived", request.method, request.url.path
                )
                response = Response(status_code=499)
            except Exception:
                # NOTE: a bug, not the client's fault: logged whole, answered in the protocol's
                # error shape without details (Starlette would answer plain text)
                log.exception("%s %s failed", request.method, request.url.path)
                response = render(ServingError("internal error (logged)"))
            record.status = response.status_code
            return response

    return endpoint


class Fallback(BaseRoute):
    """The last route of an app: answers every request no other route takes with `render`ed
    404. It matches only partially, so a route that knows the path but not the method still
    wins (405 + Allow); and BentoML's mounts, which enter a sub-app only when one of its routes
    matches, now enter it for every path under the app's prefix."""

    def __init__(self, render: Callable[[ServingError], Response], prefix: str = "") -> None:
        self.render = render
        self.prefix = prefix
        """Only paths at or under this prefix (relative to the app's mount point)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        full, root = str(scope.get("path", "")), str(scope.get("root_path", ""))
        path = full[len(root) :] if full.startswith(root) else full  # relative to the mount
        under = not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")
        return (Match.PARTIAL if scope["type"] == "http" and under else Match.NONE), {}

    def url_path_for(self, name: str, /, **path_params: Any) -> Any:
        raise NoMatchFound(name, path_params)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))  # the full path: Starlette keeps root_path in it
        shown = path if len(path) <= 200 else path[:200] + "..."
        error = RouteNotFound(f"no route {scope.get('method', '')} {shown}")
        await self.render(error)(scope, receive, send)
