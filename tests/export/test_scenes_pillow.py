"""The independent Pillow scene renderer: determinism, captions, geometry, colours, background."""

from __future__ import annotations

import colorsys
import dataclasses
import math
import re

import numpy as np
import pytest

from export.data import scenes_pillow
from export.data.scenes_pillow import (
    COLOURS,
    PALETTE,
    RELATIONS,
    SHAPES,
    PillowScenes,
    render_pillow_scenes,
)

N = 1000
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
CAPTION = re.compile(
    rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)}) ({'|'.join(RELATIONS)}) "
    rf"a ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})"
)


@pytest.fixture(scope="module")
def scenes() -> PillowScenes:
    return render_pillow_scenes(N, seed=0)


def _fields_equal(x: PillowScenes, y: PillowScenes, rows: slice = slice(None)) -> bool:
    return all(
        np.array_equal(getattr(x, f.name)[rows], getattr(y, f.name)[rows])
        for f in dataclasses.fields(PillowScenes)
    )


def test_deterministic_given_n_and_seed() -> None:
    first, again = render_pillow_scenes(24, seed=5), render_pillow_scenes(24, seed=5)
    assert _fields_equal(first, again)
    assert not np.array_equal(first.images, render_pillow_scenes(24, seed=6).images)
    # a shorter batch is a prefix of a longer one
    assert _fields_equal(render_pillow_scenes(7, seed=5), first, slice(0, 7))


def test_shapes_and_dtypes(scenes: PillowScenes) -> None:
    assert len(scenes) == N
    expected = {
        "images": ((N, 64, 64, 3), np.uint8),
        "colours": ((N, 2), np.int64),
        "shapes": ((N, 2), np.int64),
        "centres": ((N, 2, 2), np.float32),
        "radii": ((N, 2), np.float32),
        "relations": ((N,), np.int64),
        "rotations": ((N, 2), np.float32),
    }
    for name, (shape, dtype) in expected.items():
        array = getattr(scenes, name)
        assert array.shape == shape and array.dtype == dtype, name
    assert scenes.captions.shape == (N, 2) and scenes.captions.dtype.kind == "U"
    empty = render_pillow_scenes(0, seed=0)
    assert len(empty) == 0 and empty.images.shape == (0, 64, 64, 3)
    assert empty.captions.shape == (0, 2)
    with pytest.raises(ValueError):
        render_pillow_scenes(-1, seed=0)


def test_captions_follow_the_grammar_in_both_orders(scenes: PillowScenes) -> None:
    for i, (a_first, b_first) in enumerate(scenes.captions):
        a, b = CAPTION.fullmatch(a_first), CAPTION.fullmatch(b_first)
        assert a is not None and b is not None, (a_first, b_first)
        (colour_a, shape_a), (colour_b, shape_b) = (
            (COLOURS[scenes.colours[i, j]], SHAPES[scenes.shapes[i, j]]) for j in (0, 1)
        )
        relation = RELATIONS[scenes.relations[i]]
        assert a.groups() == (colour_a, shape_a, relation, colour_b, shape_b)
        assert b.groups() == (colour_b, shape_b, INVERSE[relation], colour_a, shape_a)


def test_relations_match_centres(scenes: PillowScenes) -> None:
    dx, dy = (scenes.centres[:, 0] - scenes.centres[:, 1]).T  # A relative to B, y downwards
    tan20 = math.tan(math.radians(20))
    expected = {
        "left of": (dx < 0) & (np.abs(dy) <= tan20 * -dx),
        "right of": (dx > 0) & (np.abs(dy) <= tan20 * dx),
        "above": (dy < 0) & (np.abs(dx) <= tan20 * -dy),
        "below": (dy > 0) & (np.abs(dx) <= tan20 * dy),
    }
    for index, relation in enumerate(RELATIONS):
        chosen = scenes.relations == index
        assert expected[relation][chosen].all(), relation
        assert abs(chosen.sum() - N / len(RELATIONS)) <= 1, relation


def _object(scenes: PillowScenes, i: int, j: int) -> tuple[np.ndarray, float]:
    """Object j of scene i as a convex core polygon and how far the object extends around it: a
    square or triangle is its outline and 0, a circle its centre and its radius."""
    centre, radius = scenes.centres[i, j].astype(np.float64), float(scenes.radii[i, j])
    shape = int(scenes.shapes[i, j])
    if shape == scenes_pillow.CIRCLE:
        return centre[None], radius
    rotation = float(scenes.rotations[i, j])
    return scenes_pillow.shape_outline(shape, (centre[0], centre[1]), radius, rotation), 0.0


def _point_segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab, ap = b - a, p - a
    length2 = (ab * ab).sum(-1)
    t = np.clip((ap * ab).sum(-1) / np.where(length2 > 0, length2, 1.0), 0.0, 1.0)
    return np.linalg.norm(ap - t[..., None] * ab, axis=-1)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (
        b[..., 0] - o[..., 0]
    )


def _core_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Distance between the boundaries of two convex polygons (0 where edges cross)."""
    p0, p1 = p[:, None], np.roll(p, -1, axis=0)[:, None]
    q0, q1 = q[None], np.roll(q, -1, axis=0)[None]
    crossing = (np.sign(_cross(p0, p1, q0)) * np.sign(_cross(p0, p1, q1)) < 0) & (
        np.sign(_cross(q0, q1, p0)) * np.sign(_cross(q0, q1, p1)) < 0
    )
    if crossing.any():
        return 0.0
    ends = [
        _point_segment_distance(p0, q0, q1),
        _point_segment_distance(p1, q0, q1),
        _point_segment_distance(q0, p0, p1),
        _point_segment_distance(q1, p0, p1),
    ]
    return float(min(d.min() for d in ends))


def _inside(point: np.ndarray, core: np.ndarray, extent: float) -> bool:
    following = np.roll(core, -1, axis=0)
    if len(core) > 2:
        turns = _cross(core, following, point[None])
        if (turns > 0).all() or (turns < 0).all():
            return True
    return bool(_point_segment_distance(point[None], core, following).min() < extent)


def _region_distance(points: np.ndarray, core: np.ndarray, extent: float) -> np.ndarray:
    """Distance [P] from each point to an object (0 inside it)."""
    following = np.roll(core, -1, axis=0)
    distance = _point_segment_distance(points[:, None], core[None], following[None]).min(axis=1)
    if len(core) > 2:
        turns = _cross(core[None], following[None], points[:, None])
        distance[(turns > 0).all(axis=1) | (turns < 0).all(axis=1)] = 0.0
    return np.maximum(distance - extent, 0.0)


def test_objects_are_apart_and_inside_the_frame(scenes: PillowScenes) -> None:
    for i in range(N):
        (a, extent_a), (b, extent_b) = _object(scenes, i, 0), _object(scenes, i, 1)
        for core, extent in ((a, extent_a), (b, extent_b)):
            assert core.min() - extent >= 1 and core.max() + extent <= 63, i
        assert not _inside(scenes.centres[i, 0], b, extent_b), i
        assert not _inside(scenes.centres[i, 1], a, extent_a), i
        assert _core_distance(a, b) - extent_a - extent_b >= 2, i


def test_drawn_objects_match_their_geometry(
    scenes: PillowScenes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drawn in white on black without noise, each object's coverage has its analytic area and
    centre (squares and triangles rotated about their centroid)."""
    monkeypatch.setattr(scenes_pillow, "_background", lambda rng: np.zeros((64, 64, 3)))
    monkeypatch.setattr(scenes_pillow, "_noise", lambda rng: np.zeros((64, 64, 3)))
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    unit_area = (math.pi, 4.0, math.sqrt(3.0))  # per shape, times radius squared
    for i in range(0, N, 5):
        image = scenes_pillow._draw(
            np.random.default_rng(0),
            scenes.shapes[i],
            scenes.centres[i],
            scenes.radii[i],
            scenes.rotations[i],
            [(255, 255, 255)] * 2,
        )
        coverage = image[..., 0] / 255.0
        pixels = np.stack([cols.ravel(), rows.ravel()], axis=1)
        nearer_a = (
            _region_distance(pixels, *_object(scenes, i, 0))
            < _region_distance(pixels, *_object(scenes, i, 1))
        ).reshape(64, 64)
        centres = scenes.centres[i]
        for j, mine in enumerate((nearer_a, ~nearer_a)):
            alpha = coverage * mine
            area = unit_area[scenes.shapes[i, j]] * float(scenes.radii[i, j]) ** 2
            assert abs(alpha.sum() / area - 1) < 0.05, (i, j)
            centroid = np.array([(alpha * cols).sum(), (alpha * rows).sum()]) / alpha.sum()
            assert np.abs(centroid - centres[j]).max() < 0.25, (i, j, centroid)


def _disc_mean(image: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    disc = np.hypot(cols - centre[0], rows - centre[1]) <= radius
    return image[disc].mean(axis=0)


def test_object_pixels_near_the_centre_have_its_colour(scenes: PillowScenes) -> None:
    palette = np.array(PALETTE, np.float64)
    for i in range(N):
        for j in (0, 1):
            mean = _disc_mean(scenes.images[i], scenes.centres[i, j], 1.5)
            nearest = np.linalg.norm(palette - mean, axis=1).argmin()
            assert nearest == scenes.colours[i, j], (i, j, mean)


@pytest.mark.parametrize(
    ("colour", "hues", "min_saturation", "min_value"),
    [
        ("red", [(0, 8), (352, 360)], 0.75, 0.8),
        ("green", [(110, 140)], 0.7, 0.65),
        ("blue", [(210, 235)], 0.7, 0.85),
        ("yellow", [(50, 60)], 0.8, 0.9),  # orange is around 30
        ("purple", [(265, 290)], 0.6, 0.75),
    ],
)
def test_jittered_colours_look_like_their_names(
    colour: str, hues: list[tuple[float, float]], min_saturation: float, min_value: float
) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        rgb = scenes_pillow.object_colour(rng, COLOURS.index(colour))
        hue, saturation, value = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        assert any(lo <= hue * 360 <= hi for lo, hi in hues), rgb
        assert saturation >= min_saturation and value >= min_value, rgb


def test_white_is_near_white() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        rgb = scenes_pillow.object_colour(rng, COLOURS.index("white"))
        assert min(rgb) >= 225 and max(rgb) - min(rgb) <= 12, rgb


def test_radii_in_range_and_either_object_may_be_larger(scenes: PillowScenes) -> None:
    assert scenes.radii.min() >= 6 and scenes.radii.max() <= 14
    a_larger = (scenes.radii[:, 0] > scenes.radii[:, 1]).mean()
    assert 0.4 < a_larger < 0.6
    assert np.abs(scenes.rotations).max() <= 15
    assert (scenes.rotations[scenes.shapes == scenes_pillow.CIRCLE] == 0).all()


def test_every_relation_and_colour_shape_pair_occurs(scenes: PillowScenes) -> None:
    assert set(scenes.relations.tolist()) == set(range(len(RELATIONS)))
    for j in (0, 1):
        pairs = set(zip(scenes.colours[:, j].tolist(), scenes.shapes[:, j].tolist()))
        assert len(pairs) == len(COLOURS) * len(SHAPES), j


def test_background_far_from_the_objects_is_dark(scenes: PillowScenes) -> None:
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    pixels = []
    for i in range(N):
        far = np.ones((64, 64), bool)
        for j in (0, 1):
            core, extent = _object(scenes, i, j)
            reach = np.linalg.norm(core - scenes.centres[i, j], axis=1).max() + extent
            far &= np.hypot(cols - scenes.centres[i, j, 0], rows - scenes.centres[i, j, 1]) > (
                reach + 2
            )
        background = scenes.images[i][far].astype(np.float64)
        assert background.mean() <= 80, i
        pixels.append(background)
    every = np.concatenate(pixels)
    assert np.percentile(every, 99.9) <= 80 + 4 * scenes_pillow.MAX_NOISE_STD
    assert every.max() <= 80 + 6 * scenes_pillow.MAX_NOISE_STD
