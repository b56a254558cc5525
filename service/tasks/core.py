"""The task API's core, shared by REST /v1 and the gRPC deepserve.v1.Inference service.

Each function takes already-read request data (bytes, strings, numbers), validates and preprocesses
it per request, submits it to the model's runner (so every protocol shares one batcher per model)
and returns the answer as plain data. Transports only read requests and write responses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from service.core.errors import InvalidInput
from service.core.metrics import observe_preprocess
from service.processing.ranking import top_k
from service.processing.speech import SAMPLE_RATE, decode_wav, to_model_rate
from service.processing.text import encode, tokenize
from service.processing.vision import decode_image, digit_pixels, resize_center_crop, resize_exact
from service.runners.repository import ServingState
from service.store.specs import ModelSpec

DEFAULT_MODELS = {
    "image-classification": "imagenet-cnn",
    "text-classification": "sentiment-lstm",
    "speech-recognition": "speech-ctc",
    "image-captioning": "captioner",
}

_word_indexes: dict[str, dict[str, int]] = {}  # model tag -> word -> id, built once per model


def word_index(spec: ModelSpec) -> dict[str, int]:
    if spec.tag not in _word_indexes:
        _word_indexes[spec.tag] = {word: i for i, word in enumerate(spec.vocabulary or [])}
    return _word_indexes[spec.tag]


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{name}={value} must be between {low} and {high}")
    return value


async def classify(
    serving: ServingState,
    image: bytes,
    model: str | None = None,
    k: int | None = None,
    deadline: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Image bytes -> {"model", "version", "predictions": [{"label", "index", "score"}]}."""
    name = model or DEFAULT_MODELS["image-classification"]
    runner = serving.runner(name, "image-classification", version)
    spec, settings = runner.spec, serving.settings
    labels = spec.labels or []
    k = check_range("top_k", 5 if k is None else k, 1, len(labels))

    def prepare() -> np.ndarray:
        decoded = decode_image(image, settings.max_image_pixels)
        size = int(spec.preprocessing["image_size"][0])
        if spec.preprocessing.get("channels") == 1:
            invert = spec.preprocessing.get("invert_light_background", True)
            return digit_pixels(decoded, size, invert)
        resize = spec.preprocessing.get("resize")  # an int in imported models' specs
        resize = resize if isinstance(resize, int) else round(size * 256 / 224)
        return resize_center_crop(decoded, resize, size)

    with runner.admission.admit():  # before decoding: shedding must be cheap
        pixels = await serving.preprocess(prepare)
        probabilities = await runner.submit(pixels, deadline=deadline)
    predictions = [
        {"label": labels[i], "index": i, "score": round(float(probabilities[i]), 6)}
        for i in top_k(probabilities, k)
    ]
    return {"model": spec.name, "version": spec.version, "predictions": predictions}


def encode_texts(serving: ServingState, spec: ModelSpec, texts: list[Any], single: bool):
    """Validate texts and turn them into token id lists (the model's vocabulary)."""
    settings = serving.settings
    if not texts:
        raise InvalidInput("no texts: send at least one")
    if len(texts) > settings.max_batch_items:
        raise InvalidInput(
            f"{len(texts)} texts in one request; the limit is {settings.max_batch_items}"
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
    return items


async def sentiment(
    serving: ServingState,
    texts: list[Any],
    model: str | None = None,
    single: bool = False,
    deadline: float | None = None,
    version: str | None = None,
) -> tuple[ModelSpec, list[dict[str, Any]]]:
    """Texts -> one {"label", "score"} per text, in order."""
    name = model or DEFAULT_MODELS["text-classification"]
    runner = serving.runner(name, "text-classification", version)
    spec = runner.spec
    started = time.perf_counter()
    items = encode_texts(serving, spec, texts, single)
    observe_preprocess(time.perf_counter() - started)
    with runner.admission.admit():
        rows = await asyncio.gather(
            *(runner.submit(ids, runner.bucket(ids), deadline) for ids in items)
        )
    labels = spec.labels or []
    return spec, [
        {"label": labels[int(np.argmax(row))], "score": round(float(np.max(row)), 6)}
        for row in rows
    ]


def check_duration(serving: ServingState, samples: int, rate: int = SAMPLE_RATE) -> None:
    seconds = samples / rate
    limit = serving.settings.max_audio_seconds
    if seconds > limit:
        raise InvalidInput(f"audio is {seconds:.1f} s long; the limit is {limit:g} s")


def check_audio(serving: ServingState, audio: np.ndarray) -> np.ndarray:
    check_duration(serving, len(audio))
    seconds = len(audio) / SAMPLE_RATE
    if len(audio) < SAMPLE_RATE // 20:
        raise InvalidInput(f"audio is {seconds * 1000:.0f} ms long; send at least 50 ms")
    return audio


async def transcribe(
    serving: ServingState,
    wav: bytes,
    model: str | None = None,
    deadline: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """WAV bytes (any common rate, mono or stereo) -> {"text", "confidence", "duration_s"}."""
    name = model or DEFAULT_MODELS["speech-recognition"]
    runner = serving.runner(name, "speech-recognition", version)

    def prepare() -> np.ndarray:
        try:
            audio, rate = decode_wav(wav)
        except ValueError as error:
            raise InvalidInput(f"not a usable WAV file ({error}); send PCM WAV audio") from None
        check_duration(serving, len(audio), rate)  # before resampling, which costs per sample
        return check_audio(serving, to_model_rate(audio, rate))

    with runner.admission.admit():
        audio = await serving.preprocess(prepare)
        transcript = await runner.submit(audio, runner.bucket(audio), deadline)
    return {
        "model": runner.spec.name,
        "version": runner.spec.version,
        "text": transcript.text,
        "confidence": round(transcript.confidence, 6),
        "duration_s": round(len(audio) / SAMPLE_RATE, 3),
    }


async def caption(
    serving: ServingState,
    image: bytes,
    model: str | None = None,
    beam: int | None = None,
    deadline: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Image bytes -> {"caption", "score", "beam"}; beam 1 is greedy decoding."""
    settings = serving.settings
    name = model or DEFAULT_MODELS["image-captioning"]
    runner = serving.runner(name, "image-captioning", version)
    beam = check_range("beam", 1 if beam is None else beam, 1, settings.max_beam)
    size = int(runner.spec.preprocessing["image_size"][0])

    def prepare() -> np.ndarray:
        return resize_exact(decode_image(image, settings.max_image_pixels), size)

    with runner.admission.admit():
        pixels = await serving.preprocess(prepare)
        result = await runner.submit(pixels, beam, deadline)
    return {
        "model": runner.spec.name,
        "version": runner.spec.version,
        "caption": result.text,
        "score": round(result.score, 6),
        "beam": beam,
    }


async def list_models(serving: ServingState) -> list[dict[str, Any]]:
    """Every served model version (newest first per model): spec, placement, provider,
    batching; configured models that cannot be served, with why."""
    await asyncio.gather(*(runner.refresh() for runner in serving.all_runners()))
    models = [
        serving.describe(name, version)
        for name in serving.versions
        for version in serving.versions[name]
    ]
    missing = [{"name": n, "ready": False, "error": why} for n, why in serving.missing.items()]
    return models + missing


async def show_model(
    serving: ServingState, name: str, version: str | None = None
) -> dict[str, Any]:
    await serving.runner(name, version=version).refresh()
    return serving.describe(name, version)
