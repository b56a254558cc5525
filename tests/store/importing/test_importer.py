"""`deepserve models import`: validation, specs, wrapping parity, refusals, generic serving.

Every model is made here with onnx.helper; expected results come from running the original graph
in onnxruntime on inputs preprocessed with numpy in this file (never from the importer's code).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.core.errors import InvalidInput
from service.core.settings import Settings
from service.processing.speech import ctc_greedy_transcripts
from service.protocols.v2 import dataplane
from service.protocols.v2.dataplane import InferRequest, RequestedOutput
from service.runners.local import LocalRunner
from service.runtime.kernels import GenericKernel
from service.store import specs as registry
from service.store.importing.importer import ImportRefused
from service.tasks import generic
from service.tasks.registry import import_model, make_kernel

CLASSES = ["cat", "dog", "bird", "fish"]


def save(path: Path, nodes, inputs, outputs, weights=(), opset: int = 17) -> Path:
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info(*i) for i in inputs],
        [helper.make_tensor_value_info(*o) for o in outputs],
        initializer=[numpy_helper.from_array(a, n) for n, a in weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def cnn(
    path: Path,
    layout: str = "nchw",
    size: int = 8,
    batch: str | int = "N",
    softmax: bool = False,
    channels: int = 3,
) -> Path:
    """A tiny float CNN: x [N,C,S,S] or [N,S,S,C] -> Conv/Relu/GAP/Flatten/Gemm -> [N, 4]."""
    rng = np.random.default_rng(1)
    shape = [batch, channels, size, size] if layout == "nchw" else [batch, size, size, channels]
    nodes = []
    x = "x"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]))
        x = "x_nchw"
    last = "scores" if softmax else "logits"
    nodes += [
        helper.make_node("Conv", [x, "W", "B"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "W2", "B2"], [last]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], axis=1))
    weights = [
        ("W", rng.standard_normal((6, channels, 3, 3)).astype(np.float32)),
        ("B", rng.standard_normal(6).astype(np.float32)),
        ("W2", rng.standard_normal((6, 4)).astype(np.float32) * 0.2),
        ("B2", rng.standard_normal(4).astype(np.float32)),
    ]
    return save(
        path,
        nodes,
        [("x", TensorProto.FLOAT, shape)],
        [("logits", TensorProto.FLOAT, [batch, 4])],
        weights,
    )


def two_inputs(path: Path) -> Path:
    """a FP32 [batch, 3], b INT64 [batch, 3] -> y = a * b [batch, 3], total = sum(y) [batch]."""
    nodes = [
        helper.make_node("Cast", ["b"], ["b_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["a", "b_float"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0),
    ]
    return save(
        path,
        nodes,
        [("a", TensorProto.FLOAT, ["batch", 3]), ("b", TensorProto.INT64, ["batch", 3])],
        [("y", TensorProto.FLOAT, ["batch", 3]), ("total", TensorProto.FLOAT, ["batch"])],
        [("axes", np.array([1], np.int64))],
    )


def fixed_batch(path: Path) -> Path:
    """x FP32 [2, 4] -> x @ W [2, 3]: a fixed batch dim, so no batching."""
    weights = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    return save(
        path,
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [("x", TensorProto.FLOAT, [2, 4])],
        [("y", TensorProto.FLOAT, [2, 3])],
        [("W", weights)],
    )


def scaled(path: Path) -> Path:
    """x FP32 [batch, n] -> 2x: a symbolic dim besides the batch dim."""
    return save(
        path,
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [("x", TensorProto.FLOAT, ["batch", "n"])],
        [("y", TensorProto.FLOAT, ["batch", "n"])],
        [("two", np.array(2, np.float32))],
    )


def text_model(path: Path, vocabulary: int = 6, classes: int = 2, softmax: bool = True) -> Path:
    """ids INT64 [b, t], count INT64 [b] -> mean embedding -> scores [b, classes] (names differ
    from the contract, so the importer renames them)."""
    rng = np.random.default_rng(2)
    embedding = rng.standard_normal((vocabulary, 4)).astype(np.float32)
    embedding[0] = 0  # padding adds nothing
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["vectors"]),
        helper.make_node("ReduceSum", ["vectors", "axis1"], ["summed"], keepdims=0),
        helper.make_node("Cast", ["count"], ["count_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["count_f", "axis1"], ["count_col"]),
        helper.make_node("Div", ["summed", "count_col"], ["mean"]),
        helper.make_node("MatMul", ["mean", "W"], ["logits" if softmax else "scores"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["scores"], axis=1))
    return save(
        path,
        nodes,
        [("ids", TensorProto.INT64, ["b", "t"]), ("count", TensorProto.INT64, ["b"])],
        [("scores", TensorProto.FLOAT, ["b", classes])],
        [
            ("E", embedding),
            ("axis1", np.array([1], np.int64)),
            ("W", rng.standard_normal((4, classes)).astype(np.float32)),
        ],
    )


def speech_model(path: Path, vocabulary: int) -> Path:
    """waveform [b, s], lengths [b] -> log_probs [b, s, V] (one frame per sample)."""
    weights = np.linspace(-3, 3, vocabulary, dtype=np.float32).reshape(1, vocabulary)
    nodes = [
        helper.make_node("Unsqueeze", ["waveform", "axis2"], ["column"]),
        helper.make_node("MatMul", ["column", "W"], ["scores"]),
        helper.make_node("LogSoftmax", ["scores"], ["log_probs"], axis=2),
        helper.make_node("Identity", ["lengths"], ["frame_lengths"]),
    ]
    return save(
        path,
        nodes,
        [("waveform", TensorProto.FLOAT, ["b", "s"]), ("lengths", TensorProto.INT64, ["b"])],
        [
            ("log_probs", TensorProto.FLOAT, ["b", "s", vocabulary]),
            ("frame_lengths", TensorProto.INT64, ["b"]),
        ],
        [("axis2", np.array([2], np.int64)), ("W", weights)],
    )


def lines(path: Path, entries: list[str]) -> Path:
    path.write_text("".join(f"{e}\n" for e in entries))
    return path


def original(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- generic ----------------------------------------------------------------------------------


def test_generic_import_records_io_source_and_hashes(scratch_store, tmp_path: Path) -> None:
    source = two_inputs(tmp_path / "two.onnx")
    spec = import_model(source, "two-inputs")

    assert spec.task == "generic" and spec.name == "two-inputs"
    graph = spec.graphs["model"]
    assert [(t.name, t.datatype, t.shape) for t in graph.inputs] == [
        ("a", "FP32", ["batch", 3]),
        ("b", "INT64", ["batch", 3]),
    ]
    assert [(t.name, t.datatype, t.shape) for t in graph.outputs] == [
        ("y", "FP32", ["batch", 3]),
        ("total", "FP32", ["batch"]),
    ]
    assert graph.opset == 17
    assert spec.extra["batchable"] is True and "batching_reason" not in spec.extra
    assert spec.extra["batching_check"]["independent"] is True
    assert spec.data["source"] == str(source.absolute())
    assert spec.data["source_sha256"] == sha256(source)
    assert spec.data["importer"] == "deepserve models import"
    assert "held-out" in spec.data["heldout"] and spec.metrics == {}
    stored = spec.graph_path()
    assert stored.read_bytes() == source.read_bytes()  # generic graphs are stored as they are
    assert graph.sha256 == sha256(stored)
    assert registry.load_spec("two-inputs").tag == spec.tag


def test_a_relative_path_is_recorded_absolute(scratch_store, tmp_path: Path, monkeypatch) -> None:
    two_inputs(tmp_path / "two.onnx")
    monkeypatch.chdir(tmp_path)
    spec = import_model("two.onnx", "relative")
    assert spec.data["source"] == str(tmp_path / "two.onnx")


def test_importing_again_creates_a_new_version(scratch_store, tmp_path: Path) -> None:
    source = two_inputs(tmp_path / "two.onnx")
    first = import_model(source, "again")
    second = import_model(source, "again")
    assert first.version != second.version
    assert [s.version for s in registry.list_specs()] == [second.version, first.version]
    assert registry.latest_specs()["again"].version == second.version


def test_fixed_batch_graph_is_not_batchable_and_says_why(scratch_store, tmp_path: Path) -> None:
    spec = import_model(fixed_batch(tmp_path / "fixed.onnx"), "fixed")
    assert spec.graphs["model"].inputs[0].shape == [2, 4]
    assert spec.extra["batchable"] is False
    assert spec.extra["batching_reason"] == (
        "input x has a fixed first dim 2: requests run one at a time, no batching"
    )


def test_rows_that_influence_each_other_make_a_graph_unbatchable(
    scratch_store, tmp_path: Path
) -> None:
    # y = x - mean(x over the batch): symbolic first dims, but rows are not independent
    source = save(
        tmp_path / "centre.onnx",
        [
            helper.make_node("ReduceMean", ["x", "axis0"], ["mean"], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        [("x", TensorProto.FLOAT, ["batch", 3])],
        [("y", TensorProto.FLOAT, ["batch", 3])],
        [("axis0", np.array([0], np.int64))],
        opset=18,
    )
    spec = import_model(source, "centre")
    assert spec.extra["batchable"] is False
    assert "change each other's results" in spec.extra["batching_reason"]


# --- image classification ---------------------------------------------------------------------


def numpy_pixels(images: np.ndarray, mean, std, nchw: bool, scale: float = 1 / 255) -> np.ndarray:
    x = (images.astype(np.float32) * np.float32(scale) - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if nchw else x)


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_image_classifier_is_wrapped_and_matches_numpy_preprocessing(
    scratch_store, tmp_path: Path, layout: str
) -> None:
    source = cnn(tmp_path / f"{layout}.onnx", layout)
    labels = lines(tmp_path / "labels.txt", CLASSES)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    spec = import_model(
        source,
        f"cnn-{layout}",
        "image-classification",
        labels_file=labels,
        preprocess={"mean": ",".join(map(str, mean)), "std": ",".join(map(str, std))},
    )

    graph = spec.graphs["model"]
    assert [(t.name, t.datatype, t.shape) for t in graph.inputs] == [
        ("image", "UINT8", ["N", 8, 8, 3])
    ]
    assert [(t.name, t.datatype, t.shape) for t in graph.outputs] == [
        ("probabilities", "FP32", ["N", 4])
    ]
    assert spec.labels == CLASSES and spec.extra["batchable"] is True
    pre = spec.preprocessing
    assert pre["image_size"] == [8, 8] and pre["channels"] == 3
    assert pre["resize"] == round(8 * 256 / 224)
    assert pre["model_layout"] == layout.upper() and pre["softmax"] is True
    assert pre["mean"] == mean and pre["std"] == std
    assert graph.parity["max_abs_diff"] <= 1e-4 and len(graph.parity["cases"]) == 2
    assert spec.data["source_sha256"] == sha256(source)
    assert graph.sha256 == sha256(spec.graph_path()) != spec.data["source_sha256"]
    onnx.checker.check_model(str(spec.graph_path()), full_check=True)

    kernel = make_kernel(spec, "cpu")
    images = np.random.default_rng(7).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    got = np.stack([r.probabilities for r in kernel.run(0, list(images))])
    (logits,) = original(source, {"x": numpy_pixels(images, mean, std, layout == "nchw")})
    np.testing.assert_allclose(got, softmax(logits), atol=1e-4)
    assert not np.allclose(got, got[:1])  # the images are told apart


def test_grayscale_classifier_takes_one_channel_images(scratch_store, tmp_path: Path) -> None:
    source = cnn(tmp_path / "gray.onnx", channels=1)
    spec = import_model(
        source,
        "gray",
        "image-classification",
        labels_file=lines(tmp_path / "l", CLASSES),
        preprocess={"mean": "0.1307", "std": "0.3081"},
    )
    assert spec.graphs["model"].inputs[0].shape == ["N", 8, 8, 1]
    assert spec.preprocessing["channels"] == 1 and spec.preprocessing["mean"] == [0.1307]
    assert spec.preprocessing["invert_light_background"] is False
    images = np.random.default_rng(8).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    got = np.stack([r.probabilities for r in make_kernel(spec, "cpu").run(0, list(images))])
    (logits,) = original(source, {"x": numpy_pixels(images, 0.1307, 0.3081, nchw=True)})
    np.testing.assert_allclose(got, softmax(logits), atol=1e-4)


def test_a_graph_ending_in_softmax_gets_no_second_softmax(scratch_store, tmp_path: Path) -> None:
    source = cnn(tmp_path / "probs.onnx", softmax=True)
    spec = import_model(
        source, "probs", "image-classification", labels_file=lines(tmp_path / "l", CLASSES)
    )
    assert spec.preprocessing["softmax"] is False
    images = np.random.default_rng(3).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = np.stack([r.probabilities for r in make_kernel(spec, "cpu").run(0, list(images))])
    (probabilities,) = original(source, {"x": numpy_pixels(images, 0, 1, nchw=True)})
    np.testing.assert_allclose(got, probabilities, atol=1e-5)


def test_symbolic_image_size_needs_size_and_uses_it(scratch_store, tmp_path: Path) -> None:
    source = cnn(tmp_path / "any.onnx", softmax=True)
    model = onnx.load(str(source))
    for axis in (2, 3):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = f"side{axis}"
    onnx.save(model, str(source))
    labels = lines(tmp_path / "l", CLASSES)
    with pytest.raises(ImportRefused, match="pass --preprocess size=S"):
        import_model(source, "any", "image-classification", labels_file=labels)
    spec = import_model(
        source,
        "any",
        "image-classification",
        labels_file=labels,
        preprocess={"size": "12", "resize": "14", "scale": "1", "softmax": "false"},
    )
    assert spec.graphs["model"].inputs[0].shape == ["N", 12, 12, 3]
    assert spec.preprocessing["resize"] == 14 and spec.preprocessing["softmax"] is False


def test_fixed_batch_image_classifier_warms_up_one_image_at_a_time(
    scratch_store, tmp_path: Path
) -> None:
    source = cnn(tmp_path / "one.onnx", batch=1)
    spec = import_model(
        source, "one", "image-classification", labels_file=lines(tmp_path / "l", CLASSES)
    )
    assert spec.extra["batchable"] is False
    assert "fixed first dim 1" in spec.extra["batching_reason"]
    make_kernel(spec, "cpu").warmup()  # built-in warm-up batches of 2 would fail here


# --- text and speech --------------------------------------------------------------------------


def test_text_classifier_io_is_renamed_to_the_contract(scratch_store, tmp_path: Path) -> None:
    source = text_model(tmp_path / "text.onnx")
    vocabulary = ["<pad>", "<unk>", "good", "bad", "film", "plot"]
    spec = import_model(
        source,
        "reviews",
        "text-classification",
        labels_file=lines(tmp_path / "labels", ["negative", "positive"]),
        vocab_file=lines(tmp_path / "vocab", vocabulary),
        preprocess={"max_tokens": "32"},
    )
    graph = spec.graphs["model"]
    assert [(t.name, t.shape) for t in graph.inputs] == [("tokens", ["b", "t"]), ("lengths", ["b"])]
    assert [t.name for t in graph.outputs] == ["probabilities"]
    assert spec.vocabulary == vocabulary
    assert spec.preprocessing["max_tokens"] == 32 and spec.preprocessing["unk_index"] == 1
    assert spec.preprocessing["pad_index"] == 0
    assert graph.parity["max_abs_diff"] == 0.0

    rows = [[2, 4], [3, 5, 4, 1], [2]]
    got = make_kernel(spec, "cpu").run(0, rows)
    for row, probabilities in zip(rows, got):
        ids = np.array([row], np.int64)
        (want,) = original(source, {"ids": ids, "count": np.array([len(row)], np.int64)})
        np.testing.assert_allclose(probabilities, want[0], atol=1e-6)


def test_speech_graph_following_the_contract_is_stored_as_is(scratch_store, tmp_path) -> None:
    vocabulary = ["<blank>", " ", "a", "b"]
    source = speech_model(tmp_path / "ctc.onnx", len(vocabulary))
    spec = import_model(
        source, "ctc", "speech-recognition", vocab_file=lines(tmp_path / "v", vocabulary)
    )
    assert spec.vocabulary == vocabulary  # the space line is kept
    assert spec.graph_path().read_bytes() == source.read_bytes()
    assert spec.preprocessing["sample_rate"] == 16000 and spec.extra["blank_index"] == 0
    clips = [np.linspace(-1, 1, 800, dtype=np.float32), np.full(400, 0.5, np.float32)]
    got = make_kernel(spec, "cpu").run(0, clips)
    for clip, transcript in zip(clips, got):
        log_probs, frames = original(
            source, {"waveform": clip[None], "lengths": np.array([len(clip)], np.int64)}
        )
        assert transcript == ctc_greedy_transcripts(log_probs, frames, vocabulary)[0]


# --- refusals ---------------------------------------------------------------------------------


def refused(*args, **kwargs) -> str:
    with pytest.raises(ImportRefused) as caught:
        import_model(*args, **kwargs)
    return str(caught.value)


def test_missing_and_non_file_paths_are_refused(scratch_store, tmp_path: Path) -> None:
    message = refused(tmp_path / "nothing.onnx", "m")
    assert "does not exist" in message and "expected an ONNX model file" in message
    assert "is not a file" in refused(tmp_path, "m")


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all", bytes(range(256)) * 8])
def test_files_that_are_not_onnx_are_refused(scratch_store, tmp_path: Path, content) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    assert "is not an ONNX model" in refused(path, "garbage")


def test_checker_failures_are_refused(scratch_store, tmp_path: Path) -> None:
    path = save(
        tmp_path / "broken.onnx",
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],  # an input nothing produces
        [("x", TensorProto.FLOAT, ["n"])],
        [("y", TensorProto.FLOAT, ["n"])],
    )
    message = refused(path, "broken")
    assert message.startswith("the graph fails onnx.checker (full check): ")
    assert "nowhere" in message


def test_an_opset_onnxruntime_does_not_support_is_refused(scratch_store, tmp_path: Path) -> None:
    path = save(
        tmp_path / "future.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", TensorProto.FLOAT, ["n"])],
        [("y", TensorProto.FLOAT, ["n"])],
        opset=99,
    )
    message = refused(path, "future")
    assert "opset 99" in message
    assert f"onnxruntime {ort.__version__} supports opsets 7 to " in message


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("Upper", "is not allowed"),
        ("../escape", "is not allowed"),
        ("", "is not allowed"),
        ("-dash-first", "is not allowed"),
        ("a" * 64, "is not allowed"),
        ("has space", "is not allowed"),
        ("digits-cnn", "belongs to a built-in model"),
    ],
)
def test_bad_model_names_are_refused(scratch_store, tmp_path: Path, name: str, why: str) -> None:
    assert why in refused(two_inputs(tmp_path / "two.onnx"), name)


def test_unknown_task_and_task_change_are_refused(scratch_store, tmp_path: Path) -> None:
    source = two_inputs(tmp_path / "two.onnx")
    assert "unknown task 'detection'" in refused(source, "m", "detection")
    import_model(source, "kept")
    labels = lines(tmp_path / "l", CLASSES)
    message = refused(cnn(tmp_path / "c.onnx"), "kept", "image-classification", labels)
    assert "stored with task generic" in message


def test_image_classification_label_problems_are_refused(scratch_store, tmp_path: Path) -> None:
    source = cnn(tmp_path / "cnn.onnx")
    assert "--labels FILE is required for image-classification" in refused(
        source, "m", "image-classification"
    )
    message = refused(
        source, "m", "image-classification", labels_file=lines(tmp_path / "l", CLASSES[:3])
    )
    assert "has 3 lines but output logits has 4 classes" in message
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert "is empty" in refused(source, "m", "image-classification", labels_file=empty)
    assert "cannot read the labels file" in refused(
        source, "m", "image-classification", labels_file=tmp_path / "none.txt"
    )


@pytest.mark.parametrize(
    ("preprocess", "why"),
    [
        ({"colour": "rgb"}, "unknown --preprocess key(s) colour"),
        ({"layout": "chw"}, "expected nchw or nhwc"),
        ({"mean": "0.5,0.5"}, "expected 1 or 3 finite numbers"),
        ({"std": "0"}, "divides by zero"),
        ({"scale": "big"}, "is not a number"),
        ({"size": "16"}, "but input x is fixed at 8x8"),
        ({"softmax": "maybe"}, "expected true or false"),
        ({"resize": "4"}, "expected an integer 8..65536"),
        ({"softmax": "false"}, "is not probabilities"),
    ],
)
def test_bad_image_preprocessing_is_refused(scratch_store, tmp_path, preprocess, why) -> None:
    labels = lines(tmp_path / "l", CLASSES)
    source = cnn(tmp_path / "cnn.onnx")
    assert why in refused(source, "m", "image-classification", labels, preprocess=preprocess)


def test_image_graphs_the_wrapper_cannot_read_are_refused(scratch_store, tmp_path) -> None:
    labels = lines(tmp_path / "l", CLASSES)
    square = cnn(tmp_path / "c.onnx")
    model = onnx.load(str(square))
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_value = 6
    onnx.save(model, str(tmp_path / "wide.onnx"))
    message = refused(tmp_path / "wide.onnx", "m", "image-classification", labels)
    assert "is 8x6; image-classification serves square images" in message
    ambiguous = cnn(tmp_path / "a.onnx", size=3)
    message = refused(ambiguous, "m", "image-classification", labels)
    assert "pass --preprocess layout=nchw or layout=nhwc" in message
    message = refused(two_inputs(tmp_path / "two.onnx"), "m", "image-classification", labels)
    assert "needs a graph with one image input and one output" in message


def test_text_graph_with_the_wrong_contract_is_refused(scratch_store, tmp_path: Path) -> None:
    labels = lines(tmp_path / "l", ["negative", "positive"])
    vocab = lines(tmp_path / "v", ["<pad>", "<unk>", "good", "bad", "film", "plot"])
    message = refused(two_inputs(tmp_path / "two.onnx"), "m", "text-classification", labels, vocab)
    assert "tokens INT64 [batch, tokens]" in message and "lengths INT64 [batch]" in message
    assert "a FP32 ['batch', 3]" in message
    assert "--vocab FILE is required" in refused(
        text_model(tmp_path / "t.onnx"), "m", "text-classification", labels
    )
    no_unk = lines(tmp_path / "v2", ["<pad>", "good", "bad", "film", "plot", "x"])
    assert "no <unk> line" in refused(
        tmp_path / "t.onnx", "m", "text-classification", labels, no_unk
    )
    logits = text_model(tmp_path / "logits.onnx", softmax=False)
    assert "end the graph with a Softmax" in refused(
        logits, "m", "text-classification", labels, vocab
    )


def test_unsupported_dtypes_and_missing_io_are_refused(scratch_store, tmp_path: Path) -> None:
    path = save(
        tmp_path / "bf16.onnx",
        [helper.make_node("Identity", ["x"], ["y"])],
        [("x", TensorProto.BFLOAT16, ["n"])],
        [("y", TensorProto.BFLOAT16, ["n"])],
    )
    assert "element type BFLOAT16, which has no V2 datatype" in refused(path, "bf16")
    constant = save(
        tmp_path / "constant.onnx",
        [helper.make_node("Constant", [], ["y"], value_float=1.0)],
        [],
        [("y", TensorProto.FLOAT, [])],
    )
    assert "the graph has no inputs" in refused(constant, "constant")


def test_external_data_is_refused(scratch_store, tmp_path: Path) -> None:
    model = onnx.load(str(fixed_batch(tmp_path / "fixed.onnx")))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, size_threshold=0)
    assert "external data" in refused(tmp_path / "ext.onnx", "ext")


# --- generic serving: kernel, runner, V2 signature ---------------------------------------------


def test_generic_kernel_batches_rows_and_matches_rows_run_alone(
    scratch_store, tmp_path: Path
) -> None:
    source = scaled(tmp_path / "scaled.onnx")
    spec = import_model(source, "scaled")
    assert spec.extra["batchable"] is True
    kernel = make_kernel(spec, "cpu")
    assert isinstance(kernel, GenericKernel)
    rng = np.random.default_rng(0)
    rows = [{"x": rng.standard_normal(n).astype(np.float32)} for n in (3, 5, 3, 5, 3)]
    assert kernel.bucket(rows[0]) == kernel.bucket(rows[2]) != kernel.bucket(rows[1])
    results = kernel.run(0, rows)  # mixed shapes in one call: grouped by shape inside
    for row, result in zip(rows, results):
        (want,) = original(source, {"x": row["x"][None]})
        np.testing.assert_array_equal(result["y"], want[0])
        assert result["y"].dtype == np.float32
    kernel.warmup()


def test_generic_kernel_runs_two_dtype_inputs_per_row(scratch_store, tmp_path: Path) -> None:
    source = two_inputs(tmp_path / "two.onnx")
    kernel = make_kernel(import_model(source, "two"), "cpu")
    rng = np.random.default_rng(1)
    rows = [
        {"a": rng.standard_normal(3).astype(np.float32), "b": rng.integers(-5, 5, 3)}
        for _ in range(4)
    ]
    for row, result in zip(rows, kernel.run(0, rows)):
        y, total = original(source, {"a": row["a"][None], "b": row["b"][None]})
        np.testing.assert_allclose(result["y"], y[0], rtol=1e-6)
        np.testing.assert_allclose(result["total"], total[0], rtol=1e-6)
    wire = GenericKernel.to_wire(results := kernel.run(0, rows[:1])[0])
    back = GenericKernel.from_wire(wire)
    assert wire["total"]["datatype"] == "FP32" and wire["y"]["shape"] == [3]
    for name in results:
        assert back[name].dtype == results[name].dtype
        np.testing.assert_array_equal(back[name], results[name])


def test_generic_kernel_runs_a_fixed_batch_request_whole(scratch_store, tmp_path: Path) -> None:
    source = fixed_batch(tmp_path / "fixed.onnx")
    spec = import_model(source, "fixed")
    kernel = make_kernel(spec, "cpu")
    kernel.warmup()
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    (result,) = kernel.run(0, [{"x": x}])
    np.testing.assert_allclose(result["y"], original(source, {"x": x})[0], rtol=1e-6)


def test_a_local_runner_never_batches_an_unbatchable_model(scratch_store, tmp_path) -> None:
    spec = import_model(fixed_batch(tmp_path / "fixed.onnx"), "fixed")
    runner = LocalRunner(spec, Settings(device="cpu", max_batch_size=8), GenericKernel)

    async def go() -> np.ndarray:
        await runner.start()
        try:
            assert runner.error is None and runner.batcher is not None
            assert runner.batcher.max_batch_size == 1
            item = {"x": np.ones((2, 4), np.float32)}
            return (await runner.submit(item, runner.bucket(item)))["y"]
        finally:
            await runner.stop()

    y = asyncio.run(go())
    assert y.shape == (2, 3)


class KernelRunner:
    """A runner stand-in for V2 signature tests: submit runs the kernel on one item."""

    def __init__(self, spec: registry.ModelSpec):
        self.spec, self.kernel, self.submitted = spec, make_kernel(spec, "cpu"), []
        self.config = Settings().for_model(spec.name, spec.settings)

    def bucket(self, item):
        return self.kernel.bucket(item)

    async def submit(self, item, key=0, deadline=None):
        self.submitted.append(item)
        return self.kernel.run(key, [item])[0]


def v2_infer(runner: KernelRunner, inputs: dict[str, np.ndarray], settings=None):
    signature = generic.signature(runner)  # type: ignore[arg-type]
    serving = SimpleNamespace(settings=settings or Settings())
    runner.config = serving.settings.for_model(runner.spec.name, runner.spec.settings)
    request = InferRequest(model=runner.spec.name, inputs=inputs)
    dataplane.check_unknown_inputs(request, signature)
    return signature, asyncio.run(signature.infer(serving, runner, request))  # type: ignore[arg-type]


def test_generic_v2_signature_submits_rows_and_stacks_results(scratch_store, tmp_path) -> None:
    source = two_inputs(tmp_path / "two.onnx")
    runner = KernelRunner(import_model(source, "two"))
    a = np.random.default_rng(3).standard_normal((3, 3)).astype(np.float32)
    b = np.arange(9, dtype=np.int64).reshape(3, 3)
    signature, outputs = v2_infer(runner, {"a": a, "b": b})
    assert [(t.name, t.datatype, t.shape) for t in signature.inputs] == [
        ("a", "FP32", [-1, 3]),
        ("b", "INT64", [-1, 3]),
    ]
    assert signature.batchable is True and len(runner.submitted) == 3
    y, total = original(source, {"a": a, "b": b})
    np.testing.assert_allclose(outputs["y"], y, rtol=1e-6)
    np.testing.assert_allclose(outputs["total"], total, rtol=1e-6)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"a": None}, "needs input 'a' (FP32 [-1, 3])"),
        ({"a": np.zeros((2, 3), np.float64)}, "input a must be FP32, got datatype FP64"),
        ({"b": np.zeros((2, 3, 1), np.int64)}, "input b must have shape [-1, 3] (-1: any size), "),
        ({"b": np.zeros((2, 4), np.int64)}, "got [2, 4]"),
        ({"b": np.zeros((3, 3), np.int64)}, "inputs disagree on the batch size: [2, 3]"),
        ({"c": np.zeros(1, np.int64)}, "has no input 'c'"),
    ],
)
def test_generic_v2_signature_validates_inputs(scratch_store, tmp_path, change, why) -> None:
    runner = KernelRunner(import_model(two_inputs(tmp_path / "two.onnx"), "two"))
    inputs = {"a": np.zeros((2, 3), np.float32), "b": np.zeros((2, 3), np.int64)}
    inputs.update(change)
    with pytest.raises(InvalidInput) as caught:
        v2_infer(runner, {k: v for k, v in inputs.items() if v is not None})
    assert why in caught.value.message
    assert runner.submitted == []  # refused before anything reached the runner


def test_generic_v2_signature_limits_rows(scratch_store, tmp_path) -> None:
    runner = KernelRunner(import_model(two_inputs(tmp_path / "two.onnx"), "two"))
    inputs = {"a": np.zeros((5, 3), np.float32), "b": np.zeros((5, 3), np.int64)}
    with pytest.raises(InvalidInput, match="batch of 5 rows; send between 1 and 4"):
        v2_infer(runner, inputs, Settings(max_batch_items=4))


def test_generic_v2_unbatchable_model_gets_one_submit_and_triton_config(
    scratch_store, tmp_path
) -> None:
    source = fixed_batch(tmp_path / "fixed.onnx")
    runner = KernelRunner(import_model(source, "fixed"))
    x = np.random.default_rng(4).standard_normal((2, 4)).astype(np.float32)
    signature, outputs = v2_infer(runner, {"x": x})
    assert len(runner.submitted) == 1 and signature.batchable is False
    np.testing.assert_allclose(outputs["y"], original(source, {"x": x})[0], rtol=1e-6)
    with pytest.raises(InvalidInput, match=r"must have shape \[2, 4\]"):
        v2_infer(runner, {"x": x[:1]})

    runner.placement, runner.provider = "local", "CPUExecutionProvider"
    runner.describe = lambda: {"batching": {"max_batch_size": 1}}
    serving = SimpleNamespace(
        settings=Settings(),
        versions={"fixed": {runner.spec.version: runner}},
        runner=lambda name, task=None, version=None: runner,
    )
    config = dataplane.model_config(serving, "fixed")  # type: ignore[arg-type]
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert config["input"][0]["dims"] == [2, 4]
    metadata = dataplane.model_metadata(serving, "fixed")  # type: ignore[arg-type]
    assert "fixed first dim 2" in metadata["parameters"]["batching"]
    # NOTE: the gRPC ModelConfig of such a model is checked end to end (test_own_model.py):
    # service.protocols.grpc.v2's inference_pb2 cannot share a process with tritonclient.grpc


def test_generic_model_with_labels_allows_classification_on_its_scores(
    scratch_store, tmp_path
) -> None:
    source = cnn(tmp_path / "cnn.onnx")
    spec = import_model(source, "scores", labels_file=lines(tmp_path / "l", CLASSES))
    assert spec.labels == CLASSES
    runner = KernelRunner(spec)
    runner.admission = SimpleNamespace(admit=contextlib.nullcontext)
    serving = SimpleNamespace(settings=Settings(), runner=lambda name, version=None: runner)
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    request = InferRequest(
        model="scores", inputs={"x": x}, outputs=[RequestedOutput("logits", classification=2)]
    )
    response = asyncio.run(dataplane.infer(serving, request))  # type: ignore[arg-type]
    ((_, classes),) = response.outputs
    (logits,) = original(source, {"x": x})
    for row, scores in zip(classes, logits):
        top = np.argsort(-scores)[:2]
        assert [c.decode().split(":", 1)[1] for c in row] == [f"{i}:{CLASSES[i]}" for i in top]

    message = refused(source, "m", labels_file=lines(tmp_path / "l3", CLASSES[:3]))
    assert "has 3 lines but output logits has 4 classes" in message


# --- CLI ----------------------------------------------------------------------------------------


def run_cli(home: Path, *args: str):
    import subprocess
    import sys

    env = dict(os.environ, BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True")
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "models", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=Path(__file__).resolve().parents[3],
    )


def test_cli_imports_prints_the_spec_and_refuses_with_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    source = cnn(tmp_path / "cnn.onnx")
    labels = lines(tmp_path / "labels.txt", CLASSES)
    result = run_cli(
        home,
        "import",
        str(source),
        "--name",
        "my-cnn",
        "--task",
        "image-classification",
        "--labels",
        str(labels),
        "--preprocess",
        "mean=0.5",
        "--preprocess",
        "std=0.25",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "imported my-cnn:v1-" in out and "(image-classification)" in out
    assert f"from {source} (sha256 {sha256(source)})" in out
    assert "in  image" in out and "out probabilities" in out
    assert "batchable: yes" in out and "parity with the original graph" in out

    listed = run_cli(home, "list")
    assert listed.returncode == 0 and "my-cnn:v1-" in listed.stdout

    bad = run_cli(home, "import", str(tmp_path / "missing.onnx"), "--name", "x")
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("refused: ")
        and "does not exist" in bad.stderr
    )
    malformed = run_cli(home, "import", str(source), "--name", "x", "--preprocess", "size")
    assert malformed.returncode == 2 and "expected KEY=VALUE" in malformed.stderr
    fixed = run_cli(home, "import", str(fixed_batch(tmp_path / "f.onnx")), "--name", "fixed")
    assert (
        fixed.returncode == 0 and "batchable: no (input x has a fixed first dim 2" in fixed.stdout
    )


def test_a_domain_threshold_gives_an_imported_classifier_a_verdict(
    scratch_store, tmp_path: Path
) -> None:
    from service.core.errors import OutOfDomain
    from service.tasks.base import judged

    source = cnn(tmp_path / "judged.onnx")
    labels = lines(tmp_path / "l", CLASSES)
    plain = import_model(source, "plain", "image-classification", labels_file=labels)
    assert "domain" not in plain.extra
    assert judged(plain, 0.3, None) == {"confidence": 0.3}  # no verdict without a threshold
    spec = import_model(
        source, "judged", "image-classification", labels_file=labels, domain_threshold=0.6
    )
    assert spec.extra["domain"]["threshold"] == 0.6
    assert judged(spec, 0.9, None) == {"confidence": 0.9, "in_domain": True, "domain_score": 0.9}
    assert judged(spec, 0.3, None)["in_domain"] is False
    with pytest.raises(OutOfDomain, match=r"judged.*below its threshold 0\.6"):
        judged(spec, 0.3, None, reject=True)
    for task, threshold, needle in (
        ("generic", 0.5, "needs an answer with a confidence"),
        ("image-classification", 1.5, "between 0 and 1"),
        ("image-classification", 0.0, "between 0 and 1"),
    ):
        with pytest.raises(ImportRefused, match=needle):
            import_model(source, "bad", task, labels_file=labels, domain_threshold=threshold)


def test_find_model_file_takes_the_file_or_the_one_onnx_file_below_a_folder(tmp_path) -> None:
    from service.store.importing.importer import find_model_file

    nested = tmp_path / "mnt" / "ranker" / "1"
    nested.mkdir(parents=True)
    (nested / "model.onnx").write_bytes(b"")
    (tmp_path / "mnt" / "labels.txt").write_text("a\n")
    assert find_model_file(tmp_path / "mnt") == nested / "model.onnx"
    assert find_model_file(nested / "model.onnx") == nested / "model.onnx"
    with pytest.raises(ImportRefused, match="no such file or folder"):
        find_model_file(tmp_path / "nowhere")
