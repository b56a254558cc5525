"""Abuse that costs an attacker little: random paths (metric series), chunked uploads past the
body limit, unknown routes. One real server with API keys on, called as an attacker would (no
key), and as its users do (with one)."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from loadtests.server import Server, running_server

pytestmark = pytest.mark.models

KEY = "abuse-test-key-4c1d9e"  # test-only key
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("abuse"),
        {
            "DEEPSERVE_MODELS": '["imagenet-cnn", "sentiment-lstm"]',
            "DEEPSERVE_API_KEY": KEY,
            "DEEPSERVE_MAX_BODY_BYTES": str(BODY_LIMIT),
        },
    ) as running:
        yield running


def series(url: str) -> tuple[int, int]:
    """(series, bytes) of /metrics."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(1 for line in text.splitlines() if line and not line.startswith("#")), len(text)


def random_paths(count: int, long_every: int = 30) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers): unknown paths with and without a key, unknown model names."""
    requests_ = []
    for i in range(count):
        token = secrets.token_hex(4 if i % long_every else 4000)  # every 30th: an 8 KB path
        kind = i % 5
        if kind == 0:
            requests_.append(("GET", f"/x{token}", {}))
        elif kind == 1:
            requests_.append(("POST", f"/v2/models/{token}/infer", {}))
        elif kind == 2:
            requests_.append(("GET", f"/v1/{token}", AUTH))
        elif kind == 3:
            requests_.append(("GET", f"/v2/models/{token}", AUTH))
        else:
            requests_.append(("POST", f"/v1/sentiment?model={token[:40]}", AUTH))
    return requests_


def send_all(url: str, batch: list[tuple[str, str, dict[str, str]]]) -> dict[int, int]:
    statuses: dict[int, int] = {}

    def worker(part: list[tuple[str, str, dict[str, str]]]) -> dict[int, int]:
        seen: dict[int, int] = {}
        with requests.Session() as http:
            for method, path, headers in part:
                body = {"text": "fine"} if method == "POST" else None
                status = http.request(method, url + path, json=body, headers=headers, timeout=30)
                seen[status.status_code] = seen.get(status.status_code, 0) + 1
        return seen

    with ThreadPoolExecutor(4) as pool:
        for seen in pool.map(worker, [batch[i::4] for i in range(4)]):
            for status, n in seen.items():
                statuses[status] = statuses.get(status, 0) + n
    return statuses


def test_metric_series_stay_flat_under_10000_random_paths(target) -> None:
    """BentoML labelled series with the raw path: +20 series per distinct path, never dropped."""
    first = send_all(target.url, random_paths(1_000))  # every label value in use appears
    assert set(first) <= {401, 404}, first
    series(target.url)  # the first scrape adds the /metrics route's own series
    before, before_bytes = series(target.url)
    rss_before = target.rss_mb()
    started = time.monotonic()
    paths = random_paths(10_000)
    more = send_all(target.url, paths)
    elapsed = time.monotonic() - started
    after, after_bytes = series(target.url)
    rss_growth = target.rss_mb() - rss_before
    print(
        f"10,000 random paths in {elapsed:.1f} s: {more}; series {before} -> {after}; "
        f"/metrics {before_bytes} -> {after_bytes} bytes; RSS +{rss_growth:.0f} MB"
    )
    assert more[401] == 4_000 and more[404] == 6_000
    assert after == before, "a label value came from a request"
    assert after_bytes < before_bytes * 1.2  # values grow a digit or two, nothing else
    assert rss_growth < 150
    text = requests.get(f"{target.url}/metrics", timeout=30).text
    assert 'route="unmatched"' in text and 'route="/v1/sentiment"' in text
    tokens = [path.removeprefix("/x")[:16] for _, path, _ in paths[::5]]
    assert not [token for token in tokens if token in text], "a path made it into /metrics"


def test_http_series_count_refusals_and_routes(target) -> None:
    requests.get(f"{target.url}/v2/models/sentiment-lstm/ready", headers=AUTH, timeout=30)
    requests.get(f"{target.url}/v2/models/sentiment-lstm/ready", timeout=30)  # no key
    text = requests.get(f"{target.url}/metrics", timeout=30).text
    counted = {
        (s.labels["route"], s.labels["method"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "deepserve_http_requests"
        for s in family.samples
        if s.name == "deepserve_http_requests_total"
    }
    assert counted[("/v2/models/{model_name}/ready", "GET", "200")] >= 1
    assert counted[("unmatched", "GET", "401")] >= 1  # refused before routing
    assert "bentoml_service_request_total" not in text  # BentoML's raw-path series are off


def chunked_upload(url: str, path: str, total_mb: int) -> tuple[int, bytes]:
    """Stream a multipart body with Transfer-Encoding: chunked (no Content-Length) until the
    server answers or stops reading; (bytes sent, the answer's first bytes)."""
    host, port = url.removeprefix("http://").split(":")
    boundary = "deepserveabuse"
    chunk = b"\0" * (1 << 20)
    sent = 0
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(head), head))
            for _ in range(total_mb):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass
        sock.settimeout(30)
        answer = b""
        try:
            while len(answer) < 4096:
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
        except OSError:
            pass
    return sent, answer


def test_chunked_upload_is_cut_at_the_body_limit(target) -> None:
    """A 500 MiB chunked multipart upload used to be read whole before its 413 (+500 MB)."""
    rss_before = target.rss_mb()
    sent, answer = chunked_upload(target.url, "/v1/classify", total_mb=300)
    growth = target.rss_mb() - rss_before
    print(
        f"chunked upload: {sent / 2**20:.0f} MiB sent before the server stopped; +{growth:.0f} MB"
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code": "payload_too_large"' in answer or b'"code":"payload_too_large"' in answer
    assert sent < 100 * 2**20, "the server kept reading past its limit"
    assert growth < 100
    # the service is fine afterwards
    ok = requests.post(
        f"{target.url}/v1/sentiment", json={"text": "fine"}, headers=AUTH, timeout=30
    )
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/sentiment", "application/json"),
        ("/v2/models/sentiment-lstm/infer", "application/octet-stream"),
        ("/v1/classify", "image/png"),
    ],
)
def test_chunked_raw_bodies_are_refused_in_their_protocol_shape(target, path, content_type):
    def body() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 65536 + 8):
            yield b"\0" * 65536

    response = requests.post(
        target.url + path,
        data=body(),  # a generator: requests sends it chunked
        headers={**AUTH, "Content-Type": content_type},
        timeout=60,
    )
    assert response.status_code == 413
    error = response.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "limit" in message


@pytest.mark.parametrize(
    ("method", "path", "status", "shape"),
    [
        ("GET", "/v1/nope", 404, "v1"),
        ("POST", "/v1/models/digits-cnn/extra", 404, "v1"),
        ("GET", "/v2/nope", 404, "v2"),
        ("DELETE", "/v2/models/sentiment-lstm/infer/x", 404, "v2"),
        ("GET", "/v1/classify", 405, "v1"),
        ("GET", "/v2/models/sentiment-lstm/infer", 405, "v2"),
    ],
)
def test_unknown_routes_answer_in_their_protocol_shape(target, method, path, status, shape):
    response = requests.request(method, target.url + path, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if shape == "v1":
        assert error["code"] in ("not_found", "method_not_allowed") and error["message"]
    else:
        assert isinstance(error, str) and error
    if status == 405:
        assert "POST" in response.headers["Allow"]


def test_known_routes_and_probes_still_answer(target) -> None:
    assert requests.get(f"{target.url}/livez", timeout=30).status_code == 200
    assert requests.get(f"{target.url}/readyz", timeout=30).status_code == 200
    assert requests.get(f"{target.url}/v2", headers=AUTH, timeout=30).json()["name"]
    listed = requests.get(f"{target.url}/v1/models", headers=AUTH, timeout=30).json()
    assert {m["name"] for m in listed["models"]} >= {"imagenet-cnn", "sentiment-lstm"}
