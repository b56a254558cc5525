"""The client over httpx's MockTransport (its own transport seam), with a fake clock: what it
sends, and what it does with each answer. The real server: tests/integration/test_client.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.client import AsyncClient, Client

URL = "http://deepserve.test"


class FakeTime:
    """A clock that moves only when the client waits (its sleep) or a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


def reply(status: int = 200, body: Any = None, **headers: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
    return httpx.Response(status, content=content, headers=headers)


def error(status: int, code: str, message: str = "why", **headers: str) -> httpx.Response:
    return reply(status, {"error": {"code": code, "message": message}}, **headers)


class Server:
    """Answers requests from a script (one answer or exception per request, the last one
    repeated) and records them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def on_fake_time(kind: type[Any], fake_time: FakeTime) -> Callable[..., Any]:
    """kind(URL, ...) over MockTransport(server), waiting and reading time on `fake_time`."""

    def make(server: Callable[[httpx.Request], httpx.Response], **settings: Any) -> Any:
        made = kind(URL, transport=httpx.MockTransport(server), **settings)
        made.clock = fake_time.clock
        made.sleep = fake_time.async_sleep if kind is AsyncClient else fake_time.sleep
        return made

    return make


@pytest.fixture
def client(fake_time: FakeTime) -> Callable[..., Client]:
    """client(server, **settings): a Client on the fake clock."""
    return on_fake_time(Client, fake_time)


@pytest.fixture
def async_client(fake_time: FakeTime) -> Callable[..., AsyncClient]:
    return on_fake_time(AsyncClient, fake_time)
