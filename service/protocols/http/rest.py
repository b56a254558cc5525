"""The REST task API (/v1): a thin Starlette app that decodes, validates and delegates.

Mounted on the BentoML gateway with @bentoml.asgi_app so raw image/audio bodies stay raw
(BentoML's @bentoml.api would parse an image/jpeg body as JSON).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
)
from service.core.streaming import StreamClock
from service.protocols.http import wire
from service.protocols.http.common import (
    Fallback,
    answer,
    deadline_of,
    error_json,
    guarded,
    read_body,
    read_json,
)
from service.protocols.http.errors import method_not_allowed
from service.protocols.http.limits import plain_int
from service.protocols.http.sse import EventStream
from service.runners.repository import ServingState
from service.tasks import (
    catalog,
    explaining,
    image_captioning,
    image_classification,
    speech_recognition,
    text_classification,
)
from service.tasks.base import REJECT_PARAMETER

log = logging.getLogger("deepserve.rest")

StateGetter = Callable[[], ServingState]


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


def int_param(
    request: Request, name: str, default: int, low: int | None = None, high: int | None = None
) -> int:
    """An integer query parameter; with `low` and `high`, refused outside them (without, the
    task checks its range)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name}={raw!r:.40} is not an integer") from None
    if low is not None and high is not None and not low <= value <= high:
        raise InvalidInput(f"query parameter {name}={value} must be between {low} and {high}")
    return value


def flag_param(request: Request, name: str) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return False
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise InvalidInput(f"query parameter {name}={raw!r:.40} must be true or false")


def wants_png(request: Request) -> bool:
    """?format=png, or (no format) an Accept header naming image/png before application/json."""
    chosen = request.query_params.get("format")
    if chosen is not None:
        if chosen not in ("json", "png"):
            raise InvalidInput(f"query parameter format={chosen!r:.40} must be json or png")
        return chosen == "png"
    for media_range in request.headers.get("accept", "").split(","):
        media_type = media_range.split(";")[0].strip().lower()
        if media_type in ("image/png", "application/json"):
            return media_type == "image/png"
    return False


def build_app(state: StateGetter) -> Starlette:
    """The /v1 app; `state` returns the gateway's ServingState at request time."""

    async def classify(request: Request) -> Response:
        serving = state()
        deadline = deadline_of(request)
        model = request.query_params.get("model")
        k = int_param(request, "top_k", 5, 1, 10_000)
        data = await read_media(request, "image", ("image/",), *media_limits(serving))
        version = request.query_params.get("version")
        reject = flag_param(request, REJECT_PARAMETER)
        result = await image_classification.classify(
            serving, data, model, k, deadline, version, reject
        )
        return answer(wire.ClassifyResult.model_validate(result))

    async def explain(request: Request) -> Response:
        serving = state()
        deadline = deadline_of(request)
        model = request.query_params.get("model")
        # NOTE: the task checks grid, target and size against the served model and settings
        grid = int_param(request, "grid", explaining.DEFAULT_GRID)
        target = int_param(request, "target", 0) if "target" in request.query_params else None
        png = wants_png(request)
        size = int_param(request, "size", explaining.DEFAULT_PNG_SIDE)
        data = await read_media(request, "image", ("image/",), *media_limits(serving))
        version = request.query_params.get("version")
        explained = await explaining.explain(
            serving, data, model, grid, target, deadline, version, png, size
        )
        if explained.png is not None:
            return Response(explained.png, media_type="image/png")
        return answer(wire.ExplainResult.model_validate(explained.answer))

    async def sentiment(request: Request) -> Response:
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
        reject = flag_param(request, REJECT_PARAMETER)
        spec, results = await text_classification.sentiment(
            serving, texts, model, single, deadline, version, reject
        )
        if single:
            return answer(wire.SentimentResult(model=spec.name, version=spec.version, **results[0]))
        batch = {"model": spec.name, "version": spec.version, "results": results}
        return answer(wire.SentimentBatchResult.model_validate(batch))

    async def transcribe(request: Request) -> Response:
        serving = state()
        deadline = deadline_of(request)
        model = request.query_params.get("model")
        version = request.query_params.get("version")
        reject = flag_param(request, REJECT_PARAMETER)
        if flag_param(request, "stream"):
            if reject:
                raise InvalidInput(
                    "reject_out_of_domain refuses a whole answer; a stream answers as it goes, "
                    "with in_domain on each segment: leave one of them out"
                )
            return await transcribe_events(request, serving, model, version, deadline)
        data = await read_media(request, "audio", ("audio/",), *media_limits(serving))
        result = await speech_recognition.transcribe(
            serving, data, model, deadline, version, reject
        )
        return answer(wire.TranscribeResult.model_validate(result))

    async def transcribe_events(
        request: Request,
        serving: ServingState,
        model: str | None,
        version: str | None,
        deadline: float | None,
    ) -> Response:
        """?stream=true: server-sent events, one per segment as it is done, then the whole
        transcript. A raw WAV body is transcribed as it arrives (events can come before it
        ends); multipart and JSON bodies are read whole first."""
        name = model or speech_recognition.DEFAULT_MODEL
        runner = serving.runner(name, speech_recognition.NAME, version)  # 404/503 before 200
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body_read = asyncio.Event()
        limit, json_limit = media_limits(serving)
        if content_type.startswith("audio/") or content_type == "application/octet-stream":
            declared = plain_int(request.headers.get("content-length", ""))
            whole = declared is not None  # a file, not a live recording: short = one utterance
            if declared is not None and declared > limit:
                raise PayloadTooLarge(
                    f"body is {declared} bytes; the limit is {limit}", unread_body=True
                )

            async def source() -> AsyncIterator[bytes]:
                async for chunk in request.stream():  # bounded by BodyLimitMiddleware
                    if chunk:
                        yield chunk
                body_read.set()
        else:
            data = await read_media(request, "audio", ("audio/",), limit, json_limit)
            body_read.set()
            whole = True

            async def source() -> AsyncIterator[bytes]:
                yield data

        clock = StreamClock(serving.settings)
        events = speech_recognition.stream_transcription(
            serving,
            runner,
            source(),
            speech_recognition.WavBytes(),
            deadline,
            clock,
            whole_if_short=whole,
        )
        return EventStream(events, error_json, body_read, clock)

    async def caption(request: Request) -> Response:
        serving = state()
        deadline = deadline_of(request)
        model = request.query_params.get("model")
        # NOTE: the task checks beam against the served version's own max_beam
        beam = int_param(request, "beam", 1, 1, 10_000)
        data = await read_media(request, "image", ("image/",), *media_limits(serving))
        version = request.query_params.get("version")
        reject = flag_param(request, REJECT_PARAMETER)
        result = await image_captioning.caption(
            serving, data, model, beam, deadline, version, reject
        )
        return answer(wire.CaptionResult.model_validate(result))

    async def list_models(request: Request) -> Response:
        models = await catalog.list_models(state())
        return answer(wire.ModelList.model_validate({"models": models}))

    async def show_model(request: Request) -> Response:
        name, version = request.path_params["name"], request.query_params.get("version")
        return answer(
            wire.ModelInfo.model_validate(await catalog.show_model(state(), name, version))
        )

    routes: list[BaseRoute] = [
        Route("/classify", guarded(classify, protocol="rest"), methods=["POST"]),
        Route("/explain", guarded(explain, protocol="rest"), methods=["POST"]),
        Route("/sentiment", guarded(sentiment, protocol="rest"), methods=["POST"]),
        Route("/transcribe", guarded(transcribe, protocol="rest"), methods=["POST"]),
        Route("/caption", guarded(caption, protocol="rest"), methods=["POST"]),
        Route("/models", guarded(list_models), methods=["GET"]),
        Route("/models/{name}", guarded(show_model), methods=["GET"]),
    ]

    routes.append(Fallback(error_json))

    return Starlette(routes=routes, exception_handlers={405: method_not_allowed})
