"""The HTTP protocol's idle, header and body timers and its error-body reshaping, on a real
uvicorn server on 127.0.0.1 with small ASGI apps; and how common.guarded answers a client that
leaves mid-body."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn
import uvicorn.config
from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware, TimeoutMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.core.metrics import metrics
from service.core.settings import Settings
from service.protocols.http import common
from service.protocols.http import server as http_server
from service.protocols.http.server import TimedHttpToolsProtocol

TIMEOUT_S = 1.0
MARGIN_S = 10.0  # a noisy machine may close late; never sooner than the timeout


class QuickProtocol(TimedHttpToolsProtocol):
    idle_timeout_s = TIMEOUT_S
    header_timeout_s = TIMEOUT_S
    body_timeout_s = TIMEOUT_S


async def read_all(receive: Any) -> bytes | None:
    """The request body, or None when receive() reports a disconnect."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def respond(send: Any, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


SLEEPING = threading.Event()
"""Set when a sleepy request has started (the server runs in a thread of this process)."""


async def sleepy(scope: Any, receive: Any, send: Any) -> None:
    SLEEPING.set()
    await asyncio.sleep(2.5 * TIMEOUT_S)
    await respond(send, 200, {"slept": True})


bento_timeout = TimeoutMiddleware(sleepy, timeout=0.2)
bento_busy = MaxConcurrencyMiddleware(sleepy, max_concurrency=1)


class App:
    """Routes by path; records what receive() reported."""

    def __init__(self) -> None:
        self.disconnects: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path.endswith("/echo"):
            body = await read_all(receive)
            if body is None:
                self.disconnects.append(path)
                await respond(send, 499, {})  # dropped: the connection is gone
                return
            await respond(send, 200, {"bytes": len(body)})
        elif path.endswith("/late-read"):
            await asyncio.sleep(2.5 * TIMEOUT_S)
            body = await read_all(receive)
            await respond(send, 200, {"bytes": len(body or b"")})
        elif path == "/slow":
            await sleepy(scope, receive, send)
        elif path.endswith("/bento-timeout"):
            await bento_timeout(scope, receive, send)
        elif path.endswith("/bento-busy"):
            await bento_busy(scope, receive, send)
        elif path == "/stream":  # headers now, the body a second later
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.sleep(1.0)
            await send({"type": "http.response.body", "body": b"later", "more_body": False})
        elif path == "/v1/own-503":
            await respond(send, 503, {"error": {"code": "overloaded", "message": "ours"}})
        else:
            await respond(send, 200, {"ok": True})


@contextmanager
def serve(app: Any, **options: Any) -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, http=QuickProtocol, lifespan="off", log_config=None, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


@pytest.fixture(scope="module")
def app() -> App:
    return App()


@pytest.fixture(scope="module")
def port(app) -> Iterator[int]:
    with serve(app) as bound:
        yield bound


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=MARGIN_S)
    if data:
        sock.sendall(data)
    return sock


def until_closed(sock: socket.socket, started: float) -> tuple[bytes, float]:
    """Everything the server sent, and when it closed (seconds after `started`)."""
    received = b""
    sock.settimeout(0.2)
    while time.monotonic() - started < TIMEOUT_S + MARGIN_S:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            data = b""
        if not data:
            sock.close()
            return received, time.monotonic() - started
        received += data
    sock.close()
    raise AssertionError(f"still open after {TIMEOUT_S + MARGIN_S} s; received {received!r}")


def split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), headers, body


def get(port: int, method: str, path: str) -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=MARGIN_S)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        return response.status, headers, json.loads(body)
    finally:
        connection.close()


def test_a_connection_that_sends_nothing_is_closed(port) -> None:
    started = time.monotonic()
    received, closed = until_closed(connect(port), started)
    assert received == b""
    assert closed >= TIMEOUT_S * 0.9  # by the idle timer, not for another reason


def test_stray_line_breaks_do_not_keep_an_idle_connection(port) -> None:
    sock, started = connect(port), time.monotonic()
    try:
        while time.monotonic() - started < TIMEOUT_S + MARGIN_S:
            sock.sendall(b"\r\n")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    received, _ = until_closed(sock, started)
    assert received == b""


def test_unfinished_headers_are_cut(port) -> None:
    started = time.monotonic()
    sock = connect(port, b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Slow")
    received, closed = until_closed(sock, started)
    assert received == b"" and closed >= TIMEOUT_S * 0.9


def test_headers_trickled_a_byte_at_a_time_are_cut_all_the_same(port) -> None:
    sock, started = connect(port), time.monotonic()
    header = b"GET /ok HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"a" * 1000
    try:
        for byte in header:  # every 0.1 s: each byte well within the timeout
            sock.sendall(bytes([byte]))
            time.sleep(0.1)
            if time.monotonic() - started > TIMEOUT_S + MARGIN_S:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    received, _ = until_closed(sock, started)
    assert received == b""


def test_a_kept_alive_connection_is_closed_when_idle(port) -> None:
    sock = connect(port, b"GET /ok HTTP/1.1\r\nHost: test\r\n\r\n")
    received, _ = until_closed(sock, time.monotonic())
    status, headers, _ = split(received)
    assert status == 200 and headers.get("connection") != "close"


@pytest.mark.parametrize("path", ["/v1/echo", "/v2/echo"])
def test_a_stalled_body_gets_408_in_its_error_shape(port, app, path) -> None:
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\n"
    started = time.monotonic()
    received, closed = until_closed(connect(port, head.encode() + b"x" * 10), started)
    status, headers, body = split(received)
    assert status == 408 and headers["connection"] == "close"
    assert closed >= TIMEOUT_S * 0.9
    error = json.loads(body[: int(headers["content-length"])])
    if path.startswith("/v2"):
        assert isinstance(error["error"], str)
    else:
        assert error["error"]["code"] == "request_timeout"
    deadline = time.monotonic() + MARGIN_S
    while path not in app.disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path in app.disconnects  # the app's receive() reported a disconnect


def test_a_slow_body_that_keeps_coming_is_read(port) -> None:
    sock = connect(port, b"POST /v1/echo HTTP/1.1\r\nHost: test\r\nContent-Length: 80\r\n\r\n")
    for _ in range(8):  # 1.6 s in all, longer than the timeout; no gap near it
        time.sleep(0.2)
        sock.sendall(b"x" * 10)
    received, _ = until_closed(sock, time.monotonic())
    status, _, body = split(received)
    assert status == 200 and json.loads(body) == {"bytes": 80}


def test_a_busy_app_is_never_cut(port) -> None:
    assert get(port, "GET", "/slow")[0] == 200
    sock = connect(port, b"POST /v1/late-read HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\n")
    sock.sendall(b"12345")
    status, _, body = split(until_closed(sock, time.monotonic())[0])
    assert status == 200 and json.loads(body) == {"bytes": 5}


def test_bentoml_timeout_and_concurrency_errors_take_the_transport_shape(port) -> None:
    status, headers, body = get(port, "GET", "/v1/bento-timeout")
    assert status == 504 and headers["content-type"] == "application/json"
    assert body["error"]["code"] == "deadline_exceeded"
    assert "0.2 seconds" in body["error"]["message"]  # BentoML's own words
    status, _, body = get(port, "GET", "/v2/bento-timeout")
    assert status == 504 and isinstance(body["error"], str)

    SLEEPING.clear()
    first = connect(port, b"GET /v1/bento-busy HTTP/1.1\r\nHost: test\r\n\r\n")
    try:
        assert SLEEPING.wait(30)  # the first holds BentoML's only slot
        status, headers, body = get(port, "GET", "/v1/bento-busy")
    finally:
        first.close()
    assert status == 429 and headers["retry-after"] == "1"
    assert body == {"error": {"code": "overloaded", "message": "Too many requests"}}


def test_our_own_error_bodies_are_left_alone(port) -> None:
    status, headers, body = get(port, "GET", "/v1/own-503")
    assert status == 503 and body == {"error": {"code": "overloaded", "message": "ours"}}
    assert "retry-after" not in headers


def test_uvicorn_connection_limit_503_takes_the_transport_shape(app) -> None:
    with serve(app, limit_concurrency=1) as port:  # one connection: every request is over it
        status, _, body = get(port, "GET", "/v1/anything")
        assert status == 503 and body["error"]["code"] == "overloaded"
        status, _, body = get(port, "GET", "/v2/anything")
        assert status == 503 and body == {"error": "Service Unavailable"}


def test_install_makes_uvicorn_build_the_timed_protocol(monkeypatch) -> None:
    for name in ("auto", "httptools"):
        monkeypatch.setitem(
            uvicorn.config.HTTP_PROTOCOLS, name, uvicorn.config.HTTP_PROTOCOLS[name]
        )
    for name in ("idle_timeout_s", "header_timeout_s", "body_timeout_s"):
        monkeypatch.setattr(TimedHttpToolsProtocol, name, getattr(TimedHttpToolsProtocol, name))
    settings = Settings(http_idle_timeout_s=3, http_header_timeout_s=4, http_body_timeout_s=7)
    http_server.install(settings)
    config = uvicorn.Config(App(), log_config=None)  # as BentoML builds it: no http= argument
    config.load()
    assert config.http_protocol_class is TimedHttpToolsProtocol
    protocol = TimedHttpToolsProtocol
    assert (protocol.idle_timeout_s, protocol.header_timeout_s, protocol.body_timeout_s) == (
        3,
        4,
        7,
    )


def test_install_refuses_an_unreviewed_uvicorn(monkeypatch) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "0.99.0")
    with pytest.raises(RuntimeError, match="review"):
        http_server.install(Settings())


def rest_count(status: str) -> float:
    return metrics().requests.labels("none", "none", "rest", status)._value.get()


@pytest.fixture(scope="module")
def guarded_port() -> Iterator[int]:
    async def read(request: Request) -> Response:
        body = await common.read_body(request, 1000)
        return JSONResponse({"bytes": len(body)})

    app = Starlette(
        routes=[Route("/v1/read", common.guarded(read, protocol="rest"), methods=["POST"])]
    )
    with serve(app) as bound:
        yield bound


@pytest.mark.parametrize("ending", ["close", "reset", "stall"])
def test_a_client_gone_mid_body_is_a_499_without_traceback(guarded_port, caplog, ending) -> None:
    caplog.set_level(logging.DEBUG)
    before = {status: rest_count(status) for status in ("4xx", "5xx")}
    sock = connect(
        guarded_port, b"POST /v1/read HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n\r\nxx"
    )
    if ending == "stall":
        assert split(until_closed(sock, time.monotonic())[0])[0] == 408
    else:
        time.sleep(0.2)  # the app is waiting for the rest of the body
        if ending == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    deadline = time.monotonic() + MARGIN_S
    while rest_count("4xx") == before["4xx"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rest_count("4xx") == before["4xx"] + 1
    assert rest_count("5xx") == before["5xx"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


# --- HeldHead: a response's head goes out with its body ---------------------------------------


class Written:
    """A transport that records its writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def test_a_head_and_its_body_are_one_write_and_a_lone_head_goes_out_at_the_loops_turn() -> None:
    async def scenario() -> list[list[bytes]]:
        loop = asyncio.get_running_loop()
        seen = []
        transport = Written()
        held = http_server.HeldHead(transport, loop)  # type: ignore[arg-type]
        held.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # never held
        held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        held.write(b"{}")
        await asyncio.sleep(0)
        seen.append(list(transport.writes))
        transport.writes.clear()
        held.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")  # a stream
        assert transport.writes == []
        await asyncio.sleep(0)  # the loop turns: the head goes out alone
        seen.append(list(transport.writes))
        transport.writes.clear()
        held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        transport.closed = True  # the client left before the loop turned: nothing written
        await asyncio.sleep(0)
        assert transport.writes == []
        transport.closed = False
        held.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        held.close()  # a close flushes first
        seen.append([*transport.writes, b"closed" if transport.closed else b""])
        assert held.get_extra_info("peername") == "info:peername"
        return seen

    assert asyncio.run(scenario()) == [
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"],
        [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"],
        [b"HTTP/1.1 204 No Content\r\n\r\n", b"closed"],
    ]


def test_a_streams_headers_are_not_held_until_its_first_body_bytes(port) -> None:
    sock = connect(port, b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    try:
        first = sock.recv(65536)  # the body follows a second later
        assert first.startswith(b"HTTP/1.1 200") and b"later" not in first
        rest = b""
        while b"later" not in rest:
            chunk = sock.recv(65536)
            assert chunk, "closed before the body"
            rest += chunk
    finally:
        sock.close()
