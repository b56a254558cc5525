"""An open-loop HTTP load generator: requests start on a fixed schedule, whatever the answers do.

Closed-loop tools (wrk, locust users) slow down when the server does, which hides queueing
(coordinated omission). Here each request's latency is measured from the moment it was *due*,
so a stall shows up in every request that should have started during it. Used by the bench for
"p99 at 70 % of saturation". One asyncio process; fine up to a few hundred requests/s.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp
import numpy as np


async def _run(
    url: str, bodies: list[bytes], headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(body: bytes, due: float) -> None:
            nonlocal errors
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
                return
            latencies.append(time.perf_counter() - due)

        start = time.perf_counter() + 0.2
        count = int(rate * seconds)
        cycle = itertools.cycle(bodies)
        await asyncio.gather(*(one(next(cycle), start + i / rate) for i in range(count)))
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "rate": rate,
        "sent": count,
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def open_loop(
    url: str, bodies: list[bytes], headers: dict[str, str], rate: float, seconds: float
) -> dict[str, Any]:
    """POST `bodies` (round robin) at `rate` per second for `seconds`; latency from due time."""
    return asyncio.run(_run(url, bodies, headers, rate, seconds))
