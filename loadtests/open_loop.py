"""An open-loop HTTP load generator: requests start on a fixed schedule, whatever the answers do.

Closed-loop tools (wrk, locust users) slow down when the server does, which hides queueing
(coordinated omission). Here each request's latency is measured from the moment it was *due*,
so a stall shows up in every request that should have started during it. Used by the bench for
"p99 at 70 % of saturation" and by the overload test. One asyncio process; fine up to a few
hundred requests/s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np


@dataclass
class Shot:
    """One request's fate."""

    start: float
    """time.monotonic() when the request was due (open loop) or sent (closed loop)."""
    end: float
    outcome: int | str
    """HTTP status, or "timeout" (no answer within the client timeout), "refused" (no
    connection), "reset" (connection dropped mid-request)."""
    retry_after: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


async def shoot(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    start: float | None = None,
) -> Shot:
    """POST once; the Shot's latency counts from `start` (default: now)."""
    start = time.monotonic() if start is None else start
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            await response.read()
            retry_after = response.headers.get("Retry-After")
            return Shot(start, time.monotonic(), response.status, retry_after)
    except TimeoutError:
        return Shot(start, time.monotonic(), "timeout")
    except aiohttp.ClientConnectorError:
        return Shot(start, time.monotonic(), "refused")
    except (aiohttp.ClientError, ConnectionError):
        return Shot(start, time.monotonic(), "reset")


async def send_open_loop(
    url: str,
    bodies: list[bytes],
    headers: dict[str, str],
    rate: float,
    seconds: float,
    timeout: float = 60.0,
) -> list[Shot]:
    """POST `bodies` (round robin) at `rate` per second for `seconds`; every Shot's latency
    counts from when it was due."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one(body: bytes, due: float) -> Shot:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            return await shoot(session, url, body, headers, timeout, start=due)

        start = time.monotonic() + 0.2
        cycle = itertools.cycle(bodies)
        count = int(rate * seconds)
        due = [start + i / rate for i in range(count)]
        return list(await asyncio.gather(*(one(next(cycle), at) for at in due)))


def open_loop(
    url: str, bodies: list[bytes], headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    """The bench's summary of an open-loop run: p50 / p99 of the answered requests, errors."""
    shots = asyncio.run(send_open_loop(url, bodies, headers, rate, seconds))
    latencies = [s.seconds for s in shots if s.outcome == 200]
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "rate": rate,
        "sent": len(shots),
        "errors": len(shots) - len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }
