"""A bounded mix of cheap abuse against a running deepserve, for the soak test and the bench.

Each kind runs as its own task on one asyncio loop (in a background thread), for at most
`seconds`, at a bounded rate or count, on loopback only:
  random_paths   GET /x<random> and /v1/<random> without a key (metric labels, 401/404 work)
  idle_sockets   connections that send nothing (reopened when the server closes them)
  slow_headers   connections that send part of their headers, then nothing
  stalled_bodies requests whose body stops after 10 of its 1,000 declared bytes
  watch_streams  grpc.health.v1.Health/Watch streams that never end (reopened when closed)
  oversized      30 MB bodies (413)
  extreme_images a 10000x1 PNG to /v1/classify (110 bytes that once cost 2.6 GB)
  chunked_bodies chunked uploads that go on past the body limit (413)
`counts` says what each kind did: requests sent, statuses, connections the server closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

KINDS = (
    "random_paths",
    "idle_sockets",
    "slow_headers",
    "stalled_bodies",
    "watch_streams",
    "oversized",
    "extreme_images",
    "chunked_bodies",
)


def extreme_png(width: int = 10_000, height: int = 1) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (180, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class AbuseMix:
    url: str
    """http://127.0.0.1:PORT of the gateway."""
    grpc_target: str
    """127.0.0.1:PORT of its gRPC server."""
    key: str | None = None
    """An API key for the kinds that abuse authenticated routes (None: auth off)."""
    kinds: tuple[str, ...] = KINDS
    sockets: int = 100
    """Connections held open by each socket kind."""
    streams: int = 100
    """Watch streams held open."""
    counts: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def start(self, seconds: float) -> AbuseMix:
        """Run in a background thread for at most `seconds` (stop() ends it sooner)."""
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._run(seconds)), name="abuse", daemon=True
        )
        self._thread.start()
        return self

    def run(self, seconds: float) -> Counter[str]:
        """Run for `seconds` and wait for the end."""
        self.start(seconds)
        if self._thread is not None:
            self._thread.join(seconds + 60)
        return self.counts

    def stop(self) -> Counter[str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        return self.counts

    def running(self) -> bool:
        return not self._stop.is_set()

    async def _run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        tasks = [asyncio.create_task(getattr(self, kind)(until)) for kind in self.kinds]
        while time.monotonic() < until and self.running():
            await asyncio.sleep(0.1)
        self._stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _going(self, until: float) -> bool:
        return self.running() and time.monotonic() < until

    # --- HTTP requests ---------------------------------------------------------------------------

    async def _post_loop(
        self, until: float, kind: str, path: str, body: Any, headers: dict[str, str], pause: float
    ) -> None:
        async with aiohttp.ClientSession() as session:
            while self._going(until):
                try:
                    async with session.post(
                        self.url + path,
                        data=body() if callable(body) else body,
                        headers=headers,
                        timeout=aiohttp.ClientTimeout(total=30),
                    ) as response:
                        await response.read()
                        self.counts[f"{kind}:{response.status}"] += 1
                except (aiohttp.ClientError, ConnectionError, TimeoutError):
                    self.counts[f"{kind}:reset"] += 1
                await asyncio.sleep(pause)

    async def random_paths(self, until: float) -> None:
        async with aiohttp.ClientSession() as session:
            while self._going(until):
                token = secrets.token_hex(8 if self.counts["random_paths:sent"] % 20 else 2000)
                path = f"/x{token}" if self.counts["random_paths:sent"] % 2 else f"/v1/{token}"
                self.counts["random_paths:sent"] += 1
                try:
                    async with session.get(
                        self.url + path, timeout=aiohttp.ClientTimeout(total=30)
                    ) as response:
                        await response.read()
                        self.counts[f"random_paths:{response.status}"] += 1
                except (aiohttp.ClientError, ConnectionError, TimeoutError):
                    self.counts["random_paths:reset"] += 1
                await asyncio.sleep(0.005)

    async def oversized(self, until: float) -> None:
        body = bytes(30 * 1024 * 1024)
        headers = {**self.auth, "Content-Type": "image/png"}
        await self._post_loop(until, "oversized", "/v1/classify", body, headers, 0.5)

    async def extreme_images(self, until: float) -> None:
        headers = {**self.auth, "Content-Type": "image/png"}
        await self._post_loop(until, "extreme_images", "/v1/classify", extreme_png(), headers, 0.2)

    async def chunked_bodies(self, until: float) -> None:
        async def body() -> Any:
            for _ in range(64):  # 64 MiB, far past the limit
                yield bytes(1 << 20)

        headers = {**self.auth, "Content-Type": "image/png"}
        await self._post_loop(until, "chunked_bodies", "/v1/classify", body, headers, 0.5)

    # --- connections that never finish a request -------------------------------------------------

    async def _hold(self, until: float, kind: str, opening: bytes) -> None:
        """Keep `self.sockets` connections open that send `opening` and then nothing; count the
        ones the server closes, and open new ones in their place."""
        host, port = self.host_port

        async def one() -> None:
            while self._going(until):
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    self.counts[f"{kind}:refused"] += 1
                    await asyncio.sleep(0.5)
                    continue
                self.counts[f"{kind}:opened"] += 1
                try:
                    if opening:
                        writer.write(opening)
                        await writer.drain()
                    while self._going(until):
                        try:
                            data = await asyncio.wait_for(reader.read(4096), 0.5)
                        except TimeoutError:
                            continue
                        if not data:
                            self.counts[f"{kind}:closed_by_server"] += 1
                            break
                        if data.startswith(b"HTTP/1.1 "):
                            self.counts[f"{kind}:answered_{data[9:12].decode()}"] += 1
                except (ConnectionError, OSError):
                    self.counts[f"{kind}:closed_by_server"] += 1
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()

        await asyncio.gather(*(one() for _ in range(self.sockets)))

    async def idle_sockets(self, until: float) -> None:
        await self._hold(until, "idle_sockets", b"")

    async def slow_headers(self, until: float) -> None:
        await self._hold(until, "slow_headers", b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")

    async def stalled_bodies(self, until: float) -> None:
        key = f"Authorization: Bearer {self.key}\r\n" if self.key else ""
        opening = (
            "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"{key}Content-Length: 1000\r\n\r\n0123456789"
        ).encode()
        await self._hold(until, "stalled_bodies", opening)

    # --- gRPC streams ----------------------------------------------------------------------------

    async def watch_streams(self, until: float) -> None:
        channels = [grpc.aio.insecure_channel(self.grpc_target) for _ in range(4)]

        async def one(channel: grpc.aio.Channel) -> None:
            stub = health_pb2_grpc.HealthStub(channel)
            while self._going(until):
                self.counts["watch_streams:opened"] += 1
                try:
                    async for _ in stub.Watch(health_pb2.HealthCheckRequest(service="")):
                        if not self._going(until):
                            return
                    self.counts["watch_streams:ended_by_server"] += 1
                except grpc.aio.AioRpcError as error:
                    self.counts[f"watch_streams:{error.code().name}"] += 1
                    await asyncio.sleep(0.2)

        try:
            await asyncio.gather(*(one(channels[i % 4]) for i in range(self.streams)))
        finally:
            for channel in channels:
                await channel.close()


def latency_calm_and_under_abuse(
    server_url: str,
    grpc_target: str,
    key: str | None,
    path: str,
    bodies: list[bytes],
    headers: dict[str, str],
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    """Open-loop latency of normal traffic (`rate` req/s of `bodies` to `path`), first calm,
    then while an AbuseMix runs against the same server from a process of its own (so that it
    does not share this interpreter with the load generator): {"calm", "abuse",
    "abuse_counts"}."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from loadtests.open_loop import open_loop

    auth = {"Authorization": f"Bearer {key}"} if key else {}
    url = server_url + path
    calm = open_loop(url, bodies, {**headers, **auth}, rate, seconds)
    command = [sys.executable, "-m", "loadtests.abuse", server_url, grpc_target]
    command += ["--seconds", str(seconds + 30), *(["--key", key] if key else [])]
    mix = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(3)  # the sockets and streams pile up first
        abused = open_loop(url, bodies, {**headers, **auth}, rate, seconds)
    finally:
        mix.send_signal(2)  # SIGINT: stop now and print the counts
        output, _ = mix.communicate(timeout=90)
    counts = json.loads(output.strip().splitlines()[-1]) if output.strip() else {}
    return {"calm": calm, "abuse": abused, "abuse_counts": counts}


def main() -> None:
    """Run the mix against a server until --seconds pass or SIGINT; print the counts as JSON."""
    import argparse
    import json
    import signal

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="http://127.0.0.1:PORT")
    parser.add_argument("grpc_target", help="127.0.0.1:PORT")
    parser.add_argument("--key", help="API key for the kinds that abuse authenticated routes")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if not args.url.startswith(("http://127.0.0.1:", "http://localhost:")):
        parser.error("loopback only")
    mix = AbuseMix(args.url, args.grpc_target, args.key)
    signal.signal(signal.SIGINT, lambda *_: mix._stop.set())
    mix.run(args.seconds)
    print(json.dumps(dict(mix.counts)), flush=True)


if __name__ == "__main__":
    main()
