"""When a call tries again, how long it waits, and the deadline it carries: the transport-free
part of a call, shared by the sync and the async client.

Inference has no side effects, so every call may be repeated: after a 503 (overloaded, not
ready) and after a connection that failed or broke. A 503's `Retry-After` is waited for; without
one the wait is jittered exponential backoff. Never past the call's deadline: a wait that would
end after it is not begun, the error is raised at once. The deadline (seconds for the whole
call, retries included) travels to the server as `X-Request-Timeout-Ms`, the time still left at
each attempt, so the server drops work that could no longer be answered in time (504).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from service.client.errors import (
    ConnectionFailed,
    DeadlineExceeded,
    DeepserveError,
    Timeout,
    Unavailable,
    error_of,
)

TIMEOUT_HEADER = "X-Request-Timeout-Ms"
MAX_TIMEOUT_MS = 600_000
"""The server refuses longer deadlines (service/protocols/http/common.py)."""
DEADLINE_GRACE_S = 1.0
"""How long past the deadline the client still waits for the server's own answer (its 504
says why) before it gives up by itself."""

RETRIED_TRANSPORT_ERRORS = (httpx.NetworkError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
"""No connection, or one that broke: the request can be sent again."""


@dataclass(frozen=True)
class Retry:
    """How a call tries again after a 503 or a failed connection."""

    attempts: int = 3
    """Requests per call at most, the first included; 1 = no retries."""
    backoff_s: float = 0.1
    """Without Retry-After: the first wait is up to this (full jitter), doubling each time."""
    max_wait_s: float = 10.0
    """The longest wait; a longer Retry-After is not waited for (the error is raised)."""


DEFAULT_RETRY = Retry()
NO_RETRY = Retry(attempts=1)


class Attempts:
    """The attempts of one call: what each sends, and what follows each answer."""

    def __init__(
        self,
        retry: Retry,
        timeout: float | None,
        deadline: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retry = retry
        self.timeout = timeout
        self.clock = clock
        self.ends = None if deadline is None else clock() + deadline
        self.sent = 0

    def remaining(self) -> float | None:
        return None if self.ends is None else self.ends - self.clock()

    def next(self) -> tuple[dict[str, str], float | None]:
        """(headers, timeout) of the next attempt; DeadlineExceeded when no time is left."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded(
                "the deadline passed before the request was sent", attempts=self.sent
            )
        self.sent += 1
        if left is None:
            return {}, self.timeout
        milliseconds = min(MAX_TIMEOUT_MS, max(1, math.ceil(left * 1000)))
        cut = left + DEADLINE_GRACE_S
        return {TIMEOUT_HEADER: str(milliseconds)}, cut if self.timeout is None else min(
            cut, self.timeout
        )

    def after_answer(self, response: httpx.Response) -> float | None:
        """None for a success; else the seconds to wait before trying again, or raises the
        answer's error."""
        if response.status_code < 400:
            return None
        error = error_of(response.status_code, response.headers, response.content, self.sent)
        if not isinstance(error, Unavailable):
            raise error
        return self._wait_or_raise(error, error.retry_after)

    def after_failure(self, failure: httpx.TransportError) -> float:
        """The seconds to wait before trying again after no answer came, or raises."""
        error: DeepserveError
        left = self.remaining()
        if left is not None and left <= 0:
            error = DeadlineExceeded("no answer within the deadline", attempts=self.sent)
        elif isinstance(failure, RETRIED_TRANSPORT_ERRORS):
            error = ConnectionFailed(f"{type(failure).__name__}: {failure}", attempts=self.sent)
        elif isinstance(failure, httpx.TimeoutException):
            error = Timeout(f"no answer within {self.timeout} s", attempts=self.sent)
        else:  # not the connection's fault (an invalid URL, a local protocol error): its text
            # may quote what was sent (headers included), so only its kind is said
            raise DeepserveError(
                f"the request could not be sent ({type(failure).__name__})", attempts=self.sent
            ) from None
        error.__cause__ = failure
        if not isinstance(error, ConnectionFailed):
            raise error
        return self._wait_or_raise(error, None)

    def _wait_or_raise(self, error: DeepserveError, asked: float | None) -> float:
        if self.sent >= self.retry.attempts:
            raise error
        if asked is None:  # full jitter: clients shed together do not come back together
            doubled = self.retry.backoff_s * 2.0 ** min(self.sent - 1, 60)
            ceiling = min(self.retry.max_wait_s, doubled)
            wait = random.uniform(0, ceiling)
        elif asked > self.retry.max_wait_s:
            raise error
        else:
            wait = asked
        left = self.remaining()
        if left is not None and wait >= left:
            raise error  # waiting could only end in a missed deadline
        return wait
