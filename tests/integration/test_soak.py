"""Soak: normal authenticated traffic on REST, V2 REST and gRPC while a mix of cheap abuse runs
against the same server (loadtests/abuse.py: random paths, idle sockets, unfinished headers,
stalled bodies, health Watch streams, oversized and extreme-aspect images, chunked bodies).

Bounded in time (SOAK_S). Normal traffic must see no error at all; /metrics must keep the same
series; the server's memory must not grow past a generous bound; and every abuse kind must have
been answered the way it should (refused, cut or closed). Latency under abuse is measured by
`make bench`, not asserted here.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
import requests

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from loadtests.abuse import AbuseMix
from loadtests.server import Server, running_server
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png

pytestmark = pytest.mark.models

KEY = "soak-test-key-81be07"  # test-only key
AUTH = {"Authorization": f"Bearer {KEY}"}
SOAK_S = 30.0
RSS_GROWTH_MB = 300  # generous: the abuse holds a few hundred connections and streams
TIMEOUT_S = 2.0  # the slow-client timeouts of this server


@pytest.fixture(scope="module")
def soaked(tmp_path_factory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("soak"),
        {
            "DEEPSERVE_MODELS": '["imagenet-cnn", "sentiment-lstm"]',
            "DEEPSERVE_API_KEY": KEY,
            "DEEPSERVE_HTTP_IDLE_TIMEOUT_S": str(TIMEOUT_S),
            "DEEPSERVE_HTTP_HEADER_TIMEOUT_S": str(TIMEOUT_S),
            "DEEPSERVE_HTTP_BODY_TIMEOUT_S": str(TIMEOUT_S),
            "DEEPSERVE_GRPC_MAX_HEALTH_RPCS": "32",
        },
    ) as running:
        yield running


def series(url: str) -> set[str]:
    """The series of /metrics: name and labels, without values."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {line.rsplit(" ", 1)[0] for line in text.splitlines() if line and line[0] != "#"}


def shapes(names: set[str]) -> set[str]:
    """The series without their status-code and bucket labels."""
    return {re.sub(r'(code|status|le)="[^"]*",?', "", name) for name in names}


def normal_traffic(server: Server, until: float, outcomes: Counter[str]) -> None:
    """One user of each protocol in turn: /v1 sentiment and classify, V2 REST, gRPC task."""
    image = png(latest_specs()["imagenet-cnn"].heldout()["image"][0])
    v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a fine film"]}]}
    with requests.Session() as http, grpc.insecure_channel(server.grpc_target) as channel:
        stub = deepserve_pb2_grpc.InferenceStub(channel)
        while time.monotonic() < until:
            for name, call in [
                (
                    "rest-sentiment",
                    lambda: (
                        http.post(
                            f"{server.url}/v1/sentiment",
                            json={"text": "a fine film"},
                            headers=AUTH,
                            timeout=60,
                        ).status_code
                    ),
                ),
                (
                    "rest-classify",
                    lambda: (
                        http.post(
                            f"{server.url}/v1/classify",
                            data=image,
                            headers={**AUTH, "Content-Type": "image/png"},
                            timeout=60,
                        ).status_code
                    ),
                ),
                (
                    "v2-rest",
                    lambda: (
                        http.post(
                            f"{server.url}/v2/models/sentiment-lstm/infer",
                            json=v2,
                            headers=AUTH,
                            timeout=60,
                        ).status_code
                    ),
                ),
                (
                    "grpc",
                    lambda: (
                        200
                        if stub.Sentiment(
                            pb.SentimentRequest(texts=["a fine film"]),
                            metadata=[("authorization", f"Bearer {KEY}")],
                            timeout=60,
                        ).results
                        else 0
                    ),
                ),
            ]:
                try:
                    status = call()
                except (requests.RequestException, grpc.RpcError) as error:
                    status = type(error).__name__
                outcomes[f"{name}:{status}"] += 1


def test_normal_traffic_is_untouched_by_a_mix_of_abuse(soaked) -> None:
    # warm up: every route and refusal the soak will see has its series before we count them
    AbuseMix(soaked.url, soaked.grpc_target, KEY, sockets=4, streams=4).run(3 * TIMEOUT_S)
    warm: Counter[str] = Counter()
    normal_traffic(soaked, time.monotonic() + 2, warm)
    series(soaked.url)
    series_before, rss_before = series(soaked.url), soaked.rss_mb()

    abuse = AbuseMix(soaked.url, soaked.grpc_target, KEY, sockets=100, streams=100)
    abuse.start(SOAK_S + 10)
    time.sleep(2)  # let the sockets and streams pile up first
    outcomes: Counter[str] = Counter()
    users = [
        threading.Thread(target=normal_traffic, args=(soaked, time.monotonic() + SOAK_S, outcomes))
        for _ in range(2)
    ]
    for user in users:
        user.start()
    for user in users:
        user.join(SOAK_S + 120)
    rss_peak = soaked.rss_mb()
    counts = abuse.stop()
    series_after = series(soaked.url)
    print(f"\nnormal traffic: {dict(outcomes)}\nabuse: {dict(sorted(counts.items()))}")
    print(
        f"series {len(series_before)} -> {len(series_after)}; "
        f"RSS {rss_before:.0f} -> {rss_peak:.0f} MB (+{rss_peak - rss_before:.0f})"
    )
    errors = {k: n for k, n in outcomes.items() if not k.endswith(":200")}
    assert not errors, f"normal traffic failed under abuse: {errors}"
    assert sum(outcomes.values()) >= 40  # it really ran
    # NOTE: a status code first seen under load (a 503 shed, a 504) may add its series; a
    # route, method, model or path may not (those are what an attacker could invent)
    assert shapes(series_after) == shapes(series_before), sorted(series_after - series_before)
    assert len(series_after - series_before) <= 10, sorted(series_after - series_before)
    assert rss_peak - rss_before < RSS_GROWTH_MB
    # the abuse ran and was answered as it should be
    assert counts["random_paths:401"] > 100
    assert counts["oversized:413"] + counts["oversized:reset"] >= 5
    assert counts["chunked_bodies:413"] + counts["chunked_bodies:reset"] >= 5
    assert counts["extreme_images:200"] >= 5
    for kind in ("idle_sockets", "slow_headers", "stalled_bodies"):
        closed = counts[f"{kind}:closed_by_server"] + sum(
            n for k, n in counts.items() if k.startswith(f"{kind}:answered_")
        )
        assert closed >= 100, f"{kind}: the server did not cut slow connections: {counts}"
    assert counts["watch_streams:opened"] >= 100
    # the server is still healthy
    assert requests.get(f"{soaked.url}/readyz", timeout=30).status_code == 200
