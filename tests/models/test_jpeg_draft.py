"""JPEG draft decoding (ModelSettings.jpeg_draft_factor) leaves imagenet-cnn's answers as they
are: on held-out JPEG photos (scikit-image's, at sizes up to 3200 px; loadtests/jpeg_draft.py),
every top-1 that the full decode decides by a clear margin is the same, every full-decode top-1
stays in the drafted top-5, the cats stay cats, and no probability moves by more than 0.1.
Near-ties (top-1 and top-2 within 0.05) may swap: any resampling difference swaps those."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.jpeg_draft import classify, margin, photo_set, preprocess, top5
from service.core.model_settings import PerModelFields

CLEAR_MARGIN = 0.05
CATS = range(281, 288)


@pytest.fixture(scope="module")
def photos():
    return photo_set()


def test_the_default_factor_drafts_and_keeps_every_clear_answer(photos, sessions) -> None:
    factor = PerModelFields().jpeg_draft_factor
    assert factor > 0, "draft decoding is on by default"
    session = sessions("imagenet-cnn")
    full = classify(session, [preprocess(p.jpeg, 0) for p in photos])
    drafted = classify(session, [preprocess(p.jpeg, factor) for p in photos])
    reduced = [p for p in photos if min(p.size) >= 2 * factor * 256]
    assert len(reduced) >= 40, "the set must exercise the reduced decode"

    for photo, a, b in zip(photos, full, drafted):
        if margin(a) >= CLEAR_MARGIN:
            assert top5(a)[0] == top5(b)[0], f"{photo.name}: top-1 changed by drafting"
        assert top5(a)[0] in top5(b), f"{photo.name}: top-1 left the top-5"
        if photo.name.startswith("chelsea"):
            assert top5(b)[0] in CATS, f"{photo.name}: no longer a cat"
    assert float(np.abs(full - drafted).max()) < 0.1
    # the check has teeth: many answers are clear ones, among them many decoded reduced
    reduced_names = {p.name for p in reduced}
    clear = [p.name for p, a in zip(photos, full) if margin(a) >= CLEAR_MARGIN]
    assert len(clear) >= 0.4 * len(photos)
    assert len(reduced_names.intersection(clear)) >= 15


def test_drafting_really_decodes_fewer_pixels(photos) -> None:
    from PIL import Image

    from service.processing.vision import decode_image

    big = next(p for p in photos if min(p.size) >= 2048)
    full = decode_image(big.jpeg, 40_000_000)
    drafted = decode_image(big.jpeg, 40_000_000, min_side=512)
    assert isinstance(drafted, Image.Image) and min(drafted.size) >= 512
    assert drafted.width * drafted.height * 4 <= full.width * full.height
