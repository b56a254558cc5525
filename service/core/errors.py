"""One error hierarchy for every protocol: each class names its HTTP status and gRPC status once.

Transport-free: the protocol front ends render these (service/protocols/http/errors.py,
service/protocols/grpc/errors.py)."""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar


class ServingError(Exception):
    """Base class: a message for the client, an HTTP status and a gRPC status code."""

    http_status: ClassVar[HTTPStatus] = HTTPStatus.INTERNAL_SERVER_ERROR
    grpc_status: ClassVar[str] = "INTERNAL"
    """The gRPC status code's name (service/protocols/grpc/errors.py turns it into grpc's)."""
    code: ClassVar[str] = "internal"
    """Stable machine-readable code in REST error bodies."""

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ServingError):
    http_status = HTTPStatus.BAD_REQUEST
    grpc_status = "INVALID_ARGUMENT"
    code = "invalid_input"


class UnsupportedMediaType(ServingError):
    http_status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    grpc_status = "INVALID_ARGUMENT"
    code = "unsupported_media_type"


class PayloadTooLarge(ServingError):
    http_status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    grpc_status = "OUT_OF_RANGE"
    code = "payload_too_large"

    def __init__(self, message: str, *, unread_body: bool = False) -> None:
        # NOTE: when the rest of the body is not read, the connection closes after the answer
        # (uvicorn would otherwise read and drop all of it to keep the connection alive)
        super().__init__(message, headers={"Connection": "close"} if unread_body else None)


class ModelNotFound(ServingError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_status = "NOT_FOUND"
    code = "model_not_found"


class MethodNotAllowed(ServingError):
    http_status = HTTPStatus.METHOD_NOT_ALLOWED
    grpc_status = "UNIMPLEMENTED"
    code = "method_not_allowed"


class RouteNotFound(ServingError):
    http_status = HTTPStatus.NOT_FOUND
    grpc_status = "UNIMPLEMENTED"
    code = "not_found"


class Unauthenticated(ServingError):
    http_status = HTTPStatus.UNAUTHORIZED
    grpc_status = "UNAUTHENTICATED"
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="deepserve"'})


class NotReady(ServingError):
    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "UNAVAILABLE"
    code = "not_ready"


class Overloaded(ServingError):
    http_status = HTTPStatus.SERVICE_UNAVAILABLE
    grpc_status = "RESOURCE_EXHAUSTED"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class TooManyRequests(ServingError):
    """This client has sent too many requests of some kind (refused API keys); retry later."""

    http_status = HTTPStatus.TOO_MANY_REQUESTS
    grpc_status = "RESOURCE_EXHAUSTED"
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlineExceeded(ServingError):
    http_status = HTTPStatus.GATEWAY_TIMEOUT
    grpc_status = "DEADLINE_EXCEEDED"
    code = "deadline_exceeded"


class RequestTimeout(ServingError):
    """The client stopped sending its request body (HTTP only: service/protocols/http/server.py)."""

    http_status = HTTPStatus.REQUEST_TIMEOUT
    grpc_status = "DEADLINE_EXCEEDED"
    code = "request_timeout"


class OutOfDomain(ServingError):
    """The input is well formed but outside what the model knows, and the client asked for such
    inputs to be refused (reject_out_of_domain)."""

    http_status = HTTPStatus.UNPROCESSABLE_ENTITY
    grpc_status = "INVALID_ARGUMENT"
    code = "out_of_domain"


class InferenceFailed(ServingError):
    code = "inference_failed"


class Forbidden(ServingError):
    """Authenticated, but this key may not do this (an inference key on a management call)."""

    http_status = HTTPStatus.FORBIDDEN
    grpc_status = "PERMISSION_DENIED"
    code = "forbidden"


class Conflict(ServingError):
    """Not allowed in the server's current mode (e.g. load/unload while model_control is poll)."""

    http_status = HTTPStatus.CONFLICT
    grpc_status = "FAILED_PRECONDITION"
    code = "conflict"


class StreamTimedOut(RequestTimeout):
    """A stream reached stream_idle_timeout_s (nothing received, nothing in progress) or
    stream_max_seconds; `end` is its deepserve_streams end label."""

    def __init__(self, message: str, end: str, *, writing: bool = False):
        super().__init__(message)
        self.end = end
        self.writing = writing
        """The client stopped reading the stream's output (nothing more can be sent to it)."""
