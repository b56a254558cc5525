"""Synthetic two-object scenes with captions, rendered with vectorised numpy.

Each 64x64 RGB scene holds two non-overlapping objects (a colour and a shape each) on a dark,
noisy background, captioned "a <colour> <shape> <relation> a <colour> <shape>". The caption is a
function of the image: the two objects always differ clearly in size and the subject (mentioned
first) is the larger one, so even two identical colour-shape pairs are unambiguous. Scenes are
laid out so the relation is clear: for left of / right of the centres are far apart horizontally
and nearly level, for above / below the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from export.base import progress

IMAGE_SIZE = 64
COLOURS = ("red", "green", "blue", "yellow", "purple", "white")
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")
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
# Radius = half the object's extent. The ranges are disjoint with a wide gap so "larger" is
# clear by extent and by area alike (a large triangle always covers more pixels than a small
# circle or square).
SUBJECT_RADIUS = (11.0, 14.0)
OBJECT_RADIUS = (5.5, 7.5)
GAP = (4.0, 12.0)  # free pixels between the two objects along the relation axis
CROSS_JITTER = 2.5  # max offset of each centre from the shared line across the relation axis
MARGIN = 2.0  # free pixels to the image border
COLOUR_JITTER = 18.0
NOISE = 12  # per-pixel, per-channel uniform noise in [-12, 12] (std ~7)
BACKGROUND = (5.0, 45.0)
SUBJECT_RULE = (
    "the two objects always differ clearly in size (radius 11-14 px vs 5.5-7.5 px); the subject, "
    "mentioned first, is the larger object and the relation says where it is relative to the "
    "smaller one"
)


@dataclass(frozen=True)
class Scenes:
    """Rendered scenes; index 0 of each pair is the subject (larger), 1 the other object."""

    images: np.ndarray  # uint8 [N, 64, 64, 3], RGB
    captions: np.ndarray  # unicode [N]
    colours: np.ndarray  # int64 [N, 2], index into COLOURS
    shapes: np.ndarray  # int64 [N, 2], index into SHAPES
    centres: np.ndarray  # float32 [N, 2, 2], (x, y) in pixels, y grows downwards
    radii: np.ndarray  # float32 [N, 2]
    relations: np.ndarray  # int64 [N], index into RELATIONS

    def __len__(self) -> int:
        return len(self.images)


def caption_of(colours: tuple[int, int], shapes: tuple[int, int], relation: int) -> str:
    """The caption for a subject/object pair and a relation index."""
    subject = f"{COLOURS[colours[0]]} {SHAPES[shapes[0]]}"
    other = f"{COLOURS[colours[1]]} {SHAPES[shapes[1]]}"
    return f"a {subject} {RELATIONS[relation]} a {other}"


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


def _layout(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Relations, centres [N, 2, 2] (x, y) and radii [N, 2]; subject first."""
    relations = rng.integers(0, len(RELATIONS), n)
    radii = np.stack(
        [rng.uniform(*SUBJECT_RADIUS, n), rng.uniform(*OBJECT_RADIUS, n)], axis=1
    ).astype(np.float32)
    # "left of" and "above" put the subject first along the axis (smaller x or smaller y).
    subject_first = (relations == 0) | (relations == 2)
    horizontal = relations < 2
    r_first = np.where(subject_first, radii[:, 0], radii[:, 1])
    r_second = np.where(subject_first, radii[:, 1], radii[:, 0])
    distance = r_first + r_second + rng.uniform(*GAP, n)
    high = IMAGE_SIZE - 1 - MARGIN - r_second - distance
    first = rng.uniform(MARGIN + r_first, high)
    along = np.stack([first, first + distance], axis=1)
    along = np.where(subject_first[:, None], along, along[:, ::-1])  # back to subject, object
    big = radii.max(axis=1)
    line = rng.uniform(MARGIN + big, IMAGE_SIZE - 1 - MARGIN - big)
    cross = line[:, None] + rng.uniform(-CROSS_JITTER, CROSS_JITTER, (n, 2))
    cross = np.clip(cross, MARGIN + radii, IMAGE_SIZE - 1 - MARGIN - radii)
    xs = np.where(horizontal[:, None], along, cross)
    ys = np.where(horizontal[:, None], cross, along)
    centres = np.stack([xs, ys], axis=2).astype(np.float32)
    return relations, centres, radii


def shape_masks(shapes: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean masks [N, 64, 64] for one object per scene (every shape fits in its radius)."""
    grid = np.arange(IMAGE_SIZE, dtype=np.float32)
    dx = grid[None, None, :] - centres[:, 0, None, None]
    dy = grid[None, :, None] - centres[:, 1, None, None]
    r = radii[:, None, None]
    circle = dx * dx + dy * dy <= r * r
    square = np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    # Upward triangle: apex at dy = -r, flat base at dy = +0.85 r, base half-width r.
    fill = (dy + r) / (1.85 * r)
    triangle = (fill >= 0) & (fill <= 1) & (np.abs(dx) <= fill * r)
    kind = shapes[:, None, None]
    return np.where(kind == 0, circle, np.where(kind == 1, square, triangle))


def render_scenes(n: int, seed: int, chunk: int = 1024, show_progress: bool = False) -> Scenes:
    """Render n scenes, fully determined by (n, seed, chunk)."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, len(COLOURS), (n, 2))
    shapes = rng.integers(0, len(SHAPES), (n, 2))
    relations, centres, radii = _layout(rng, n)
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, (n, 2, 3))
    backgrounds = rng.uniform(*BACKGROUND, (n, 1, 3))
    # Per scene: colour 0 = background, 1 = subject, 2 = other object.
    palettes = np.rint(np.concatenate([backgrounds, PALETTE[colours] + jitter], axis=1))
    palettes = palettes.astype(np.int16)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    starts = range(0, n, chunk)
    bar = progress(starts, desc="render scenes", unit="chunk") if show_progress else starts
    for start in bar:
        part = slice(start, min(start + chunk, n))
        m = part.stop - part.start
        labels = np.zeros((m, IMAGE_SIZE, IMAGE_SIZE), dtype=np.intp)
        for which in (0, 1):
            mask = shape_masks(shapes[part, which], centres[part, which], radii[part, which])
            labels[mask] = which + 1
        canvas = palettes[part][np.arange(m)[:, None, None], labels]
        # Uniform integer noise: much cheaper than Gaussian at this volume, just as noisy.
        canvas += rng.integers(-NOISE, NOISE + 1, canvas.shape, dtype=np.int16)
        images[part] = np.clip(canvas, 0, 255).astype(np.uint8)
    captions = np.array(
        [
            caption_of((c[0], c[1]), (s[0], s[1]), int(r))
            for c, s, r in zip(colours, shapes, relations)
        ],
        dtype=np.str_,
    )
    return Scenes(
        images=images,
        captions=captions,
        colours=colours.astype(np.int64),
        shapes=shapes.astype(np.int64),
        centres=centres,
        radii=radii,
        relations=relations.astype(np.int64),
    )
