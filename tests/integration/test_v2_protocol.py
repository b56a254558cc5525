"""The Open Inference Protocol on a real server, called with stock tritonclient (HTTP and gRPC).

Every model is inferred with raw tensors over both transports, binary and JSON, and the answers
are checked against the /v1 task API for the same inputs.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.processing.speech import load_audio
from service.processing.vision import decode_image, digit_pixels, resize_center_crop
from service.protocols.v2 import versions
from service.store.specs import ModelSpec, latest_specs
from tests.integration.media import png, wav

pytestmark = pytest.mark.models

MODELS = ["digits-cnn", "imagenet-cnn", "sentiment-lstm", "speech-ctc", "captioner"]


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return latest_specs()


@pytest.fixture(scope="module")
def http_client(server):
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(server):
    client = grpcclient.InferenceServerClient(server.grpc_target)
    yield client
    client.close()


def infer(
    client: Any,
    module: Any,
    model: str,
    tensors: dict[str, np.ndarray],
    outputs: list[str],
    binary: bool = True,
    **kwargs: Any,
) -> dict[str, np.ndarray]:
    """One stock-client inference; `module` is tritonclient.http or tritonclient.grpc."""
    inputs = []
    for name, array in tensors.items():
        datatype = "BYTES" if array.dtype == object else module.np_to_triton_dtype(array.dtype)
        tensor = module.InferInput(name, list(array.shape), datatype)
        if module is httpclient:
            tensor.set_data_from_numpy(array, binary_data=binary)
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = [
        module.InferRequestedOutput(name, binary_data=binary)
        if module is httpclient
        else module.InferRequestedOutput(name)
        for name in outputs
    ]
    result = client.infer(model, inputs, outputs=requested, **kwargs)
    return {name: result.as_numpy(name) for name in outputs}


def text(value: bytes | str) -> str:
    """BYTES elements: bytes from binary/gRPC outputs, str from JSON outputs (as in Triton)."""
    return value.decode() if isinstance(value, bytes) else value


TRANSPORTS = [
    pytest.param("http", True, id="http-binary"),
    pytest.param("http", False, id="http-json"),
    pytest.param("grpc", True, id="grpc"),
]


def client_for(transport: str, http_client, grpc_client):
    return (http_client, httpclient) if transport == "http" else (grpc_client, grpcclient)


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_health_and_metadata(transport, http_client, grpc_client, specs) -> None:
    client, _ = client_for(transport, http_client, grpc_client)
    assert client.is_server_live() and client.is_server_ready()
    as_json = {} if transport == "http" else {"as_json": True}  # http answers dicts anyway
    meta = client.get_server_metadata(**as_json)
    assert meta["name"] == "deepserve"
    assert "binary_tensor_data" in meta["extensions"]
    for model in MODELS:
        assert client.is_model_ready(model)
        assert client.is_model_ready(model, specs[model].version)
        metadata = client.get_model_metadata(model, **as_json)
        # Triton's version numbers (perf_analyzer parses them); the store tag beside each
        number = versions.number(specs[model].version)
        assert metadata["versions"] == [number]
        assert client.is_model_ready(model, number)
        assert metadata["platform"] == "onnxruntime_onnx"
        assert metadata["inputs"] and metadata["outputs"]
        config = client.get_model_config(model, **as_json)
        config = config.get("config", config)
        assert int(config["max_batch_size"]) > 0
        assert {t["name"] for t in config["input"]} == {t["name"] for t in metadata["inputs"]}


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_digits_match_v1(transport, binary, http_client, grpc_client, server, specs) -> None:
    client, module = client_for(transport, http_client, grpc_client)
    held = specs["digits-cnn"].heldout()
    encoded = [png(image) for image in held["image"][:8]]
    pixels = np.stack([digit_pixels(decode_image(data, 10**7), 28) for data in encoded])
    out = infer(client, module, "digits-cnn", {"image": pixels}, ["probabilities"], binary)
    probabilities = out["probabilities"]
    assert probabilities.shape == (8, 10) and probabilities.dtype == np.float32
    for data, row in zip(encoded, probabilities):
        v1 = requests.post(
            f"{server.url}/v1/classify?model=digits-cnn&top_k=1",
            data=data,
            headers={"content-type": "image/png"},
            timeout=30,
        ).json()["predictions"][0]
        assert v1["index"] == int(row.argmax())
        assert v1["score"] == pytest.approx(float(row.max()), abs=2e-6)
    assert (probabilities.argmax(1) == held["label"][:8]).mean() >= 0.75


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_imagenet_and_classification_extension(
    transport, binary, http_client, grpc_client, server
) -> None:
    import skimage.data

    client, module = client_for(transport, http_client, grpc_client)
    buffer = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    pixels = resize_center_crop(decode_image(data, 10**8), 256, 224)[None]
    out = infer(client, module, "imagenet-cnn", {"image": pixels}, ["probabilities"], binary)
    v1 = requests.post(
        f"{server.url}/v1/classify?model=imagenet-cnn&top_k=3",
        data=data,
        headers={"content-type": "image/jpeg"},
        timeout=30,
    ).json()["predictions"]
    top = np.argsort(-out["probabilities"][0], kind="stable")[:3]
    assert [p["index"] for p in v1] == top.tolist()
    # Triton's classification extension: top-k as "score:index:label"
    tensor = module.InferInput("image", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    wanted = module.InferRequestedOutput("probabilities", class_count=3)
    classes = client.infer("imagenet-cnn", [tensor], outputs=[wanted]).as_numpy("probabilities")
    assert classes.shape == (1, 3)
    parsed = [text(entry).split(":", 2) for entry in classes[0]]
    assert [int(index) for _, index, _ in parsed] == top.tolist()
    assert [label for _, _, label in parsed] == [p["label"] for p in v1]


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_sentiment_text_and_tokens(
    transport, binary, http_client, grpc_client, server, specs
) -> None:
    from service.processing.text import encode, tokenize

    client, module = client_for(transport, http_client, grpc_client)
    spec = specs["sentiment-lstm"]
    texts = [str(t) for t in spec.heldout()["text"][:6]]
    v1 = requests.post(f"{server.url}/v1/sentiment", json={"texts": texts}, timeout=30).json()
    as_text = infer(
        client,
        module,
        "sentiment-lstm",
        {"text": np.array([t.encode() for t in texts], dtype=object)},
        ["probabilities"],
        binary,
    )["probabilities"]
    index = {w: i for i, w in enumerate(spec.vocabulary or [])}
    ids = [encode(tokenize(t), index, 64) for t in texts]
    width = max(len(row) for row in ids)
    tokens = np.zeros((len(ids), width), np.int64)
    for row, item in enumerate(ids):
        tokens[row, : len(item)] = item
    lengths = np.array([len(item) for item in ids], np.int64)
    as_tokens = infer(
        client,
        module,
        "sentiment-lstm",
        {"tokens": tokens, "lengths": lengths},
        ["probabilities"],
        binary,
    )["probabilities"]
    np.testing.assert_allclose(as_text, as_tokens, atol=1e-6)
    for result, row in zip(v1["results"], as_text):
        assert result["label"] == spec.labels[int(row.argmax())]
        assert result["score"] == pytest.approx(float(row.max()), abs=2e-6)


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_speech_waveform_to_transcript(
    transport, binary, http_client, grpc_client, server, specs
) -> None:
    client, module = client_for(transport, http_client, grpc_client)
    held = specs["speech-ctc"].heldout()
    files = [wav(held["waveform"][r, : held["lengths"][r]]) for r in range(3)]
    clips = [load_audio(data) for data in files]  # exactly what /v1 decodes from each file
    width = max(len(c) for c in clips)
    waveform = np.zeros((3, width), np.float32)
    for row, clip in enumerate(clips):
        waveform[row, : len(clip)] = clip
    lengths = np.array([len(c) for c in clips], np.int64)
    out = infer(
        client,
        module,
        "speech-ctc",
        {"waveform": waveform, "lengths": lengths},
        ["transcript", "confidence"],
        binary,
    )
    assert out["transcript"].shape == (3,)
    for row, data in enumerate(files):
        v1 = requests.post(
            f"{server.url}/v1/transcribe",
            data=data,
            headers={"content-type": "audio/wav"},
            timeout=30,
        ).json()
        assert text(out["transcript"][row]) == v1["text"]
        assert float(out["confidence"][row]) == pytest.approx(v1["confidence"], abs=1e-5)


@pytest.mark.parametrize("transport,binary", TRANSPORTS)
def test_captioner_image_to_caption(
    transport, binary, http_client, grpc_client, server, specs
) -> None:
    client, module = client_for(transport, http_client, grpc_client)
    images = specs["captioner"].heldout()["image"][:4]
    for beam in (1, 3):
        out = infer(
            client,
            module,
            "captioner",
            {"image": images},
            ["caption", "score"],
            binary,
            parameters={"beam": beam},
        )
        for row, image in enumerate(images):
            v1 = requests.post(
                f"{server.url}/v1/caption?beam={beam}",
                data=png(image),
                headers={"content-type": "image/png"},
                timeout=30,
            ).json()
            assert text(out["caption"][row]) == v1["caption"]
            assert float(out["score"][row]) == pytest.approx(v1["score"], abs=1e-5)


# --- bad tensors -----------------------------------------------------------------------------


def v2_post(server, model: str, body: dict[str, Any], **kwargs: Any) -> requests.Response:
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30, **kwargs)


@pytest.mark.parametrize(
    "model,body,status,needle",
    [
        (
            "digits-cnn",
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 27, 28, 1],
                        "data": [0] * (27 * 28),
                    }
                ]
            },
            400,
            "[batch, 28, 28, 1]",
        ),
        (
            "digits-cnn",
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "FP32",
                        "shape": [1, 28, 28, 1],
                        "data": [0.0] * 784,
                    }
                ]
            },
            400,
            "must be UINT8",
        ),
        (
            "digits-cnn",
            {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1], "data": [0]}]},
            400,
            "no input 'pixels'",
        ),
        (
            "speech-ctc",
            {"inputs": [{"name": "lengths", "datatype": "INT64", "shape": [1], "data": [5]}]},
            400,
            "needs input 'waveform'",
        ),
        (
            "digits-cnn",
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28, 1],
                        "data": [0] * 10,
                    }
                ]
            },
            400,
            "needs 784 elements",
        ),
        (
            "digits-cnn",
            {"inputs": [{"name": "image", "datatype": "UINT9", "shape": [1], "data": [0]}]},
            400,
            "unknown datatype",
        ),
        (
            "no-such-model",
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [0]}]},
            404,
            "unknown model",
        ),
        (
            "sentiment-lstm",
            {
                "inputs": [
                    {"name": "tokens", "datatype": "INT64", "shape": [1, 2], "data": [5, 10**9]}
                ]
            },
            400,
            "token ids must be",
        ),
    ],
)
def test_bad_tensors_get_clear_4xx(server, model, body, status, needle) -> None:
    response = v2_post(server, model, body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_binary_size_mismatch_and_unknown_version(server, specs) -> None:
    header = (
        b'{"inputs":[{"name":"image","datatype":"UINT8","shape":[1,28,28,1],'
        b'"parameters":{"binary_data_size":700}}]}'
    )
    response = requests.post(
        f"{server.url}/v2/models/digits-cnn/infer",
        data=header + bytes(700),
        headers={"Inference-Header-Content-Length": str(len(header))},
        timeout=30,
    )
    assert response.status_code == 400
    assert "needs 784 bytes" in response.json()["error"]
    missing = requests.get(f"{server.url}/v2/models/digits-cnn/versions/v0-nope", timeout=30)
    assert missing.status_code == 404 and specs["digits-cnn"].version in missing.json()["error"]


def test_grpc_errors_carry_status_codes(grpc_client) -> None:
    tensor = grpcclient.InferInput("image", [1, 28, 28, 1], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(InferenceServerException) as unknown:
        grpc_client.infer("no-such-model", [tensor])
    assert unknown.value.status() == "StatusCode.NOT_FOUND"
    wrong = grpcclient.InferInput("image", [1, 28, 28, 2], "UINT8")
    wrong.set_data_from_numpy(np.zeros((1, 28, 28, 2), np.uint8))
    with pytest.raises(InferenceServerException) as invalid:
        grpc_client.infer("digits-cnn", [wrong])
    assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "[batch, 28, 28, 1]" in invalid.value.message()
    with pytest.raises(InferenceServerException) as version:
        grpc_client.infer("digits-cnn", [tensor], model_version="v0-nope")
    assert version.value.status() == "StatusCode.NOT_FOUND"


def test_server_metadata_and_health_over_rest(server) -> None:
    assert requests.get(f"{server.url}/v2", timeout=10).json()["name"] == "deepserve"
    assert requests.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{server.url}/v2/models/nope/ready", timeout=10).status_code == 404
