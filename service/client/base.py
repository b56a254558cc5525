"""What the sync and the async client share: their settings and every /v1 call as a `Call` (the
request, and how its answer becomes a result). Each client only sends calls (sync.py, aio.py)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from service.client.errors import DeepserveError
from service.client.results import (
    Caption,
    Classification,
    Explanation,
    ModelInfo,
    Sentiment,
    Transcript,
)
from service.client.retries import DEFAULT_RETRY, NO_RETRY, Attempts, Retry

T = TypeVar("T")

Media = bytes | str | os.PathLike[str] | IO[bytes]
"""An input file: its bytes, a path to it, or an open binary file."""

DEFAULT_URL = "http://127.0.0.1:3000"
IMAGE_TYPES = {  # leading bytes -> Content-Type (the server reads any image type alike)
    b"\x89PNG": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF8": "image/gif",
    b"BM": "image/bmp",
}


class CallOptions(TypedDict, total=False):
    """What every call may set for itself (else the client's settings hold)."""

    timeout: float | None
    """Seconds each request of the call may take."""
    deadline: float | None
    """Seconds the whole call may take, retries included; sent to the server as
    X-Request-Timeout-Ms (the time left at each attempt)."""


@dataclass(frozen=True)
class Call(Generic[T]):
    """One /v1 request and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: Retry | None = None
    """None: the client's."""

    def result(self, response: httpx.Response) -> T:
        """The answer as a result; an answer that is not what the API documents raises."""
        try:
            return self.parse(response)
        except (ValueError, KeyError, TypeError) as error:
            raise DeepserveError(
                f"{self.method} {self.path} answered what the client cannot read: {error!r} "
                f"in {response.content[:200]!r}",
                status=response.status_code,
                code="unexpected_answer",
            ) from error


def read_media(media: Media) -> bytes:
    if isinstance(media, bytes):
        return media
    if isinstance(media, str | os.PathLike):
        return Path(media).read_bytes()
    return media.read()


def image_type(data: bytes) -> str:
    for magic, kind in IMAGE_TYPES.items():
        if data.startswith(magic):
            return kind
    return "application/octet-stream"


def query(**values: str | int | bool | None) -> dict[str, str]:
    """Query parameters; None is left out (the server's default)."""
    out = {}
    for name, value in values.items():
        if value is not None:
            out[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


def json_of(response: httpx.Response) -> Any:
    return json.loads(response.content)


def reading(result: Callable[[Any], T]) -> Callable[[httpx.Response], T]:
    """A parser of answers whose JSON `result` turns into a result."""
    return lambda response: result(json_of(response))


def upload(
    path: str,
    parse: Callable[[httpx.Response], T],
    media: Media,
    params: dict[str, str],
    content_type: str | None = None,
) -> Call[T]:
    """POST a file as the raw body."""
    data = read_media(media)
    return Call(
        "POST", path, parse, params, data, {"Content-Type": content_type or image_type(data)}
    )


def checked_key(api_key: str) -> str:
    """The key as sent: surrounding whitespace (a key file's newline) dropped; a key that is
    not printable ASCII without spaces (what the server accepts) is refused without echoing it,
    so it never ends up in an error message or a log."""
    key = api_key.strip()
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise ValueError(
            "api_key must be printable ASCII without spaces or line breaks "
            f"({len(api_key)} characters given, not shown)"
        )
    return key


class ClientBase:
    """The settings every call starts from, and the calls."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | None = 60.0,
        deadline: float | None = None,
        retry: Retry = DEFAULT_RETRY,
        reject_out_of_domain: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        """Seconds each request may take (None: no limit); per call: timeout=."""
        self.deadline = deadline
        """Seconds a whole call may take, retries included, also sent to the server (None: no
        deadline); per call: deadline=."""
        self.retry = retry
        self.reject_out_of_domain = reject_out_of_domain
        """Ask models with a domain verdict to refuse (OutOfDomain) rather than answer inputs
        they judge outside what they know; per call: reject_out_of_domain=."""
        self.headers = {"User-Agent": "deepserve-client"}
        if api_key is not None:
            self.headers["Authorization"] = f"Bearer {checked_key(api_key)}"

    clock = staticmethod(time.monotonic)

    def attempts(self, call: Call[Any], timeout: float | None, deadline: float | None) -> Attempts:
        return Attempts(
            call.retry or self.retry,
            self.timeout if timeout is None else timeout,
            self.deadline if deadline is None else deadline,
            self.clock,
        )

    def reject(self, asked: bool | None) -> bool | None:
        chosen = self.reject_out_of_domain if asked is None else asked
        return True if chosen else None  # false is the server's default

    # --- the calls ---------------------------------------------------------------------------

    def classify_call(
        self,
        image: Media,
        model: str | None,
        top_k: int | None,
        version: str | None,
        reject: bool | None,
    ) -> Call[Classification]:
        reject = self.reject(reject)
        params = query(model=model, top_k=top_k, version=version, reject_out_of_domain=reject)
        return upload("/v1/classify", reading(Classification.of), image, params)

    def explain_call(
        self,
        image: Media,
        model: str | None,
        grid: int | None,
        target: int | None,
        version: str | None,
        png_size: int | None = None,
    ) -> Call[Any]:
        """The map as an Explanation, or (with png_size) the heatmap PNG's bytes."""
        params = query(model=model, grid=grid, target=target, version=version, size=png_size)
        if png_size is None:
            return upload(
                "/v1/explain", reading(Explanation.of), image, {**params, "format": "json"}
            )
        return upload("/v1/explain", lambda r: r.content, image, {**params, "format": "png"})

    def sentiment_call(
        self, text: str | list[str], model: str | None, version: str | None, reject: bool | None
    ) -> Call[Sentiment | list[Sentiment]]:
        one = isinstance(text, str)
        body = {"text": text} if one else {"texts": list(text)}

        def parse(response: httpx.Response) -> Sentiment | list[Sentiment]:
            answer = json_of(response)
            return Sentiment.of(answer) if one else Sentiment.each(answer)

        return Call(
            "POST",
            "/v1/sentiment",
            parse,
            query(model=model, version=version, reject_out_of_domain=self.reject(reject)),
            json.dumps(body).encode(),
            {"Content-Type": "application/json"},
        )

    def transcribe_call(
        self, audio: Media, model: str | None, version: str | None, reject: bool | None
    ) -> Call[Transcript]:
        params = query(model=model, version=version, reject_out_of_domain=self.reject(reject))
        return upload("/v1/transcribe", reading(Transcript.of), audio, params, "audio/wav")

    def caption_call(
        self,
        image: Media,
        model: str | None,
        beam: int | None,
        version: str | None,
        reject: bool | None,
    ) -> Call[Caption]:
        reject = self.reject(reject)
        params = query(model=model, beam=beam, version=version, reject_out_of_domain=reject)
        return upload("/v1/caption", reading(Caption.of), image, params)

    def models_call(self) -> Call[list[ModelInfo]]:
        return Call("GET", "/v1/models", reading(ModelInfo.each))

    def model_call(self, name: str, version: str | None) -> Call[ModelInfo]:
        path = f"/v1/models/{quote(name, safe='')}"
        return Call("GET", path, reading(ModelInfo.of), query(version=version))

    def probe_call(self, path: str) -> Call[bool]:
        """/livez or /readyz: True on 200 (a 503 raises Unavailable; the clients say False)."""
        return Call("GET", path, lambda r: True, retry=NO_RETRY)
