"""Image classification: an image -> the top-k of the model's labels (CNNs: imagenet-cnn,
digits-cnn, imported classifiers wrapped to the same contract)."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from service.core.model_settings import ModelSettings
from service.core.wire import Probability, ResponseModel, TaskAnswer
from service.processing.ranking import top_k
from service.processing.vision import decode_image, digit_pixels, resize_center_crop
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import ImageClassifier
from service.store.importing.importer import ImportRule
from service.store.importing.preparers import prepare_image
from service.store.specs import ModelSpec
from service.tasks.base import Task, check_range
from service.tasks.tensors import InferRequest, Signature, Tensor, image_batch

NAME = "image-classification"
DEFAULT_MODEL = "imagenet-cnn"


async def classify(
    serving: ServingState,
    image: bytes,
    model: str | None = None,
    k: int | None = None,
    deadline: float | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """Image bytes -> {"model", "version", "predictions": [{"label", "index", "score"}]}."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)
    spec, settings = runner.spec, runner.config
    labels = spec.labels or []
    k = check_range("top_k", 5 if k is None else k, 1, len(labels))

    with runner.admission.admit():  # before decoding: shedding must be cheap
        probabilities = await serving.prepare_and_submit(
            runner, lambda: image_pixels(spec, settings, image), deadline
        )
    predictions = [
        {"label": labels[i], "index": i, "score": round(float(probabilities[i]), 6)}
        for i in top_k(probabilities, k)
    ]
    return {"model": spec.name, "version": spec.version, "predictions": predictions}


def image_pixels(spec: ModelSpec, settings: ModelSettings, image: bytes) -> np.ndarray:
    """Image bytes -> the model's uint8 HWC input, as the spec's preprocessing says (the bench's
    in-process limit calls this too, so its ratios compare like with like)."""
    size = int(spec.preprocessing["image_size"][0])
    if spec.preprocessing.get("channels") == 1:
        decoded = decode_image(image, settings.max_image_pixels)
        invert = spec.preprocessing.get("invert_light_background", True)
        return digit_pixels(decoded, size, invert)
    resize = spec.preprocessing.get("resize")  # an int in imported models' specs
    resize = resize if isinstance(resize, int) else round(size * 256 / 224)
    draft = settings.jpeg_draft_factor
    min_side = math.ceil(draft * resize) if draft > 0 else None
    decoded = decode_image(image, settings.max_image_pixels, min_side)
    return resize_center_crop(decoded, resize, size)


def signature(runner: Runner) -> Signature:
    graph = runner.spec.graphs["model"]
    image = graph.inputs[0]
    classes = int(graph.outputs[-1].shape[-1])
    inner = [int(d) for d in image.shape[1:]]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        images = image_batch(request, runner, inner)
        rows = await asyncio.gather(
            *(runner.submit(row, deadline=request.deadline) for row in images)
        )
        return {"probabilities": np.stack(rows).astype(np.float32, copy=False)}

    return Signature(
        inputs=[Tensor("image", "UINT8", [-1, *inner], description="NHWC uint8 pixels")],
        outputs=[Tensor("probabilities", "FP32", [-1, classes])],
        infer=infer,
        labels=runner.spec.labels,
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


class Prediction(ResponseModel):
    label: str
    index: Annotated[int, Field(ge=0)]
    score: Probability


class ClassifyResult(TaskAnswer):
    predictions: Annotated[list[Prediction], Field(min_length=1)]
    """Best first."""


TASK = Task(
    name=NAME,
    position=10,
    summary="image -> top-k labels",
    kernel=ImageClassifier,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(ClassifyResult,),
    builtin_models=("digits-cnn", "imagenet-cnn"),
    importing=ImportRule(NAME, prepare_image, needs_labels=True),
)
