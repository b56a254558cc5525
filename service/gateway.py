"""The BentoML gateway service: REST task API (/v1), probes, and the runners behind them.

Serve with `deepserve serve` or `bentoml serve service.gateway:Gateway`. Models placed "remote"
get a BentoML runner service each (service/remote.py), declared here as dependencies so
`bentoml serve` starts them as their own processes.
"""

from __future__ import annotations

import logging
from typing import Any

import bentoml

from service.remote import build_runner_services
from service.rest import build_app
from service.settings import get_settings
from service.state import ServingState

settings = get_settings()
settings.apply_store()
log = logging.getLogger("deepserve.gateway")


def current_state() -> ServingState:
    return bentoml.get_current_service().state


class GatewayBase:
    def __init__(self) -> None:
        self.state = ServingState(settings, owner=self)

    @bentoml.on_startup
    async def start_runners(self) -> None:
        await self.state.start()
        log.info("deepserve ready: %s", ", ".join(self.state.runners))

    @bentoml.on_shutdown
    async def stop_runners(self) -> None:
        await self.state.stop()

    def __is_ready__(self) -> bool:
        return self.state.ready


# NOTE: dependencies must be class attributes when the class is decorated, and which models are
# remote is a setting, so the class body is assembled here.
_body: dict[str, Any] = {"__module__": __name__, **build_runner_services(settings)}
Gateway = bentoml.asgi_app(build_app(current_state), path="/v1")(
    bentoml.service(
        name="deepserve",
        workers=1,
        traffic={"timeout": 60},
        http={"host": settings.host, "port": settings.port},
    )(type("Gateway", (GatewayBase,), _body))
)
