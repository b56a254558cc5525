"""StreamClock.bounded: a stream's source passes through until it idles (nothing received,
nothing in progress) or outlives stream_max_seconds; a pending read survives busy periods."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from service.core.errors import StreamTimedOut
from service.core.settings import Settings
from service.core.streaming import StreamClock


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DEEPSERVE_"):
            monkeypatch.delenv(name)


def clock(idle_s: float = 30.0, max_s: float = 3600.0, busy: Any = None) -> StreamClock:
    settings = Settings(stream_idle_timeout_s=idle_s, stream_max_seconds=max_s)
    return StreamClock(settings) if busy is None else StreamClock(settings, busy)


class Source:
    """An async generator of `items`, each after its delay; records how it ended and how
    many reads were started."""

    def __init__(self, *items: tuple[float, Any]) -> None:
        self.items = items
        self.reads = 0
        self.ended: str | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            for delay, item in self.items:
                self.reads += 1
                await asyncio.sleep(delay)
                yield item
            self.ended = "done"
        except asyncio.CancelledError:
            self.ended = "cancelled"
            raise
        except GeneratorExit:
            self.ended = "closed"
            raise


async def drain(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def run(scenario: Any, timeout: float = 20.0) -> Any:
    return asyncio.run(asyncio.wait_for(scenario, timeout))


def test_items_pass_through() -> None:
    source = Source((0, "a"), (0.01, "b"), (0, None), (0.02, 3))
    assert run(drain(clock().bounded(source))) == ["a", "b", None, 3]
    assert source.ended == "done"


def test_plain_async_iterables_pass_through() -> None:
    async def numbers() -> AsyncIterator[int]:
        for n in range(5):
            yield n

    assert run(drain(clock(idle_s=1).bounded(numbers()))) == [0, 1, 2, 3, 4]


def test_an_empty_source_ends_at_once() -> None:
    assert run(drain(clock(idle_s=0.1).bounded(Source()))) == []


def test_an_idle_stream_times_out_and_its_read_is_cancelled() -> None:
    source = Source((0, 1), (30, 2))
    received: list[int] = []

    async def scenario() -> None:
        with pytest.raises(StreamTimedOut, match="stream_idle_timeout_s") as caught:
            async for item in clock(idle_s=0.2).bounded(source):
                received.append(item)
        assert caught.value.end == "idle_timeout"
        assert caught.value.http_status == 408
        await asyncio.sleep(0)  # the cancelled read runs its handler

    started = time.monotonic()
    run(scenario())
    assert received == [1]
    assert 0.2 <= time.monotonic() - started < 10
    assert source.ended == "cancelled"


def test_idle_time_restarts_with_each_item() -> None:
    source = Source(*[(0.1, n) for n in range(8)])  # 0.8 s in all, never 0.3 s idle
    assert run(drain(clock(idle_s=0.3).bounded(source))) == list(range(8))


def test_busy_keeps_an_idle_stream_alive_without_cancelling_the_read() -> None:
    source = Source((0, 1), (0.9, 2), (0, 3))  # 0.9 s silent: four idle timeouts
    busy_asked = []

    def busy() -> bool:
        busy_asked.append(True)
        return True

    assert run(drain(clock(idle_s=0.2, busy=busy).bounded(source))) == [1, 2, 3]
    assert source.ended == "done"  # the read pending through the idle periods was never cut
    assert source.reads == 3
    assert len(busy_asked) >= 2


def test_the_stream_times_out_once_no_longer_busy() -> None:
    source = Source((0, 1), (30, 2))
    busy_until = time.monotonic() + 0.5

    async def scenario() -> None:
        with pytest.raises(StreamTimedOut) as caught:
            await drain(
                clock(idle_s=0.2, busy=lambda: time.monotonic() < busy_until).bounded(source)
            )
        assert caught.value.end == "idle_timeout"

    run(scenario())
    assert time.monotonic() >= busy_until
    assert source.ended == "cancelled"


def test_busy_can_be_set_after_the_clock_is_made() -> None:
    stream_clock = clock(idle_s=0.2)
    stream_clock.busy = lambda: True
    assert run(drain(stream_clock.bounded(Source((0.6, "late"))))) == ["late"]


def test_a_stream_that_never_idles_meets_the_time_limit() -> None:
    source = Source(*[(0.02, n) for n in range(1000)])  # 20 s if not stopped
    received: list[int] = []

    async def scenario() -> None:
        with pytest.raises(StreamTimedOut, match="stream_max_seconds") as caught:
            async for item in clock(idle_s=5, max_s=0.3).bounded(source):
                received.append(item)
        assert caught.value.end == "time_limit"

    started = time.monotonic()
    run(scenario())
    assert 0.3 <= time.monotonic() - started < 10
    assert 0 < len(received) < 1000


def test_busy_does_not_extend_the_time_limit() -> None:
    source = Source((30, "never"))

    async def scenario() -> None:
        with pytest.raises(StreamTimedOut) as caught:
            await drain(clock(idle_s=0.1, max_s=0.4, busy=lambda: True).bounded(source))
        assert caught.value.end == "time_limit"
        await asyncio.sleep(0)

    run(scenario())
    assert source.ended == "cancelled"


def test_the_time_limit_counts_from_the_clock_not_the_read() -> None:
    stream_clock = clock(idle_s=5, max_s=0.2)
    time.sleep(0.25)  # the stream opened, then waited before reading

    async def scenario() -> None:
        with pytest.raises(StreamTimedOut) as caught:
            await drain(stream_clock.bounded(Source((0, 1))))
        assert caught.value.end == "time_limit"

    run(scenario())


def test_leaving_the_iteration_cancels_the_pending_read() -> None:
    source = Source((0, 1), (30, 2))

    async def scenario() -> None:
        consumer = asyncio.ensure_future(drain(clock(idle_s=5).bounded(source)))
        await asyncio.sleep(0.1)
        consumer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await consumer
        await asyncio.sleep(0)

    run(scenario())
    assert source.ended == "cancelled"


def test_idle_time_counts_from_when_the_stream_stopped_being_busy() -> None:
    """Busy until 0.6 s, the item at 1.3 s: 0.7 s without work, under the 1 s idle limit."""
    busy_until = time.monotonic() + 0.6
    source = Source((1.3, "after 0.7 s without work"))
    stream_clock = clock(idle_s=1.0, busy=lambda: time.monotonic() < busy_until)
    assert run(drain(stream_clock.bounded(source))) == ["after 0.7 s without work"]
