"""The runner interface: submit one validated item, get its own result, whatever the placement.

Placements (one module each): `local` (the kernel in the gateway process behind our adaptive
batcher) and `client` (the gateway's handle of a BentoML runner service, whose process code is in
`service`). A runner is given its kernel class by the layer above (the task registry), so this
package knows no task.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Protocol

from service.batching.admission import Admission
from service.core.metrics import ModelMetrics
from service.core.model_settings import ModelSettings
from service.core.settings import Settings
from service.core.statistics import ModelStatistics
from service.runtime.kernels import Kernel
from service.store.specs import ModelSpec

KernelOf = Callable[[str], type[Kernel]]
"""A task name -> the kernel class that computes its batches (the task registry's lookup)."""


class Runner(Protocol):
    name: str
    spec: ModelSpec
    placement: str
    config: ModelSettings
    """This model's settings (global defaults with its own overrides)."""
    error: str | None
    """Why the model cannot serve (failed to load, wrong version); None while loading or fine."""
    admission: Admission
    """Hold a place for each request from before it is decoded until it is answered."""
    statistics: ModelStatistics
    """Triton-style inference statistics of this version (its admission scopes each request)."""

    @property
    def ready(self) -> bool: ...

    @property
    def provider(self) -> str: ...

    def bucket(self, item: Any) -> Hashable: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def refresh(self) -> None: ...

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


def admission_for(spec: ModelSpec, settings: Settings, statistics: ModelStatistics) -> Admission:
    config = settings.for_model(spec.name, spec.settings, spec.tuned)
    shed = ModelMetrics(spec.name, spec.version).rejected
    # never refuse what the model's workers could take in one round of full batches
    floor = config.workers_per_model * config.max_batch_size
    wait = config.max_queue_wait_ms / 1000
    return Admission(
        spec.name, config.max_queue, wait, shed, floor=floor, request_scope=statistics.request
    )


def statistics_for(spec: ModelSpec, settings: Settings) -> ModelStatistics:
    """The statistics of one served version; with several gateway workers, kept in a folder of
    the server's runtime home that they share, so that any worker answers for them all."""
    shared = None
    if settings.runtime_dir is not None and settings.gateway_workers_in_force() > 1:
        shared = settings.runtime_dir / "statistics" / f"{spec.name}@{spec.version}"
    return ModelStatistics(shared)
