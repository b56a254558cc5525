"""Triton's statistics extension on a real server, read with stock tritonclient (HTTP and gRPC)
after known traffic over /v1, V2 REST and V2 gRPC, per runner placement.

NOTE: tritonclient.grpc brings its own inference.* protobuf messages: this module must never import
service.protocols.proto.gen.inference_pb2 (see service/protocols/proto/stubs.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf.json_format import MessageToDict
from tritonclient.utils import InferenceServerException

from loadtests.server import Server, start_server, stop_server
from tests.integration.media import png

pytestmark = pytest.mark.models

MODEL = "digits-cnn"
V2_REQUESTS, V2_ROWS = 8, 4
"""Concurrent V2 REST requests of several rows each (so that batches form)."""


@dataclass
class Traffic:
    server: Server
    version: str
    succeeded: int
    """Requests answered 200 (each counts once, whatever its rows)."""
    rows: int
    """Rows those requests held: every one computed once."""
    failed: int
    """Requests that reached the model and failed."""
    started_ms: int


def v2_body(rows: int, shape: list[int]) -> dict[str, Any]:
    data = np.zeros([rows, *shape], np.uint8)
    return {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(data.shape),
                        "data": data.ravel().tolist()}]}  # fmt: skip


def send_traffic(server: Server) -> Traffic:
    started_ms = time.time_ns() // 1_000_000
    http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    grpc_client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        metadata = http.get_model_metadata(MODEL)
        version = metadata["versions"][0]
        shape = [int(d) for d in metadata["inputs"][0]["shape"][1:]]
        succeeded = rows = failed = 0

        image = png(np.zeros(shape, np.uint8))
        for _ in range(3):  # /v1
            answer = requests.post(
                f"{server.url}/v1/classify?model={MODEL}",
                data=image,
                headers={"content-type": "image/png"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        succeeded, rows = succeeded + 3, rows + 3

        url = f"{server.url}/v2/models/{MODEL}/infer"

        def post_v2(_: int) -> int:
            return requests.post(url, json=v2_body(V2_ROWS, shape), timeout=30).status_code

        with ThreadPoolExecutor(V2_REQUESTS) as pool:  # V2 REST, concurrently
            assert list(pool.map(post_v2, range(V2_REQUESTS))) == [200] * V2_REQUESTS
        succeeded, rows = succeeded + V2_REQUESTS, rows + V2_REQUESTS * V2_ROWS

        for _ in range(2):  # V2 gRPC, one row each
            tensor = grpcclient.InferInput("image", [1, *shape], "UINT8")
            tensor.set_data_from_numpy(np.zeros([1, *shape], np.uint8))
            result = grpc_client.infer(MODEL, [tensor])
            assert result.as_numpy("probabilities").shape[0] == 1
        succeeded, rows = succeeded + 2, rows + 2

        # refused before the model (wrong shape): not one of its requests
        wrong = {
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 3], "data": [0] * 3}]
        }
        assert requests.post(url, json=wrong, timeout=30).status_code == 400
        # reaches the model after its deadline (1 microsecond): a failed request, not computed
        late = requests.post(f"{url}?timeout_ms=0.001", json=v2_body(1, shape), timeout=30)
        assert late.status_code == 504, late.text
        failed += 1
    finally:
        http.close()
        grpc_client.close()
    return Traffic(server, version, succeeded, rows, failed, started_ms)


@pytest.fixture(scope="module", params=["local", "remote"])
def traffic(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Traffic]:
    env = {"DEEPSERVE_MODELS": f'["{MODEL}"]', "DEEPSERVE_PLACEMENT": request.param}
    server = start_server(tmp_path_factory.mktemp(f"stats-{request.param}"), env)
    server.placement = request.param
    try:
        yield send_traffic(server)
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def http_client(traffic: Traffic) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(traffic.server.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(traffic: Traffic) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(traffic.server.grpc_target)
    yield client
    client.close()


def counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The figures compared between transports (gRPC's JSON writes uint64 as strings and leaves
    zeros out)."""
    inference = stats.get("inference_stats", {})
    return {
        "inference_count": int(stats.get("inference_count", 0)),
        "execution_count": int(stats.get("execution_count", 0)),
        "last_inference": int(stats.get("last_inference", 0)),
        **{
            name: int(inference.get(name, {}).get("count", 0))
            for name in ("success", "fail", "queue", "compute_input", "compute_infer")
        },
        "batches": sorted(
            (int(b["batch_size"]), int(b["compute_infer"]["count"]))
            for b in stats.get("batch_stats", [])
        ),
    }


def test_statistics_count_the_traffic_sent(traffic: Traffic, http_client) -> None:
    (stats,) = http_client.get_inference_statistics(MODEL)["model_stats"]
    assert (stats["name"], stats["version"]) == (MODEL, traffic.version)
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == traffic.succeeded
    assert inference["fail"]["count"] == traffic.failed
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[phase]["count"] == traffic.succeeded, phase
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert inference["fail"]["ns"] > 0
    assert inference["cache_hit"] == inference["cache_miss"] == {"count": 0, "ns": 0}
    assert stats["inference_count"] == traffic.rows  # warm-up runs and refused rows not counted
    assert 1 <= stats["execution_count"] <= traffic.rows
    now_ms = time.time_ns() // 1_000_000
    assert traffic.started_ms <= stats["last_inference"] <= now_ms
    batches = stats["batch_stats"]
    if traffic.server.placement == "local":
        assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == traffic.rows
        assert sum(b["compute_infer"]["count"] for b in batches) == stats["execution_count"]
        assert all(b["compute_infer"]["ns"] > 0 for b in batches)
        assert inference["queue"]["ns"] > 0
    else:  # the runner service batches; the gateway sees calls, not batches
        assert batches == []
        assert inference["queue"]["ns"] == inference["compute_input"]["ns"] == 0


def test_every_form_of_the_question_and_both_transports_agree(
    traffic: Traffic, http_client, grpc_client
) -> None:
    (by_name,) = http_client.get_inference_statistics(MODEL)["model_stats"]
    (by_version,) = http_client.get_inference_statistics(MODEL, traffic.version)["model_stats"]
    everything = http_client.get_inference_statistics()["model_stats"]
    assert [(s["name"], s["version"]) for s in everything] == [(MODEL, traffic.version)]
    over_grpc = grpc_client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
    message = grpc_client.get_inference_statistics("")  # the protobuf message itself
    all_grpc = MessageToDict(message, preserving_proto_field_name=True)["model_stats"]
    expected = counts(by_name)
    assert expected["success"] == traffic.succeeded  # nothing was inferred since
    for stats in (by_version, everything[0], over_grpc[0], all_grpc[0]):
        assert counts(stats) == expected
    assert over_grpc[0]["name"] == MODEL and over_grpc[0]["version"] == traffic.version


def test_unknown_models_and_versions_are_not_found(traffic: Traffic, http_client, grpc_client):
    for name, version in (("no-such-model", ""), (MODEL, "no-such-version")):
        with pytest.raises(InferenceServerException) as http_error:
            http_client.get_inference_statistics(name, version)
        assert http_error.value.status() == "404", http_error.value.message()
        with pytest.raises(InferenceServerException) as grpc_error:
            grpc_client.get_inference_statistics(name, version)
        assert grpc_error.value.status() == "StatusCode.NOT_FOUND"
    raw = requests.get(f"{traffic.server.url}/v2/models/no-such-model/stats", timeout=10)
    assert raw.status_code == 404 and "no-such-model" in raw.json()["error"]


def test_server_metadata_lists_the_statistics_extension(http_client, grpc_client) -> None:
    assert "statistics" in http_client.get_server_metadata()["extensions"]
    assert "statistics" in grpc_client.get_server_metadata().extensions
