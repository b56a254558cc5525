"""Bring your own model, end to end: ONNX graphs made here with onnx.helper are imported with
`deepserve models import` into a fresh store, served by the real server, and called with stock
tritonclient (HTTP and gRPC) and the /v1 task API; version policies pick what is served."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from tritonclient.utils import InferenceServerException

from loadtests.server import Server, start_server, stop_server
from service.processing.occlusion import score_drops
from service.processing.vision import decode_image, resize_center_crop
from service.protocols.v2.versions import number
from service.tasks.explaining import Occlusion
from tests.integration.media import png

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["ant", "bee", "cat", "dog", "eel"]


def save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def generic_graph(path: Path, scale: float) -> Path:
    """a, b: FP32 [batch, 4] -> total = a * w + b [batch, 4], energy = sum(total^2) [batch]."""
    w = numpy_helper.from_array(np.full(4, scale, np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["a", "w"], ["scaled"]),
            helper.make_node("Add", ["scaled", "b"], ["total"]),
            helper.make_node("ReduceSumSquare", ["total"], ["energy"], axes=[1], keepdims=0),
        ],
        "generic",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 4]),
        ],
        [
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("energy", TensorProto.FLOAT, ["batch"]),
        ],
        initializer=[w],
    )
    return save(graph, path)


def fixed_batch_graph(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    return save(graph, path)


TABLE = np.arange(15, dtype=np.float32).reshape(5, 3)


def lookup_graph(path: Path) -> Path:
    """idx INT64 [batch, 2] -> rows = TABLE[idx] [batch, 2, 3]; an index past 4 is refused by
    onnxruntime (Gather: "indices element out of data bounds")."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["rows"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 2, 3])],
        initializer=[numpy_helper.from_array(TABLE, "table")],
    )
    return save(graph, path)


def cnn_graph(path: Path) -> Path:
    """An ordinary small CNN: FP32 NCHW [N, 3, 16, 16] -> logits [N, 5] (random weights)."""
    rng = np.random.default_rng(7)
    conv = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "conv")
    fc = numpy_helper.from_array(rng.normal(0, 1.0, (4, 5)).astype(np.float32), "fc")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "bias")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "fc", "bias"], ["logits"]),
        ],
        "cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
        initializer=[conv, fc, bias],
    )
    return save(graph, path)


def deepserve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "DEEPSERVE_STORE": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def stored_versions(home: Path, name: str) -> list[str]:
    """Versions of `name` in the store, oldest first (from `deepserve models list --all`)."""
    listed = deepserve(home, "models", "list", "--all")
    assert listed.returncode == 0, listed.stderr
    found = [ln.split()[0].split(":", 1)[1] for ln in listed.stdout.splitlines()
             if ln.startswith(f"{name}:")]  # fmt: skip
    return sorted(found)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("own")
    home = tmp / "home"
    home.mkdir()
    graphs = {
        "generic-v1": generic_graph(tmp / "generic-1.onnx", 2.0),
        "generic-v2": generic_graph(tmp / "generic-2.onnx", 3.0),
        "fixed": fixed_batch_graph(tmp / "fixed.onnx"),
        "cnn": cnn_graph(tmp / "cnn.onnx"),
        "lookup": lookup_graph(tmp / "lookup.onnx"),
    }
    labels = tmp / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n")
    for graph in ("generic-v1", "generic-v2"):  # the same name twice: two versions
        done = deepserve(home, "models", "import", str(graphs[graph]), "--name", "my-generic")
        assert done.returncode == 0, done.stdout + done.stderr
    for graph, name in [("fixed", "my-fixed"), ("lookup", "my-lookup")]:
        done = deepserve(home, "models", "import", str(graphs[graph]), "--name", name)
        assert done.returncode == 0, done.stdout + done.stderr
    done = deepserve(
        home,
        "models", "import", str(graphs["cnn"]), "--name", "my-classifier",
        "--task", "image-classification", "--labels", str(labels),
        "--preprocess", "mean=0.485,0.456,0.406", "--preprocess", "std=0.229,0.224,0.225",
        "--domain-threshold", "0.999",  # an untrained graph is never that sure: all "outside"
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    versions = stored_versions(home, "my-generic")
    assert len(versions) == 2
    return {"home": home, "graphs": graphs, "generic_versions": versions}


@pytest.fixture(scope="module", params=["local", "remote"])
def served(request, store, tmp_path_factory) -> Iterator[Server]:
    home = store["home"]
    running = start_server(
        tmp_path_factory.mktemp("own-serve"),
        {
            "BENTOML_HOME": str(home),
            "DEEPSERVE_STORE": str(home),
            "DEEPSERVE_VERSIONS": json.dumps({"my-generic": "all"}),
            "DEEPSERVE_PLACEMENT": request.param,
        },
    )
    yield running
    stop_server(running)


def reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def triton_infer(client, module, model: str, inputs: dict[str, np.ndarray], version: str = ""):
    tensors = []
    for name, array in inputs.items():
        tensor = module.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return client.infer(model, tensors, model_version=version)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_generic_model_versions_over_stock_tritonclient(served, store, transport) -> None:
    module = httpclient if transport == "http" else grpcclient
    target = served.url.removeprefix("http://") if transport == "http" else served.grpc_target
    client = module.InferenceServerClient(target)
    older, newer = store["generic_versions"]
    metadata = client.get_model_metadata("my-generic")
    versions = metadata["versions"] if transport == "http" else list(metadata.versions)
    assert sorted(versions) == sorted([number(older), number(newer)])  # Triton's numbers
    rng = np.random.default_rng(3)
    inputs = {"a": rng.normal(size=(3, 4)).astype(np.float32),
              "b": rng.normal(size=(3, 4)).astype(np.float32)}  # fmt: skip
    by_tag = [(newer, "generic-v2"), (older, "generic-v1")]
    for version, graph in [("", "generic-v2"), *by_tag, (number(older), "generic-v1")]:
        result = triton_infer(client, module, "my-generic", inputs, version)
        expected = reference(store["graphs"][graph], inputs)
        for name in ("total", "energy"):
            np.testing.assert_allclose(result.as_numpy(name), expected[name], rtol=1e-5)
    with pytest.raises(InferenceServerException, match=r"has no input|needs input"):
        triton_infer(client, module, "my-generic", {"a": inputs["a"]})
    with pytest.raises(InferenceServerException, match="no served version"):
        triton_infer(client, module, "my-generic", inputs, "v0-nope")
    client.close()


def test_batchable_model_is_batched_fixed_batch_model_is_not(served, store) -> None:
    host = served.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(host, concurrency=16)
    generic = client.get_model_config("my-generic")
    fixed = client.get_model_config("my-fixed")
    assert generic["max_batch_size"] > 0 and fixed["max_batch_size"] == 0
    over_grpc = grpcclient.InferenceServerClient(served.grpc_target)
    config = over_grpc.get_model_config("my-fixed").config
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [1, 4]
    assert not config.HasField("dynamic_batching")
    over_grpc.close()
    fixed_meta = requests.get(f"{served.url}/v2/models/my-fixed", timeout=10).json()
    assert "batch" in json.dumps(fixed_meta["parameters"]).lower()
    row = np.ones((1, 4), np.float32)
    rows = np.ones((4, 4), np.float32)
    # NOTE: whether requests arriving one by one meet in a batch is timing (a tiny model's
    # compute ends before the next request is parsed; BentoML's remote dispatcher batches only
    # when it predicts a gain), so each request carries 4 rows, which reach the batcher in the
    # same instant: up to 5 bursts of 64 concurrent requests
    for burst in range(1, 6):
        pending = [
            client.async_infer("my-generic", [make_input("a", rows), make_input("b", rows)])
            for _ in range(64)
        ]
        for request in pending:
            assert request.get_result().as_numpy("total").shape == (4, 4)
        described = requests.get(f"{served.url}/v1/models/my-generic", timeout=10).json()
        batching = described["batching"]
        assert batching["samples"] >= 4 * 64 * burst, batching
        if batching["largest_batch"] > 1:
            break
    assert batching["largest_batch"] > 1, batching
    result = client.infer("my-fixed", [make_input("x", -row)])
    np.testing.assert_array_equal(result.as_numpy("y"), np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException, match=r"shape|dims"):
        client.infer("my-fixed", [make_input("x", np.ones((2, 4), np.float32))])
    client.close()


def make_input(name: str, array: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def classifier_input(served, photo: np.ndarray) -> np.ndarray:
    """`photo` as the served my-classifier's uint8 HWC input (its spec's resize and crop)."""
    described = requests.get(f"{served.url}/v1/models/my-classifier", timeout=10).json()
    prep = described["preprocessing"]
    size, resize = int(prep["image_size"][0]), int(prep["resize"])
    return resize_center_crop(decode_image(png(photo), 10**8), resize, size)


def original_probabilities(store, pixels: np.ndarray) -> np.ndarray:
    """The original graph's softmax for uint8 NHWC `pixels`, normalised as it was imported."""
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    nchw = ((pixels.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2)
    (logits,) = reference(store["graphs"]["cnn"], {"input": nchw.astype(np.float32)}).values()
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_imported_classifier_serves_v1_classify_like_the_original_graph(served, store) -> None:
    rng = np.random.default_rng(11)
    photo = rng.integers(0, 255, (40, 30, 3), dtype=np.uint8)
    pixels = classifier_input(served, photo)
    size = pixels.shape[0]
    probabilities = original_probabilities(store, pixels[None])[0]
    response = requests.post(
        f"{served.url}/v1/classify?model=my-classifier&top_k=3",
        data=png(photo),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [p["label"] for p in answer["predictions"]] == [
        LABELS[i] for i in np.argsort(-probabilities)[:3]
    ]
    scores = [p["score"] for p in answer["predictions"]]
    np.testing.assert_allclose(scores, np.sort(probabilities)[::-1][:3], atol=1e-4)
    # imported with --domain-threshold 0.999: a verdict on its confidence
    assert answer["confidence"] == scores[0] == answer["domain_score"] < 0.999
    assert answer["in_domain"] is False
    refused = requests.post(
        f"{served.url}/v1/classify?model=my-classifier&reject_out_of_domain=true",
        data=png(photo),
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert refused.status_code == 422 and "my-classifier" in refused.json()["error"]["message"]
    # the same model over V2 with Triton's classification extension
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"))
    tensor = httpclient.InferInput("image", [1, size, size, 3], "UINT8")
    tensor.set_data_from_numpy(pixels[None])
    output = httpclient.InferRequestedOutput("probabilities", class_count=1)
    top = client.infer("my-classifier", [tensor], outputs=[output]).as_numpy("probabilities")
    assert top[0][0].decode().split(":")[2] == answer["predictions"][0]["label"]
    client.close()
    # a generic model has no /v1 task endpoint
    refused = requests.post(
        f"{served.url}/v1/classify?model=my-generic",
        data=png(photo),
        headers={"Content-Type": "image/png"},
        timeout=10,
    )
    assert refused.status_code == 404 and "generic" in refused.text


def test_imported_classifier_is_explained_like_the_original_graph(served, store) -> None:
    photo = np.random.default_rng(12).integers(0, 255, (40, 30, 3), dtype=np.uint8)
    occlusion = Occlusion.of(classifier_input(served, photo), 4)
    probabilities = original_probabilities(store, occlusion.copies)
    top = int(probabilities[0].argmax())
    baseline, drops = score_drops(probabilities, 4, top)
    url = f"{served.url}/v1/explain?model=my-classifier&grid=4"
    response = requests.post(url, files={"image": ("photo.png", png(photo))}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["target"] == {"label": LABELS[top], "index": top, "score": round(baseline, 6)}
    np.testing.assert_allclose(body["grid"], drops, atol=1e-5)
    raw = {"data": png(photo), "headers": {"content-type": "image/png"}, "timeout": 30}
    heatmap = requests.post(f"{url}&format=png&size=64", **raw)
    assert heatmap.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(heatmap.content)).size == (64, 64)
    too_fine = requests.post(f"{served.url}/v1/explain?model=my-classifier&grid=17", **raw)
    assert too_fine.status_code == 400 and "between 2 and 16" in too_fine.json()["error"]["message"]


def test_models_listing_shows_every_served_version(served, store) -> None:
    listed = requests.get(f"{served.url}/v1/models", timeout=10).json()["models"]
    generic = [m for m in listed if m["name"] == "my-generic"]
    assert sorted(m["version"] for m in generic) == sorted(store["generic_versions"])
    assert [m["default"] for m in generic if m["version"] == store["generic_versions"][1]] == [True]
    imported = {m["name"]: m for m in listed}
    assert imported["my-classifier"]["data"]["source_sha256"]
    document = requests.get(f"{served.url}/openapi.json", timeout=10)
    assert document.status_code == 200 and "my-classifier" in document.text
    older = store["generic_versions"][0]
    shown = requests.get(f"{served.url}/v1/models/my-generic?version={older}", timeout=10)
    assert shown.json()["version"] == older and shown.json()["default"] is False


def test_pinned_version_policy_serves_only_that_version(store, tmp_path) -> None:
    home = store["home"]
    older, newer = store["generic_versions"]
    server = start_server(
        tmp_path,
        {
            "BENTOML_HOME": str(home),
            "DEEPSERVE_STORE": str(home),
            "DEEPSERVE_MODELS": '["my-generic"]',
            "DEEPSERVE_VERSIONS": json.dumps({"my-generic": [older]}),
        },
    )
    try:
        meta = requests.get(f"{server.url}/v2/models/my-generic", timeout=10).json()
        assert meta["versions"] == [number(older)]
        newest = requests.get(f"{server.url}/v2/models/my-generic/versions/{newer}/ready")
        assert newest.status_code == 404
        assert requests.get(f"{server.url}/v2/models/my-classifier", timeout=10).status_code == 404
    finally:
        stop_server(server)


def test_invalid_imports_are_refused_with_clear_errors(store, tmp_path) -> None:
    home = store["home"]
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not a protobuf model")
    labels = tmp_path / "two.txt"
    labels.write_text("a\nb\n")
    cases = [
        (["models", "import", str(tmp_path / "absent.onnx"), "--name", "x"], "absent.onnx"),
        (["models", "import", str(garbage), "--name", "x"], "ONNX"),
        (["models", "import", str(store["graphs"]["cnn"]), "--name", "../evil"], "name"),
        (
            [
                *["models", "import", str(store["graphs"]["cnn"]), "--name", "x"],
                *["--task", "image-classification", "--labels", str(labels)],
            ],
            "labels",
        ),
    ]
    before = deepserve(home, "models", "list", "--all").stdout
    for args, needle in cases:
        done = deepserve(home, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert needle in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    assert deepserve(home, "models", "list", "--all").stdout == before  # nothing stored


def test_values_the_graph_refuses_fail_alone_with_400(served) -> None:
    """Rows batched together: one with an out-of-range index gets 400 naming the problem; the
    good rows sent in the same instant (same batch) get their answers."""
    client = httpclient.InferenceServerClient(served.url.removeprefix("http://"), concurrency=16)

    def send(idx: np.ndarray):
        tensor = httpclient.InferInput("idx", list(idx.shape), "INT64")
        tensor.set_data_from_numpy(idx)
        return client.async_infer("my-lookup", [tensor])

    good = [np.array([[i % 5, (i + 1) % 5]], np.int64) for i in range(12)]
    pending = [send(idx) for idx in good[:6]] + [send(np.array([[0, 9]], np.int64))]
    pending += [send(idx) for idx in good[6:]]
    bad = pending.pop(6)
    for idx, request in zip(good, pending, strict=True):
        np.testing.assert_array_equal(request.get_result().as_numpy("rows"), TABLE[idx])
    with pytest.raises(InferenceServerException, match="refused the input") as refused:
        bad.get_result()
    assert "400" in str(refused.value.status()) and "out of data bounds" in str(refused.value)
    client.close()
