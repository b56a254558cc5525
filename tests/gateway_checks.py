"""The gateway's startup order: with several workers sharing the gRPC port (SO_REUSEPORT), a
worker binds it only once its models are loaded, so the kernel never hands a call to a worker
that cannot answer it; one worker binds first, its health saying NOT_SERVING while it loads."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import ClassVar

import pytest

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service import gateway


class Recorder:
    def __init__(self, events: list[str]) -> None:
        self.events = events


class FakeGrpc(Recorder):
    async def start(self) -> None:
        self.events.append("grpc bound")

    async def sync_health(self) -> None:
        self.events.append("health")

    def drain(self) -> None:
        pass


class FakeState(Recorder):
    runners: ClassVar[dict] = {}

    def __init__(self, events: list[str]) -> None:
        super().__init__(events)
        self.listeners: list = []

    async def start(self) -> None:
        self.events.append("models loaded")

    def failed(self) -> dict:
        return {}


@pytest.mark.parametrize(("workers", "first"), [(1, "grpc bound"), (2, "models loaded")])
def test_grpc_binds_before_loading_only_with_one_worker(monkeypatch, workers, first) -> None:
    monkeypatch.setattr(gateway, "on_sigterm", lambda callback: None)
    monkeypatch.setattr(
        gateway, "settings", SimpleNamespace(gateway_workers_in_force=lambda: workers)
    )
    events: list[str] = []
    gate = object.__new__(gateway.GatewayBase)
    gate.state, gate.grpc = FakeState(events), FakeGrpc(events)
    asyncio.run(gate.start_runners())
    assert events[0] == first
    assert events.count("grpc bound") == 1 and events[-1] == "health"
    assert gate.state.listeners == [gate.grpc.sync_health]  # health follows what is served
