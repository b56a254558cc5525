"""Bounded traffic for fault tests: closed-loop clients and an open-loop (fixed arrival rate)
sender on aiohttp, recording every request's start, end and outcome."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
import numpy as np


@dataclass
class Shot:
    start: float
    """time.monotonic() when the request was sent."""
    end: float
    outcome: int | str
    """HTTP status, or "timeout" (no answer within the client timeout), "refused" (no
    connection), "reset" (connection dropped mid-request)."""
    retry_after: str | None = None

    @property
    def seconds(self) -> float:
        return self.end - self.start


async def shoot(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> Shot:
    start = time.monotonic()
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            await response.read()
            return Shot(
                start, time.monotonic(), response.status, response.headers.get("Retry-After")
            )
    except TimeoutError:
        return Shot(start, time.monotonic(), "timeout")
    except aiohttp.ClientConnectorError:
        return Shot(start, time.monotonic(), "refused")
    except (aiohttp.ClientError, ConnectionError):
        return Shot(start, time.monotonic(), "reset")


def session(limit: int = 0) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, force_close=False))


async def closed_loop(
    url: str,
    body: bytes,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    timeout: float = 15.0,
    stop: asyncio.Event | None = None,
) -> list[Shot]:
    """`clients` callers, each sending its next request when the last one is answered."""
    shots: list[Shot] = []
    until = time.monotonic() + seconds

    async def client(http: aiohttp.ClientSession) -> None:
        while time.monotonic() < until and not (stop and stop.is_set()):
            shot = await shoot(http, url, body, headers, timeout)
            shots.append(shot)
            if isinstance(shot.outcome, str):  # no connection: do not spin
                await asyncio.sleep(0.05)

    async with session() as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return shots


async def open_loop(
    url: str, body: bytes, headers: dict[str, str], rate: float, seconds: float, timeout: float
) -> list[Shot]:
    """Requests sent at `rate` per second for `seconds`, whether or not earlier ones were
    answered (the load a crowd of independent users makes)."""
    started = time.monotonic()
    tasks = []
    async with session() as http:
        for index in range(int(rate * seconds)):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(shoot(http, url, body, headers, timeout)))
        return list(await asyncio.gather(*tasks))


def ok_rate(shots: list[Shot], start: float, end: float) -> float:
    """Requests answered 200 per second, among those that ended in [start, end)."""
    done = sum(1 for s in shots if s.outcome == 200 and start <= s.end < end)
    return done / (end - start)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else 0.0
