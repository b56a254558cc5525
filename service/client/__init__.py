"""A typed Python client for deepserve's REST task API (/v1), sync and async, on httpx.

    from service.client import Client

    with Client("http://127.0.0.1:3000") as client:
        print(client.classify("examples/digit.png", model="digits-cnn").label)

It imports nothing of the service (the standard library and httpx only: an import-linter
contract in pyproject.toml), so a program that only calls a server pays for nothing else.
"""

from service.client.aio import AsyncClient
from service.client.base import CallOptions, Media
from service.client.errors import (
    ConnectionFailed,
    DeadlineExceeded,
    DeepserveError,
    Forbidden,
    InvalidInput,
    NotFound,
    OutOfDomain,
    Overloaded,
    Timeout,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)
from service.client.results import (
    Caption,
    Classification,
    Explanation,
    ModelInfo,
    Prediction,
    Segment,
    Sentiment,
    Transcript,
)
from service.client.retries import Retry
from service.client.sync import Client

__all__ = [
    "AsyncClient",
    "CallOptions",
    "Caption",
    "Classification",
    "Client",
    "ConnectionFailed",
    "DeadlineExceeded",
    "DeepserveError",
    "Explanation",
    "Forbidden",
    "InvalidInput",
    "Media",
    "ModelInfo",
    "NotFound",
    "OutOfDomain",
    "Overloaded",
    "Prediction",
    "Retry",
    "Segment",
    "Sentiment",
    "Timeout",
    "TooManyRequests",
    "Transcript",
    "Unauthorized",
    "Unavailable",
]
