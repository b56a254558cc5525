"""The domain verdicts of the image models, measured again through onnxruntime on inputs no build
drew: held-out in-domain inputs and out-of-domain images from three sources, fresh seeds.

Bars (issue #19): at least 90 % of out-of-domain inputs flagged, at most 5 % of in-domain ones.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from export.ood import out_of_domain_images
from service.processing.vision import digit_pixels

SEED = 20261203  # no build uses it
PER_SOURCE = 200


def flagged(distances: np.ndarray, threshold: float) -> float:
    return float(np.mean(distances > threshold))


def test_captioner_flags_what_is_not_a_scene(specs, sessions) -> None:
    from export.data.scenes import render_scenes
    from export.data.scenes_pillow import render_pillow_scenes

    spec = specs["captioner"]
    domain = spec.extra["domain"]
    encoder = sessions("captioner", "encoder")

    def distances(images: np.ndarray) -> np.ndarray:
        parts = [
            encoder.run(["domain_distance"], {"image": images[i : i + 256]})[0]
            for i in range(0, len(images), 256)
        ]
        return np.concatenate(parts)

    threshold = float(domain["threshold"])
    own = distances(render_scenes(PER_SOURCE, SEED).images)
    other = distances(render_pillow_scenes(PER_SOURCE, SEED).images)
    assert flagged(np.concatenate([own, other]), threshold) <= 0.05
    assert flagged(other, threshold) <= 0.05  # a renderer it never saw is still its domain
    sources = out_of_domain_images(64, SEED, PER_SOURCE)
    rates = {name: flagged(distances(images), threshold) for name, images in sources.items()}
    assert len(rates) >= 3
    assert float(np.mean(list(rates.values()))) >= 0.9, rates
    assert min(rates.values()) >= 0.8, rates  # no source slips through
    measured = domain["measured"]
    assert measured["out_of_domain_flagged"] >= 0.9 and measured["in_domain_flagged"] <= 0.05
    assert measured["out_of_domain_count"] >= 600 and measured["in_domain_count"] >= 200


def test_digits_cnn_flags_what_is_not_a_digit(specs, sessions) -> None:
    from export.data.scenes_pillow import render_pillow_scenes

    spec = specs["digits-cnn"]
    domain = spec.extra["domain"]
    model = sessions("digits-cnn")
    threshold = float(domain["threshold"])

    def distances(images: np.ndarray) -> np.ndarray:
        # As the service sees an uploaded image: through digit_pixels.
        pixels = np.stack([digit_pixels(Image.fromarray(np.asarray(a).squeeze())) for a in images])
        return model.run(["domain_distance"], {"image": pixels})[0]

    held = spec.heldout()
    assert len(held["image"]) >= 200
    assert flagged(distances(held["image"]), threshold) <= 0.05
    sources = out_of_domain_images(64, SEED, PER_SOURCE)
    del sources["mnist"]  # its own domain
    sources["scenes"] = render_pillow_scenes(PER_SOURCE, SEED).images
    rates = {name: flagged(distances(images), threshold) for name, images in sources.items()}
    assert float(np.mean(list(rates.values()))) >= 0.9, rates
    assert min(rates.values()) >= 0.8, rates
    measured = domain["measured"]
    assert measured["out_of_domain_flagged"] >= 0.9 and measured["in_domain_flagged"] <= 0.05


def test_digits_cnn_probabilities_are_calibrated(specs, sessions) -> None:
    from export.ood import expected_calibration_error

    spec = specs["digits-cnn"]
    held = spec.heldout()
    probabilities, logits = sessions("digits-cnn").run(
        ["probabilities", "logits"], {"image": held["image"]}
    )
    correct = probabilities.argmax(1) == held["label"]
    calibrated = expected_calibration_error(probabilities.max(1), correct)
    plain = np.exp(logits - logits.max(1, keepdims=True))
    plain /= plain.sum(1, keepdims=True)
    assert calibrated <= 0.02
    assert calibrated < expected_calibration_error(plain.max(1), correct)
    assert spec.metrics["confidence_ece"] == pytest.approx(calibrated, abs=0.01)
