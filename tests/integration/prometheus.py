"""A real Prometheus server (Debian's `prometheus`) on loopback, scraping a deepserve server."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from loadtests.server import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "deepserve-dashboard.json"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; raises with Prometheus' own message when the expression is invalid."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    def scraped_after(self, moment: float, timeout: float = 20.0) -> None:
        """Wait until a scrape of deepserve started after `moment` (unix time) has landed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.value('max(timestamp(up{job="deepserve"}))') > moment:
                return
            time.sleep(0.3)
        raise AssertionError(f"no scrape after {moment} within {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_prometheus(tmp: Path, target: str, labels: dict[str, str] | None = None) -> Prometheus:
    """Prometheus scraping `target` every second as job "deepserve"; `labels` are attached to
    every series scraped (as Kubernetes service discovery attaches namespace and pod)."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus not found: apt-get install prometheus (make setup does it)")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": "deepserve", "metrics_path": "/metrics", "static_configs": [
                {"targets": [target], **({"labels": labels} if labels else {})}
            ]}
        ],
    }  # fmt: skip
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_path = tmp / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_ready(f"{prometheus.url}/-/ready", process, log_path, 60)
    except RuntimeError:
        prometheus.stop()
        raise
    return prometheus


COMPARISON = re.compile(r"(?<![=!<>])(==|!=|>=|<=|>|<)(?!=)(?!\s*bool)")


def as_bool_comparison(expr: str) -> str:
    """An alert condition with every comparison made `bool`: 0/1 per series instead of filtering,
    so a quiet system still returns the series the condition is computed from."""
    return COMPARISON.sub(lambda m: f"{m.group(1)} bool", expr)


def rule_expressions() -> tuple[dict[str, str], dict[str, str]]:
    """(recording rule name -> expr, alert name -> expr) from deploy/prometheus/alerts.yml."""
    records: dict[str, str] = {}
    alerts: dict[str, str] = {}
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            if "record" in rule:
                records[rule["record"]] = expr
            else:
                alerts[rule["alert"]] = expr
    return records, alerts


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, expr) for every target of the Grafana dashboard, variables filled in."""
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "1m").replace("$model", ".+")
            found.append((panel["title"], expr))
    for variable in dashboard["templating"]["list"]:
        definition = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((\w+), *\w+\)", definition)
        if match:
            found.append((f"variable {variable['name']}", match.group(1)))
    return found
