"""ModelStreamInfer's pieces without a server: requests of a stream answered concurrently within
the window and the StreamClock; the responses of one request (stream_answers_checks.py, run in a
process of its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from service.core.errors import StreamTimedOut
from service.core.settings import Settings
from service.protocols.grpc.streams import answer_concurrently
from tests.without_tritonclient import run_checks

TIMEOUT = 20.0  # generous: the machine is shared


async def arrivals(items: list[Any], gap_s: float = 0.0) -> AsyncIterator[Any]:
    for item in items:
        yield item
        await asyncio.sleep(gap_s)


def test_requests_are_answered_concurrently_within_the_window() -> None:
    running, most = 0, 0

    async def answer(n: int) -> AsyncIterator[int]:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01 * (n % 3))
        running -= 1
        yield n
        yield -n

    async def scenario() -> list[int]:
        answers = answer_concurrently(arrivals(list(range(1, 21))), answer, Settings(), window=3)
        return [response async for response in answers]

    got = asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert sorted(got) == sorted([*range(1, 21), *range(-20, 0)])
    for n in range(1, 21):  # each request's own responses stay in order
        assert got.index(n) < got.index(-n)
    assert most == 3


def test_a_quiet_stream_times_out_but_work_in_flight_keeps_it_open() -> None:
    settings = Settings(stream_idle_timeout_s=0.2)

    async def slow(n: int) -> AsyncIterator[int]:
        await asyncio.sleep(0.5)  # longer than the idle timeout: busy, not idle
        yield n

    async def never_ending() -> AsyncIterator[int]:
        yield 1
        await asyncio.Event().wait()
        yield 2  # pragma: no cover

    async def scenario() -> list[int]:
        got = []
        with pytest.raises(StreamTimedOut) as ended:
            async for response in answer_concurrently(never_ending(), slow, settings):
                got.append(response)
        assert ended.value.end == "idle_timeout"
        return got

    assert asyncio.run(asyncio.wait_for(scenario(), TIMEOUT)) == [1]


def test_closing_the_stream_cancels_the_work_in_flight() -> None:
    cancelled = []

    async def stuck(n: int) -> AsyncIterator[int]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        yield n  # pragma: no cover

    async def scenario() -> None:
        answers = answer_concurrently(arrivals([1, 2, 3]), stuck, Settings())
        waiting = asyncio.ensure_future(anext(answers))
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT))
    assert sorted(cancelled) == [1, 2, 3]


def test_one_requests_responses() -> None:
    """stream_answers_checks.py, in a process without tritonclient (see its docstring)."""
    run_checks(Path(__file__).with_name("stream_answers_checks.py"))
