"""Occlusion sensitivity (Zeiler and Fergus, 2014): how much a classifier's score for one class
falls when each cell of a grid over its input is painted over. Pure numpy and Pillow: the task
(service/tasks/explaining.py) runs the copies through the model's batcher, a model test through
onnxruntime, so both share every step but the inference."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

POSITIVE = np.array([255.0, 0.0, 0.0])
"""Heatmap colour of a cell whose occlusion lowers the score (the class's evidence): red."""
NEGATIVE = np.array([0.0, 64.0, 255.0])
"""... and of one whose occlusion raises it (evidence against): blue."""
MAX_ALPHA = 0.65
"""Opacity of the strongest cell over the image."""


def cell_of(length: int, grid: int) -> np.ndarray:
    """The cell (0 .. grid - 1) of each of `length` pixels cut into `grid` equal cells: the one
    that holds the pixel's centre (so cell sizes differ by one pixel at most)."""
    return (2 * np.arange(length) + 1) * grid // (2 * length)


def cell_edges(length: int, grid: int) -> np.ndarray:
    """grid + 1 pixel offsets: cell k spans pixels edges[k] up to edges[k + 1] (cell_of's
    cells, none empty)."""
    if not 1 <= grid <= length:
        raise ValueError(f"cannot cut {length} pixels into {grid} cells")
    return np.searchsorted(cell_of(length, grid), np.arange(grid + 1))


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    """The image's mean colour, one uint8 per channel (what occluded cells are painted with: no
    colour, edge or texture that the image does not already have)."""
    return np.rint(pixels.reshape(-1, pixels.shape[-1]).mean(axis=0)).astype(np.uint8)


def occluded_copies(pixels: np.ndarray, grid: int, fill: np.ndarray) -> np.ndarray:
    """HWC uint8 `pixels` -> [1 + grid², H, W, C]: the image itself, then one copy per cell,
    rows top to bottom and cells left to right, with that cell painted `fill`."""
    height, width = pixels.shape[:2]
    rows, columns = cell_edges(height, grid), cell_edges(width, grid)
    copies = np.repeat(pixels[None], 1 + grid * grid, axis=0)
    for row in range(grid):
        for column in range(grid):
            copy = copies[1 + row * grid + column]
            copy[rows[row] : rows[row + 1], columns[column] : columns[column + 1]] = fill
    return copies


def score_drops(probabilities: np.ndarray, grid: int, target: int) -> tuple[float, np.ndarray]:
    """The model's answers to occluded_copies -> (the target's score on the whole image,
    [grid, grid] of that score minus its score with each cell occluded)."""
    if probabilities.shape[0] != 1 + grid * grid:
        raise ValueError(f"{probabilities.shape[0]} answers for a grid of {grid}")
    scores = probabilities[:, target].astype(np.float64)
    return float(scores[0]), (scores[0] - scores[1:]).reshape(grid, grid)


def heatmap_png(pixels: np.ndarray, drops: np.ndarray, side: int) -> bytes:
    """A PNG of `pixels` (HWC uint8, 1 or 3 channels; drawn grey) with `drops` over it: red
    where occluding a cell lowers the score, blue where it raises it, opacity in proportion to
    the largest |drop|; the longer side `side` pixels, each cell a block of one colour."""
    height, width = pixels.shape[:2]
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    channels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    # NOTE: the image in grey, so that red and blue read on any photo (a red cup, blue sky)
    grey = Image.fromarray(channels).convert("L").resize(size, Image.Resampling.BILINEAR)
    base = grey.convert("RGB")
    strongest = float(np.abs(drops).max()) if drops.size else 0.0
    weights = drops / strongest if strongest > 0 else np.zeros_like(drops)
    rows, columns = cell_of(size[1], drops.shape[0]), cell_of(size[0], drops.shape[1])
    weight = weights[rows][:, columns][..., None]
    colour = np.where(weight >= 0, POSITIVE, NEGATIVE)
    alpha = MAX_ALPHA * np.abs(weight)
    blended = np.asarray(base, dtype=np.float64) * (1 - alpha) + colour * alpha
    out = io.BytesIO()
    Image.fromarray(np.rint(blended).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()
