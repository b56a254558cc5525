"""Synthetic two-object scenes with captions: the captioner's training renderer (vectorised numpy).

Each 64x64 RGB scene holds two non-overlapping objects, A and B, each one colour and one shape,
captioned "a <colour> <shape> <relation> a <colour> <shape>". Either object may be named first:
"a red triangle above a yellow square" and "a yellow square below a red triangle" describe the
same scene, and both are returned (`captions[:, 0]` names A first, `captions[:, 1]` B first).

The distribution is deliberately broad, so that a model trained on it learns shapes and colours
rather than the quirks of one layout:
- sizes: each object's bounding radius is drawn independently from 5-15 px, so either may be
  the larger one, or both the same size;
- positions: free; a layout is kept when the line between the centres is within ~24 degrees of
  one axis (|across| <= 0.45 |along|), which names the relation, and the objects' bounding
  circles are at least 2 px apart;
- shapes: circles; squares and upward triangles rotated by up to +-15 degrees, with varied
  proportions (square half-side 0.62-0.85 of the radius, triangle base 0.4-0.75 of the radius
  below the centre), drawn hard-edged or anti-aliased (soft edge 0.6-1.6 px);
- colours: a fixed palette with per-channel jitter and a brightness factor;
- backgrounds: a dark tint with a linear gradient of random direction and strength, and
  uniform or Gaussian per-pixel noise of random strength.

Held-out evaluation also uses a second renderer, written independently from the grammar alone
(export/data/scenes_pillow.py), which training never sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.base import progress

IMAGE_SIZE = 64
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = (1, 0, 3, 2)  # A left of B <=> B right of A; above <=> below
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
VOCABULARY = [*SPECIAL_TOKENS, "a", *COLOURS, *SHAPES, "left", "right", "of", "above", "below"]
PAD_INDEX, BOS_INDEX, EOS_INDEX = 0, 1, 2

PALETTE = np.array(
    [
        [220, 40, 40],  # red
        [40, 200, 60],  # green
        [50, 90, 235],  # blue
        [230, 215, 40],  # yellow
        [160, 60, 210],  # purple
        [235, 235, 235],  # white
    ],
    dtype=np.float32,
)
RADIUS = (5.0, 15.0)  # bounding radius: every shape fits in a circle of this radius
SQUARE_HALF_SIDE = (0.58, 0.7)  # x radius: the corners stay in the circle (0.7 * sqrt 2 < 1)
TRIANGLE_BASE = (0.4, 0.75)  # base line below the centre, x radius (0.5: equilateral)
ROTATION_DEG = 15.0
GAP = 2.0  # min free pixels between the objects' bounding circles
ACROSS = 0.45  # max |across| / |along| of the centre-to-centre line (tan 24 degrees)
MARGIN = 1.0  # free pixels to the image border
COLOUR_JITTER = 20.0
BRIGHTNESS = (0.8, 1.05)
BACKGROUND = (0.0, 60.0)  # per-channel tint
GRADIENT = 35.0  # max rise of the linear gradient across the image
NOISE = 14.0  # uniform noise up to +-14, or Gaussian with sigma up to 14 / 1.4 = 10
SOFT_EDGE = (0.6, 1.6)  # anti-aliased edge width in pixels (half the scenes are hard-edged)
RELATION_RULE = (
    "A <relation> B: the line from B's centre to A's centre is within ~24 degrees of one axis "
    "(|across| <= 0.45 |along|); left of / above when A's centre has the smaller x / y "
    "(y grows downwards). Either object may be named first: both orderings are correct"
)


@dataclass(frozen=True)
class Scenes:
    """Rendered scenes; objects A (index 0) and B (index 1)."""

    images: np.ndarray  # uint8 [N, 64, 64, 3], RGB
    captions: np.ndarray  # unicode [N, 2]: A named first, B named first
    colours: np.ndarray  # int64 [N, 2], index into COLOURS
    shapes: np.ndarray  # int64 [N, 2], index into SHAPES
    centres: np.ndarray  # float32 [N, 2, 2], (x, y) in pixels, y grows downwards
    radii: np.ndarray  # float32 [N, 2], bounding radius
    relations: np.ndarray  # int64 [N], index into RELATIONS: A relative to B

    def __len__(self) -> int:
        return len(self.images)


def caption_of(colours: tuple[int, int], shapes: tuple[int, int], relation: int) -> str:
    """The caption naming object 0 first, `relation` being object 0 relative to object 1."""
    subject = f"{COLOURS[colours[0]]} {SHAPES[shapes[0]]}"
    other = f"{COLOURS[colours[1]]} {SHAPES[shapes[1]]}"
    return f"a {subject} {RELATIONS[relation]} a {other}"


def both_captions(colours: np.ndarray, shapes: np.ndarray, relations: np.ndarray) -> np.ndarray:
    """unicode [N, 2]: the caption naming A first, and the one naming B first."""
    rows = [
        (
            caption_of((c[0], c[1]), (s[0], s[1]), int(r)),
            caption_of((c[1], c[0]), (s[1], s[0]), INVERSE[int(r)]),
        )
        for c, s, r in zip(colours, shapes, relations)
    ]
    return np.array(rows, dtype=np.str_).reshape(len(rows), 2)


def encode_captions(captions: np.ndarray | list[str], length: int) -> np.ndarray:
    """Token ids int64 [N, length]: words, then <eos>, then <pad>."""
    index = {word: i for i, word in enumerate(VOCABULARY)}
    ids = np.full((len(captions), length), PAD_INDEX, dtype=np.int64)
    for row, caption in enumerate(captions):
        words = [index[word] for word in str(caption).split()] + [EOS_INDEX]
        if len(words) > length:
            raise ValueError(f"caption {caption!r} needs {len(words)} tokens > {length}")
        ids[row, : len(words)] = words
    return ids


def relation_of(centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(relation index of A relative to B [N], clear [N]) from centres [N, 2, 2]."""
    dx = centres[:, 0, 0] - centres[:, 1, 0]
    dy = centres[:, 0, 1] - centres[:, 1, 1]
    horizontal = np.abs(dx) >= np.abs(dy)
    along = np.where(horizontal, dx, dy)
    across = np.where(horizontal, dy, dx)
    relation = np.where(horizontal, np.where(dx < 0, 0, 1), np.where(dy < 0, 2, 3))
    clear = np.abs(across) <= ACROSS * np.abs(along)
    return relation.astype(np.int64), clear


def _layout(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relations [N], centres [N, 2, 2] (x, y) and bounding radii [N, 2], by rejection."""
    kept_centres: list[np.ndarray] = []
    kept_radii: list[np.ndarray] = []
    have = 0
    while have < n:
        m = max(4 * (n - have), 256)
        radii = rng.uniform(*RADIUS, (m, 2)).astype(np.float32)
        low = MARGIN + radii
        high = IMAGE_SIZE - 1 - MARGIN - radii
        centres = rng.uniform(low[..., None], high[..., None], (m, 2, 2)).astype(np.float32)
        _, clear = relation_of(centres)
        distance = np.linalg.norm(centres[:, 0] - centres[:, 1], axis=1)
        ok = clear & (distance >= radii.sum(axis=1) + GAP)
        kept_centres.append(centres[ok])
        kept_radii.append(radii[ok])
        have += int(ok.sum())
    centres = np.concatenate(kept_centres)[:n]
    radii = np.concatenate(kept_radii)[:n]
    relations, _ = relation_of(centres)
    return relations, centres, radii


def shape_distance(
    shapes: np.ndarray,
    centres: np.ndarray,
    radii: np.ndarray,
    rotations: np.ndarray | None = None,
    proportions: np.ndarray | None = None,
) -> np.ndarray:
    """Signed distance in pixels [N, 64, 64] to one object per scene (< 0 inside).

    Exact for circles; for squares and triangles the largest signed distance to an edge line,
    exact near the edges, which is all anti-aliasing needs. `proportions` is the square's
    half-side or the triangle's base offset, x radius; defaults sit mid-range; `rotations` in
    radians (default 0).
    """
    n = len(shapes)
    rotations = np.zeros(n, np.float32) if rotations is None else rotations
    if proportions is None:
        proportions = np.where(shapes == 1, np.mean(SQUARE_HALF_SIDE), np.mean(TRIANGLE_BASE))
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    cos = np.cos(rotations)[:, None, None].astype(np.float32)
    sin = np.sin(rotations)[:, None, None].astype(np.float32)
    u = cos * dx + sin * dy  # coordinates in the object's own (unrotated) frame
    v = -sin * dx + cos * dy
    r = radii[:, None, None]
    p = proportions[:, None, None].astype(np.float32)
    circle = np.sqrt(dx * dx + dy * dy) - r
    square = np.maximum(np.abs(u), np.abs(v)) - p * r
    # Upward triangle inscribed in the bounding circle: apex (0, -r), base at v = p r with its
    # corners on the circle, half-width w r.
    w = np.sqrt(1.0 - p * p)
    base = v - p * r
    # Sides through the apex (0, -r) and a base corner (+-w r, p r): outward normal
    # (1 + p, -w) / length for the right one, mirrored for the left (|u|).
    length = np.sqrt((1.0 + p) ** 2 + w * w)
    side = ((1.0 + p) * np.abs(u) - w * (v + r)) / length
    triangle = np.maximum(base, side)
    kind = shapes[:, None, None]
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


def shape_masks(shapes: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean masks [N, 64, 64] for one object per scene, unrotated, mid-range proportions."""
    return shape_distance(shapes, centres, radii) <= 0


def coverage(distance: np.ndarray, edge: np.ndarray) -> np.ndarray:
    """How much of each pixel an object covers, from its signed distance [N, H, W]: 0 or 1 where
    `edge` [N, 1, 1] is 0 (hard-edged), else linear over `edge` pixels around the outline."""
    hard = (distance <= 0).astype(np.float32)
    alpha = np.where(edge > 0, 0.5 - distance / np.maximum(edge, 1e-3), hard)
    return np.clip(alpha, 0.0, 1.0, out=alpha)


def render_scenes(n: int, seed: int, chunk: int = 1024, show_progress: bool = False) -> Scenes:
    """Render n scenes, fully determined by (n, seed, chunk)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, len(COLOURS), (n, 2))
    shapes = rng.integers(0, len(SHAPES), (n, 2))
    relations, centres, radii = _layout(rng, n)
    rotations = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG, (n, 2))).astype(np.float32)
    rotations[shapes == 0] = 0.0
    proportions = np.where(
        shapes == 1, rng.uniform(*SQUARE_HALF_SIDE, (n, 2)), rng.uniform(*TRIANGLE_BASE, (n, 2))
    ).astype(np.float32)
    soft = rng.uniform(*SOFT_EDGE, n).astype(np.float32)
    soft[rng.random(n) < 0.5] = 0.0  # hard-edged
    fills = PALETTE[colours] * rng.uniform(*BRIGHTNESS, (n, 2, 1))
    fills = np.clip(fills + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 2, 3)), 0, 255)
    fills = fills.astype(np.float32)
    tints = rng.uniform(*BACKGROUND, (n, 3)).astype(np.float32)
    slopes = rng.uniform(0, GRADIENT, n).astype(np.float32)
    angles = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    gaussian = rng.random(n) < 0.5
    strength = rng.uniform(0, NOISE, n).astype(np.float32)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    unit = np.linspace(-0.5, 0.5, IMAGE_SIZE, dtype=np.float32)
    starts = range(0, n, chunk)
    bar = progress(starts, desc="render scenes", unit="chunk") if show_progress else starts
    for start in bar:
        part = slice(start, min(start + chunk, n))
        ramp = (
            np.cos(angles[part])[:, None, None] * unit[None, None, :]
            + np.sin(angles[part])[:, None, None] * unit[None, :, None]
        ) * slopes[part, None, None]
        canvas = tints[part, None, None, :] + ramp[..., None]
        edge = soft[part, None, None]
        for which in (0, 1):
            distance = shape_distance(
                shapes[part, which],
                centres[part, which],
                radii[part, which],
                rotations[part, which],
                proportions[part, which],
            )
            alpha = coverage(distance, edge)[..., None]
            canvas += alpha * (fills[part, which, None, None, :] - canvas)
        shape = canvas.shape
        noise = rng.random(shape, dtype=np.float32) * 2.0 - 1.0
        rows = np.flatnonzero(gaussian[part])
        noise[rows] = rng.standard_normal((len(rows), *shape[1:]), dtype=np.float32) / 1.4
        canvas += noise * strength[part, None, None, None]
        images[part] = np.clip(np.rint(canvas, out=canvas), 0, 255, out=canvas).astype(np.uint8)
    return Scenes(
        images=images,
        captions=both_captions(colours, shapes, relations),
        colours=colours.astype(np.int64),
        shapes=shapes.astype(np.int64),
        centres=centres,
        radii=radii,
        relations=relations,
    )
