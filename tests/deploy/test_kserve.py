"""deploy/kserve/: the ServingRuntime and the InferenceService validate against KServe's real CRD
schemas (../shared/reference/kserve-crds/), fit how KServe picks and runs a runtime, and agree
with the service: its default ports, its probes and the model KServe hands it, served under the
InferenceService's name by the runtime's own command line (tests/deploy/conftest.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import requests
import tritonclient.grpc

from service.core.settings import Settings
from tests.deploy.conftest import KSERVE
from tests.deploy.crd_schema import REFERENCE, CustomResource, load, manifests

CRDS = REFERENCE / "kserve-crds"
[RUNTIME] = manifests(KSERVE / "servingruntime.yaml")
[SERVICE] = manifests(KSERVE / "inferenceservice.yaml")


@pytest.fixture(scope="module")
def crds() -> dict[str, CustomResource]:
    found = {}
    for name in ("servingruntimes", "clusterservingruntimes", "inferenceservices"):
        crd = load(CRDS / f"serving.kserve.io_{name}.yaml")
        assert not crd.cel_rules, f"{crd.kind} has CEL rules this test does not check"
        found[crd.kind] = crd
    return found


def test_the_manifests_validate_against_the_kserve_crds(crds) -> None:
    assert crds["ServingRuntime"].errors(RUNTIME) == []
    assert crds["InferenceService"].errors(SERVICE) == []
    cluster_wide = dict(RUNTIME, kind="ClusterServingRuntime")  # the header's variant
    assert crds["ClusterServingRuntime"].errors(cluster_wide) == []


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["containers"][0]


BROKEN: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    (
        "ServingRuntime",
        lambda m: container(m)["ports"][0].update(containerPort="3000"),
        "spec.containers.0.ports.0.containerPort: '3000' is not of type 'integer'",
    ),
    ("ServingRuntime", lambda m: m["spec"].pop("containers"), "'containers' is a required"),
    (
        "ServingRuntime",
        lambda m: m["spec"].update(supportedModelFormat=[]),  # a typo: an unknown field
        "'supportedModelFormat' was unexpected",
    ),
    (
        "ServingRuntime",
        lambda m: m["spec"]["supportedModelFormats"][0].update(priority=0),
        "0 is less than the minimum of 1",
    ),
    ("ServingRuntime", lambda m: m.update(apiVersion="serving.kserve.io/v1beta1"), "apiVersion"),
    ("InferenceService", lambda m: m["spec"].pop("predictor"), "'predictor' is a required"),
    (
        "InferenceService",
        lambda m: m["spec"]["predictor"]["model"]["modelFormat"].pop("name"),
        "spec.predictor.model.modelFormat: 'name' is a required property",
    ),
    (
        "InferenceService",
        lambda m: m["spec"]["predictor"].update(scaleMetric="queue"),
        "spec.predictor.scaleMetric: 'queue' is not one of",
    ),
    ("InferenceService", lambda m: m["metadata"].pop("name"), "'name' is a required property"),
]


@pytest.mark.parametrize(("kind", "breaks", "error"), BROKEN)
def test_a_broken_manifest_is_rejected(crds, kind: str, breaks, error: str) -> None:
    manifest = copy.deepcopy(RUNTIME if kind == "ServingRuntime" else SERVICE)
    breaks(manifest)
    errors = crds[kind].errors(manifest)
    assert any(error in e for e in errors), errors


def test_the_runtime_follows_kserve_conventions() -> None:
    spec = RUNTIME["spec"]
    runtime = container(RUNTIME)
    assert runtime["name"] == "kserve-container"  # where KServe mounts /mnt/models
    assert "--model-dir=/mnt/models" in runtime["args"]
    assert "--model-name={{.Name}}" in runtime["args"]  # served as the InferenceService's name
    # the Open Inference Protocol only: deepserve's /v1 is not KServe's V1 (/v1/models/M:predict)
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    assert spec["multiModel"] is False
    assert [(f["name"], f["autoSelect"]) for f in spec["supportedModelFormats"]] == [("onnx", True)]
    ports = {p["name"]: p["containerPort"] for p in runtime["ports"]}
    assert list(ports) == ["http1", "h2c"]  # the first is the predictor Service's port 80
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert runtime[probe]["httpGet"]["port"] == "http1"
    startup = runtime["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # import + warm-up
    security = runtime["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    mounts = {m["mountPath"] for m in runtime["volumeMounts"]}
    env = {e["name"]: e["value"] for e in runtime["env"]}
    assert env["DEEPSERVE_RUNTIME_DIR"].startswith("/run/deepserve/") and "/tmp" in mounts
    assert "/run/deepserve" in mounts
    runtime_volume = next(v for v in spec["volumes"] if v["name"] == "runtime")
    assert "medium" not in runtime_volume["emptyDir"]  # the imported model lives there: disk


def test_the_inference_service_selects_the_runtime() -> None:
    predictor = SERVICE["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == RUNTIME["metadata"]["name"]
    formats = {f["name"] for f in RUNTIME["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    # KServe's default protocol is v1: a v2-only runtime is chosen only for a v2 service
    assert model["protocolVersion"] in RUNTIME["spec"]["protocolVersions"]
    assert model["storageUri"]
    # two ports: Knative (Serverless mode) refuses a container with more than one
    if len(container(RUNTIME)["ports"]) > 1:
        mode = SERVICE["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
        assert mode == "RawDeployment"
    assert predictor["minReplicas"] >= 1


def test_ports_and_settings_are_deepserve_s() -> None:
    runtime = container(RUNTIME)
    ports = {p["name"]: p["containerPort"] for p in runtime["ports"]}
    defaults = Settings.model_fields
    assert ports == {"http1": defaults["port"].default, "h2c": defaults["grpc_port"].default}
    env = {e["name"]: e["value"] for e in runtime["env"]}
    assert env["DEEPSERVE_PORT"] == str(ports["http1"])
    assert env["DEEPSERVE_GRPC_PORT"] == str(ports["h2c"])
    assert env["DEEPSERVE_HOST"] == "0.0.0.0"
    annotations = RUNTIME["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/port"] == str(ports["http1"])
    # every DEEPSERVE_* value is a valid setting (the live server below also starts with them)
    settings = Settings(**{k.removeprefix("DEEPSERVE_").lower(): v for k, v in env.items()})
    assert settings.model_control == "none"
    grace = float(env["DEEPSERVE_SHUTDOWN_GRACE_S"])
    assert grace < 30  # KServe's pods keep Kubernetes' default terminationGracePeriodSeconds


def test_the_runtime_command_line_serves_the_model_as_the_service_s_name(kserve_pod) -> None:
    url, name = kserve_pod.server.url, kserve_pod.model
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = kserve_pod.container[probe]["httpGet"]["path"]
        assert requests.get(f"{url}{path}", timeout=10).status_code == 200, probe
    annotations = RUNTIME["spec"]["annotations"]
    metrics = requests.get(f"{url}{annotations['prometheus.kserve.io/path']}", timeout=10)
    assert f'deepserve_pending_requests{{model="{name}"' in metrics.text
    assert requests.get(f"{url}/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(f"{url}/v2/models/{name}/ready", timeout=10).status_code == 200
    listed = requests.post(f"{url}/v2/repository/index", json={}, timeout=10).json()
    assert [m["name"] for m in listed] == [name]  # the one model, none from the image's store
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 0, 0, 0]}]}
    answer = requests.post(f"{url}/v2/models/{name}/infer", json=body, timeout=30).json()
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs["logits"] == pytest.approx([0.0, 0.1, 0.2])  # the first row of the weights
    grpc = tritonclient.grpc.InferenceServerClient(kserve_pod.server.grpc_target)
    try:
        assert grpc.is_model_ready(name)
        x = tritonclient.grpc.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[0, 1, 0, 0]], dtype=np.float32))
        logits = grpc.infer(name, [x]).as_numpy("logits")
        assert logits[0].tolist() == pytest.approx([0.3, 0.4, 0.5])
    finally:
        grpc.close()
