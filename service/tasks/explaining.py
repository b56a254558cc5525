"""Explanations of image classifications (/v1/explain): occlusion-sensitivity maps computed
through the model's own batcher.

One request becomes grid² + 1 items of the model (the image itself and one copy per occluded
cell, service/processing/occlusion.py). They are submitted together, so they batch with each
other and with other traffic, and admission counts every one of them: a grid of 16 weighs 257
classifications in max_queue and in the wait bound, not one.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.errors import InvalidInput
from service.core.model_settings import ModelSettings
from service.processing.occlusion import heatmap_png, mean_colour, occluded_copies, score_drops
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.store.specs import ModelSpec
from service.tasks.base import check_range
from service.tasks.image_classification import DEFAULT_MODEL, NAME, classes_of, image_pixels

DEFAULT_GRID = 8
DEFAULT_PNG_SIDE = 256
MIN_PNG_SIDE = 16
FILL = "mean"


def items_of(grid: int) -> int:
    """The model items one explanation with this grid becomes."""
    return grid * grid + 1


def input_size(spec: ModelSpec) -> tuple[int, int]:
    """(height, width) of the model's image input (NHWC)."""
    shape = spec.graphs["model"].inputs[0].shape
    return int(shape[1]), int(shape[2])


def checked_grid(spec: ModelSpec, settings: ModelSettings, grid: int) -> int:
    """`grid`, or InvalidInput saying the largest this model takes, and why: its setting,
    admission (the items must fit in max_queue) or its input side (a cell holds a pixel)."""
    caps = {
        "max_explain_grid": settings.max_explain_grid,
        f"max_queue={settings.max_queue} (a grid of G is G²+1 inferences)": math.isqrt(
            settings.max_queue - 1
        ),
        f"the model's {min(input_size(spec))} px input": min(input_size(spec)),
    }
    cap = min(caps.values())
    if 2 <= grid <= cap:
        return grid
    if cap < 2:
        raise InvalidInput(f"model {spec.name} cannot be explained: max_queue is too small")
    why = next(reason for reason, value in caps.items() if value == cap)
    raise InvalidInput(f"grid={grid} must be between 2 and {cap} for {spec.name} (set by {why})")


@dataclass(frozen=True)
class Occlusion:
    """One image's occluded copies, and what the model's answers to them say. The server gets
    the answers through the runner's batcher, the model tests (tests/models/) from onnxruntime:
    every other step is this class."""

    pixels: np.ndarray
    """The model's input (HWC uint8)."""
    grid: int
    fill: np.ndarray
    copies: np.ndarray
    """[1 + grid², H, W, C]: the image itself, then one copy per cell (rows top to bottom)."""

    @classmethod
    def of(cls, pixels: np.ndarray, grid: int) -> Occlusion:
        fill = mean_colour(pixels)
        return cls(pixels, grid, fill, occluded_copies(pixels, grid, fill))

    def explained(
        self, spec: ModelSpec, probabilities: np.ndarray, target: int | None = None
    ) -> tuple[dict[str, Any], np.ndarray]:
        """The model's answers to `copies` -> (the ExplainResult body, the score drops); the
        target is the image's top-1 class unless given."""
        top = int(probabilities[0].argmax()) if target is None else target
        baseline, drops = score_drops(probabilities, self.grid, top)
        labels = spec.labels or []
        answer = {
            "model": spec.name,
            "version": spec.version,
            "target": {
                "label": labels[top] if top < len(labels) else str(top),
                "index": top,
                "score": round(baseline, 6),
            },
            "grid_size": self.grid,
            "grid": [[round(float(drop), 6) for drop in row] for row in drops],
            "fill": FILL,
            "fill_value": [int(value) for value in self.fill],
            "input_size": list(self.pixels.shape[:2]),
        }
        return answer, drops


@dataclass(frozen=True)
class Explained:
    answer: dict[str, Any]
    """The ExplainResult body."""
    png: bytes | None
    """The heatmap, when one was asked for."""


async def explain(
    serving: ServingState,
    image: bytes,
    model: str | None = None,
    grid: int | None = None,
    target: int | None = None,
    deadline: float | None = None,
    version: str | None = None,
    heatmap: bool = False,
    png_side: int = DEFAULT_PNG_SIDE,
) -> Explained:
    """Image bytes -> the occlusion map of `target` (default: the image's top-1 class) on a
    `grid` x `grid` grid, and with `heatmap` a PNG of it whose longer side is `png_side`."""
    runner = serving.runner(model or DEFAULT_MODEL, NAME, version)
    spec, settings = runner.spec, runner.config
    size = checked_grid(spec, settings, DEFAULT_GRID if grid is None else grid)
    if target is not None:
        check_range("target", target, 0, classes_of(spec) - 1)
    check_range("size", png_side, MIN_PNG_SIDE, serving.settings.max_explain_png_px)

    with runner.admission.admit(items_of(size)):  # before decoding: shedding must be cheap
        occlusion: Occlusion = await serving.preprocess(
            lambda: Occlusion.of(image_pixels(spec, settings, image), size)
        )
        probabilities = await submit_all(runner, occlusion.copies, deadline)
    answer, drops = occlusion.explained(spec, probabilities, target)
    png = None
    if heatmap:
        png = await serving.postprocess(lambda: heatmap_png(occlusion.pixels, drops, png_side))
    return Explained(answer, png)


async def submit_all(runner: Runner, rows: np.ndarray, deadline: float | None) -> np.ndarray:
    """Each row through the runner's batcher, all queued at once; the answers in row order. The
    first failure (a deadline, an overloaded queue) cancels the rest."""
    pending = [
        asyncio.ensure_future(runner.submit(row, runner.bucket(row), deadline)) for row in rows
    ]
    try:
        answers = await asyncio.gather(*pending)
    except BaseException:
        for future in pending:
            future.cancel()
        raise
    return np.stack([answer.probabilities for answer in answers])
