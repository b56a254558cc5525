"""Occlusion sensitivity's pure steps: the grid's cells, the occluded copies, the score drops and
the heatmap PNG (no model, no store)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.processing.occlusion import (
    MAX_ALPHA,
    cell_edges,
    cell_of,
    heatmap_png,
    mean_colour,
    occluded_copies,
    score_drops,
)


def decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGB"
    return image


@pytest.mark.parametrize(("length", "grid"), [(28, 8), (224, 16), (5, 5), (16, 3), (7, 2)])
def test_cells_tile_the_side_with_sizes_one_pixel_apart_at_most(length: int, grid: int) -> None:
    edges = cell_edges(length, grid)
    assert edges[0] == 0 and edges[-1] == length and len(edges) == grid + 1
    sizes = np.diff(edges)
    assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
    # each pixel's cell by its centre agrees with the edges
    owner = cell_of(length, grid)
    assert [int(np.sum(owner == cell)) for cell in range(grid)] == sizes.tolist()


def test_a_side_cannot_be_cut_into_more_cells_than_pixels() -> None:
    with pytest.raises(ValueError, match="cannot cut 4 pixels into 5 cells"):
        cell_edges(4, 5)


def test_each_copy_occludes_exactly_its_own_cell_and_the_cells_tile_the_image() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(10, 250, (10, 13, 3), dtype=np.uint8)
    fill = np.array([0, 1, 2], np.uint8)  # never in the image: changed pixels are occluded ones
    copies = occluded_copies(pixels, 3, fill)
    assert copies.shape == (10, 10, 13, 3) and copies.dtype == np.uint8
    np.testing.assert_array_equal(copies[0], pixels)  # the image itself comes first
    covered = np.zeros((10, 13), np.int64)
    rows, columns = cell_edges(10, 3), cell_edges(13, 3)
    for index, copy in enumerate(copies[1:]):
        changed = np.any(copy != pixels, axis=-1)
        row, column = divmod(index, 3)  # rows top to bottom, cells left to right
        expected = np.zeros_like(changed)
        expected[rows[row] : rows[row + 1], columns[column] : columns[column + 1]] = True
        np.testing.assert_array_equal(changed, expected)
        assert (copy[changed] == fill).all()
        covered += changed
    assert (covered == 1).all()


def test_the_fill_is_the_images_mean_colour_per_channel() -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[:2, :, 0] = 255  # half red
    pixels[..., 2] = 7
    np.testing.assert_array_equal(mean_colour(pixels), [128, 0, 7])
    digit = np.zeros((28, 28, 1), np.uint8)
    digit[10:18, 12:16] = 255
    assert mean_colour(digit).tolist() == [round(32 * 255 / 784)]


def test_score_drops_are_the_whole_images_score_minus_each_occluded_one() -> None:
    probabilities = np.array(
        [[0.1, 0.9], [0.5, 0.5], [0.1, 0.9], [0.0, 1.0], [0.3, 0.7]], np.float32
    )
    baseline, drops = score_drops(probabilities, 2, target=1)
    assert baseline == pytest.approx(0.9)
    np.testing.assert_allclose(drops, [[0.4, 0.0], [-0.1, 0.2]], atol=1e-6)
    _, other = score_drops(probabilities, 2, target=0)
    np.testing.assert_allclose(other, -drops, atol=1e-6)
    with pytest.raises(ValueError, match="4 answers for a grid of 2"):
        score_drops(probabilities[:4], 2, 1)


def test_heatmap_keeps_the_aspect_with_its_longer_side_as_asked() -> None:
    pixels = np.full((30, 60, 3), 100, np.uint8)
    drops = np.array([[0.5, 0.0], [0.0, -0.25]])
    for side in (16, 256, 512):
        image = decoded(heatmap_png(pixels, drops, side))
        assert image.size == (side, side // 2)
    digit = np.zeros((28, 28, 1), np.uint8)  # one channel: drawn grey, as RGB
    assert decoded(heatmap_png(digit, drops, 100)).size == (100, 100)
    many_cells = np.linspace(-1, 1, 32 * 32).reshape(32, 32)  # more cells than pixels
    assert decoded(heatmap_png(pixels, many_cells, 16)).size == (16, 8)


def test_heatmap_is_red_for_evidence_blue_against_and_the_image_elsewhere() -> None:
    pixels = np.full((8, 8, 3), 100, np.uint8)
    drops = np.array([[0.4, 0.0], [0.0, -0.2]])
    out = np.asarray(decoded(heatmap_png(pixels, drops, 8)), np.int64)
    strongest, untouched, against = out[1, 1], out[1, 6], out[6, 6]
    np.testing.assert_array_equal(untouched, [100, 100, 100])
    expected = np.rint(100 * (1 - MAX_ALPHA) + np.array([255, 0, 0]) * MAX_ALPHA)
    np.testing.assert_array_equal(strongest, expected)  # the largest |drop|: full opacity
    assert against[2] > 100 > against[0]  # blue, at half the opacity
    np.testing.assert_array_equal(out[:4, :4], np.broadcast_to(strongest, (4, 4, 3)))  # a block
    flat = np.asarray(decoded(heatmap_png(pixels, np.zeros((2, 2)), 8)))
    assert (flat == 100).all()  # nothing to show: the image as it is
