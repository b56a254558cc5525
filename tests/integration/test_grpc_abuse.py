"""Health Watch floods against a real server with API keys: more never-ending Watch streams than
grpc_max_concurrent_rpcs (no key needed) leave authenticated inference its room, the oldest
watchers are closed with UNAVAILABLE, and the watchers left all see NOT_SERVING on drain."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from loadtests.server import Server, running_server
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc

pytestmark = pytest.mark.models

KEY = "grpc-abuse-key-3f9a61c2"  # test-only key
UNARY_LIMIT, HEALTH_LIMIT = 16, 8
WATCHERS, CHANNELS = 64, 4
TIMEOUT = 30.0  # generous: the machine is shared
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture(scope="module")
def limited(tmp_path_factory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("grpc-abuse"),
        {
            "DEEPSERVE_MODELS": '["digits-cnn", "sentiment-lstm"]',
            "DEEPSERVE_API_KEY": KEY,
            "DEEPSERVE_GRPC_MAX_CONCURRENT_RPCS": str(UNARY_LIMIT),
            "DEEPSERVE_GRPC_MAX_HEALTH_RPCS": str(HEALTH_LIMIT),
            "DEEPSERVE_SHUTDOWN_GRACE_S": "5",
        },
    ) as running:
        yield running


async def open_watchers(channels: list[grpc.aio.Channel], count: int) -> list[Any]:
    """`count` Watch streams spread over `channels`, opened one at a time (each has answered
    SERVING before the next opens, so their age is their order)."""
    watchers = []
    for n in range(count):
        stub = health_pb2_grpc.HealthStub(channels[n % len(channels)])
        call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(call.read(), TIMEOUT)
        assert first.status == SERVING, n
        watchers.append(call)
    return watchers


async def closed_status(call: Any) -> tuple[grpc.StatusCode, str]:
    return await asyncio.wait_for(call.code(), TIMEOUT), await call.details()


def channels_to(server: Server) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(server.grpc_target) for _ in range(CHANNELS)]


def test_watch_flood_leaves_authenticated_inference_its_room(limited) -> None:
    async def scenario() -> None:
        channels = channels_to(limited)
        try:
            watchers = await open_watchers(channels, WATCHERS)
            closed = watchers[:-HEALTH_LIMIT]
            for call in closed:
                code, details = await closed_status(call)
                assert code == grpc.StatusCode.UNAVAILABLE
                assert f"{HEALTH_LIMIT} health RPCs at once is the limit" in details
                assert "grpc_max_health_rpcs" in details
            assert not any(call.done() for call in watchers[-HEALTH_LIMIT:])

            stub = deepserve_pb2_grpc.InferenceStub(channels[0])
            request = pb.SentimentRequest(texts=["a fine, warm film"], model="sentiment-lstm")
            key = (("authorization", f"Bearer {KEY}"),)
            answers = await asyncio.gather(
                *(stub.Sentiment(request, metadata=key, timeout=TIMEOUT) for _ in range(8))
            )
            assert all(a.model == "sentiment-lstm" and len(a.results) == 1 for a in answers)
            with pytest.raises(grpc.aio.AioRpcError) as refused:  # no key: refused, not starved
                await stub.Sentiment(request, timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # server reflection (what grpcurl uses) still answers: a stream of its own class
            reflecting = reflection_pb2_grpc.ServerReflectionStub(channels[1])
            asked = reflection_pb2.ServerReflectionRequest(list_services="")
            answers = [
                a
                async for a in reflecting.ServerReflectionInfo(
                    iter([asked]), metadata=key, timeout=TIMEOUT
                )
            ]
            names = {s.name for s in answers[0].list_services_response.service}
            assert {"deepserve.v1.Inference", "grpc.health.v1.Health"} <= names
            assert not any(call.done() for call in watchers[-HEALTH_LIMIT:])
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(asyncio.wait_for(scenario(), 600))


def test_watchers_left_all_see_not_serving_on_drain(limited) -> None:
    """Some watchers are closed by the quota, some end from the client side; every one left
    sees NOT_SERVING when SIGTERM drains the server. (Runs last: it stops the server.)"""

    async def scenario() -> None:
        channels = channels_to(limited)
        try:
            watchers = await open_watchers(channels, HEALTH_LIMIT + 4)
            for call in watchers[:4]:
                assert (await closed_status(call))[0] == grpc.StatusCode.UNAVAILABLE
            for call in watchers[4:6]:  # two end from the client side
                call.cancel()
            await asyncio.sleep(0.5)
            os.killpg(limited.process.pid, signal.SIGTERM)
            for call in watchers[6:]:
                answer = await asyncio.wait_for(call.read(), TIMEOUT)
                assert answer.status == NOT_SERVING
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(asyncio.wait_for(scenario(), 600))
    limited.process.wait(60)
