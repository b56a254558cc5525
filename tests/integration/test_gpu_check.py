"""`make gpu-check` on this CPU machine: the CPU fallback runs every step (provider check, the
batch sweep with IO binding off and on for every stored graph, the service under load) and
writes one report saying it was the fallback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.store.specs import latest_specs

pytestmark = pytest.mark.models
ROOT = Path(__file__).resolve().parents[2]


def test_the_cpu_fallback_runs_every_step_and_reports(tmp_path: Path) -> None:
    from loadtests.gpu_check import gpu_visible

    if gpu_visible():  # there the script runs on the GPU: `make gpu-check` is its test
        pytest.skip("a GPU is visible: no CPU fallback")
    out = tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "loadtests/gpu_check.py", "--batch-sizes", "1,4", "--seconds", "0.1",
         "--service-models", "digits-cnn", "--service-clients", "1,4", "--service-seconds", "1",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["gpu"] is False and report["cuda_source"] == "no GPU"
    assert report["provider_check"]["passed"] and report["failures"] == []
    graphs = {f"{name}/{graph}" for name, spec in latest_specs().items() for graph in spec.graphs}
    assert set(report["agreement"]) == graphs
    assert set(report["agreement"].values()) == {"same answers"}
    swept = {(p["model"], p["graph"], p["batch"], p["io_binding"]) for p in report["points"]}
    assert len(swept) == len(graphs) * 2 * 2  # every graph, both batch sizes, binding off and on
    assert all(p["items_per_s"] > 0 and p["runs"] >= 3 for p in report["points"])
    service = report["service"]
    assert [(r["model"], r["clients"]) for r in service] == [("digits-cnn", 1), ("digits-cnn", 4)]
    assert all(r["rps"] > 0 and r["errors"] == 0 and r["avg_batch"] >= 1 for r in service)
    text = (out / "gpu-check.md").read_text()
    assert "CPU fallback" in text and "every check passed" in text
