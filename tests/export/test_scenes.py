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


def test_caption_grammar(sample: S.Scenes) -> None:
    colour, shape = "|".join(S.COLOURS), "|".join(S.SHAPES)
    relation = "|".join(S.RELATIONS)
    pattern = re.compile(rf"a ({colour}) ({shape}) ({relation}) a ({colour}) ({shape})")
    for caption, colours, shapes, rel in zip(
        sample.captions, sample.colours, sample.shapes, sample.relations
    ):
        match = pattern.fullmatch(str(caption))
        assert match, caption
        assert match.groups() == (
            S.COLOURS[colours[0]],
            S.SHAPES[shapes[0]],
            S.RELATIONS[rel],
            S.COLOURS[colours[1]],
            S.SHAPES[shapes[1]],
        )
        assert caption == caption.lower() and not caption.endswith(".")
        assert all(word in S.VOCABULARY for word in caption.split())


def test_relation_matches_positions(sample: S.Scenes) -> None:
    subject, other = sample.centres[:, 0], sample.centres[:, 1]
    dx, dy = subject[:, 0] - other[:, 0], subject[:, 1] - other[:, 1]
    for name, along, across, sign in (
        ("left of", dx, dy, -1),
        ("right of", dx, dy, 1),
        ("above", dy, dx, -1),
        ("below", dy, dx, 1),
    ):
        rows = sample.relations == S.RELATIONS.index(name)
        assert rows.any()
        assert np.all(sign * along[rows] >= 15), name  # clearly apart along the relation axis
        assert np.all(np.abs(across[rows]) <= 2 * S.CROSS_JITTER + 1e-4), name  # nearly level


def test_subject_is_the_larger_object_and_objects_do_not_overlap(sample: S.Scenes) -> None:
    assert np.all(sample.radii[:, 0] >= sample.radii[:, 1] * 1.4)
    first = S.shape_masks(sample.shapes[:, 0], sample.centres[:, 0], sample.radii[:, 0])
    second = S.shape_masks(sample.shapes[:, 1], sample.centres[:, 1], sample.radii[:, 1])
    assert not np.any(first & second)
    # Larger by area too, whatever the two shapes are.
    assert np.all(first.sum(axis=(1, 2)) > second.sum(axis=(1, 2)))
    # Fully inside the frame.
    low = sample.centres - sample.radii[..., None]
    high = sample.centres + sample.radii[..., None]
    assert low.min() >= 0 and high.max() <= 63


def test_objects_are_drawn_in_their_colour(sample: S.Scenes) -> None:
    masks = S.shape_masks(sample.shapes[:, 0], sample.centres[:, 0], sample.radii[:, 0])
    for index in range(20):
        mean = sample.images[index][masks[index]].mean(axis=0)
        nearest = np.argmin(np.abs(S.PALETTE - mean).sum(axis=1))
        assert nearest == sample.colours[index, 0]


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
