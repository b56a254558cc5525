"""Time limits of long-lived streams, whatever their transport (SSE bodies, gRPC streams).

A stream is ended when it has received nothing and had nothing in progress for
`stream_idle_timeout_s`, or when it has been open `stream_max_seconds`. Reads are never cancelled
by a timer that lets the stream go on (a gRPC request iterator does not survive a cancelled read):
one pending read is awaited across idle periods.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import TypeVar

from service.core.errors import StreamTimedOut
from service.core.settings import Settings

T = TypeVar("T")
POLLS = 10


class StreamClock:
    """The limits of one stream, from when it opened."""

    def __init__(self, settings: Settings, busy: Callable[[], bool] = lambda: False) -> None:
        self.idle_s = settings.stream_idle_timeout_s
        self.max_s = settings.stream_max_seconds
        self.ends_at = time.monotonic() + self.max_s
        self.busy = busy
        """True while the stream has work in progress (then it is not idle)."""

    def remaining(self) -> float:
        return self.ends_at - time.monotonic()

    def too_long(self) -> StreamTimedOut:
        """The error of a stream past stream_max_seconds."""
        return StreamTimedOut(
            f"the stream has been open {self.max_s:g} s, the limit (setting stream_max_seconds)",
            "time_limit",
        )

    def check(self) -> None:
        if self.remaining() <= 0:
            raise self.too_long()

    async def sent(self, sending: Awaitable[object]) -> None:
        """Await one write of the stream's output: a client that takes none of it for
        stream_idle_timeout_s (or past the stream's end) ends the stream, so that a client that
        stops reading cannot hold the stream and its work forever."""
        try:
            await asyncio.wait_for(sending, timeout=max(0.0, min(self.idle_s, self.remaining())))
        except TimeoutError:
            self.check()
            raise StreamTimedOut(
                f"the client read nothing for {self.idle_s:g} s (setting stream_idle_timeout_s)",
                "idle_timeout",
                writing=True,
            ) from None

    async def within(self, work: Awaitable[T]) -> T:
        """`work`, ended with StreamTimedOut ("time_limit") once the stream has been open
        stream_max_seconds, whatever it is doing (reading, computing, writing)."""
        try:
            return await asyncio.wait_for(work, timeout=max(0.0, self.remaining()))
        except TimeoutError:
            self.check()
            raise

    async def bounded(self, source: AsyncIterable[T]) -> AsyncIterator[T]:
        """`source`'s items as they come, until it ends; StreamTimedOut when the stream has
        received nothing and had nothing in progress for stream_idle_timeout_s (`busy` is
        looked at POLLS times per idle period), or once it outlives stream_max_seconds."""
        iterator = aiter(source)
        quiet_since = time.monotonic()
        while True:
            pending = asyncio.ensure_future(anext(iterator))
            try:
                while True:
                    self.check()
                    now = time.monotonic()
                    if self.busy():
                        quiet_since = now
                    elif now - quiet_since >= self.idle_s:
                        raise StreamTimedOut(
                            f"nothing received for {self.idle_s:g} s (setting "
                            "stream_idle_timeout_s)",
                            "idle_timeout",
                        )
                    wait = min(
                        self.idle_s / POLLS,
                        quiet_since + self.idle_s - now if now > quiet_since else self.idle_s,
                        max(0.0, self.remaining()),
                    )
                    done, _ = await asyncio.wait({pending}, timeout=max(wait, 0.0))
                    if done:
                        break
            except BaseException:
                pending.cancel()
                raise
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
            quiet_since = time.monotonic()
