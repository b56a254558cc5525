"""Greedy and beam decoding over fake encoder/decoder sessions (no model, no onnxruntime)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from service.processing import captioning

VOCAB = ["<pad>", "<bos>", "<eos>", "a", "red", "blue", "circle", "square", "left", "of", "x"]
W = {word: index for index, word in enumerate(VOCAB)}
EXTRA = {"bos_index": 1, "eos_index": 2, "pad_index": 0, "max_length": 12}


def images(codes: list[int]) -> np.ndarray:
    """One tiny image per entry; pixel [0, 0, 0] tells the fake encoder which script to use."""
    out = np.zeros((len(codes), 4, 4, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = codes
    return out


class FakeEncoder:
    """features[:, 0] = the image's code; zero state [N, 1, 2]."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        assert output_names == ["features", "h0", "c0"]
        image = feed["image"]
        assert image.dtype == np.uint8
        features = image[:, 0, 0, :1].astype(np.float32)
        state = np.zeros((len(image), 1, 2), dtype=np.float32)
        return [features, state, state.copy()]


class ScriptedDecoder:
    """Strongly prefers script[code][step]; the step counter travels in h[:, 0, 0]."""

    def __init__(self, scripts: dict[int, list[str]]) -> None:
        self.scripts = scripts
        self.calls = 0
        self.batch_sizes: list[int] = []

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        assert output_names == ["log_probs", "h_out", "c_out"]
        tokens, features, h, c = feed["tokens"], feed["features"], feed["h"], feed["c"]
        assert tokens.dtype == np.int64 and tokens.shape == (len(features),)
        self.batch_sizes.append(len(tokens))
        log_probs = np.full((len(tokens), len(VOCAB)), np.log(0.01 / (len(VOCAB) - 1)))
        for row, (code, step) in enumerate(zip(features[:, 0], h[:, 0, 0])):
            if step == 0:
                assert tokens[row] == EXTRA["bos_index"]
            script = self.scripts[int(code)]
            word = script[int(step)] if int(step) < len(script) else "x"
            log_probs[row, W[word]] = np.log(0.99)
        h_out = h.copy()
        h_out[:, 0, 0] += 1
        return [log_probs.astype(np.float32), h_out, c]


class TrapDecoder:
    """Greedy takes the likelier first word into a dead end; beam finds the better caption.

    Step 1: "red" 0.6, "blue" 0.4. After "red": "circle" 0.3, the rest spread thin.
    After "blue": "square" 0.99. Then <eos>. red circle = 0.18 < blue square = 0.396.
    """

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        tokens, h = feed["tokens"], feed["h"]
        n = len(tokens)
        probs = np.full((n, len(VOCAB)), 1e-6)
        h_out = h.copy()
        h_out[:, 0, 0] += 1
        for row in range(n):
            step = int(h[row, 0, 0])
            if step == 0:
                probs[row, W["red"]], probs[row, W["blue"]] = 0.6, 0.4
            elif step == 1:
                h_out[row, 0, 1] = tokens[row]  # remember the first word
                if tokens[row] == W["red"]:
                    probs[row, 3:] = 0.7 / (len(VOCAB) - 3)
                    probs[row, W["circle"]] = 0.3
                else:
                    probs[row, W["square"]] = 0.99
            else:
                probs[row, W["<eos>"]] = 0.99
        probs /= probs.sum(axis=1, keepdims=True)
        return [np.log(probs).astype(np.float32), h_out, feed["c"]]


def test_greedy_follows_the_script_and_stops_at_eos() -> None:
    scripts = {
        0: ["a", "red", "circle", "<eos>", "x", "x"],
        1: ["a", "blue", "square", "left", "of", "a", "red", "circle", "<eos>"],
    }
    decoder = ScriptedDecoder(scripts)
    got = captioning.greedy_decode(FakeEncoder(), decoder, images([0, 1, 0]), EXTRA, VOCAB)
    assert got == ["a red circle", "a blue square left of a red circle", "a red circle"]
    assert decoder.calls == 9  # the longest caption plus its <eos>, then it stops
    assert decoder.batch_sizes == [3] * 9


def test_beam_follows_the_script_and_stops_at_eos() -> None:
    scripts = {0: ["a", "red", "circle", "<eos>"], 1: ["a", "blue", "square", "<eos>"]}
    decoder = ScriptedDecoder(scripts)
    got = captioning.beam_search_decode(
        FakeEncoder(), decoder, images([1, 0]), EXTRA, VOCAB, beam_size=3
    )
    assert got == ["a blue square", "a red circle"]
    assert decoder.calls == 4
    assert decoder.batch_sizes == [6] * 4  # images x beams in one batch


def test_max_length_caps_a_caption_without_eos() -> None:
    decoder = ScriptedDecoder({0: ["a"] * 50})
    for decode in (captioning.greedy_decode, captioning.beam_search_decode):
        decoder.calls = 0
        got = decode(FakeEncoder(), decoder, images([0]), EXTRA, VOCAB)
        assert got == [" ".join(["a"] * EXTRA["max_length"])]
        assert decoder.calls == EXTRA["max_length"]


def test_beam_search_beats_greedy_on_a_trap() -> None:
    enc = FakeEncoder()
    greedy = captioning.greedy_decode(enc, TrapDecoder(), images([0, 0]), EXTRA, VOCAB)
    beam = captioning.beam_search_decode(enc, TrapDecoder(), images([0, 0]), EXTRA, VOCAB, 3)
    one = captioning.beam_search_decode(enc, TrapDecoder(), images([0]), EXTRA, VOCAB, 1)
    assert greedy == ["red circle", "red circle"]
    assert beam == ["blue square", "blue square"]
    assert one == ["red circle"]  # beam of one is greedy


def test_beam_batch_equals_one_by_one() -> None:
    scripts = {code: ["a", VOCAB[3 + code], "<eos>"] for code in range(5)}
    codes = [4, 0, 2, 2, 1]
    batched = captioning.beam_search_decode(
        FakeEncoder(), ScriptedDecoder(scripts), images(codes), EXTRA, VOCAB, beam_size=2
    )
    single = [
        captioning.beam_search_decode(
            FakeEncoder(), ScriptedDecoder(scripts), images([code]), EXTRA, VOCAB, beam_size=2
        )[0]
        for code in codes
    ]
    assert batched == single == [f"a {VOCAB[3 + code]}" for code in codes]


def test_empty_batch_and_bad_input() -> None:
    empty = np.zeros((0, 4, 4, 3), dtype=np.uint8)
    decoder = ScriptedDecoder({})
    assert captioning.greedy_decode(FakeEncoder(), decoder, empty, EXTRA, VOCAB) == []
    assert captioning.beam_search_decode(FakeEncoder(), decoder, empty, EXTRA, VOCAB) == []
    with pytest.raises(ValueError):
        captioning.greedy_decode(
            FakeEncoder(), decoder, images([0]).astype(np.float32), EXTRA, VOCAB
        )
    with pytest.raises(ValueError):
        captioning.greedy_decode(
            FakeEncoder(), decoder, np.zeros((1, 4, 4), np.uint8), EXTRA, VOCAB
        )


def test_tokens_to_text_drops_specials() -> None:
    ids = [W["<bos>"], W["a"], W["<pad>"], W["red"], W["<eos>"], W["blue"]]
    assert captioning.tokens_to_text(ids, VOCAB, EXTRA) == "a red"


def test_resize_images() -> None:
    pictures = [
        np.full((64, 64, 3), 7, dtype=np.uint8),
        np.full((32, 48, 3), 200, dtype=np.uint8),
        np.full((10, 10), 50, dtype=np.uint8),
        np.full((64, 64, 4), 9, dtype=np.uint8),
    ]
    out = captioning.resize_images(pictures)
    assert out.shape == (4, 64, 64, 3) and out.dtype == np.uint8
    assert np.all(out[0] == 7) and np.all(out[1] == 200)
    assert np.all(out[2] == 50) and np.all(out[3] == 9)


def test_captioning_does_not_import_torch() -> None:
    code = "import sys, service.processing.captioning; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
