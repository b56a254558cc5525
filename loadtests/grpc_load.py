"""A small closed-loop gRPC load generator (the bench's wrk for gRPC): N clients, bounded time.

Sends pre-serialized requests (round robin) with grpc.aio's generic unary calls (no protobuf work
per call on the client side) and prints a JSON summary. One Python process: at a few thousand
calls/s it needs most of a core, so on small machines it competes with the server it measures.

    python -m loadtests.grpc_load --target 127.0.0.1:50051 \\
        --method /deepserve.v1.Inference/Classify --body request.bin -c 8 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import grpc
import numpy as np


async def run(target: str, method: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = 0
    # a connection per channel (gRPC shares one between channels of the same target by
    # default): the server's gateway workers each take whole connections (SO_REUSEPORT)
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(min(4, clients))]
    calls = [
        channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for channel in channels
    ]
    await calls[0](bodies[0], timeout=30)  # connect and warm the path
    stop = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal errors
        call = calls[index % len(calls)]
        sent = index
        while time.perf_counter() < stop:
            body = bodies[sent % len(bodies)]
            sent += 1
            started = time.perf_counter()
            try:
                await call(body, timeout=30)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    duration = time.perf_counter() - started
    for channel in channels:
        await channel.close()
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "requests": len(latencies),
        "duration_s": duration,
        "errors": errors,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port (loopback)")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument(
        "--body", type=Path, action="append", required=True, help="serialized request (repeatable)"
    )
    parser.add_argument("-c", "--clients", type=int, default=8)
    parser.add_argument("-d", "--seconds", type=float, default=5.0)
    args = parser.parse_args()
    bodies = [path.read_bytes() for path in args.body]
    summary = asyncio.run(run(args.target, args.method, bodies, args.clients, args.seconds))
    print("JSON" + json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
