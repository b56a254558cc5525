"""The BentoML gateway service: REST task API (/v1), V2 REST (/v2), gRPC, probes, runners.

Serve with `deepserve serve` or `bentoml serve service.gateway:Gateway`. Models placed "remote"
get a BentoML runner service each (service/runners/service.py), declared here as dependencies so
`bentoml serve` starts them as their own processes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import bentoml

from service.core.machine import freeze_startup_heap
from service.core.settings import get_settings
from service.protocols.auth import ApiKeyMiddleware, ApiKeys, FailedAuthLimiter
from service.protocols.grpc.server import GrpcServer
from service.protocols.http import docs, openapi, rest
from service.protocols.http import metrics as http_metrics
from service.protocols.http import server as http_server
from service.protocols.http import v2 as v2_rest
from service.protocols.http.limits import BodyLimitMiddleware
from service.runners.repository import ServingState
from service.runners.service import attribute_name, build_runner_services
from service.tasks import registry

settings = get_settings()
settings.apply_store()
http_server.install(settings)  # before BentoML's worker builds uvicorn's Config
log = logging.getLogger("deepserve.gateway")
api_keys = ApiKeys.from_settings(settings)  # read once: a bad key file fails the import
failed_auth = FailedAuthLimiter.from_settings(settings)  # one table for HTTP and gRPC


def current_state() -> ServingState:
    return bentoml.get_current_service().state


@functools.lru_cache(maxsize=8)
def openapi_document_of(models: tuple[openapi.ServedModel, ...]) -> dict[str, Any]:
    return openapi.document(models, settings)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of what is served now (built once per set of served models)."""
    return openapi_document_of(tuple(openapi.served_models(current_state())))


class GatewayBase:
    def __init__(self) -> None:
        self.state = ServingState(settings, registry.kernel_of, self.runner_client)
        grpc = GrpcServer(lambda: self.state, settings, api_keys, failed_auth)
        self.grpc = grpc if settings.grpc else None

    def runner_client(self, model: str, version: str) -> Any:
        """The dependency client of a model version's runner service (remote placement)."""
        return getattr(self, attribute_name(model), None)

    @bentoml.on_startup
    async def start_runners(self) -> None:
        # One worker: gRPC is up first, its health answering NOT_SERVING while models load.
        # Several share the port (SO_REUSEPORT), and the kernel hands a new connection to any
        # socket bound to it: a worker binds only once loaded, so no call reaches one that
        # cannot answer it (HTTP's shared socket is only accepted from once startup is done).
        early = self.grpc is not None and settings.gateway_workers_in_force() == 1
        if early:
            await self.start_grpc()
        await self.state.start()
        if self.grpc is not None and not early:
            await self.start_grpc()
        if self.grpc is not None:
            await self.grpc.sync_health()
        freeze_startup_heap()
        for name, why in self.state.failed().items():
            log.error("model %s is not served: %s", name, why)
        log.info("deepserve serving: %s", ", ".join(self.state.runners))

    async def start_grpc(self) -> None:
        assert self.grpc is not None
        await self.grpc.start()
        on_sigterm(self.grpc.drain)
        self.state.listeners.append(self.grpc.sync_health)  # health follows what is served

    @bentoml.on_shutdown
    async def stop_runners(self) -> None:
        # uvicorn has drained HTTP requests (up to shutdown_grace_s) before this runs
        if self.grpc is not None:
            await self.grpc.stop(settings.shutdown_grace_s)
        await self.state.stop()

    def __is_ready__(self) -> bool:
        return self.state.ready

    def __is_alive__(self) -> bool:
        """Dead when a remote runner service has been unreachable for runner_lost_liveness_s:
        inside containers BentoML does not respawn it, so the pod must be restarted."""
        now = time.monotonic()
        return not any(
            now - since > settings.runner_lost_liveness_s
            for runner in self.state.runners.values()
            if (since := getattr(runner, "lost_since", None)) is not None
        )


def on_sigterm(callback: Callable[[], Any]) -> None:
    """Run `callback` on this event loop when SIGTERM arrives, then the handler already
    installed (uvicorn's: stop accepting, drain in-flight HTTP requests, shut down)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(callback)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


# NOTE: dependencies must be class attributes when the class is decorated, and which models are
# remote is a setting, so the class body is assembled here.
# BentoML's HTTP metrics label series with raw paths (unbounded): off, with its /metrics route;
# service/protocols/http/metrics.py counts HTTP requests by route template and serves /metrics
# instead.
_body: dict[str, Any] = {
    "__module__": __name__,
    **build_runner_services(settings, registry.kernel_of),
}
Gateway = bentoml.asgi_app(http_metrics.build_app(), path="/")(
    bentoml.asgi_app(v2_rest.build_app(current_state, api_keys.is_admin), path="/")(
        bentoml.asgi_app(rest.build_app(current_state), path="/v1")(
            bentoml.service(
                name="deepserve",
                workers=settings.gateway_workers_in_force(),
                traffic={"timeout": 60},
                http={"host": settings.host, "port": settings.port},
                metrics={"enabled": False},
                **settings.observability_config(["/v1", "/v2"]),
            )(type("Gateway", (GatewayBase,), _body))
        )
    )
)
Gateway.mount_asgi_app(docs.build_app(openapi_document), path="/")  # /docs, /openapi.json, /
Gateway.add_asgi_middleware(http_metrics.HttpMetricsMiddleware)  # first: outermost of ours
Gateway.add_asgi_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
if api_keys.enabled:
    Gateway.add_asgi_middleware(
        ApiKeyMiddleware, settings=settings, keys=api_keys, failures=failed_auth
    )
