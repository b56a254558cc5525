"""The live model repository on real servers: model control modes (poll, explicit), the V2
repository extension through stock tritonclient (http and grpc), admin keys and uploads, and
readiness, /v1/models and grpc.health following every change."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from loadtests.server import Server, start_server, stop_server
from service.protocols.v2.versions import number
from tests.integration.test_own_model import deepserve, generic_graph, stored_versions

pytestmark = pytest.mark.models

ADMIN, USER = "admin-key-for-tests", "user-key-for-tests"


def eventually(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("graphs")
    return {f"v{i}": generic_graph(tmp / f"generic-{i}.onnx", float(i + 1)) for i in (1, 2, 3)}


def fresh_store(tmp: Path, graphs: dict[str, Path], names: list[str]) -> Path:
    home = tmp / "home"
    home.mkdir()
    for name in names:
        done = deepserve(home, "models", "import", str(graphs["v1"]), "--name", name)
        assert done.returncode == 0, done.stdout + done.stderr
    return home


def serve(tmp: Path, home: Path, **env: str) -> Server:
    return start_server(
        tmp, {"BENTOML_HOME": str(home), "DEEPSERVE_STORE": str(home), **env}, timeout=120
    )


BODY = {
    "inputs": [
        {"name": "a", "datatype": "FP32", "shape": [1, 4], "data": [1, 1, 1, 1]},
        {"name": "b", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]},
    ],
    "outputs": [{"name": "total"}],
}


def scale_of(server: Server, model: str) -> tuple[str, float]:
    """(version, the graph's scale) of one V2 inference on `model` (a=1, b=0)."""
    answer = requests.post(f"{server.url}/v2/models/{model}/infer", json=BODY, timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"], answer.json()["outputs"][0]["data"][0]


def health(server: Server) -> int:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


def index_of(client) -> dict[str, dict[str, str]]:
    rows = client.get_model_repository_index()
    if not isinstance(rows, list):  # grpc: a message
        rows = [
            {"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}
            for m in rows.models
        ]
    return {f"{row['name']}:{row['version']}": row for row in rows}


def served_names(server: Server) -> set[str]:
    listed = requests.get(f"{server.url}/v1/models", timeout=10).json()["models"]
    return {m["name"] for m in listed}


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_explicit_mode_load_and_unload_with_stock_tritonclient(tmp_path, graphs, transport):
    home = fresh_store(tmp_path, graphs, ["gen-a", "gen-b"])
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="explicit", DEEPSERVE_MODELS='["gen-a"]')
    try:
        if transport == "http":
            client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        else:
            client = grpcclient.InferenceServerClient(server.grpc_target)
        index = index_of(client)
        (a,) = [row for tag, row in index.items() if tag.startswith("gen-a:")]
        (b,) = [row for tag, row in index.items() if tag.startswith("gen-b:")]
        assert a["state"] == "READY" and a["reason"] == ""
        assert b["state"] == "UNAVAILABLE" and "not loaded" in b["reason"]
        assert not client.is_model_ready("gen-b")

        client.load_model("gen-b")
        assert client.is_model_ready("gen-b")
        assert index_of(client)[f"gen-b:{b['version']}"]["state"] == "READY"
        assert served_names(server) == {"gen-a", "gen-b"}
        assert scale_of(server, "gen-b") == (b["version"], 2.0)

        client.unload_model("gen-a")
        assert not client.is_model_ready("gen-a")
        assert served_names(server) == {"gen-b"}
        row = index_of(client)[f"gen-a:{a['version']}"]
        assert row["state"] == "UNAVAILABLE" and "unloaded" in row["reason"]
        gone = requests.post(f"{server.url}/v2/models/gen-a/infer", json=BODY, timeout=10)
        assert gone.status_code == 404 and "not loaded" in gone.json()["error"]

        client.unload_model("gen-b")  # nothing served: explicit mode is still ready
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
        assert health(server) == health_pb2.HealthCheckResponse.SERVING
        metadata = client.get_server_metadata()
        extensions = metadata["extensions"] if transport == "http" else metadata.extensions
        assert "model_repository" in extensions

        with pytest.raises(InferenceServerException, match="not in the model store"):
            client.load_model("no-such-model")
        with pytest.raises(InferenceServerException, match="not loaded"):
            client.unload_model("no-such-model")
    finally:
        stop_server(server)


def test_poll_mode_serves_an_imported_version_and_refuses_load_calls(tmp_path, graphs):
    home = fresh_store(tmp_path, graphs, ["gen-a"])
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="poll", DEEPSERVE_POLL_INTERVAL_S="0.5")
    try:
        (old,) = map(number, stored_versions(home, "gen-a"))  # V2 names versions by number
        assert scale_of(server, "gen-a") == (old, 2.0)
        done = deepserve(home, "models", "import", str(graphs["v2"]), "--name", "gen-a")
        assert done.returncode == 0, done.stdout + done.stderr
        new = next(number(v) for v in stored_versions(home, "gen-a") if number(v) != old)
        eventually(lambda: scale_of(server, "gen-a") == (new, 3.0))
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        eventually(lambda: index_of(client)[f"gen-a:{old}"]["state"] == "UNAVAILABLE")
        assert "version policy" in index_of(client)[f"gen-a:{old}"]["reason"]
        with pytest.raises(InferenceServerException, match="explicit"):
            client.load_model("gen-a")

        # a new model in the store is served; a model removed from it is unloaded
        done = deepserve(home, "models", "import", str(graphs["v1"]), "--name", "gen-b")
        assert done.returncode == 0, done.stdout + done.stderr
        eventually(lambda: served_names(server) == {"gen-a", "gen-b"})
        staged = tmp_path / "gen-b-removed"  # out of the store in one rename, as `mv` does
        (home / "models" / "gen-b").rename(staged)
        eventually(lambda: served_names(server) == {"gen-a"})
        assert "gen-b" not in {r["name"] for r in client.get_model_repository_index()}
        gone = requests.post(f"{server.url}/v2/models/gen-b/infer", json=BODY, timeout=10)
        assert gone.status_code == 404 and "removed from the model store" in gone.text
    finally:
        stop_server(server)


def test_poll_mode_refuses_a_damaged_version_and_keeps_the_old_one(tmp_path, graphs):
    home = fresh_store(tmp_path, graphs, ["gen-a"])
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="poll", DEEPSERVE_POLL_INTERVAL_S="0.5")
    try:
        (old,) = stored_versions(home, "gen-a")
        # the new version is stored elsewhere, damaged there (its graph no longer matches the
        # hash in its spec), then moved into the served store in one rename
        staging = tmp_path / "staging"
        staging.mkdir()
        done = deepserve(staging, "models", "import", str(graphs["v2"]), "--name", "gen-a")
        assert done.returncode == 0, done.stdout + done.stderr
        (new,) = stored_versions(staging, "gen-a")
        folder = staging / "models" / "gen-a" / new
        graph = next(folder.glob("*.onnx"))
        graph.write_bytes(graph.read_bytes()[:-8] + b"\0" * 8)
        shutil.copytree(folder, home / "models" / "gen-a" / ".incoming")
        (home / "models" / "gen-a" / ".incoming").rename(home / "models" / "gen-a" / new)
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        row = lambda: index_of(client)[f"gen-a:{number(new)}"]  # noqa: E731
        eventually(lambda: "refused" in row()["reason"])
        assert row()["state"] == "UNAVAILABLE"
        assert "refused" in row()["reason"], row()
        assert scale_of(server, "gen-a") == (number(old), 2.0)
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    finally:
        stop_server(server)


def test_admin_key_guards_the_repository_and_uploads(tmp_path, graphs):
    home = fresh_store(tmp_path, graphs, ["gen-a"])
    server = serve(
        tmp_path,
        home,
        DEEPSERVE_MODEL_CONTROL="explicit",
        DEEPSERVE_API_KEY=USER,
        DEEPSERVE_ADMIN_KEY=ADMIN,
        DEEPSERVE_MAX_UPLOAD_BYTES="4096",
    )
    target = server.url.removeprefix("http://")
    as_user = {"Authorization": f"Bearer {USER}"}
    as_admin = {"Authorization": f"Bearer {ADMIN}"}
    upload = {"file:1/model.onnx": graphs["v3"].read_bytes()}
    config = json.dumps({"task": "generic"})
    try:
        http = httpclient.InferenceServerClient(target)
        with pytest.raises(InferenceServerException, match="API key"):
            http.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="admin key"):
            http.get_model_repository_index(headers=as_user)
        assert index_of_with(http, as_admin)
        # an inference key can infer but not manage; admin keys do both
        assert http.is_model_ready("gen-a", headers=as_user)
        with pytest.raises(InferenceServerException, match="admin key"):
            http.load_model("gen-up", headers=as_user, config=config, files=upload)

        http.load_model("gen-up", headers=as_admin, config=config, files=upload)
        assert http.is_model_ready("gen-up", headers=as_admin)
        too_big = {"file:1/model.onnx": b"\0" * 5000}
        with pytest.raises(InferenceServerException, match="max_upload_bytes"):
            http.load_model("gen-big", headers=as_admin, config=config, files=too_big)
        bad = {"file:1/model.onnx": b"not an onnx file"}
        with pytest.raises(InferenceServerException, match="refused"):
            http.load_model("gen-bad", headers=as_admin, config=config, files=bad)
        assert not http.is_model_ready("gen-bad", headers=as_admin)

        rpc = grpcclient.InferenceServerClient(server.grpc_target)
        rpc_user = {"authorization": f"Bearer {USER}"}  # gRPC metadata keys are lowercase
        rpc_admin = {"authorization": f"Bearer {ADMIN}"}
        with pytest.raises(InferenceServerException, match="admin key"):
            rpc.unload_model("gen-up", headers=rpc_user)
        rpc.load_model("gen-up2", headers=rpc_admin, config=config, files=upload)
        assert rpc.is_model_ready("gen-up2", headers=rpc_admin)
        rpc.unload_model("gen-up", headers=rpc_admin)
        assert not rpc.is_model_ready("gen-up", headers=rpc_admin)
    finally:
        stop_server(server)


def index_of_with(client, headers: dict[str, str]) -> list:
    return client.get_model_repository_index(headers=headers)


def test_uploads_are_refused_without_admin_keys(tmp_path, graphs):
    home = fresh_store(tmp_path, graphs, ["gen-a"])
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="explicit")
    try:
        http = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        files = {"file:1/model.onnx": graphs["v3"].read_bytes()}
        with pytest.raises(InferenceServerException, match="admin key"):
            http.load_model("gen-up", config="{}", files=files)
        assert "gen-up" not in {row["name"] for row in http.get_model_repository_index()}
        np.testing.assert_allclose(scale_of(server, "gen-a")[1], 2.0)
    finally:
        stop_server(server)
