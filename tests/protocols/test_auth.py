"""API keys: parsing, rotation, refusal messages that never echo what was sent, fail-closed
configuration (keys that cannot travel in a header included), one Authorization per request,
and the limit on refused keys per client address (HTTP middleware and gRPC interceptor)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest

from service.core.errors import TooManyRequests, Unauthenticated
from service.core.settings import Settings
from service.protocols.auth import (
    GRPC_HEALTH,
    ApiKeyInterceptor,
    ApiKeyMiddleware,
    ApiKeys,
    FailedAuthLimiter,
    authorize,
    client_key,
    open_paths,
    peer_address,
)
from service.protocols.grpc.errors import grpc_code
from service.protocols.grpc.streams import CallQuotaInterceptor


def test_no_keys_means_auth_off() -> None:
    keys = ApiKeys.from_settings(Settings())
    assert not keys.enabled
    keys.check(None)  # nothing to check


def test_keys_from_setting_and_file_both_work(tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\n\nfile-key-1\n  file-key-2  \n")
    keys = ApiKeys.from_settings(Settings(api_key="env-key", api_key_file=key_file))
    for key in ("env-key", "file-key-1", "file-key-2"):
        keys.check(f"Bearer {key}")
        keys.check(f"bearer   {key}  ")


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Bearer", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer secret-keyX", "invalid API key"),
        ("Bearer secret-ke", "invalid API key"),
        ("Bearer # comment", "invalid API key"),
    ],
)
def test_refusals_name_the_problem_without_echoing(header, needle) -> None:
    keys = ApiKeys(["secret-key"])
    with pytest.raises(Unauthenticated, match=needle) as refused:
        keys.check(header)
    assert "secret" not in refused.value.message
    assert refused.value.http_status == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_unreadable_or_empty_key_file_fails_closed(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="cannot be read"):
        ApiKeys.from_settings(Settings(api_key_file=tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.write_text("# no keys yet\n")
    with pytest.raises(RuntimeError, match="holds no key"):
        ApiKeys.from_settings(Settings(api_key_file=empty))


def test_open_paths_follow_settings() -> None:
    assert "/readyz" in open_paths(Settings()) and "/metrics" in open_paths(Settings())
    closed = open_paths(Settings(open_health=False, open_metrics=False))
    assert closed == ()


# --- repeated headers, key text ------------------------------------------------------------------


def test_more_than_one_authorization_is_refused_even_with_right_keys() -> None:
    keys = ApiKeys(["secret-key"])
    keys.check_all(["Bearer secret-key"])
    for values in (
        ["Bearer secret-key", "Bearer secret-key"],
        ["Bearer wrong", "Bearer secret-key"],
    ):
        with pytest.raises(Unauthenticated, match="only one Authorization header is allowed"):
            keys.check_all(values)
    with pytest.raises(Unauthenticated, match="missing API key"):
        keys.check_all([])


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        ("clé-secrète", "non-ASCII"),
        ("key\u00a0with-nbsp", "non-ASCII"),
        ("two words", "whitespace or a control character"),
        ("tab\tinside", "whitespace or a control character"),
        ("bell\x07inside", "whitespace or a control character"),
    ],
)
def test_keys_that_cannot_be_sent_in_a_header_fail_the_start(tmp_path, key, needle) -> None:
    with pytest.raises(RuntimeError, match=needle) as refused:
        ApiKeys.from_settings(Settings(api_key=key))
    assert "api_key" in str(refused.value) and key not in str(refused.value)
    key_file = tmp_path / "keys"
    key_file.write_text(f"# keys\ngood-key\n{key}\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match=f"api_key_file line 3: .*{needle}"):
        ApiKeys.from_settings(Settings(api_key_file=key_file))
    key_file.write_bytes(b"caf\xe9-latin-1\n")
    with pytest.raises(RuntimeError, match="not UTF-8"):
        ApiKeys.from_settings(Settings(api_key_file=key_file))


def test_a_non_ascii_presented_key_is_a_plain_refusal() -> None:
    keys = ApiKeys(["secret-key"])
    for header in ("Bearer s\u00e9cret-key", "Bearer \udce9", "Bearer \u2603"):
        with pytest.raises(Unauthenticated, match="invalid API key"):
            keys.check(header)


# --- refused keys per client address -------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_limited_after_n_refused_keys_until_its_window_ends() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=3, window_s=10, max_clients=100, clock=clock)
    keys = ApiKeys(["secret-key"])
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            authorize(keys, limiter, "10.0.0.1", ["Bearer wrong"])
    for values in (["Bearer secret-key"], ["Bearer wrong"], []):  # the right key too
        with pytest.raises(TooManyRequests, match="retry in 10 s") as limited:
            authorize(keys, limiter, "10.0.0.1", values)
        assert limited.value.http_status == 429 and limited.value.headers["Retry-After"] == "10"
        assert grpc_code(limited.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    authorize(keys, limiter, "10.0.0.2", ["Bearer secret-key"])  # other addresses are not
    clock.now += 9.5
    with pytest.raises(TooManyRequests, match="retry in 1 s"):
        authorize(keys, limiter, "10.0.0.1", ["Bearer secret-key"])
    clock.now += 0.5
    authorize(keys, limiter, "10.0.0.1", ["Bearer secret-key"])


def test_missing_keys_and_right_keys_never_count() -> None:
    limiter = FailedAuthLimiter(limit=2, window_s=10, max_clients=100, clock=Clock())
    keys = ApiKeys(["secret-key"])
    for _ in range(10):
        authorize(keys, limiter, "10.0.0.1", ["Bearer secret-key"])
        with pytest.raises(Unauthenticated, match="missing"):
            authorize(keys, limiter, "10.0.0.1", [])
    assert len(limiter) == 0
    with pytest.raises(Unauthenticated, match="only one"):  # two keys sent: counted
        authorize(keys, limiter, "10.0.0.1", ["Bearer a", "Bearer b"])
    assert limiter.retry_after("10.0.0.1") is None and len(limiter) == 1


def test_the_address_table_stays_bounded() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=2, window_s=10, max_clients=50, clock=clock)
    for n in range(10_000):
        limiter.failed(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        clock.now += 0.0001
    assert len(limiter) == 50
    clock.now += 20  # expired entries go as new failures come
    for n in range(10):
        limiter.failed(f"192.168.0.{n}")
    assert len(limiter) <= 50
    off = FailedAuthLimiter(limit=0, window_s=10, max_clients=50)
    for _ in range(100):
        off.failed("10.0.0.1")
    assert off.retry_after("10.0.0.1") is None and len(off) == 0


def test_client_addresses() -> None:
    assert client_key("127.0.0.1") == "127.0.0.1"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff") == "2001:db8::/64"
    assert client_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert client_key("not an ip") == "not an ip"
    assert peer_address("ipv4:127.0.0.1:5123") == "127.0.0.1"
    assert peer_address("ipv6:%5B::1%5D:5123") == "::1"
    assert peer_address("ipv6:[2001:db8::1]:5123") == "2001:db8::1"
    assert peer_address("unix:/tmp/socket") == "unix:/tmp/socket"


# --- the HTTP middleware ------------------------------------------------------------------------


def asgi_call(
    middleware: ApiKeyMiddleware, path: str, headers: list[tuple[bytes, bytes]]
) -> tuple[int, dict[bytes, bytes], Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": headers, "client": ("10.9.8.7", 5555)}
    asyncio.run(middleware(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), json.loads(body["body"])


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_http_middleware_refuses_repeats_and_limits_an_address() -> None:
    clock = Clock()
    limiter = FailedAuthLimiter(limit=3, window_s=2, max_clients=100, clock=clock)
    middleware = ApiKeyMiddleware(ok_app, Settings(), ApiKeys(["secret-key"]), limiter)
    right = (b"authorization", b"Bearer secret-key")
    assert asgi_call(middleware, "/v1/models", [right])[0] == 200
    status, headers, body = asgi_call(middleware, "/v1/models", [right, right])
    assert status == 401 and body["error"]["code"] == "unauthenticated"
    assert "only one Authorization" in body["error"]["message"]
    status, _, body = asgi_call(
        middleware, "/v2/models/x", [(b"Authorization", b"Bearer x"), right]
    )
    assert status == 401 and "only one Authorization" in body["error"]
    status, _, body = asgi_call(middleware, "/v1/models", [(b"authorization", b"Bearer \xe9t\xe9")])
    assert status == 401 and body["error"]["message"] == "invalid API key"  # third refusal
    for path in ("/v1/models", "/v2/models/x"):
        status, headers, body = asgi_call(middleware, path, [right])
        assert status == 429 and headers[b"retry-after"] == b"2"
        message = body["error"]["message"] if path.startswith("/v1") else body["error"]
        assert "too many refused API keys" in message
    assert asgi_call(middleware, "/livez", [])[0] == 200  # open paths stay open
    clock.now += 2
    assert asgi_call(middleware, "/v1/models", [right])[0] == 200


# --- the gRPC interceptor -----------------------------------------------------------------------


async def echo(request: bytes, context: Any) -> bytes:
    return request


def grpc_scenario(limiter: FailedAuthLimiter, clock: Clock) -> None:
    async def scenario() -> None:
        settings = Settings(api_key="secret-key")
        keys = ApiKeys.from_settings(settings)
        server = grpc.aio.server(
            interceptors=[
                ApiKeyInterceptor(settings, keys, limiter),
                CallQuotaInterceptor(settings, GRPC_HEALTH),
            ]
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Toy", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        right = ("authorization", "Bearer secret-key")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Toy/Echo")
                assert await call(b"hi", metadata=(right,), timeout=20) == b"hi"
                for metadata, code, needle in [
                    ((right, right), "UNAUTHENTICATED", "only one Authorization"),
                    ((("authorization", "Bearer nope"), right), "UNAUTHENTICATED", "only one"),
                    ((("authorization", "Bearer nope"),), "UNAUTHENTICATED", "invalid API key"),
                    ((right,), "RESOURCE_EXHAUSTED", "too many refused API keys"),
                    ((), "RESOURCE_EXHAUSTED", "too many refused API keys"),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await call(b"hi", metadata=metadata, timeout=20)
                    assert refused.value.code() == getattr(grpc.StatusCode, code), metadata
                    assert needle in str(refused.value.details())
                assert ("retry-after", "2") in tuple(refused.value.trailing_metadata() or ())
                clock.now += 2
                assert await call(b"hi", metadata=(right,), timeout=20) == b"hi"
                # a refusal does not wait for the request message: a silent call is answered
                silent = channel.stream_stream("/test.Toy/Echo")
                never = asyncio.Event()

                async def nothing() -> Any:
                    await never.wait()
                    yield b""

                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _ in silent(nothing(), timeout=20):
                        pass
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await server.stop(None)

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_grpc_interceptor_refuses_repeats_and_limits_an_address() -> None:
    clock = Clock()
    grpc_scenario(FailedAuthLimiter(limit=3, window_s=2, max_clients=100, clock=clock), clock)


def test_admin_keys_guard_management_and_leave_inference_to_api_keys() -> None:
    from service.core.errors import Forbidden

    both = ApiKeys(["user-key"], ["admin-key"])
    both.check("Bearer user-key")  # inference: either key
    both.check("Bearer admin-key")
    both.check("Bearer admin-key", management=True)
    with pytest.raises(Forbidden, match="admin key"):
        both.check("Bearer user-key", management=True)
    with pytest.raises(Unauthenticated):
        both.check("Bearer nobody", management=True)
    assert both.is_admin(["Bearer admin-key"]) and not both.is_admin(["Bearer user-key"])
    assert not both.is_admin(["Bearer admin-key", "Bearer admin-key"])  # one Authorization only

    admin_only = ApiKeys([], ["admin-key"])
    assert not admin_only.needs_key() and admin_only.needs_key(management=True)
    admin_only.check(None)  # inference stays open
    with pytest.raises(Unauthenticated):
        admin_only.check(None, management=True)

    none = ApiKeys([])
    assert not none.needs_key(management=True) and not none.is_admin(["Bearer anything"])
