"""deepserve's metrics through a real Prometheus: known traffic in, exact numbers out; every
PromQL expression of the dashboard and the alert rules runs against the live data."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png
from tests.integration.prometheus import (
    as_bool_comparison,
    dashboard_expressions,
    rule_expressions,
    start_prometheus,
)

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    running = start_prometheus(
        tmp_path_factory.mktemp("prometheus"), server.url.removeprefix("http://")
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def traffic(server, prometheus):
    """Known traffic, sent once per server: counts per (model, protocol, status class)."""
    specs = latest_specs()
    digit = png(specs["digits-cnn"].heldout()["image"][0])
    texts = [str(t) for t in specs["sentiment-lstm"].heldout()["text"][:64]]
    prometheus.scraped_after(time.time())
    totals = (
        "sum by (model, protocol, status) "
        '(deepserve_requests_total{model=~"digits-cnn|sentiment-lstm"})'
    )
    before = {tuple(r["metric"].values()): float(r["value"][1]) for r in prometheus.query(totals)}
    samples_before = prometheus.value('sum(deepserve_inference_samples_total{model="digits-cnn"})')

    def classify(_: int) -> int:
        return requests.post(
            f"{server.url}/v1/classify?model=digits-cnn",
            data=digit,
            headers={"content-type": "image/png"},
            timeout=30,
        ).status_code

    def sentiment(text: str) -> int:
        return requests.post(
            f"{server.url}/v1/sentiment", json={"text": text}, timeout=30
        ).status_code

    scene = png(specs["captioner"].heldout()["image"][0])

    def photo(_: int) -> int:  # ~15 ms of compute each: 32 at once must queue and batch
        return requests.post(
            f"{server.url}/v1/classify?model=imagenet-cnn",
            data=scene,
            headers={"content-type": "image/png"},
            timeout=60,
        ).status_code

    def v2(_: int) -> int:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}]}
        return requests.post(
            f"{server.url}/v2/models/sentiment-lstm/infer", json=body, timeout=30
        ).status_code

    with ThreadPoolExecutor(32) as pool:
        codes = list(pool.map(classify, range(40)))
        codes += list(pool.map(sentiment, texts))
        codes += list(pool.map(photo, range(32)))
        codes += list(pool.map(v2, range(10)))
    bad = [
        requests.post(f"{server.url}/v1/sentiment", json={"text": ""}, timeout=30).status_code
        for _ in range(5)
    ]
    with grpc.insecure_channel(server.grpc_target) as channel:  # the task service
        stub = deepserve_pb2_grpc.InferenceStub(channel)
        for text in texts[:7]:
            stub.Sentiment(pb.SentimentRequest(texts=[text]), timeout=30)
    v2_grpc = tritonclient.grpc.InferenceServerClient(server.grpc_target)
    words = tritonclient.grpc.InferInput("text", [1], "BYTES")
    words.set_data_from_numpy(np.array([b"a fine film"], dtype=object))
    for _ in range(3):
        v2_grpc.infer("sentiment-lstm", [words])
    v2_grpc.close()
    assert set(codes) == {200} and set(bad) == {400}
    # NOTE: two scrapes after the traffic: a series born during it then has the two samples
    # that rate() needs, however the traffic fell between the 1 s scrapes
    prometheus.scraped_after(time.time())
    prometheus.scraped_after(time.time())
    after = {tuple(r["metric"].values()): float(r["value"][1]) for r in prometheus.query(totals)}
    samples_after = prometheus.value('sum(deepserve_inference_samples_total{model="digits-cnn"})')
    return before, after, samples_after - samples_before


def delta(traffic, model: str, protocol: str, status: str) -> float:
    before, after, _ = traffic
    key = next(k for k in after if set(k) == {model, protocol, status})
    return after[key] - before.get(key, 0.0)


def test_request_counters_increase_by_exactly_what_was_sent(traffic) -> None:
    assert delta(traffic, "digits-cnn", "rest", "2xx") == 40
    assert delta(traffic, "sentiment-lstm", "rest", "2xx") == 64
    assert delta(traffic, "sentiment-lstm", "rest", "4xx") == 5
    assert delta(traffic, "sentiment-lstm", "v2-rest", "2xx") == 10
    assert delta(traffic, "sentiment-lstm", "grpc", "2xx") == 7
    assert delta(traffic, "sentiment-lstm", "v2-grpc", "2xx") == 3
    assert delta(traffic, "digits-cnn", "rest", "5xx") == 0


def test_batch_counters_add_up_across_processes(traffic, server) -> None:
    # remote placement: requests are counted by the gateway, samples by the runner service's own
    # process; one scrape of the gateway sums both (prometheus_client multiprocess mode)
    assert traffic[2] == 40


def test_histograms_have_observations_and_batches_form(traffic, prometheus) -> None:
    for histogram in (
        "deepserve_request_duration_seconds",
        "deepserve_inference_duration_seconds",
        "deepserve_batch_size",
        "deepserve_postprocess_duration_seconds",
    ):
        assert prometheus.value(f'sum({histogram}_count{{model="sentiment-lstm"}})') > 0, histogram
    assert (
        prometheus.value('sum(deepserve_preprocess_duration_seconds_count{model="digits-cnn"})')
        >= 40
    )
    multi = prometheus.value(
        'sum(deepserve_batch_size_count{model="imagenet-cnn"})'
        ' - sum(deepserve_batch_size_bucket{model="imagenet-cnn", le=~"1|1.0"})'
    )
    assert multi > 0, "32 concurrent requests formed no batch larger than 1"
    average = prometheus.value(
        'sum(deepserve_inference_samples_total{model="imagenet-cnn"})'
        ' / sum(deepserve_batches_total{model="imagenet-cnn"})'
    )
    assert average > 1
    info = prometheus.query('deepserve_model_info{model="digits-cnn"}')
    assert info and info[0]["metric"]["opset"] == "17"
    assert info[0]["metric"]["provider"] == "CPUExecutionProvider"


def test_every_dashboard_and_alert_expression_returns_data(traffic, prometheus) -> None:
    records, alerts = rule_expressions()
    expressions = [(f"record {name}", expr) for name, expr in records.items()]
    for name, expr in alerts.items():
        for record, definition in records.items():  # the rules' own definitions, no eval wait
            expr = expr.replace(record, f"({definition})")
        expressions.append((f"alert {name}", as_bool_comparison(expr)))
    expressions += dashboard_expressions()
    assert len(expressions) >= 20
    empty = [f"{where}: {expr}" for where, expr in expressions if not prometheus.query(expr)]
    assert not empty, "expressions without data:\n" + "\n".join(empty)
    groups = requests.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in groups} == {"deepserve-recording", "deepserve-alerts"}


def test_promtool_check_metrics_on_a_live_scrape(traffic, server) -> None:
    scrape = requests.get(f"{server.url}/metrics", timeout=10).text
    assert "deepserve_requests_total" in scrape
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr
