"""Alert rules and dashboard: promtool's own checks and rule unit tests, dashboard structure."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: apt-get install prometheus (make setup does it)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=DEPLOY)


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "prometheus/alerts.yml"),
        ("check", "config", "prometheus/prometheus.yml"),
        ("test", "rules", "prometheus/alerts_test.yml"),
    ],
    ids=["check-rules", "check-config", "test-rules"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts_test.yml").read_text())["tests"]
    tested = {case["alertname"] for t in tests for case in t.get("alert_rule_test", [])}
    assert alerts == tested
    fired = {
        case["alertname"]
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert fired == alerts, "every alert needs a case where it fires"


def test_dashboard_covers_what_operators_need() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "deepserve-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for series in (
        "deepserve_requests_total",
        "deepserve_request_duration_seconds_bucket",
        "deepserve_queue_duration_seconds",
        "deepserve_inference_duration_seconds",
        "deepserve_batch_size_bucket",
        "deepserve_inference_samples_total",
        "deepserve_batches_total",
        "deepserve_pending_requests",
        "deepserve_rejected_requests_total",
        "deepserve_model_info",
    ):
        assert series in exprs, series
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "model"}
