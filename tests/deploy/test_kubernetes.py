"""Kubernetes manifests: rendered by kustomize, validated against the Kubernetes API schemas."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl not found (it renders the kustomize overlays)"
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


OVERLAYS = ["cpu", "gpu", "cpu-api-key", "cpu-keda"]
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}
"""Kinds of CRDs, which the tool has no schema for: the ServiceMonitor is checked by hand below,
the ScaledObject against KEDA's CRD (tests/deploy/test_autoscaling.py)."""


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_passes_strict_schema_validation(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    validator = shutil.which("kubernetes-validate") or str(
        Path(sys.executable).parent / "kubernetes-validate"
    )
    result = subprocess.run([validator, "--strict", str(rendered)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    passed = result.stdout.count(" passed for resource ")
    # every resource but the custom ones passes the API schema
    assert passed == len([d for d in docs if d["kind"] not in CUSTOM_KINDS]), result.stdout
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"][0] == {
        "port": "http",
        "path": "/metrics",
        "interval": "15s",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_production_shaped(overlay: str) -> None:
    docs = {d["kind"]: d for d in render(overlay)}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model warm-up
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["allowPrivilegeEscalation"] is False
    ports = {p["name"]: p for p in docs["Service"]["spec"]["ports"]}
    assert ports["http"]["port"] == 3000 and ports["grpc"]["port"] == 50051
    assert ports["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    if overlay.endswith("-keda"):  # KEDA makes its own HPA (tests/deploy/test_autoscaling.py)
        assert "HorizontalPodAutoscaler" not in docs
        assert {t["type"] for t in docs["ScaledObject"]["spec"]["triggers"]} == {
            "prometheus",
            "cpu",
        }
    else:
        metrics = {m["type"]: m for m in docs["HorizontalPodAutoscaler"]["spec"]["metrics"]}
        assert metrics["Pods"]["pods"]["metric"]["name"] == "deepserve_pending_requests"
        assert metrics["Resource"]["resource"]["name"] == "cpu"
    selector = docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]
    assert selector == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    settings = docs["ConfigMap"]["data"]
    limits = container["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == "1"
        assert settings["DEEPSERVE_DEVICE"] == "gpu"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert "nvidia.com/gpu" not in limits
        assert "DEEPSERVE_DEVICE" not in settings


def test_api_key_overlay_mounts_the_secret_read_only() -> None:
    docs = {d["kind"]: d for d in render("cpu-api-key")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert env["DEEPSERVE_API_KEY_FILE"].startswith(mount["mountPath"] + "/")
    assert mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "deepserve-api-keys"
    config = docs["ConfigMap"]["data"]
    grace = float(config["DEEPSERVE_SHUTDOWN_GRACE_S"])
    assert grace + 10 < pod["terminationGracePeriodSeconds"]  # preStop sleep + drain fit
