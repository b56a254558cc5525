"""Two-object scenes drawn with Pillow, for evaluating the captioner off its training renderer.

This renderer is written from the scene grammar alone (two objects, six colours, three shapes,
four relations, one caption per naming order), deliberately independent of the training one, so
that a captioner evaluated on it is tested on images it never saw the like of.

Each scene has its own generator (`SeedSequence(seed).spawn`), and the relations come from a
separate stream of shuffled blocks of all four, so every relation is used equally often and the
first k scenes of a batch do not depend on how many were asked for.

* Colour: every name has a nominal HSV colour (`PALETTE` is its RGB) and a jitter box around it
  (hue a few degrees, saturation and value a little); each object draws its own colour from its box.
  Yellow's hue box is kept narrow so that it never drifts towards orange; white only varies in
  brightness and a trace of saturation.
* Geometry: "radius" is half the object's extent before rotation (circle radius, half the side
  of a square, half the base of an upward equilateral triangle, whose centre is its centroid).
  Radii are drawn uniformly in 6-14 px and squares and triangles rotated uniformly within +-15
  degrees, independently per object; pairs that cannot fit the frame are redrawn (below), so two
  large objects are somewhat rarer than independence alone would make them. `PillowScenes` also
  records the rotations, which with `shape_outline` give each object's exact outline.
* Layout: the direction from B's centre to A's is the relation's axis tilted by at most 15 degrees
  (5 degrees clear of the grammar's 20). The separating axis theorem on both outlines (circles as
  circumscribed 32-gons) gives, in closed form, the smallest distance along that direction that
  leaves a clear gap between the outlines; a random extra distance is added, and the pair is placed
  at random where both bounding boxes fit in the frame's margin. If they cannot fit, the sizes,
  rotations, tilt and distance are drawn again (names, shapes and relation are kept, so every
  colour-shape pair stays equally likely for either object).
* Drawing: objects are drawn at 4x on black (ImageDraw ellipse / polygon) with a coverage mask and
  box-downsampled (`Image.reduce`), each shape slightly inset to undo Pillow's inclusive edges;
  since the colour layer is then premultiplied by coverage, it is composited over the background as
  `background * (1 - coverage) + layer`.
* Background: a blend of two dark random tints (value <= 0.3, so every channel <= 77) that is flat,
  a linear gradient in a random direction, or a radial one around a random point.
* Noise: Gaussian with a per-scene standard deviation (1.5-8), part shared by the three channels
  (luminance) and part per channel, added to the whole image.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
CIRCLE, SQUARE, TRIANGLE = range(3)

SIZE = 64
MIN_RADIUS, MAX_RADIUS = 6.0, 14.0
MAX_ROTATION = 15.0
"""Largest rotation of a square or triangle, in degrees."""
MAX_TILT = 15.0
"""Largest angle, in degrees, between the line of centres and the relation's axis."""
GAP = 2.5
"""Smallest distance between the two outlines, in pixels (the grammar asks for 2)."""
MARGIN = 1.5
"""Smallest distance between an outline and the image border, in pixels (the grammar asks for 1)."""
SUPERSAMPLE = 4
MAX_BACKGROUND_VALUE = 0.3
MAX_NOISE_STD = 8.0
_EXTRA_DISTANCE = 12.0
_CIRCLE_SIDES = 32
# Pillow fills every supersampled pixel that a shape's edge touches, which grows the shape by about
# half such a pixel. Drawn inset by these (supersampled pixels, fitted to the analytic area of
# random shapes), an object's coverage is within 5% of its area (0.5% on average) and its centroid
# within 0.2 px of its centre (tests/export/test_scenes_pillow.py checks both).
_ELLIPSE_INSET = 0.5
_POLYGON_INSET = 0.25
_INRADIUS = (1.0, 1.0, 1 / math.sqrt(3))
"""Inradius of each shape as a fraction of its radius (unused for circles)."""
_MAX_ATTEMPTS = 1000


def _hsv_to_rgb(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((hue / 360.0) % 1.0, saturation, value)
    return round(255 * r), round(255 * g), round(255 * b)


@dataclass(frozen=True)
class _ColourBox:
    """A colour name's HSV jitter box: hue in degrees, saturation and value in [0, 1]."""

    hue: float
    hue_jitter: float
    saturation: tuple[float, float]
    value: tuple[float, float]

    def nominal(self) -> tuple[int, int, int]:
        return _hsv_to_rgb(self.hue, sum(self.saturation) / 2, sum(self.value) / 2)


_COLOUR_BOXES: dict[str, _ColourBox] = {
    "red": _ColourBox(0.0, 6.0, (0.80, 0.95), (0.85, 1.0)),
    "green": _ColourBox(125.0, 8.0, (0.75, 0.95), (0.70, 0.90)),
    "blue": _ColourBox(222.0, 6.0, (0.78, 0.92), (0.90, 1.0)),
    "yellow": _ColourBox(55.0, 3.0, (0.85, 0.95), (0.93, 1.0)),
    "purple": _ColourBox(278.0, 6.0, (0.65, 0.80), (0.78, 0.92)),
    "white": _ColourBox(0.0, 180.0, (0.0, 0.04), (0.92, 1.0)),
}
PALETTE: tuple[tuple[int, int, int], ...] = tuple(_COLOUR_BOXES[c].nominal() for c in COLOURS)
"""Nominal RGB of each colour in `COLOURS`; objects are jittered around it."""


@dataclass(frozen=True)
class PillowScenes:
    """Rendered scenes and what they show; object A is the one `captions[:, 0]` names first."""

    images: np.ndarray
    """uint8 [N, 64, 64, 3]."""
    captions: np.ndarray
    """unicode [N, 2]: the caption naming object A first, and the one naming B first."""
    colours: np.ndarray
    """int64 [N, 2]: index into `COLOURS` of objects A and B."""
    shapes: np.ndarray
    """int64 [N, 2]: index into `SHAPES`."""
    centres: np.ndarray
    """float32 [N, 2, 2]: (x, y) in pixels, y downwards; pixel (col, row) spans [col, col + 1)."""
    radii: np.ndarray
    """float32 [N, 2]: half the object's extent before rotation."""
    relations: np.ndarray
    """int64 [N]: index into `RELATIONS` of A relative to B."""
    rotations: np.ndarray
    """float32 [N, 2]: degrees, clockwise on screen; 0 for circles (`shape_outline` uses it)."""

    def __len__(self) -> int:
        return len(self.images)


def caption(colour_a: int, shape_a: int, relation: int, colour_b: int, shape_b: int) -> str:
    """The grammar's caption: "a <colour> <shape> <relation> a <colour> <shape>"."""
    return (
        f"a {COLOURS[colour_a]} {SHAPES[shape_a]} {RELATIONS[relation]} "
        f"a {COLOURS[colour_b]} {SHAPES[shape_b]}"
    )


def inverse_relation(relation: int) -> int:
    """The relation of B to A, given that of A to B (left of <-> right of, above <-> below)."""
    return relation ^ 1


def shape_outline(
    shape: int, centre: tuple[float, float], radius: float, rotation: float
) -> np.ndarray:
    """Vertices [K, 2] of a square or triangle (a circle: its circumscribed 32-gon), in pixels."""
    if shape == CIRCLE:
        angles = np.arange(_CIRCLE_SIDES) * (2 * math.pi / _CIRCLE_SIDES)
        reach = radius / math.cos(math.pi / _CIRCLE_SIDES)
        points = reach * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    elif shape == SQUARE:
        points = radius * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    elif shape == TRIANGLE:
        height = math.sqrt(3.0) * radius
        points = np.array(
            [[0.0, -2 * height / 3], [radius, height / 3], [-radius, height / 3]]
        )  # apex up, centroid at the origin
    else:
        raise ValueError(f"unknown shape {shape}")
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    rotated = points @ np.array([[cos, sin], [-sin, cos]])
    return rotated + np.asarray(centre, dtype=np.float64)


def object_colour(rng: np.random.Generator, colour: int) -> tuple[int, int, int]:
    """One object's RGB: its colour name's HSV box, sampled uniformly."""
    box = _COLOUR_BOXES[COLOURS[colour]]
    hue = box.hue + rng.uniform(-box.hue_jitter, box.hue_jitter)
    return _hsv_to_rgb(hue, rng.uniform(*box.saturation), rng.uniform(*box.value))


def render_pillow_scenes(n: int, seed: int) -> PillowScenes:
    """Render n scenes, deterministically from seed (the first k are the same for any n >= k)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    root = np.random.SeedSequence(seed)
    relation_seed, scene_seed = root.spawn(2)
    relation_rng = np.random.default_rng(relation_seed)
    blocks = [relation_rng.permutation(len(RELATIONS)) for _ in range(-(-n // len(RELATIONS)))]
    relations = np.concatenate([*blocks, np.zeros(0, np.int64)])[:n].astype(np.int64)

    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    colours = np.empty((n, 2), np.int64)
    shapes = np.empty((n, 2), np.int64)
    centres = np.empty((n, 2, 2), np.float32)
    radii = np.empty((n, 2), np.float32)
    rotations = np.empty((n, 2), np.float32)
    captions: list[tuple[str, str]] = []
    for i, child in enumerate(scene_seed.spawn(n)):
        rng = np.random.default_rng(child)
        relation = int(relations[i])
        colours[i] = rng.integers(len(COLOURS), size=2)
        shapes[i] = rng.integers(len(SHAPES), size=2)
        centres[i], radii[i], rotations[i] = _layout(rng, shapes[i], relation)
        rgbs = [object_colour(rng, int(c)) for c in colours[i]]
        images[i] = _draw(rng, shapes[i], centres[i], radii[i], rotations[i], rgbs)
        a, b = (int(colours[i, 0]), int(shapes[i, 0])), (int(colours[i, 1]), int(shapes[i, 1]))
        captions.append((caption(*a, relation, *b), caption(*b, inverse_relation(relation), *a)))
    return PillowScenes(
        images=images,
        captions=np.array(captions, dtype=str).reshape(n, 2),
        colours=colours,
        shapes=shapes,
        centres=centres,
        radii=radii,
        relations=relations,
        rotations=rotations,
    )


# Direction of A's centre as seen from B's, per relation (y grows downwards).
_AXIS_DEGREES = (180.0, 0.0, -90.0, 90.0)


def _layout(
    rng: np.random.Generator, shapes: np.ndarray, relation: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centres [2, 2], radii [2] and rotations [2] of objects A and B satisfying `relation`."""
    low, high = MARGIN, SIZE - MARGIN
    for _ in range(_MAX_ATTEMPTS):
        radii = rng.uniform(MIN_RADIUS, MAX_RADIUS, size=2)
        rotations = rng.uniform(-MAX_ROTATION, MAX_ROTATION, size=2) * (shapes != CIRCLE)
        a, b = (
            shape_outline(int(s), (0.0, 0.0), r, t) for s, r, t in zip(shapes, radii, rotations)
        )
        angle = math.radians(_AXIS_DEGREES[relation] + rng.uniform(-MAX_TILT, MAX_TILT))
        direction = np.array([math.cos(angle), math.sin(angle)])
        distance = _clear_distance(a, b, direction) + rng.uniform(0.0, _EXTRA_DISTANCE)
        a_moved = a + distance * direction
        lo = np.minimum(a_moved.min(axis=0), b.min(axis=0))
        room = (high - low) - (np.maximum(a_moved.max(axis=0), b.max(axis=0)) - lo)
        if (room < 0).any():
            continue
        centre_b = low - lo + rng.uniform(0.0, 1.0, size=2) * room
        return np.stack([centre_b + distance * direction, centre_b]), radii, rotations
    raise RuntimeError("no layout found")  # unreachable in practice: small objects always fit


def _clear_distance(a: np.ndarray, b: np.ndarray, direction: np.ndarray) -> float:
    """Smallest d such that outline a moved by d * direction is GAP clear of b on a separating axis.

    A gap along any axis bounds the Euclidean gap from below, and for convex outlines the edge
    normals of both include an axis that separates them whenever they are disjoint.
    """
    edges = np.concatenate([np.roll(a, -1, axis=0) - a, np.roll(b, -1, axis=0) - b])
    normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    on_a, on_b = a @ normals.T, b @ normals.T
    speed = normals @ direction  # how fast a's projection moves per unit of d
    with np.errstate(divide="ignore"):
        ahead = (GAP + on_b.max(axis=0) - on_a.min(axis=0)) / speed  # a passes b on this axis
        behind = (GAP + on_a.max(axis=0) - on_b.min(axis=0)) / -speed
    needed = np.where(speed > 1e-9, ahead, np.where(speed < -1e-9, behind, np.inf))
    return float(needed.min())


def _draw(
    rng: np.random.Generator,
    shapes: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    rotations: np.ndarray,
    rgbs: list[tuple[int, int, int]],
) -> np.ndarray:
    """Composite the two objects, drawn at SUPERSAMPLE x and box-downsampled, over a background."""
    big = SIZE * SUPERSAMPLE
    layer, coverage = Image.new("RGB", (big, big)), Image.new("L", (big, big))
    draw_layer, draw_coverage = ImageDraw.Draw(layer), ImageDraw.Draw(coverage)
    for shape, centre, radius, rotation, rgb in zip(shapes, centres, radii, rotations, rgbs):
        if shape == CIRCLE:
            x, y = (SUPERSAMPLE * float(v) for v in centre)
            r = SUPERSAMPLE * float(radius) - _ELLIPSE_INSET
            box = [x - r, y - r, x + r, y + r]
            draw_layer.ellipse(box, fill=rgb)
            draw_coverage.ellipse(box, fill=255)
        else:
            inset = _POLYGON_INSET / (SUPERSAMPLE * _INRADIUS[shape])
            outline = shape_outline(
                int(shape), tuple(centre), float(radius) - inset, float(rotation)
            )
            points = [(float(x), float(y)) for x, y in SUPERSAMPLE * outline]
            draw_layer.polygon(points, fill=rgb)
            draw_coverage.polygon(points, fill=255)
    premultiplied = np.asarray(layer.reduce(SUPERSAMPLE), np.float32)
    alpha = np.asarray(coverage.reduce(SUPERSAMPLE), np.float32)[..., None] / 255.0
    image = _background(rng) * (1.0 - alpha) + premultiplied + _noise(rng)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


_GRID_Y, _GRID_X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _background(rng: np.random.Generator) -> np.ndarray:
    """float32 [64, 64, 3] in [0, 77]: two dark tints, flat, linearly or radially blended."""
    tints = [
        np.array(
            _hsv_to_rgb(
                rng.uniform(0.0, 360.0),
                rng.uniform(0.0, 0.7),
                rng.uniform(0.03, MAX_BACKGROUND_VALUE),
            ),
            np.float32,
        )
        for _ in range(2)
    ]
    kind = rng.integers(3)
    if kind == 0:
        weight = np.zeros((SIZE, SIZE), np.float32)
    elif kind == 1:
        angle = rng.uniform(0.0, 2 * math.pi)
        ramp = (_GRID_X - SIZE / 2) * math.cos(angle) + (_GRID_Y - SIZE / 2) * math.sin(angle)
        weight = np.clip(0.5 + ramp / SIZE, 0.0, 1.0)
    else:
        cx, cy = rng.uniform(0.0, SIZE, size=2)
        spread = rng.uniform(0.6, 1.2) * SIZE
        weight = np.clip(np.hypot(_GRID_X - cx, _GRID_Y - cy) / spread, 0.0, 1.0)
    return tints[0] + weight[..., None] * (tints[1] - tints[0])


def _noise(rng: np.random.Generator) -> np.ndarray:
    """float32 [64, 64, 3]: Gaussian, partly shared by the channels, std 1.5-8."""
    std = rng.uniform(1.5, MAX_NOISE_STD)
    shared = rng.uniform(0.3, 0.9)  # share of the variance common to the three channels
    luminance = rng.standard_normal((SIZE, SIZE, 1), dtype=np.float32)
    chroma = rng.standard_normal((SIZE, SIZE, 3), dtype=np.float32)
    return std * (math.sqrt(shared) * luminance + math.sqrt(1.0 - shared) * chroma)
