"""Image captioning: an image -> a caption (the CNN encoder + LSTM decoder, greedy or beam)."""

from __future__ import annotations

import asyncio
import math
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from service.core.errors import InvalidInput
from service.core.wire import Judged, TaskAnswer, filled
from service.processing.vision import decode_image, resize_exact
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import Caption, Captioner
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

NAME = "image-captioning"
DEFAULT_MODEL = "captioner"


async def caption(
    serving: ServingState,
    image: bytes,
    model: str | None = None,
    beam: int | None = None,
    deadline: float | None = None,
    version: str | None = None,
    reject_out_of_domain: bool = False,
) -> dict[str, Any]:
    """Image bytes -> {"caption", "score", "beam", "confidence"} and, for a model with a domain
    verdict, "in_domain" and "domain_score"; beam 1 is greedy decoding."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)
    settings = runner.config
    beam = check_range("beam", 1 if beam is None else beam, 1, settings.max_beam)
    size = int(runner.spec.preprocessing["image_size"][0])

    def prepare() -> np.ndarray:
        return resize_exact(decode_image(image, settings.max_image_pixels), size)

    with runner.admission.admit():
        result: Caption = await serving.prepare_and_submit(
            runner, prepare, deadline, lambda _: beam
        )
    verdict = judged(
        runner.spec, math.exp(result.score), result.domain_distance, reject_out_of_domain, KNOWS
    )
    return {
        "model": runner.spec.name,
        "version": runner.spec.version,
        "caption": result.text,
        "score": round(result.score, 6),
        "beam": beam,
        **verdict,
    }


KNOWS = "scenes of two coloured shapes, like the ones it was trained on"


def signature(runner: Runner) -> Signature:
    inner = [int(d) for d in runner.spec.graphs["encoder"].inputs[0].shape[1:]]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        reject = reject_parameter(request)  # before anything runs
        images = image_batch(request, runner, inner)
        beam = request.parameters.get("beam", 1)
        if not isinstance(beam, int) or isinstance(beam, bool):
            raise InvalidInput(f"parameter beam must be an integer, got {beam!r}")
        check_range("beam", beam, 1, runner.config.max_beam)
        results: list[Caption] = await asyncio.gather(
            *(runner.submit(row, beam, request.deadline) for row in images)
        )
        verdicts = domain_outputs(
            runner.spec,
            [math.exp(r.score) for r in results],
            [r.domain_distance for r in results],
            reject,
            KNOWS,
        )
        return {
            "caption": np.array([r.text.encode() for r in results], dtype=object),
            "score": np.array([r.score for r in results], dtype=np.float32),
            **verdicts,
        }

    return Signature(
        inputs=[Tensor("image", "UINT8", [-1, *inner], description="NHWC uint8 pixels")],
        outputs=[
            Tensor("caption", "BYTES", [-1]),
            Tensor("score", "FP32", [-1]),
            *verdict_tensors(runner.spec),
        ],
        infer=infer,
        parameters={
            "beam": "beam width (int, default 1 = greedy)",
            **({REJECT_PARAMETER: REJECT_HELP} if verdict_tensors(runner.spec) else {}),
        },
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


Beam = Annotated[int, Field(ge=1, json_schema_extra=filled(maximum="max_beam"))]


class CaptionResult(TaskAnswer, Judged):
    caption: str
    score: Annotated[float, Field(le=0)]
    """The caption's log-probability."""
    beam: Beam


TASK = Task(
    name=NAME,
    position=40,
    summary="image -> caption",
    kernel=Captioner,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(CaptionResult,),
    builtin_models=("captioner",),
)
