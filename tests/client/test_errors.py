"""Error answers become exceptions carrying the server's status, code, message and Retry-After."""

from __future__ import annotations

import pytest

from service.client import (
    DeadlineExceeded,
    DeepserveError,
    Forbidden,
    InvalidInput,
    NotFound,
    OutOfDomain,
    Overloaded,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from service.client.errors import retry_after_of
from tests.client.conftest import Server, error, reply

CASES = [
    (400, "invalid_input", InvalidInput),
    (413, "payload_too_large", InvalidInput),
    (415, "unsupported_media_type", InvalidInput),
    (422, "out_of_domain", OutOfDomain),
    (401, "unauthenticated", Unauthorized),
    (403, "forbidden", Forbidden),
    (404, "model_not_found", NotFound),
    (404, "not_found", NotFound),
    (504, "deadline_exceeded", DeadlineExceeded),
    (500, "inference_failed", DeepserveError),
    (405, "method_not_allowed", DeepserveError),
]


@pytest.mark.parametrize(("status", "code", "kind"), CASES, ids=[c[1] for c in CASES])
def test_each_error_answer_raises_its_class_with_the_servers_code(
    client, status, code, kind
) -> None:
    server = Server(error(status, code, f"the server says {code}"))
    with client(server) as deepserve, pytest.raises(DeepserveError) as raised:
        deepserve.sentiment("fine")
    assert type(raised.value) is kind
    assert (raised.value.status, raised.value.code) == (status, code)
    assert raised.value.message == f"the server says {code}"
    assert str(raised.value) == f"{status} {code}: the server says {code}"
    assert raised.value.attempts == 1 and len(server.requests) == 1  # never retried


def test_429_carries_retry_after_and_is_not_retried(client) -> None:
    server = Server(error(429, "too_many_requests", "slow down", **{"Retry-After": "42"}))
    with client(server) as deepserve, pytest.raises(TooManyRequests) as raised:
        deepserve.models()
    assert raised.value.retry_after == 42 and len(server.requests) == 1


def test_503_overloaded_and_not_ready(client) -> None:
    server = Server(error(503, "overloaded", **{"Retry-After": "1"}))
    with client(server, retry=_no_retry()) as deepserve, pytest.raises(Overloaded) as raised:
        deepserve.classify(b"x")
    assert raised.value.retry_after == 1 and raised.value.code == "overloaded"
    server = Server(error(503, "not_ready"))
    with client(server, retry=_no_retry()) as deepserve, pytest.raises(Unavailable) as raised:
        deepserve.classify(b"x")
    assert type(raised.value) is Unavailable and raised.value.retry_after is None


def test_an_error_body_that_is_not_the_apis_keeps_status_and_text(client) -> None:
    server = Server(reply(502, b"<html>Bad Gateway</html>"))
    with client(server) as deepserve, pytest.raises(DeepserveError) as raised:
        deepserve.models()
    assert (raised.value.status, raised.value.code) == (502, "http_502")
    assert "Bad Gateway" in raised.value.message


def test_retry_after_reads_seconds_and_http_dates() -> None:
    from email.utils import formatdate
    from time import time

    assert retry_after_of("3") == 3.0 and retry_after_of("0.5") == 0.5
    assert retry_after_of(None) is None and retry_after_of("soon") is None
    assert retry_after_of("nan") is None and retry_after_of("-4") == 0.0
    in_a_minute = retry_after_of(formatdate(time() + 60, usegmt=True))
    assert in_a_minute is not None and 55 < in_a_minute <= 60


def _no_retry():
    from service.client import Retry

    return Retry(attempts=1)
