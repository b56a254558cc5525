"""API-key auth on REST, V2 REST, gRPC task and V2 gRPC; open probes; no secrets echoed; no path
traversal through model names; REST deadlines. One real server with keys from a mounted file."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from loadtests.server import Server, start_server, stop_server
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png

pytestmark = pytest.mark.models

OLD_KEY, NEW_KEY = "old-key-5b1f0c2e9d", "new-key-a41d77e0c3"  # test-only keys


@pytest.fixture(scope="module")
def secured(tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("secured")
    key_file = tmp / "api-keys"
    key_file.write_text(f"# rotated keys, one per line\n{OLD_KEY}\n{NEW_KEY}\n")
    running = start_server(
        tmp,
        {
            "DEEPSERVE_MODELS": '["digits-cnn", "sentiment-lstm"]',
            "DEEPSERVE_API_KEY_FILE": str(key_file),
            "DEEPSERVE_OPEN_METRICS": "false",
        },
    )
    yield running
    stop_server(running)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def digit() -> bytes:
    return png(latest_specs()["digits-cnn"].heldout()["image"][0])


PROTECTED = [
    ("POST", "/v1/sentiment", {"json": {"text": "a fine film"}}),
    ("GET", "/v1/models", {}),
    ("GET", "/v1/models/digits-cnn", {}),
    ("GET", "/v2", {}),
    ("GET", "/v2/models/digits-cnn", {}),
    ("GET", "/v2/models/digits-cnn/ready", {}),
    ("POST", "/v2/models/sentiment-lstm/infer", {"json": {"inputs": []}}),
    ("GET", "/metrics", {}),
]


@pytest.mark.parametrize(("method", "path", "kwargs"), PROTECTED, ids=[p for _, p, _ in PROTECTED])
def test_rest_refuses_missing_wrong_or_malformed_keys(secured, method, path, kwargs) -> None:
    url = secured.url + path
    for headers, needle in [
        ({}, "missing API key"),
        (bearer("not-" + NEW_KEY), "invalid API key"),
        (bearer(NEW_KEY[:-1]), "invalid API key"),  # a prefix of a real key
        ({"Authorization": f"Basic {NEW_KEY}"}, "malformed Authorization"),
        ({"Authorization": "Bearer "}, "malformed Authorization"),
    ]:
        response = requests.request(method, url, headers=headers, timeout=10, **kwargs)
        assert response.status_code == 401, (path, headers, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert needle in response.text
        assert NEW_KEY not in response.text and OLD_KEY not in response.text
    for key in (OLD_KEY, NEW_KEY):  # both keys of a rotation work
        response = requests.request(method, url, headers=bearer(key), timeout=10, **kwargs)
        assert response.status_code != 401, (path, response.text)
        assert response.status_code < 500


def test_health_probes_stay_open(secured) -> None:
    for path in ("/livez", "/readyz", "/v2/health/live", "/v2/health/ready"):
        assert requests.get(secured.url + path, timeout=10).status_code == 200, path
    with grpc.insecure_channel(secured.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_authorized_inference_is_correct(secured, digit) -> None:
    label = int(latest_specs()["digits-cnn"].heldout()["label"][0])
    response = requests.post(
        secured.url + "/v1/classify?model=digits-cnn",
        data=digit,
        headers={"Content-Type": "image/png", **bearer(NEW_KEY)},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["index"] == label


def test_grpc_task_service_needs_the_key(secured, digit) -> None:
    with grpc.insecure_channel(secured.grpc_target) as channel:
        stub = deepserve_pb2_grpc.InferenceStub(channel)
        request = pb.ClassifyRequest(image=digit, model="digits-cnn")
        for metadata, needle in [
            ((), "missing API key"),
            ((("authorization", "Bearer wrong"),), "invalid API key"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                stub.Classify(request, metadata=metadata, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert needle in refused.value.details()
        answer = stub.Classify(
            request, metadata=(("authorization", f"Bearer {OLD_KEY}"),), timeout=10
        )
        assert answer.model == "digits-cnn" and answer.predictions
        with pytest.raises(grpc.RpcError) as refused:  # every method, not only inference
            stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_stock_triton_clients_send_the_key_as_a_header(secured) -> None:
    pixels = latest_specs()["digits-cnn"].heldout()["image"][:1].astype(np.uint8)
    host = secured.url.removeprefix("http://")
    for client, module in [
        (httpclient.InferenceServerClient(host), httpclient),
        (grpcclient.InferenceServerClient(secured.grpc_target), grpcclient),
    ]:
        tensor = module.InferInput("image", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        with pytest.raises(InferenceServerException, match="API key"):
            client.infer("digits-cnn", [tensor])
        headers = {"authorization": f"Bearer {NEW_KEY}"}
        result = client.infer("digits-cnn", [tensor], headers=headers)
        assert result.as_numpy("probabilities").shape == (1, 10)
        assert client.is_server_live()  # health stays open for stock clients
        client.close()


def test_model_names_cannot_traverse_paths(secured) -> None:
    for name in ("../../etc/passwd", "..%2F..%2Fmodels", "digits-cnn/../../x", "%00"):
        for path in (f"/v1/models/{name}", f"/v2/models/{name}", f"/v1/classify?model={name}"):
            method = "POST" if "classify" in path else "GET"
            response = requests.request(
                method, secured.url + path, headers=bearer(NEW_KEY), data=b"x", timeout=10
            )
            assert response.status_code in (400, 404, 415), (path, response.text)
            assert "root:" not in response.text


def test_errors_carry_no_stack_traces(secured) -> None:
    response = requests.post(
        secured.url + "/v2/models/sentiment-lstm/infer",
        data=b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [7]}]}',
        headers=bearer(NEW_KEY),
        timeout=10,
    )
    assert 400 <= response.status_code < 500
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_rest_deadline_header_and_parameter(secured, digit) -> None:
    url = secured.url + "/v1/classify?model=digits-cnn"
    headers = {"Content-Type": "image/png", **bearer(NEW_KEY)}
    ok = requests.post(url, data=digit, headers={**headers, "X-Request-Timeout-Ms": "5000"})
    assert ok.status_code == 200, ok.text
    for bad in ("", "0", "-5", "soon", "nan", "inf", "9999999"):
        refused = requests.post(url, data=digit, headers={**headers, "X-Request-Timeout-Ms": bad})
        assert refused.status_code == 400 and "timeout" in refused.text, bad
    refused = requests.post(url + "&timeout_ms=abc", data=digit, headers=headers, timeout=10)
    assert refused.status_code == 400 and "timeout_ms" in refused.text


def test_expired_rest_deadline_is_dropped_before_compute(secured) -> None:
    """A 12-megapixel JPEG decodes for longer than its 20 ms deadline: it is answered 504 and
    never reaches the model (the model's sample counter does not move)."""
    y, x = np.mgrid[0:3000, 0:4000]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    big = buffer.getvalue()
    headers = {"Content-Type": "image/jpeg", **bearer(NEW_KEY)}

    def samples() -> int:
        models = requests.get(secured.url + "/v1/models", headers=bearer(NEW_KEY), timeout=10)
        (digits,) = [m for m in models.json()["models"] if m["name"] == "digits-cnn"]
        return int(digits["batching"]["samples"])

    before = samples()
    started = time.monotonic()
    response = requests.post(
        secured.url + "/v1/classify?model=digits-cnn&timeout_ms=20", data=big, headers=headers
    )
    assert response.status_code == 504, response.text
    assert "deadline" in response.json()["error"]["message"]
    assert samples() == before
    shape, zeros = [1, 28, 28, 1], [0] * 784
    response = requests.post(
        secured.url + "/v2/models/digits-cnn/infer",
        json={"inputs": [{"name": "image", "datatype": "UINT8", "shape": shape, "data": zeros}]},
        headers={**bearer(NEW_KEY), "X-Request-Timeout-Ms": "10000"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert samples() == before + 1
    assert time.monotonic() - started < 30
