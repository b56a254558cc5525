"""Image classification: an image -> the top-k of the model's labels (CNNs: imagenet-cnn,
digits-cnn, imported classifiers wrapped to the same contract). Its explanations (occlusion
maps, /v1/explain) are computed in explaining.py; their answer is declared here with the task's
other answer."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from service.core.model_settings import ModelSettings
from service.core.wire import Judged, Probability, ResponseModel, TaskAnswer, filled
from service.processing.ranking import top_k
from service.processing.vision import decode_image, digit_pixels, resize_center_crop
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import Classified, ImageClassifier
from service.store.importing.importer import ImportRule
from service.store.importing.preparers import prepare_image
from service.store.specs import ModelSpec
from service.tasks.base import (
    REJECT_HELP,
    REJECT_PARAMETER,
    Task,
    check_range,
    domain_outputs,
    judged,
    reject_parameter,
    verdict_tensors,
)
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
    reject_out_of_domain: bool = False,
) -> dict[str, Any]:
    """Image bytes -> {"model", "version", "predictions": [{"label", "index", "score"}],
    "confidence"} and, for a model with a domain verdict, "in_domain" and "domain_score"."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)
    spec, settings = runner.spec, runner.config
    labels = spec.labels or []
    k = check_range("top_k", 5 if k is None else k, 1, len(labels))

    with runner.admission.admit():  # before decoding: shedding must be cheap
        result: Classified = await serving.prepare_and_submit(
            runner, lambda: image_pixels(spec, settings, image), deadline
        )
    probabilities = result.probabilities
    best = top_k(probabilities, k)
    predictions = [
        {"label": labels[i], "index": i, "score": round(float(probabilities[i]), 6)} for i in best
    ]
    verdict = judged(
        spec,
        float(probabilities[best[0]]),
        result.domain_distance,
        reject_out_of_domain,
        KNOWS.get(spec.name, "the images it was trained on"),
    )
    return {"model": spec.name, "version": spec.version, "predictions": predictions, **verdict}


def classes_of(spec: ModelSpec) -> int:
    """How many classes the graph's `probabilities` output has."""
    outputs = {t.name: t for t in spec.graphs["model"].outputs}
    return int(outputs["probabilities"].shape[-1])


KNOWS = {"digits-cnn": "handwritten digits, light on dark, one per image"}


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
    classes = classes_of(runner.spec)
    inner = [int(d) for d in image.shape[1:]]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        reject = reject_parameter(request)  # before anything runs
        images = image_batch(request, runner, inner)
        rows: list[Classified] = await asyncio.gather(
            *(runner.submit(row, deadline=request.deadline) for row in images)
        )
        probabilities = np.stack([r.probabilities for r in rows]).astype(np.float32, copy=False)
        verdicts = domain_outputs(
            runner.spec,
            probabilities.max(axis=1).tolist(),
            [r.domain_distance for r in rows],
            reject,
            KNOWS.get(runner.spec.name, "the images it was trained on"),
        )
        return {"probabilities": probabilities, **verdicts}

    return Signature(
        inputs=[Tensor("image", "UINT8", [-1, *inner], description="NHWC uint8 pixels")],
        outputs=[Tensor("probabilities", "FP32", [-1, classes]), *verdict_tensors(runner.spec)],
        infer=infer,
        labels=runner.spec.labels,
        parameters={REJECT_PARAMETER: REJECT_HELP} if verdict_tensors(runner.spec) else {},
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


class Prediction(ResponseModel):
    label: str
    index: Annotated[int, Field(ge=0)]
    score: Probability


class ClassifyResult(TaskAnswer, Judged):
    predictions: Annotated[list[Prediction], Field(min_length=1)]
    """Best first."""


Grid = Annotated[int, Field(ge=2, json_schema_extra=filled(maximum="max_explain_grid"))]
ScoreDrop = Annotated[float, Field(ge=-1, le=1)]


class ExplainResult(TaskAnswer):
    """An occlusion-sensitivity map: how much the target class's score falls when each cell of a
    grid over the model's input is painted over."""

    target: Prediction
    """The class explained (the image's top-1 unless `target` was given) and its score on the
    whole image."""
    grid_size: Grid
    grid: Annotated[list[Annotated[list[ScoreDrop], Field(min_length=2)]], Field(min_length=2)]
    """grid_size rows, top to bottom, of grid_size cells, left to right: target.score minus the
    target's score with that cell occluded (so the occluded score is target.score - grid[r][c]).
    Positive: the region speaks for the class; negative: against it."""
    fill: Literal["mean"]
    """What an occluded cell is painted with: the mean colour of the model's input
    (`fill_value`), which adds no colour, edge or texture the image lacks."""
    fill_value: Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=1)]
    """One value per channel of the model's input."""
    input_size: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]
    """[height, width] of the model's input (the image resized and centre-cropped as the model
    sees it) that the grid cuts into equal cells: a pixel row y is in grid row
    floor((y + 0.5) * grid_size / height), columns likewise."""


TASK = Task(
    name=NAME,
    position=10,
    summary="image -> top-k labels",
    kernel=ImageClassifier,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(ClassifyResult, ExplainResult),
    builtin_models=("digits-cnn", "imagenet-cnn"),
    importing=ImportRule(NAME, prepare_image, needs_labels=True),
)
