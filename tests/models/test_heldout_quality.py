"""Re-measure each model's held-out bar through onnxruntime on the sample stored with it."""

from __future__ import annotations

import numpy as np
from PIL import Image

from service.processing.text import collate_padded, encode, tokenize
from service.processing.vision import resize_center_crop


def test_digits_cnn_accuracy_on_held_out_digits(specs, sessions) -> None:
    held = specs["digits-cnn"].heldout()
    assert len(held["label"]) >= 500
    (probabilities,) = sessions("digits-cnn").run(["probabilities"], {"image": held["image"]})
    accuracy = float((probabilities.argmax(1) == held["label"]).mean())
    assert accuracy >= 0.97
    assert abs(accuracy - specs["digits-cnn"].metrics["accuracy"]) < 0.01
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)


def test_sentiment_lstm_accuracy_on_held_out_reviews(specs, sessions) -> None:
    spec = specs["sentiment-lstm"]
    held = spec.heldout()
    index = {word: i for i, word in enumerate(spec.vocabulary or [])}
    max_tokens = spec.preprocessing["max_tokens"]
    ids = [encode(tokenize(str(text)), index, max_tokens) for text in held["text"]]
    assert len(ids) >= 1000
    predicted = []
    for start in range(0, len(ids), 64):
        tokens, lengths = collate_padded(ids[start : start + 64])
        (probabilities,) = sessions("sentiment-lstm").run(
            ["probabilities"], {"tokens": tokens, "lengths": lengths}
        )
        predicted.append(probabilities.argmax(1))
    accuracy = float((np.concatenate(predicted) == held["label"]).mean())
    assert accuracy >= 0.76
    assert abs(accuracy - spec.metrics["accuracy"]) < 0.005


def test_sentiment_item_alone_equals_item_in_a_padded_batch(specs, sessions) -> None:
    spec = specs["sentiment-lstm"]
    index = {word: i for i, word in enumerate(spec.vocabulary or [])}
    texts = ["a gorgeous , moving film .", "dull, lifeless and far too long; i wanted to leave!"]
    ids = [encode(tokenize(t), index, 64) for t in texts]
    tokens, lengths = collate_padded(ids)
    (batched,) = sessions("sentiment-lstm").run(["logits"], {"tokens": tokens, "lengths": lengths})
    for row, item in enumerate(ids):
        alone_tokens, alone_lengths = collate_padded([item])
        (alone,) = sessions("sentiment-lstm").run(
            ["logits"], {"tokens": alone_tokens, "lengths": alone_lengths}
        )
        np.testing.assert_allclose(batched[row], alone[0], atol=1e-5)
    assert spec.labels is not None
    assert [spec.labels[i] for i in batched.argmax(1)] == ["positive", "negative"]


def test_imagenet_cnn_classifies_real_photos_sensibly(specs, sessions) -> None:
    import skimage.data

    spec = specs["imagenet-cnn"]
    size = spec.preprocessing["image_size"][0]
    labels = spec.labels or []
    expectations = {"chelsea": range(281, 288), "coffee": [967]}  # cats; espresso
    for photo, allowed in expectations.items():
        pixels = resize_center_crop(Image.fromarray(getattr(skimage.data, photo)()), 256, size)
        (probabilities,) = sessions("imagenet-cnn").run(["probabilities"], {"image": pixels[None]})
        top = int(probabilities[0].argmax())
        assert top in allowed, f"{photo} -> {labels[top]}"
    assert labels[967] == "espresso" and "cat" in labels[281]
