"""The REST task API (/v1): a thin Starlette app that decodes, validates and delegates.

Mounted on the BentoML gateway with @bentoml.asgi_app so raw image/audio bodies stay raw
(BentoML's @bentoml.api would parse an image/jpeg body as JSON).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.errors import (
    InvalidInput,
    PayloadTooLarge,
    ServingError,
    UnsupportedMediaType,
)
from service.processing.speech import SAMPLE_RATE, load_audio
from service.processing.text import encode, tokenize
from service.processing.vision import (
    decode_image,
    digit_pixels,
    resize_center_crop,
    resize_exact,
)
from service.registry import ModelSpec
from service.state import ServingState

log = logging.getLogger("deepserve.rest")

StateGetter = Callable[[], ServingState]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidInput(f"malformed JSON body: {error}") from None


def b64decode(value: Any, field: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f'"{field}" must be a non-empty base64 string')
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f'"{field}" is not valid base64') from None


async def read_media(request: Request, field: str, kinds: tuple[str, ...], limit: int) -> bytes:
    """File bytes from multipart (`field`), a raw body of an accepted type, or JSON base64."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"body is {declared} bytes; the limit is {limit} bytes")
        try:
            form = await request.form(max_files=4, max_fields=16)
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
        payload = await read_json(request, limit)
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


def build_app(state: StateGetter) -> Starlette:
    """The /v1 app; `state` returns the gateway's ServingState at request time."""
    word_indexes: dict[str, dict[str, int]] = {}  # model tag -> word -> id, built once

    def word_index(spec: ModelSpec) -> dict[str, int]:
        if spec.tag not in word_indexes:
            word_indexes[spec.tag] = {word: i for i, word in enumerate(spec.vocabulary or [])}
        return word_indexes[spec.tag]

    async def classify(request: Request) -> JSONResponse:
        serving = state()
        model = request.query_params.get("model", "imagenet-cnn")
        runner = serving.runner(model, task="image-classification")
        spec = runner.spec
        labels = spec.labels or []
        top_k = int_param(request, "top_k", 5, 1, len(labels))
        settings = serving.settings
        data = await read_media(request, "image", ("image/",), settings.max_body_bytes)

        def prepare() -> np.ndarray:
            image = decode_image(data, settings.max_image_pixels)
            size = int(spec.preprocessing["image_size"][0])
            if spec.preprocessing.get("channels") == 1:
                return digit_pixels(
                    image, size, spec.preprocessing.get("invert_light_background", True)
                )
            return resize_center_crop(image, round(size * 256 / 224), size)

        pixels = await serving.preprocess(prepare)
        probabilities = await runner.submit(pixels)
        top = np.argsort(-probabilities, kind="stable")[:top_k]
        predictions = [
            {"label": labels[i], "index": int(i), "score": round(float(probabilities[i]), 6)}
            for i in top
        ]
        return JSONResponse(
            {"model": spec.name, "version": spec.version, "predictions": predictions}
        )

    async def sentiment(request: Request) -> JSONResponse:
        serving = state()
        settings = serving.settings
        runner = serving.runner(
            request.query_params.get("model", "sentiment-lstm"), "text-classification"
        )
        spec = runner.spec
        payload = await read_json(request, settings.max_body_bytes)
        if not isinstance(payload, dict) or ("text" in payload) == ("texts" in payload):
            raise InvalidInput('JSON body must be {"text": "..."} or {"texts": ["...", ...]}')
        single = "text" in payload
        texts = [payload["text"]] if single else payload["texts"]
        if not isinstance(texts, list) or not texts:
            raise InvalidInput('"texts" must be a non-empty list of strings')
        if len(texts) > settings.max_batch_items:
            raise InvalidInput(
                f'"texts" has {len(texts)} items; the limit is {settings.max_batch_items}'
            )
        index = word_index(spec)
        max_tokens = int(spec.preprocessing["max_tokens"])
        items = []
        for position, text in enumerate(texts):
            where = "text" if single else f"texts[{position}]"
            if not isinstance(text, str):
                raise InvalidInput(f"{where} must be a string, got {type(text).__name__}")
            if not text.strip():
                raise InvalidInput(f"{where} is empty; send some words")
            if len(text) > settings.max_text_chars:
                raise InvalidInput(
                    f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}"
                )
            tokens = tokenize(text)
            if not tokens:
                raise InvalidInput(f"{where} has no words (letters or digits)")
            items.append(encode(tokens, index, max_tokens))

        rows = await asyncio.gather(*(runner.submit(ids, runner.bucket(ids)) for ids in items))
        labels = spec.labels or []
        results = [
            {"label": labels[int(np.argmax(row))], "score": round(float(np.max(row)), 6)}
            for row in rows
        ]
        body: dict[str, Any] = {"model": spec.name, "version": spec.version}
        body.update(results[0] if single else {"results": results})
        return JSONResponse(body)

    async def transcribe(request: Request) -> JSONResponse:
        serving = state()
        settings = serving.settings
        runner = serving.runner(
            request.query_params.get("model", "speech-ctc"), "speech-recognition"
        )
        data = await read_media(request, "audio", ("audio/",), settings.max_body_bytes)

        def prepare() -> np.ndarray:
            try:
                audio = load_audio(data)
            except ValueError as error:
                raise InvalidInput(f"not a usable WAV file ({error}); send PCM WAV audio") from None
            seconds = len(audio) / SAMPLE_RATE
            if seconds > settings.max_audio_seconds:
                raise InvalidInput(
                    f"audio is {seconds:.1f} s long; the limit is {settings.max_audio_seconds:g} s"
                )
            if len(audio) < SAMPLE_RATE // 20:
                raise InvalidInput(f"audio is {seconds * 1000:.0f} ms long; send at least 50 ms")
            return audio

        audio = await serving.preprocess(prepare)
        transcript = await runner.submit(audio, runner.bucket(audio))
        return JSONResponse(
            {
                "model": runner.spec.name,
                "version": runner.spec.version,
                "text": transcript.text,
                "confidence": round(transcript.confidence, 6),
                "duration_s": round(len(audio) / SAMPLE_RATE, 3),
            }
        )

    async def caption(request: Request) -> JSONResponse:
        serving = state()
        settings = serving.settings
        runner = serving.runner(request.query_params.get("model", "captioner"), "image-captioning")
        beam = int_param(request, "beam", 1, 1, settings.max_beam)
        data = await read_media(request, "image", ("image/",), settings.max_body_bytes)
        size = int(runner.spec.preprocessing["image_size"][0])

        def prepare() -> np.ndarray:
            return resize_exact(decode_image(data, settings.max_image_pixels), size)

        pixels = await serving.preprocess(prepare)
        result = await runner.submit(pixels, beam)
        return JSONResponse(
            {
                "model": runner.spec.name,
                "version": runner.spec.version,
                "caption": result.text,
                "score": round(result.score, 6),
                "beam": beam,
            }
        )

    async def list_models(request: Request) -> JSONResponse:
        serving = state()
        await asyncio.gather(*(runner.refresh() for runner in serving.runners.values()))
        models = [serving.describe(name) for name in serving.runners]
        missing = [{"name": n, "ready": False, "error": why} for n, why in serving.missing.items()]
        return JSONResponse({"models": models + missing})

    async def show_model(request: Request) -> JSONResponse:
        serving = state()
        name = request.path_params["name"]
        await serving.runner(name).refresh()
        return JSONResponse(serving.describe(name))

    def guarded(handler: Callable[[Request], Awaitable[JSONResponse]]):
        async def endpoint(request: Request) -> JSONResponse:
            try:
                return await handler(request)
            except ServingError as error:
                if error.http_status >= 500:
                    log.warning("%s %s: %s", request.method, request.url.path, error.message)
                return JSONResponse(error.to_json(), error.http_status, headers=error.headers)

        return endpoint

    routes = [
        Route("/classify", guarded(classify), methods=["POST"]),
        Route("/sentiment", guarded(sentiment), methods=["POST"]),
        Route("/transcribe", guarded(transcribe), methods=["POST"]),
        Route("/caption", guarded(caption), methods=["POST"]),
        Route("/models", guarded(list_models), methods=["GET"]),
        Route("/models/{name}", guarded(show_model), methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "not_found",
                    "message": f"no route {request.method} {request.url.path}",
                }
            },
            404,
        )

    async def method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {
                "error": {
                    "code": "method_not_allowed",
                    "message": f"{request.method} not allowed here",
                }
            },
            405,
        )

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: method_not_allowed})
