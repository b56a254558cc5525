"""Retries after a 503 or a failed connection (Retry-After, jittered backoff, bounded attempts),
and the deadline: sent as X-Request-Timeout-Ms, never waited past."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from service.client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    DeadlineExceeded,
    DeepserveError,
    Overloaded,
    Retry,
    Timeout,
    Unavailable,
)
from service.client.retries import DEADLINE_GRACE_S, MAX_TIMEOUT_MS
from tests.client.conftest import URL, Server, error, reply

OK = {"models": []}


def overloaded(retry_after: str | None = "1") -> httpx.Response:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    return error(503, "overloaded", "model m has 512 requests in progress", **headers)


def test_a_503_is_retried_after_its_retry_after(client, fake_time) -> None:
    server = Server(overloaded("2"), overloaded("1"), reply(200, OK))
    with client(server) as deepserve:
        assert deepserve.models() == []
    assert len(server.requests) == 3 and fake_time.waits == [2.0, 1.0]


def test_attempts_are_bounded_and_the_last_503_is_raised(client, fake_time) -> None:
    server = Server(overloaded())
    with client(server, retry=Retry(attempts=4)) as deepserve, pytest.raises(Overloaded) as raised:
        deepserve.models()
    assert len(server.requests) == 4 and fake_time.waits == [1.0, 1.0, 1.0]
    assert raised.value.attempts == 4 and raised.value.retry_after == 1
    assert "512 requests in progress" in str(raised.value)


def test_without_retry_after_the_backoff_is_jittered_and_doubles(client, fake_time) -> None:
    server = Server(error(503, "not_ready"))
    retry = Retry(attempts=6, backoff_s=0.1, max_wait_s=0.5)
    with client(server, retry=retry) as deepserve, pytest.raises(Unavailable):
        deepserve.models()
    waits = fake_time.waits
    assert len(waits) == 5
    for attempt, wait in enumerate(waits):
        assert 0 <= wait <= min(0.5, 0.1 * 2**attempt)
    assert len(set(waits)) == 5  # jittered: clients shed together do not return together


def test_a_retry_after_longer_than_max_wait_is_not_waited_for(client, fake_time) -> None:
    server = Server(overloaded("30"), reply(200, OK))
    with client(server, retry=Retry(max_wait_s=10)) as deepserve, pytest.raises(Overloaded):
        deepserve.models()
    assert len(server.requests) == 1 and fake_time.waits == []


def test_the_deadline_travels_as_the_time_left_at_each_attempt(client, fake_time) -> None:
    server = Server(overloaded("1"), reply(200, OK))
    with client(server, deadline=2.5) as deepserve:
        fake_time.now += 0.2  # reading the input, say
        deepserve.models()
    # the deadline starts when the call does; each attempt carries what is left of it
    sent = [r.headers["x-request-timeout-ms"] for r in server.requests]
    assert sent == ["2500", "1500"]
    timeouts = [r.extensions["timeout"]["read"] for r in server.requests]
    assert timeouts == pytest.approx([2.5 + DEADLINE_GRACE_S, 1.5 + DEADLINE_GRACE_S])


def test_a_per_call_deadline_and_timeout_win_over_the_clients(client) -> None:
    server = Server(reply(200, OK))
    with client(server, deadline=100, timeout=30) as deepserve:
        deepserve.models(deadline=0.25, timeout=0.5)
        deepserve.models(timeout=7)
    first, second = server.requests
    assert first.headers["x-request-timeout-ms"] == "250"
    assert first.extensions["timeout"]["read"] == 0.5  # the timeout is below deadline + grace
    assert second.headers["x-request-timeout-ms"] == "100000"
    assert second.extensions["timeout"]["read"] == 7


def test_a_long_deadline_is_sent_within_the_servers_bound(client) -> None:
    server = Server(reply(200, OK))
    with client(server, deadline=3600) as deepserve:
        deepserve.models()
    assert server.requests[0].headers["x-request-timeout-ms"] == str(MAX_TIMEOUT_MS)


def test_no_wait_that_would_end_past_the_deadline(client, fake_time) -> None:
    server = Server(overloaded("1"), reply(200, OK))
    with client(server, deadline=0.8) as deepserve, pytest.raises(Overloaded) as raised:
        deepserve.models()
    assert len(server.requests) == 1 and fake_time.waits == []
    assert raised.value.attempts == 1


def test_a_deadline_spent_before_sending_raises_without_a_request(client, fake_time) -> None:
    server = Server(reply(200, OK))

    def slow_clock() -> float:  # the clock moves 1 s each time it is read
        fake_time.now += 1
        return fake_time.now

    with client(server, deadline=0.5) as deepserve:
        deepserve.clock = slow_clock  # type: ignore[method-assign]
        with pytest.raises(DeadlineExceeded) as raised:
            deepserve.models()
    assert server.requests == [] and raised.value.status is None
    assert raised.value.code == "deadline_exceeded" and raised.value.attempts == 0


def test_failed_connections_are_retried(client, fake_time) -> None:
    refused = httpx.ConnectError("connection refused")
    server = Server(refused, httpx.RemoteProtocolError("closed"), reply(200, OK))
    with client(server) as deepserve:
        assert deepserve.models() == []
    assert len(server.requests) == 3 and len(fake_time.waits) == 2
    server = Server(refused)
    with client(server) as deepserve, pytest.raises(ConnectionFailed) as raised:
        deepserve.models()
    assert raised.value.status is None and raised.value.code == "connection_failed"
    assert raised.value.attempts == 3 and isinstance(raised.value.__cause__, httpx.ConnectError)


def test_a_read_timeout_is_not_retried(client, fake_time) -> None:
    server = Server(httpx.ReadTimeout("no answer"), reply(200, OK))
    with client(server, timeout=2) as deepserve, pytest.raises(Timeout) as raised:
        deepserve.models()
    assert type(raised.value) is Timeout and raised.value.code == "timeout"
    assert len(server.requests) == 1


def test_a_timeout_past_the_deadline_is_deadline_exceeded(client, fake_time) -> None:
    def late(request: httpx.Request) -> httpx.Response:
        fake_time.now += 1 + DEADLINE_GRACE_S  # the client cut the request at deadline + grace
        raise httpx.ReadTimeout("no answer", request=request)

    with client(late, deadline=1) as deepserve, pytest.raises(DeadlineExceeded) as raised:
        deepserve.models()
    assert raised.value.status is None and raised.value.code == "deadline_exceeded"


def test_other_transport_errors_are_raised_at_once(client) -> None:
    server = Server(httpx.UnsupportedProtocol("ftp?"))
    with client(server) as deepserve, pytest.raises(DeepserveError) as raised:
        deepserve.models()
    assert len(server.requests) == 1 and "UnsupportedProtocol" in str(raised.value)


def test_the_async_client_retries_and_carries_the_deadline_alike(async_client, fake_time) -> None:
    server = Server(overloaded("1"), httpx.ConnectError("refused"), reply(200, OK), overloaded("1"))

    async def run() -> None:
        async with async_client(server, deadline=5, retry=Retry(backoff_s=0.2)) as deepserve:
            assert await deepserve.models() == []
            with pytest.raises(Overloaded) as raised:
                await deepserve.models(deadline=0.5)  # Retry-After 1 s > the 0.5 s left
            assert raised.value.attempts == 1

    asyncio.run(run())
    retry_after, backoff = fake_time.waits
    assert retry_after == 1.0 and 0 <= backoff <= 0.4  # the 2nd attempt's: up to 0.2 x 2
    left_at_third = 5 - retry_after - backoff
    assert [int(r.headers["x-request-timeout-ms"]) for r in server.requests] == [
        5000,
        4000,
        pytest.approx(left_at_third * 1000, abs=1),
        500,
    ]


def test_a_key_file_newline_is_dropped_and_a_bad_key_never_echoed() -> None:
    server = Server(reply(200, OK))
    transport = httpx.MockTransport(server)
    with Client(URL, api_key="s3cret-key\n", transport=transport) as deepserve:
        deepserve.models()
    assert server.requests[0].headers["authorization"] == "Bearer s3cret-key"
    for bad in ("two words", "clé-secrète", "a\nb"):
        with pytest.raises(ValueError) as raised:
            Client(URL, api_key=bad)
        assert bad not in str(raised.value)
    with pytest.raises(ValueError):
        Client(URL, api_key="  ")


def test_a_local_protocol_error_does_not_quote_what_was_sent(client) -> None:
    server = Server(httpx.LocalProtocolError("Illegal header value b'Bearer s3cret'"))
    with client(server) as deepserve, pytest.raises(DeepserveError) as raised:
        deepserve.models()
    assert "s3cret" not in str(raised.value) and raised.value.__cause__ is None
    assert raised.value.code == "client_error"


def test_a_huge_attempt_count_backs_off_without_overflow(fake_time) -> None:
    from service.client.retries import Attempts

    attempts = Attempts(Retry(attempts=5000, backoff_s=0.1, max_wait_s=2), None, None)
    attempts.sent = 2000
    assert 0 <= attempts.after_failure(httpx.ConnectError("refused")) <= 2


def test_the_async_client_bounds_a_whole_attempt() -> None:
    """A peer that trickles its answer cannot stretch an async attempt past its timeout."""

    async def trickle(request: httpx.Request) -> httpx.Response:
        async def body():
            for _ in range(50):
                await asyncio.sleep(0.05)
                yield b" "

        return httpx.Response(200, content=body())

    async def run() -> None:
        transport = httpx.MockTransport(trickle)
        async with AsyncClient(URL, timeout=0.3, transport=transport) as deepserve:
            with pytest.raises(Timeout):
                await deepserve.models()

    asyncio.run(run())
