"""The BentoML gateway service: REST task API (/v1), V2 REST (/v2), gRPC, probes, runners.

Serve with `deepserve serve` or `bentoml serve service.gateway:Gateway`. Models placed "remote"
get a BentoML runner service each (service/remote.py), declared here as dependencies so
`bentoml serve` starts them as their own processes.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

from service import rest
from service.grpc_server import GrpcServer
from service.remote import build_runner_services
from service.settings import get_settings
from service.state import ServingState
from service.v2 import rest as v2_rest

settings = get_settings()
settings.apply_store()
log = logging.getLogger("deepserve.gateway")


def current_state() -> ServingState:
    return bentoml.get_current_service().state


class GatewayBase:
    def __init__(self) -> None:
        self.state = ServingState(settings, owner=self)
        self.grpc = GrpcServer(lambda: self.state, settings) if settings.grpc else None

    @bentoml.on_startup
    async def start_runners(self) -> None:
        if self.grpc is not None:  # up first: health answers NOT_SERVING while models load
            await self.grpc.start()
        await self.state.start()
        log.info("deepserve ready: %s", ", ".join(self.state.runners))

    @bentoml.on_shutdown
    async def stop_runners(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.state.stop()

    def __is_ready__(self) -> bool:
        return self.state.ready


# NOTE: dependencies must be class attributes when the class is decorated, and which models are
# remote is a setting, so the class body is assembled here.
_body: dict[str, Any] = {"__module__": __name__, **build_runner_services(settings)}
Gateway = bentoml.asgi_app(v2_rest.build_app(current_state), path="/")(
    bentoml.asgi_app(rest.build_app(current_state), path="/v1")(
        bentoml.service(
            name="deepserve",
            workers=1,
            traffic={"timeout": 60},
            http={"host": settings.host, "port": settings.port},
            **settings.observability_config(["/v1", "/v2"]),
        )(type("Gateway", (GatewayBase,), _body))
    )
)
