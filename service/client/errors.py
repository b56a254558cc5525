"""What a call can fail with: the server's error (its HTTP status, its `code` and `message` from
the `{"error": {"code", "message"}}` body, `Retry-After`) or the client's own (no connection, no
answer in time). One class per status the caller may handle differently."""

from __future__ import annotations

import json
import time
from email.utils import parsedate_to_datetime
from typing import Any


class DeepserveError(Exception):
    """Base class. `status` is None when no answer came (connection, timeout)."""

    default_code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        """The server's stable, machine-readable code (service/core/errors.py), or the client's
        own: connection_failed, timeout, deadline_exceeded, unexpected_answer."""
        self.retry_after = retry_after
        """Seconds the server asked the client to wait (Retry-After), if it did."""
        self.attempts = attempts
        """Requests sent (or tried) for this call, retries included."""

    def __str__(self) -> str:
        status = "" if self.status is None else f"{self.status} "
        return f"{status}{self.code}: {self.message}"


class InvalidInput(DeepserveError):
    """400, 413, 415: the request or its input was refused as it is (a corrupt image, a text
    too long, a parameter out of range, an unknown version)."""


class OutOfDomain(DeepserveError):
    """422 out_of_domain: with reject_out_of_domain, an input the model judges outside what it
    knows."""


class Unauthorized(DeepserveError):
    """401: a missing or wrong API key."""


class Forbidden(DeepserveError):
    """403: this key may not do this."""


class NotFound(DeepserveError):
    """404: an unknown model (code model_not_found), or a route (not_found)."""


class TooManyRequests(DeepserveError):
    """429: too many refused keys from this address; `retry_after` says when to try again."""


class Unavailable(DeepserveError):
    """503: a model not ready (not_ready); retried by the client."""


class Overloaded(Unavailable):
    """503 overloaded: the model sheds load; retried by the client, honouring Retry-After."""


class Timeout(DeepserveError):
    """No answer within the call's timeout (client side)."""

    default_code = "timeout"


class DeadlineExceeded(Timeout):
    """The call's deadline passed: the server's 504 (the work was dropped before it ran), or
    no answer by then."""

    default_code = "deadline_exceeded"


class ConnectionFailed(DeepserveError):
    """The server could not be reached, or the connection broke (after the retries)."""

    default_code = "connection_failed"


BY_STATUS: dict[int, type[DeepserveError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: InvalidInput,
    415: InvalidInput,
    422: InvalidInput,
    429: TooManyRequests,
    503: Unavailable,
    504: DeadlineExceeded,
}
BY_CODE: dict[str, type[DeepserveError]] = {
    "out_of_domain": OutOfDomain,
    "overloaded": Overloaded,
}


def retry_after_of(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delay-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds) if seconds == seconds else None  # NaN: as if absent


def error_of(status: int, headers: Any, body: bytes, attempts: int = 1) -> DeepserveError:
    """The exception for an error answer: its class by code, else by status."""
    code, message = f"http_{status}", body[:500].decode("utf-8", "replace")
    try:
        detail = json.loads(body)["error"]
        code, message = str(detail["code"]), str(detail["message"])
    except (ValueError, TypeError, KeyError):
        pass  # not ours (a proxy's page): the status and the text say what there is
    kind = BY_CODE.get(code) or BY_STATUS.get(status, DeepserveError)
    return kind(
        message,
        status=status,
        code=code,
        retry_after=retry_after_of(headers.get("retry-after")),
        attempts=attempts,
    )
