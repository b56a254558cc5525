"""Write the sample inputs the README's examples use (examples/README.md says what each one is).

    BENTOML_HOME=$PWD/model_store .venv/bin/python examples/make_samples.py [--check]

Photos come from scikit-image, the digit and the utterance from the held-out test splits in the
store, the scene from the captioner's second renderer at a seed no build uses; the two ONNX models
are built here from ONNX operators (no torch). With --check nothing is written: it says whether the
ONNX files and labels.txt in examples/ are what this script makes (the others depend on the store).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

# a digit of the held-out test split, and a scene of the second renderer at an unused seed
DIGIT_INDEX = 704  # a 7 (the model: 0.9996, a wide margin, on this build)
SCENE_SEED, SCENE_INDEX = 20261203, 31  # one the model captions with a wide margin
SPEECH_INDEX = (
    19  # speech-ctc's held-out test split: "turn on the lights", a voice never trained on
)
LABELS = ["mostly red", "mostly green", "mostly blue"]
IR_VERSION = 10  # the pinned onnx writes IR 14; the pinned onnxruntime reads <= 13


def colour_classifier() -> bytes:
    """A small image classifier in the shape of a torchvision export: NCHW float 'input'
    (ImageNet-normalised) -> 'logits' [N, 3], which colour dominates the picture."""
    weights = np.array([[4.0, -2.0, -2.0], [-2.0, 4.0, -2.0], [-2.0, -2.0, 4.0]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
            helper.make_node("Gemm", ["features", "weights", "bias"], ["logits"], transB=1),
        ],
        "colour_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(np.zeros(3, np.float32), "bias"),
        ],
    )
    return _serialised(graph)


def ranker() -> bytes:
    """A generic model: FP32 'features' [N, 4] -> 'score' [N, 1], a fixed linear scorer."""
    weights = np.array([[0.5], [-0.25], [1.0], [0.125]], np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["features", "weights"], ["raw"]),
            helper.make_node("Sigmoid", ["raw"], ["score"]),
        ],
        "ranker",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(weights, "weights")],
    )
    return _serialised(graph)


def _serialised(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = IR_VERSION
    model.producer_name = "deepserve examples/make_samples.py"
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def static_files() -> dict[str, bytes]:
    return {
        "classifier.onnx": colour_classifier(),
        "labels.txt": "".join(f"{label}\n" for label in LABELS).encode(),
        "ranker.onnx": ranker(),
    }


def store_files() -> dict[str, bytes]:
    import skimage.data

    from export.data.scenes_pillow import render_pillow_scenes
    from loadtests.payloads import wav
    from service.store.specs import latest_specs

    def encoded(pixels: np.ndarray, fmt: str, **options: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    specs = latest_specs()
    digits = np.load(specs["digits-cnn"].path / "heldout.npz", allow_pickle=False)
    digit = digits["image"][DIGIT_INDEX, :, :, 0]
    # as a scan would show it: dark ink on light paper, 4x larger (the service fits it back)
    paper = Image.fromarray(255 - digit).resize((112, 112), Image.Resampling.BILINEAR)
    scenes = render_pillow_scenes(SCENE_INDEX + 1, SCENE_SEED)
    print(f"digit.png: a {int(digits['label'][DIGIT_INDEX])}")
    print(f"scene.png: {' / '.join(scenes.captions[SCENE_INDEX])}")
    speech = np.load(specs["speech-ctc"].path / "heldout.npz", allow_pickle=False)
    samples = speech["waveform"][SPEECH_INDEX, : int(speech["lengths"][SPEECH_INDEX])]
    print(f"speech.wav: {speech['transcript'][SPEECH_INDEX]} ({speech['voice'][SPEECH_INDEX]})")
    half = skimage.data.coffee()[::2, ::2]
    return {
        "coffee.jpg": encoded(half, "JPEG", quality=85),
        "cat.jpg": encoded(skimage.data.chelsea(), "JPEG", quality=85),
        "digit.png": encoded(np.asarray(paper), "PNG"),
        "scene.png": encoded(scenes.images[SCENE_INDEX], "PNG"),
        "speech.wav": wav(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    if args.check:
        stale = [n for n, b in static_files().items() if (HERE / n).read_bytes() != b]
        print("stale: " + ", ".join(stale) if stale else "examples/ is up to date")
        return 1 if stale else 0
    for name, data in {**static_files(), **store_files()}.items():
        (HERE / name).write_bytes(data)
        print(f"wrote examples/{name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
