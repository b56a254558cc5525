"""The deploy tests' one real server: deepserve started as the KServe ServingRuntime starts it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from loadtests.server import Server, start_server, stop_server
from tests.conftest import tiny_classifier
from tests.deploy.crd_schema import ROOT, manifests

KSERVE = ROOT / "deploy" / "kserve"
LOOPBACK = {"DEEPSERVE_HOST", "DEEPSERVE_PORT", "DEEPSERVE_GRPC_PORT", "DEEPSERVE_RUNTIME_DIR"}
"""The runtime's settings the test server replaces: free loopback ports, a home under tmp."""


@dataclass
class KServePod:
    server: Server
    model: str
    """The InferenceService's name: the runtime serves its model under it ({{.Name}})."""
    container: dict[str, Any]
    """The ServingRuntime's container, as written."""


@pytest.fixture(scope="session")
def kserve_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KServePod]:
    """The ServingRuntime's command and args with {{.Name}} the InferenceService's name and
    /mnt/models a folder holding one ONNX file (as KServe's storage initializer leaves it), its
    environment but for ports and home; no model store (BENTOML_HOME an empty folder)."""
    tmp = tmp_path_factory.mktemp("kserve")
    [runtime] = manifests(KSERVE / "servingruntime.yaml")
    [service] = manifests(KSERVE / "inferenceservice.yaml")
    container = runtime["spec"]["containers"][0]
    assert container["command"] == ["deepserve", "serve"]  # start_server runs `deepserve serve`
    mnt = tmp / "mnt-models"
    (mnt / "ranker").mkdir(parents=True)
    tiny_classifier(mnt / "ranker" / "model.onnx")
    name = service["metadata"]["name"]
    args = [
        arg.replace("{{.Name}}", name).replace("/mnt/models", str(mnt)) for arg in container["args"]
    ]
    env = {e["name"]: e["value"] for e in container["env"] if e["name"] not in LOOPBACK}
    env["BENTOML_HOME"] = str(tmp / "no-store")
    server = start_server(tmp, env, args=args)
    try:
        yield KServePod(server, name, container)
    finally:
        stop_server(server)
