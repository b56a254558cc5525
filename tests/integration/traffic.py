"""Bounded closed-loop traffic for fault tests, recording every request's start, end and
outcome (loadtests/open_loop.py sends open-loop traffic and defines the Shot record)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import numpy as np

from loadtests.open_loop import Shot, shoot


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


def ok_rate(shots: list[Shot], start: float, end: float) -> float:
    """Requests answered 200 per second, among those that ended in [start, end)."""
    done = sum(1 for s in shots if s.outcome == 200 and start <= s.end < end)
    return done / (end - start)


def p99(values: list[float]) -> float:
    return float(np.percentile(values, 99)) if values else 0.0
