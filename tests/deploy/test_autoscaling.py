"""Queue-depth autoscaling as installed: the KEDA ScaledObject (overlays/cpu-keda) validates
against KEDA's real CRD (../shared/reference/keda-crds/) and replaces the base HPA; its PromQL and
the prometheus-adapter rule (prometheus-adapter/values.yaml) return deepserve_pending_requests
from a real Prometheus scraping a running deepserve (the KServe test server), with the namespace
and pod labels Kubernetes service discovery would attach."""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import yaml

from tests.deploy.crd_schema import REFERENCE, ROOT, CustomResource, load
from tests.deploy.test_kubernetes import render
from tests.integration.prometheus import Prometheus, start_prometheus

ADAPTER = ROOT / "deploy" / "k8s" / "prometheus-adapter" / "values.yaml"
BASE_HPA = yaml.safe_load((ROOT / "deploy" / "k8s" / "base" / "hpa.yaml").read_text())
PENDING = "deepserve_pending_requests"
"""service/core/metrics.py's queue-depth gauge (the live scrape below is the check)."""
MIN_NOT_ABOVE_MAX = (
    "!has(self.minReplicaCount) || self.minReplicaCount <= "
    "(has(self.maxReplicaCount) ? self.maxReplicaCount : 100)"
)
NAMESPACE = "deepserve"
POD = "deepserve-7c9f8d6b5d-x2k9q"
"""The scraped server's pod: a name its Deployment's ReplicaSet would give it."""


@pytest.fixture(scope="module")
def keda() -> CustomResource:
    return load(REFERENCE / "keda-crds" / "keda.sh_scaledobjects.yaml")


@pytest.fixture(scope="module")
def rendered() -> dict[str, Any]:
    return {d["kind"]: d for d in render("cpu-keda")}


def check_cel(scaled: dict[str, Any], keda: CustomResource) -> list[str]:
    """The CRD's one CEL rule (spec), evaluated here by hand; a new rule fails the test."""
    assert [rule["rule"] for rule in keda.cel_rules] == [MIN_NOT_ABOVE_MAX]
    spec = scaled["spec"]
    if "minReplicaCount" in spec and spec["minReplicaCount"] > spec.get("maxReplicaCount", 100):
        return [keda.cel_rules[0]["message"]]
    return []


def test_the_scaled_object_validates_against_the_keda_crd(rendered, keda) -> None:
    scaled = rendered["ScaledObject"]
    assert keda.errors(scaled) == []
    assert check_cel(scaled, keda) == []


BROKEN: list[tuple[Callable[[dict[str, Any]], Any], str]] = [
    (lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=16), "16 is not of type"),
    (lambda s: s["spec"].pop("scaleTargetRef"), "'scaleTargetRef' is a required property"),
    (lambda s: s["spec"].update(minReplicas=1), "'minReplicas' was unexpected"),  # the HPA's word
    (lambda s: s["spec"].update(triggers=[]), "[] should be non-empty"),
    (lambda s: s["spec"]["triggers"][1].pop("type"), "'type' is a required property"),
    (lambda s: s["spec"].update(minReplicaCount=-1), "-1 is less than the minimum of 0"),
    (lambda s: s["spec"].update(minReplicaCount=11), "minReplicaCount must be less than"),
]


@pytest.mark.parametrize(("breaks", "error"), BROKEN)
def test_a_broken_scaled_object_is_rejected(rendered, keda, breaks, error: str) -> None:
    scaled = copy.deepcopy(rendered["ScaledObject"])
    breaks(scaled)
    errors = keda.errors(scaled) + check_cel(scaled, keda)
    assert any(error in e for e in errors), errors


def triggers(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["type"]: t for t in scaled["spec"]["triggers"]}


def test_the_overlay_replaces_the_base_hpa_with_the_same_targets(rendered) -> None:
    assert "HorizontalPodAutoscaler" not in rendered  # KEDA's own HPA would fight it
    scaled, deployment = rendered["ScaledObject"], rendered["Deployment"]
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (deployment["apiVersion"], "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE
    assert scaled["spec"]["minReplicaCount"] == 1  # the floor: never scaled to zero
    hpa = BASE_HPA["spec"]
    assert scaled["spec"]["maxReplicaCount"] == hpa["maxReplicas"]
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior == hpa["behavior"]
    metrics_of = {m["type"]: m for m in hpa["metrics"]}
    pending, cpu = triggers(scaled)["prometheus"], triggers(scaled)["cpu"]
    assert pending["metricType"] == "AverageValue"  # the query's sum / replicas vs threshold
    assert pending["metadata"]["threshold"] == metrics_of["Pods"]["pods"]["target"]["averageValue"]
    assert pending["metadata"]["ignoreNullValues"] == "false"
    utilization = metrics_of["Resource"]["resource"]["target"]["averageUtilization"]
    assert (cpu["metricType"], cpu["metadata"]["value"]) == ("Utilization", str(utilization))


def test_the_query_selects_this_deployment_s_pods_only(rendered) -> None:
    query = triggers(rendered["ScaledObject"])["prometheus"]["metadata"]["query"]
    assert f'namespace="{NAMESPACE}"' in query
    [pods] = re.findall(r'pod=~"([^"]+)"', query)
    assert re.fullmatch(pods, POD)
    for other in ("deepserve-gpu-7c9f8d6b5d-x2k9q", "deepserve-locust-1", "deepserve"):
        assert not re.fullmatch(pods, other), other


@pytest.fixture(scope="module")
def prometheus(kserve_pod, tmp_path_factory) -> Iterator[Prometheus]:
    """A real Prometheus scraping the KServe test server, labelled as the pod POD."""
    running = start_prometheus(
        tmp_path_factory.mktemp("prometheus-autoscaling"),
        kserve_pod.server.url.removeprefix("http://"),
        labels={"namespace": NAMESPACE, "pod": POD},
    )
    try:
        running.scraped_after(time.time())
        yield running
    finally:
        running.stop()


def test_the_keda_query_returns_the_pending_requests_of_the_pods(
    rendered, prometheus, kserve_pod
) -> None:
    scrape = requests.get(f"{kserve_pod.server.url}/metrics", timeout=10).text
    assert f"# TYPE {PENDING} gauge" in scrape
    query = triggers(rendered["ScaledObject"])["prometheus"]["metadata"]["query"]
    assert PENDING in query
    [sample] = prometheus.query(query)
    assert float(sample["value"][1]) >= 0
    # it matches by namespace and pod: elsewhere, nothing
    assert prometheus.query(query.replace(f'"{NAMESPACE}"', '"elsewhere"')) == []


def adapter_rule() -> dict[str, Any]:
    [rule] = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    return rule


def render_metrics_query(template: str, series: str, namespace: str, pods: list[str]) -> str:
    """prometheus-adapter's rendering of a Pods metric query (pkg/naming/metrics_query.go
    Build): LabelMatchers `namespace="ns"` then `pod="p"` (`pod=~"p1|p2"` for several pods),
    values quoted as Go's %q; GroupBy the pod label. Only these three template fields are
    rendered here; any other template action fails."""
    pod = f"pod={json.dumps(pods[0])}" if len(pods) == 1 else f"pod=~{json.dumps('|'.join(pods))}"
    fields = {
        "<<.Series>>": series,
        "<<.LabelMatchers>>": f"namespace={json.dumps(namespace)},{pod}",
        "<<.GroupBy>>": "pod",
    }
    for field, value in fields.items():
        template = template.replace(field, value)
    assert "<<" not in template and ">>" not in template, f"unrendered field in {template}"
    return template


def test_the_adapter_rule_serves_the_metric_the_base_hpa_names(prometheus) -> None:
    rule = adapter_rule()
    [hpa_metric] = [m for m in BASE_HPA["spec"]["metrics"] if m["type"] == "Pods"]
    assert rule["name"]["as"] == hpa_metric["pods"]["metric"]["name"] == PENDING
    overrides = rule["resources"]["overrides"]
    assert overrides == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    # discovery: the adapter lists series with seriesQuery and names them by name.matches/as
    found = requests.get(
        f"{prometheus.url}/api/v1/series", params={"match[]": rule["seriesQuery"]}, timeout=10
    ).json()["data"]
    assert found and {(s["namespace"], s["pod"]) for s in found} == {(NAMESPACE, POD)}
    assert {s["__name__"] for s in found} == {PENDING}
    assert re.search(rule["name"]["matches"], PENDING)


@pytest.mark.parametrize("pods", [[POD], [POD, "deepserve-7c9f8d6b5d-other"]])
def test_the_adapter_query_returns_one_value_per_pod(prometheus, pods: list[str]) -> None:
    query = render_metrics_query(adapter_rule()["metricsQuery"], PENDING, NAMESPACE, pods)
    [sample] = prometheus.query(query)  # the other pod has no series
    assert sample["metric"] == {"pod": POD}
    assert float(sample["value"][1]) >= 0
    elsewhere = render_metrics_query(adapter_rule()["metricsQuery"], PENDING, "elsewhere", pods)
    assert prometheus.query(elsewhere) == []
