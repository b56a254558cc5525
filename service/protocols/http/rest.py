"""The REST task API (/v1): a thin Starlette app that decodes, validates and delegates.

Mounted on the BentoML gateway with @bentoml.asgi_app so raw image/audio bodies stay raw
(BentoML's @bentoml.api would parse an image/jpeg body as JSON).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Route
from starlette.types import Receive, Scope, Send

from service.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    RouteNotFound,
    ServingError,
    UnsupportedMediaType,
)
from service.core.metrics import track_request
from service.protocols.http.limits import plain_int
from service.runners.repository import ServingState
from service.tasks import core as tasks

log = logging.getLogger("deepserve.rest")

StateGetter = Callable[[], ServingState]


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


def b64decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f'"{field}" must be a non-empty base64 string')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f'"{field}" is not valid base64') from None


async def read_media(
    request: Request, field: str, kinds: tuple[str, ...], limit: int, json_limit: int = 0
) -> bytes:
    """File bytes from multipart (`field`), a raw body of an accepted type, or JSON base64."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        # NOTE: the body's size is bounded as it streams in (http_limits.BodyLimitMiddleware)
        try:
            form = await request.form(max_files=4, max_fields=16)
        except (ClientDisconnect, ServingError):
            raise  # not a malformed body: a disconnect, or the body limit (http_limits.py)
        except Exception as error:
            raise InvalidInput(f"malformed multipart body: {error}") from None
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise InvalidInput(f'multipart body has no file field "{field}"')
        data = await upload.read()
        if len(data) > limit:
            raise PayloadTooLarge(f"{field} is {len(data)} bytes; the limit is {limit} bytes")
        return data
    if content_type == "application/json":
        payload = await read_json(request, min(limit, json_limit or limit))
        key = f"{field}_b64"
        if not isinstance(payload, dict) or key not in payload:
            raise InvalidInput(f'JSON body must be {{"{key}": "<base64>"}}')
        return b64decode(payload[key], key)
    if content_type.startswith(kinds) or content_type == "application/octet-stream":
        return await read_body(request, limit)
    accepted = ", ".join(f"{k}*" for k in kinds)
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'} not accepted; send multipart/form-data with a "
        f'"{field}" file, a raw body ({accepted}), or JSON {{"{field}_b64": ...}}'
    )


def media_limits(serving: ServingState) -> tuple[int, int]:
    """(body limit, JSON limit) of a media upload."""
    return serving.settings.max_body_bytes, serving.settings.max_json_bytes


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise InvalidInput(f"query parameter {name}={value} must be between {low} and {high}")
    return value


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


def error_json(error: ServingError) -> Response:
    return JSONResponse(error.to_json(), error.http_status, headers=error.headers)


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


def build_app(state: StateGetter) -> Starlette:
    """The /v1 app; `state` returns the gateway's ServingState at request time."""

    async def classify(request: Request) -> JSONResponse:
        serving = state()
        deadline = deadline_of(request)
        model = request.query_params.get("model")
        k = int_param(request, "top_k", 5, 1, 10_000)
        data = await read_media(request, "image", ("image/",), *media_limits(serving))
        version = request.query_params.get("version")
        return JSONResponse(await tasks.classify(serving, data, model, k, deadline, version))

    async def sentiment(request: Request) -> JSONResponse:
        serving = state()
        deadline = deadline_of(request)
        payload = await read_json(request, serving.settings.max_json_bytes)
        if not isinstance(payload, dict) or ("text" in payload) == ("texts" in payload):
            raise InvalidInput('JSON body must be {"text": "..."} or {"texts": ["...", ...]}')
        single = "text" in payload
        texts = [payload["text"]] if single else payload["texts"]
        if not isinstance(texts, list) or not texts:
            raise InvalidInput('"texts" must be a non-empty list of strings')
        model = request.query_params.get("model")
        version = request.query_params.get("version")
        spec, results = await tasks.sentiment(serving, texts, model, single, deadline, version)
        body: dict[str, Any] = {"model": spec.name, "version": spec.version}
        body.update(results[0] if single else {"results": results})
        return JSONResponse(body)

    async def transcribe(request: Request) -> JSONResponse:
        serving = state()
        deadline = deadline_of(request)
        data = await read_media(request, "audio", ("audio/",), *media_limits(serving))
        model = request.query_params.get("model")
        version = request.query_params.get("version")
        return JSONResponse(await tasks.transcribe(serving, data, model, deadline, version))

    async def caption(request: Request) -> JSONResponse:
        serving = state()
        deadline = deadline_of(request)
        beam = int_param(request, "beam", 1, 1, serving.settings.max_beam)
        data = await read_media(request, "image", ("image/",), *media_limits(serving))
        model = request.query_params.get("model")
        version = request.query_params.get("version")
        return JSONResponse(await tasks.caption(serving, data, model, beam, deadline, version))

    async def list_models(request: Request) -> JSONResponse:
        return JSONResponse({"models": await tasks.list_models(state())})

    async def show_model(request: Request) -> JSONResponse:
        name, version = request.path_params["name"], request.query_params.get("version")
        return JSONResponse(await tasks.show_model(state(), name, version))

    routes: list[BaseRoute] = [
        Route("/classify", guarded(classify, protocol="rest"), methods=["POST"]),
        Route("/sentiment", guarded(sentiment, protocol="rest"), methods=["POST"]),
        Route("/transcribe", guarded(transcribe, protocol="rest"), methods=["POST"]),
        Route("/caption", guarded(caption, protocol="rest"), methods=["POST"]),
        Route("/models", guarded(list_models), methods=["GET"]),
        Route("/models/{name}", guarded(show_model), methods=["GET"]),
    ]

    routes.append(Fallback(error_json))

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "method_not_allowed",
                    "message": f"{request.method} not allowed here",
                }
            },
            405,
            headers=getattr(exc, "headers", None),  # Allow: the methods that are
        )

    return Starlette(routes=routes, exception_handlers={405: method_not_allowed})
