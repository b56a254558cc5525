"""Re-measure each model's held-out bar through onnxruntime on the sample stored with it."""

from __future__ import annotations

import numpy as np
import pytest
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
    assert labels[967] == "espresso" and labels[281] == "tabby"


def test_captioner_exact_match_on_fresh_scenes_through_onnxruntime(specs, sessions) -> None:
    from service.processing.captioning import beam_search_decode, greedy_decode

    spec = specs["captioner"]
    held = spec.heldout()
    encoder, decoder = sessions("captioner", "encoder"), sessions("captioner", "decoder")
    vocabulary = spec.vocabulary or []
    greedy = greedy_decode(encoder, decoder, held["image"], spec.extra, vocabulary)
    either = list(zip(held["caption"].tolist(), held["caption_other"].tolist()))
    exact = float(np.mean([p in pair for p, pair in zip(greedy, either)]))
    assert exact >= 0.97
    assert greedy == held["torch_greedy"].tolist()  # ORT loop == torch loop, caption by caption
    beam = beam_search_decode(encoder, decoder, held["image"][:32], spec.extra, vocabulary, 3)
    beam_exact = float(np.mean([p in pair for p, pair in zip(beam, either[:32])]))
    assert beam_exact >= 0.9
    words = {w for caption in greedy for w in caption.split()}
    # Both axes are named; on each, the model may settle on one ordering (both are correct).
    assert words & {"left", "right"} and words & {"above", "below"}
    assert spec.metrics["exact_match_greedy"] >= 0.97


@pytest.mark.parametrize("renderer", ["training renderer, fresh seed", "second renderer"])
def test_captioner_on_scenes_no_build_ever_drew(specs, sessions, renderer: str) -> None:
    """400 scenes from a seed no build uses: from the training renderer (bar 0.97), and from the
    independently written Pillow renderer that training never sees (bar 0.95)."""
    from export.data.scenes import render_scenes
    from export.data.scenes_pillow import render_pillow_scenes
    from service.processing.captioning import greedy_decode

    spec = specs["captioner"]
    if renderer == "second renderer":
        scenes, bar, metric = render_pillow_scenes(400, seed=20261203), 0.95, "second_renderer"
    else:
        scenes, bar, metric = render_scenes(400, seed=20261203), 0.97, "greedy"
    encoder, decoder = sessions("captioner", "encoder"), sessions("captioner", "decoder")
    greedy = greedy_decode(encoder, decoder, scenes.images, spec.extra, spec.vocabulary or [])
    exact = float(np.mean([p in set(row) for p, row in zip(greedy, scenes.captions.tolist())]))
    assert exact >= bar, (renderer, exact)
    assert spec.metrics[f"exact_match_{metric}"] >= bar
    # Both orderings occur: the model names whichever object it sees fit, not always one.
    first = [p == row[0] for p, row in zip(greedy, scenes.captions.tolist())]
    assert 0 < sum(first) < len(first)


def test_speech_ctc_cer_and_wer_on_unseen_voices_through_onnxruntime(specs, sessions) -> None:
    from service.processing.speech import ctc_greedy_decode, error_rates

    spec = specs["speech-ctc"]
    held = spec.heldout()
    assert spec.vocabulary is not None
    log_probs, frame_lengths = sessions("speech-ctc").run(
        ["log_probs", "frame_lengths"], {"waveform": held["waveform"], "lengths": held["lengths"]}
    )
    hypotheses = ctc_greedy_decode(log_probs, frame_lengths, spec.vocabulary)
    rates = error_rates(held["transcript"].tolist(), hypotheses)
    assert rates["cer"] <= 0.03 and rates["wer"] <= 0.08, rates
    unseen_accent = spec.data["voices"]["test_accent_unseen"]
    assert any(unseen_accent in voice for voice in held["voice"].tolist())


def test_speech_item_alone_equals_item_in_a_padded_batch(specs, sessions) -> None:
    from service.processing.speech import ctc_greedy_decode

    spec = specs["speech-ctc"]
    held = spec.heldout()
    order = np.argsort(held["lengths"])
    short, long = int(order[0]), int(order[-1])
    batch = held["waveform"][[short, long]]
    lengths = held["lengths"][[short, long]]
    batched, frames = sessions("speech-ctc").run(
        ["log_probs", "frame_lengths"], {"waveform": batch, "lengths": lengths}
    )
    alone, alone_frames = sessions("speech-ctc").run(
        ["log_probs", "frame_lengths"],
        {"waveform": batch[:1, : lengths[0]], "lengths": lengths[:1]},
    )
    assert frames[0] == alone_frames[0]
    np.testing.assert_allclose(batched[0, : frames[0]], alone[0, : frames[0]], atol=1e-4)
    assert spec.vocabulary is not None
    assert ctc_greedy_decode(batched[:1], frames[:1], spec.vocabulary) == ctc_greedy_decode(
        alone, alone_frames, spec.vocabulary
    )
