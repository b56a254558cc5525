"""Call quotas (health, stream, unary) and the health servicer, on a real grpc.aio server on
loopback with a toy service: Watch floods close the oldest watchers and leave unary calls their
room; every watcher sees every status change."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from service.core.settings import Settings
from service.protocols.auth import GRPC_HEALTH
from service.protocols.grpc.streams import (
    HEADROOM,
    HEALTH_SERVICE,
    NOT_SERVING,
    SERVICE_UNKNOWN,
    SERVING,
    CallQuotaInterceptor,
    HealthServicer,
    Quota,
    connection_options,
)

WATCH = "/grpc.health.v1.Health/Watch"
TIMEOUT = 20.0  # generous: the machine is shared


# --- the quota alone ------------------------------------------------------------------------------


def test_full_quota_closes_its_oldest_calls_first() -> None:
    async def scenario() -> None:
        quota = Quota("health", 3, "grpc_max_health_rpcs", closes_oldest=True)
        tickets = [quota.admit() for _ in range(3)]
        assert all(t is not None and not t.closed.is_set() for t in tickets)
        newest = quota.admit()
        assert newest is not None and len(quota) == 3
        assert [t.closed.is_set() for t in tickets if t] == [True, False, False]
        quota.release(tickets[0])  # a closed call ending later changes nothing
        assert len(quota) == 3
        quota.release(tickets[1])  # an open one ending frees its place
        assert len(quota) == 2
        assert quota.admit() is not None and not tickets[2].closed.is_set()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_full_refusing_quota_refuses_and_zero_means_none() -> None:
    async def scenario() -> None:
        unary = Quota("unary", 2, "grpc_max_concurrent_rpcs", closes_oldest=False)
        first, second = unary.admit(), unary.admit()
        assert first and second and unary.admit() is None
        assert not first.closed.is_set()
        unary.release(first)
        assert unary.admit() is not None
        assert "2 unary RPCs at once is the limit (setting grpc_max_concurrent_rpcs)" in (
            unary.full_message
        )
        assert Quota("streaming", 0, "grpc_max_streams", closes_oldest=True).admit() is None

    asyncio.run(scenario())


def test_grpc_limit_sits_above_every_quota() -> None:
    settings = Settings(
        grpc_max_concurrent_rpcs=16,
        grpc_max_health_rpcs=8,
        grpc_max_streams=4,
        grpc_max_inference_streams=2,
    )
    quotas = CallQuotaInterceptor(settings, GRPC_HEALTH)
    assert quotas.server_limit == 16 + 8 + 4 + 2 + HEADROOM


def test_connection_options_follow_settings() -> None:
    assert dict(connection_options(Settings())) == {"grpc.max_connection_idle_ms": 300_000}
    aged = dict(connection_options(Settings(grpc_max_connection_age_s=600)))
    assert aged["grpc.max_connection_age_ms"] == 600_000
    assert aged["grpc.max_connection_age_grace_ms"] == 30_000
    assert connection_options(Settings(grpc_max_connection_idle_s=0)) == []


# --- a real server ----------------------------------------------------------------------------


class Toy:
    """test.Toy: Echo (unary; `slow` waits to be released), Ticks (never-ending stream)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.echoing = 0

    async def echo(self, request: bytes, context: Any) -> bytes:
        if request == b"slow":
            self.echoing += 1
            await self.release.wait()
        return request

    async def ticks(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        while True:
            yield request
            await asyncio.sleep(3600)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "test.Toy",
            {
                "Echo": grpc.unary_unary_rpc_method_handler(self.echo),
                "Ticks": grpc.unary_stream_rpc_method_handler(self.ticks),
            },
        )


@asynccontextmanager
async def serving(
    health: HealthServicer, toy: Toy, **limits: int
) -> AsyncIterator[tuple[grpc.aio.Channel, CallQuotaInterceptor]]:
    settings = Settings(**limits)
    quotas = CallQuotaInterceptor(settings, GRPC_HEALTH)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=quotas.server_limit,
        interceptors=[quotas],
        options=connection_options(settings),
    )
    server.add_generic_rpc_handlers((toy.handler(),))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection([HEALTH_SERVICE, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, quotas
    finally:
        await server.stop(None)


async def first_status(call: Any) -> int:
    response = await asyncio.wait_for(call.read(), TIMEOUT)
    return int(response.status)


async def ends(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status a call ended with (reading whatever it still sends)."""
    code = await asyncio.wait_for(call.code(), TIMEOUT)
    return code, await call.details()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_watch_flood_closes_oldest_watchers_and_unary_calls_keep_their_room() -> None:
    """More Watch streams than the unary limit and grpc.aio's own limit together: the oldest
    are closed with UNAVAILABLE naming the setting, the newest stay, unary calls still pass."""

    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        async with serving(
            health, toy, grpc_max_concurrent_rpcs=4, grpc_max_health_rpcs=3, grpc_max_streams=2
        ) as (channel, quotas):
            stub = health_pb2_grpc.HealthStub(channel)
            flood = 4 + 3 + 2 + HEADROOM + 10  # more than grpc.aio's own limit
            watchers = []
            for _ in range(flood):
                call = stub.Watch(health_pb2.HealthCheckRequest(service=""))
                assert await first_status(call) == SERVING
                watchers.append(call)
            for call in watchers[:-3]:
                code, details = await ends(call)
                assert code == grpc.StatusCode.UNAVAILABLE
                assert (
                    "3 health RPCs at once is the limit (setting grpc_max_health_rpcs)" in details
                )
            assert all(not call.done() for call in watchers[-3:])
            assert len(quotas.health) == 3

            echo = channel.unary_unary("/test.Toy/Echo")
            assert await asyncio.wait_for(echo(b"hi"), TIMEOUT) == b"hi"
            # the unary quota is its own: 4 slow calls fill it, a fifth is refused at once
            slow = [asyncio.ensure_future(echo(b"slow", timeout=TIMEOUT)) for _ in range(4)]
            while toy.echoing < 4:
                await asyncio.sleep(0.01)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await echo(b"fifth", timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "4 unary RPCs at once is the limit" in str(refused.value.details())
            assert ("retry-after", "1") in tuple(refused.value.trailing_metadata() or ())
            toy.release.set()
            assert await asyncio.gather(*slow) == [b"slow"] * 4
            assert len(quotas.unary) == 0

            # the watchers left all see a change
            health.set("", NOT_SERVING)
            for call in watchers[-3:]:
                assert await first_status(call) == NOT_SERVING
            for call in watchers[-3:]:
                call.cancel()

    run(scenario)


def test_calls_that_never_send_a_request_count_and_are_closed() -> None:
    """A Watch call whose request never comes still takes a place (grpc.aio would hold it
    before the method runs), and is closed like the others."""

    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        async with serving(health, toy, grpc_max_health_rpcs=2) as (channel, quotas):
            silent = channel.stream_stream(WATCH)  # raw bytes, so nothing need be sent
            never = asyncio.Event()

            async def nothing() -> AsyncIterator[bytes]:
                await never.wait()
                yield b""

            stuck = [silent(nothing()) for _ in range(2)]
            while len(quotas.health) < 2:
                await asyncio.sleep(0.01)
            stub = health_pb2_grpc.HealthStub(channel)
            fresh = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(2)]
            for call in fresh:
                assert await first_status(call) == SERVING
            for call in stuck:
                assert (await ends(call))[0] == grpc.StatusCode.UNAVAILABLE
            for call in fresh:
                call.cancel()

    run(scenario)


def test_unary_calls_that_never_send_their_message_give_their_place_back() -> None:
    """With keys off, silent calls could otherwise fill the unary quota for good."""

    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        limits = {"grpc_max_concurrent_rpcs": 2, "grpc_request_timeout_s": 1}
        async with serving(health, toy, **limits) as (channel, quotas):  # type: ignore[arg-type]
            silent = channel.stream_unary("/test.Toy/Echo")  # bytes, so nothing need be sent
            never = asyncio.Event()

            async def nothing() -> AsyncIterator[bytes]:
                await never.wait()
                yield b""

            stuck = [silent(nothing()) for _ in range(2)]
            for call in stuck:
                code, details = await ends(call)
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "grpc_request_timeout_s" in details
            assert len(quotas.unary) == 0
            echo = channel.unary_unary("/test.Toy/Echo")
            assert await asyncio.wait_for(echo(b"hi"), TIMEOUT) == b"hi"

    run(scenario)


def test_a_malformed_health_request_is_invalid_argument_not_unknown() -> None:
    async def scenario() -> None:
        async with serving(HealthServicer(), Toy()) as (channel, _):
            watch = channel.unary_stream(WATCH)  # raw bytes out
            call = watch(b"\x0a\x05ab")  # field 1 says 5 bytes, 2 follow
            code, details = await ends(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
            assert "malformed request message" in details

    run(scenario)


def test_streams_have_their_own_quota_and_reflection_still_works() -> None:
    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        async with serving(health, toy, grpc_max_streams=2, grpc_max_health_rpcs=2) as (
            channel,
            quotas,
        ):
            ticks = channel.unary_stream("/test.Toy/Ticks")
            calls = []
            for _ in range(5):  # one at a time, so that their age is their order
                calls.append(ticks(b"t"))
                assert await asyncio.wait_for(calls[-1].read(), TIMEOUT) == b"t"
            for call in calls[:3]:
                code, details = await ends(call)
                assert code == grpc.StatusCode.UNAVAILABLE
                assert "2 streaming RPCs at once is the limit (setting grpc_max_streams)" in details
            assert len(quotas.streams) == 2 and len(quotas.health) == 0

            # server reflection (a bidi stream, an async generator) through the quota
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            asked = reflection_pb2.ServerReflectionRequest(list_services="")
            answers = [a async for a in stub.ServerReflectionInfo(iter([asked]), timeout=TIMEOUT)]
            names = {s.name for s in answers[0].list_services_response.service}
            assert HEALTH_SERVICE in names
            for call in calls[3:]:
                call.cancel()

    run(scenario)


# --- the health servicer ----------------------------------------------------------------------


def test_every_watcher_sees_every_change_when_one_of_them_ends() -> None:
    """grpc_health's aio servicer drops the condition its watchers share when one of them ends,
    so the others never see NOT_SERVING; here all of them do."""

    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        async with serving(health, toy) as (channel, _quotas):
            stub = health_pb2_grpc.HealthStub(channel)
            watchers = [stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(4)]
            for call in watchers:
                assert await first_status(call) == SERVING
            watchers[0].cancel()
            await asyncio.sleep(0.2)  # its end reaches the servicer
            health.set("", NOT_SERVING)
            for call in watchers[1:]:
                assert await first_status(call) == NOT_SERVING
            health.set("", SERVING)
            for call in watchers[1:]:
                assert await first_status(call) == SERVING
            health.enter_graceful_shutdown()
            for call in watchers[1:]:
                assert await first_status(call) == NOT_SERVING
                call.cancel()

    run(scenario)


def test_health_statuses_check_and_graceful_shutdown() -> None:
    async def scenario() -> None:
        health, toy = HealthServicer(), Toy()
        health.set("svc", NOT_SERVING)
        async with serving(health, toy) as (channel, _quotas):
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service="svc"), timeout=TIMEOUT)
            assert answer.status == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            watcher = stub.Watch(health_pb2.HealthCheckRequest(service="nope"))
            assert await first_status(watcher) == SERVICE_UNKNOWN
            health.set("nope", SERVING)  # a watcher of an unknown service sees it appear
            assert await first_status(watcher) == SERVING
            health.enter_graceful_shutdown()
            health.set("svc", SERVING)  # ignored from now on
            assert await first_status(watcher) == NOT_SERVING
            assert {health.status(s) for s in ("", "svc", "nope")} == {NOT_SERVING}
            watcher.cancel()

    run(scenario)
