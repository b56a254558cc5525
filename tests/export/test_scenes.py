"""Fast checks of the synthetic scene renderer behind the captioner."""

from __future__ import annotations

import re

import numpy as np
import pytest

from export.data import scenes as S


@pytest.fixture(scope="module")
def sample() -> S.Scenes:
    return S.render_scenes(600, seed=123, chunk=256)


def test_images_are_uint8_rgb_64(sample: S.Scenes) -> None:
    assert sample.images.shape == (600, 64, 64, 3)
    assert sample.images.dtype == np.uint8
    assert sample.captions.dtype.kind == "U"


def test_caption_grammar_and_both_orderings(sample: S.Scenes) -> None:
    colour, shape = "|".join(S.COLOURS), "|".join(S.SHAPES)
    relation = "|".join(S.RELATIONS)
    pattern = re.compile(rf"a ({colour}) ({shape}) ({relation}) a ({colour}) ({shape})")
    inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    assert sample.captions.shape == (600, 2)
    for (first, second), colours, shapes, rel in zip(
        sample.captions, sample.colours, sample.shapes, sample.relations
    ):
        a = (S.COLOURS[colours[0]], S.SHAPES[shapes[0]])
        b = (S.COLOURS[colours[1]], S.SHAPES[shapes[1]])
        match = pattern.fullmatch(str(first))
        assert match, first
        assert match.groups() == (*a, S.RELATIONS[rel], *b)
        match = pattern.fullmatch(str(second))
        assert match, second
        assert match.groups() == (*b, inverse[S.RELATIONS[rel]], *a)
        assert all(word in S.VOCABULARY for word in f"{first} {second}".split())


def test_relation_matches_positions(sample: S.Scenes) -> None:
    a, b = sample.centres[:, 0], sample.centres[:, 1]
    dx, dy = a[:, 0] - b[:, 0], a[:, 1] - b[:, 1]
    for name, along, across, sign in (
        ("left of", dx, dy, -1),
        ("right of", dx, dy, 1),
        ("above", dy, dx, -1),
        ("below", dy, dx, 1),
    ):
        rows = sample.relations == S.RELATIONS.index(name)
        assert rows.sum() > 100, name  # about a quarter each
        assert np.all(sign * along[rows] > 0), name
        assert np.all(np.abs(across[rows]) <= S.ACROSS * np.abs(along[rows]) + 1e-4), name


def test_sizes_overlap_and_objects_neither_overlap_nor_leave_the_frame(sample: S.Scenes) -> None:
    radii = sample.radii
    assert radii.min() >= S.RADIUS[0] and radii.max() <= S.RADIUS[1]
    # Either object may be the larger: no size rule tells them apart.
    assert 0.3 < float(np.mean(radii[:, 0] > radii[:, 1])) < 0.7
    assert np.mean(np.abs(radii[:, 0] - radii[:, 1]) < 1.0) > 0.05
    distance = np.linalg.norm(sample.centres[:, 0] - sample.centres[:, 1], axis=1)
    assert np.all(distance >= radii.sum(axis=1) + S.GAP - 1e-4)
    low = sample.centres - radii[..., None]
    high = sample.centres + radii[..., None]
    assert low.min() >= S.MARGIN - 1e-4 and high.max() <= 63 - S.MARGIN + 1e-4


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_every_shape_fits_its_bounding_circle_at_any_rotation(shape: int) -> None:
    n = 64
    rng = np.random.default_rng(shape)
    shapes = np.full(n, shape)
    centres = np.full((n, 2), 31.5, dtype=np.float32)
    radii = rng.uniform(*S.RADIUS, n).astype(np.float32)
    rotations = np.deg2rad(rng.uniform(-S.ROTATION_DEG, S.ROTATION_DEG, n)).astype(np.float32)
    proportions = np.where(
        shape == 1, rng.uniform(*S.SQUARE_HALF_SIDE, n), rng.uniform(*S.TRIANGLE_BASE, n)
    )
    distance = S.shape_distance(shapes, centres, radii, rotations, proportions)
    grid = np.arange(64, dtype=np.float32)
    from_centre = np.hypot(grid[None, None, :] - 31.5, grid[None, :, None] - 31.5)
    inside = distance <= 0
    assert inside[:, 31, 31].all() or shape == 2  # the centre (a triangle's may be off-pixel)
    assert not np.any(inside & (from_centre > radii[:, None, None] + 1e-3))
    # Filled well: at least a quarter of the bounding circle's area.
    assert np.all(inside.sum(axis=(1, 2)) >= 0.25 * np.pi * radii**2)


def test_hard_edges_cover_all_or_nothing_and_soft_edges_blend_over_the_outline() -> None:
    shapes, centres = np.array([0, 0]), np.full((2, 2), 31.5, dtype=np.float32)
    distance = S.shape_distance(shapes, centres, np.array([10.0, 10.0], dtype=np.float32))
    alpha = S.coverage(distance, np.array([0.0, 1.5], dtype=np.float32)[:, None, None])
    assert set(np.unique(alpha[0]).tolist()) == {0.0, 1.0}
    partial = (alpha[1] > 0) & (alpha[1] < 1)
    assert partial.sum() > 40  # a ring around the circle
    assert np.all(np.abs(distance[1][partial]) <= 0.75 + 1e-4)  # only along the outline
    assert np.all(alpha[1][distance[1] < -1] == 1) and np.all(alpha[1][distance[1] > 1] == 0)


def test_objects_are_drawn_in_their_colour(sample: S.Scenes) -> None:
    grid = np.arange(64, dtype=np.float32)
    for index in range(60):
        for which in (0, 1):
            x, y = sample.centres[index, which]
            near = np.hypot(grid[None, :] - x, grid[:, None] - y) <= 2.0
            mean = sample.images[index][near].mean(axis=0)
            # Compare hues, not brightness: objects are drawn at 0.8-1.05 of their colour.
            palette = S.PALETTE / S.PALETTE.max(axis=1, keepdims=True)
            nearest = np.argmin(np.abs(palette - mean / mean.max()).sum(axis=1))
            assert nearest == sample.colours[index, which], (index, which)


def test_every_colour_shape_pair_is_generated(sample: S.Scenes) -> None:
    pairs = sample.colours * len(S.SHAPES) + sample.shapes
    everything = set(range(len(S.COLOURS) * len(S.SHAPES)))
    assert set(pairs[:, 0].tolist()) == everything
    assert set(pairs[:, 1].tolist()) == everything
    assert set(sample.relations.tolist()) == set(range(len(S.RELATIONS)))


def test_deterministic_by_seed() -> None:
    a, b = S.render_scenes(40, seed=7), S.render_scenes(40, seed=7)
    c = S.render_scenes(40, seed=8)
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.captions, b.captions)
    assert not np.array_equal(a.images, c.images)


def test_encode_captions() -> None:
    ids = S.encode_captions(
        ["a red circle left of a blue square", "a red circle above a red circle"], 12
    )
    words = [S.VOCABULARY[i] for i in ids[0]]
    assert words[:9] == ["a", "red", "circle", "left", "of", "a", "blue", "square", "<eos>"]
    assert words[9:] == ["<pad>"] * 3
    assert ids[1, 7] == S.EOS_INDEX and ids[1, 8] == S.PAD_INDEX
    assert S.VOCABULARY[:3] == ["<pad>", "<bos>", "<eos>"]
