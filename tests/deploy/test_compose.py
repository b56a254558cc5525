"""The compose stack, validated by docker-compose itself (no Docker engine runs here)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"


def config(*files: str) -> dict:
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose not found: apt-get install docker-compose (make setup does it)"
    args = [binary]
    for name in files:
        args += ["-f", str(COMPOSE / name)]
    result = subprocess.run(
        [*args, "--profile", "loadtest", "config"], capture_output=True, text=True, cwd=COMPOSE
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def source(volume: str | dict) -> str:
    """A volume's host side, in either of the forms docker-compose versions print."""
    return volume.split(":")[0] if isinstance(volume, str) else volume["source"]


def test_cpu_stack_renders_with_every_service() -> None:
    stack = config("docker-compose.yml")
    services = stack["services"]
    assert set(services) == {"deepserve", "prometheus", "grafana", "locust-master", "locust-worker"}
    deepserve = services["deepserve"]
    assert deepserve["build"]["target"] == "runtime"
    assert {p["target"] for p in deepserve["ports"]} == {3000, 50051}
    assert "/readyz" in " ".join(deepserve["healthcheck"]["test"])
    assert deepserve["read_only"] is True
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["deepserve:3000"]
    mounted = " ".join(source(v) for v in services["prometheus"]["volumes"])
    assert "alerts.yml" in mounted
    grafana_sources = [source(v) for v in services["grafana"]["volumes"]]
    assert any(Path(s).name == "grafana" and (Path(s) / "deepserve-dashboard.json").exists()
               for s in grafana_sources)  # fmt: skip
    assert services["locust-master"]["build"]["target"] == "loadtest"
    assert "--master" in services["locust-master"]["command"]
    assert "--worker" in services["locust-worker"]["command"]
    assert services["locust-worker"]["image"] == services["locust-master"]["image"]


def test_gpu_override_reserves_an_nvidia_device() -> None:
    deepserve = config("docker-compose.yml", "docker-compose.gpu.yml")["services"]["deepserve"]
    assert deepserve["build"]["target"] == "gpu"
    devices = deepserve["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert deepserve["environment"]["DEEPSERVE_DEVICE"] == "gpu"
