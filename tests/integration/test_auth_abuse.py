"""API-key abuse against a real server, HTTP and gRPC: repeated Authorization refused, non-ASCII
keys refused cleanly (and at start, when configured), and a burst of wrong keys from one address
limits that address, a right key included, until the window ends. All test traffic comes from
127.0.0.1, so the server's limit is set low and each test starts after a window has passed."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from loadtests.server import Server, running_server, start_server, stop_server
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc

pytestmark = pytest.mark.models

KEY = "auth-abuse-key-58d2e07b"  # test-only key
LIMIT, WINDOW_S = 8, 6.0  # above what one of the other tests refuses
MODELS = '["digits-cnn", "sentiment-lstm"]'
SENTIMENT = json.dumps({"text": "a fine film"}).encode()
V2_SENTIMENT = json.dumps(
    {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a fine film"]}]}
).encode()
PATHS = [("/v1/sentiment", SENTIMENT), ("/v2/models/sentiment-lstm/infer", V2_SENTIMENT)]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("auth-abuse"),
        {
            "DEEPSERVE_MODELS": MODELS,
            "DEEPSERVE_API_KEY": KEY,
            "DEEPSERVE_AUTH_FAILURE_LIMIT": str(LIMIT),
            "DEEPSERVE_AUTH_FAILURE_WINDOW_S": str(WINDOW_S),
        },
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_window(request) -> None:
    """Each test starts with this address unlimited (the previous one may have failed keys)."""
    if "guarded" in request.fixturenames:
        time.sleep(WINDOW_S + 0.3)


def post(server: Server, path: str, body: bytes, headers: list[tuple[str, Any]]) -> tuple[int, Any]:
    """POST with exactly these headers, repeats and raw bytes included (requests merges them)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", path)
        for name, value in [("Content-Type", "application/json"), *headers]:
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        payload = response.read()
        return response.status, (response.msg, json.loads(payload))  # headers: any case
    finally:
        connection.close()


def message_of(path: str, body: Any) -> str:
    """The error message in the path's error shape (/v2: {"error": "..."})."""
    if path.startswith("/v2"):
        assert isinstance(body["error"], str), body
        return str(body["error"])
    assert set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["message"])


def bearer(key: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {key}")


def sentiment(server: Server, metadata: tuple[tuple[str, str], ...]) -> Any:
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = deepserve_pb2_grpc.InferenceStub(channel)
        return stub.Sentiment(
            pb.SentimentRequest(texts=["a fine film"]), metadata=metadata, timeout=30
        )


def test_two_authorization_headers_are_refused(guarded) -> None:
    for path, body in PATHS:
        for headers in ([bearer(KEY), bearer(KEY)], [bearer("wrong"), bearer(KEY)]):
            status, (_, answer) = post(guarded, path, body, headers)
            assert status == 401, answer
            assert "only one Authorization header is allowed" in message_of(path, answer)
        status, _ = post(guarded, path, body, [bearer(KEY)])
        assert status == 200
    key = ("authorization", f"Bearer {KEY}")
    with pytest.raises(grpc.RpcError) as refused:
        sentiment(guarded, (key, key))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "only one Authorization" in refused.value.details()
    assert sentiment(guarded, (key,)).results


def test_a_non_ascii_authorization_is_a_clean_401(guarded) -> None:
    for path, body in PATHS:
        for value in (b"Bearer cl\xe9", "Bearer clé-🔑".encode(), b"Bearer \xff\xfe"):
            status, (_, answer) = post(guarded, path, body, [("Authorization", value)])
            assert status == 401, answer
            assert message_of(path, answer) == "invalid API key"


def wrong_keys_until_limited(server: Server, send_wrong: Any) -> int:
    """Send wrong keys until refused for the limit; how many were plain refusals."""
    refusals = 0
    for _ in range(LIMIT * 4):  # bounded
        if not send_wrong():
            return refusals
        refusals += 1
    raise AssertionError(f"still no limit after {refusals} wrong keys")


def test_a_burst_of_wrong_http_keys_limits_the_address_until_the_window_ends(guarded) -> None:
    def send_wrong() -> bool:
        status, (_, answer) = post(guarded, *PATHS[0], [bearer("guess-0001")])
        assert status in (401, 429), answer
        return status == 401

    started = time.monotonic()
    assert wrong_keys_until_limited(guarded, send_wrong) == LIMIT
    for path, body in PATHS:  # the right key too, in each path's error shape
        status, (headers, answer) = post(guarded, path, body, [bearer(KEY)])
        assert status == 429, answer
        assert 1 <= int(headers["Retry-After"]) <= WINDOW_S
        assert "too many refused API keys" in message_of(path, answer)
    with pytest.raises(grpc.RpcError) as limited:  # gRPC from the same address too
        sentiment(guarded, (("authorization", f"Bearer {KEY}"),))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert requests.get(guarded.url + "/readyz", timeout=30).status_code == 200  # open paths
    assert time.monotonic() - started < WINDOW_S, "the machine was too slow for this window"
    time.sleep(WINDOW_S)
    for path, body in PATHS:
        assert post(guarded, path, body, [bearer(KEY)])[0] == 200


def test_a_burst_of_wrong_grpc_keys_limits_the_address_until_the_window_ends(guarded) -> None:
    def send_wrong() -> bool:
        try:
            sentiment(guarded, (("authorization", "Bearer guess-0002"),))
        except grpc.RpcError as refused:
            assert refused.code() in (
                grpc.StatusCode.UNAUTHENTICATED,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
            return refused.code() == grpc.StatusCode.UNAUTHENTICATED
        raise AssertionError("a wrong key was accepted")

    started = time.monotonic()
    assert wrong_keys_until_limited(guarded, send_wrong) == LIMIT
    with pytest.raises(grpc.RpcError) as limited:
        sentiment(guarded, (("authorization", f"Bearer {KEY}"),))
    assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too many refused API keys" in limited.value.details()
    trailers = dict(limited.value.trailing_metadata() or ())
    assert 1 <= int(trailers["retry-after"]) <= WINDOW_S
    assert post(guarded, *PATHS[0], [bearer(KEY)])[0] == 429  # HTTP from the same address too
    assert time.monotonic() - started < WINDOW_S, "the machine was too slow for this window"
    time.sleep(WINDOW_S)
    assert sentiment(guarded, (("authorization", f"Bearer {KEY}"),)).results


def test_a_non_ascii_configured_key_fails_the_start(tmp_path) -> None:
    try:
        started = start_server(
            tmp_path, {"DEEPSERVE_MODELS": MODELS, "DEEPSERVE_API_KEY": "clé-secrète"}
        )
    except RuntimeError as failed:
        assert "non-ASCII" in str(failed)
        assert "clé-secrète" not in str(failed)
    else:
        stop_server(started)
        pytest.fail("the server started with a key that can never match over HTTP")


def test_grpc_reflection_needs_the_key_as_the_readme_says(guarded) -> None:
    """The real grpcurl: `list` (server reflection) is refused without the key, works with it."""
    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    listing = [grpcurl, "-plaintext", guarded.grpc_target, "list"]
    refused = subprocess.run(listing, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    assert "Unauthenticated" in refused.stderr, refused.stderr
    keyed = [grpcurl, "-plaintext", "-H", f"authorization: Bearer {KEY}", *listing[2:]]
    listed = subprocess.run(keyed, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert "deepserve.v1.Inference" in listed.stdout.split()
