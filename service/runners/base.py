"""Runners: one interface (submit one item, get its own result), two placements.

- LocalRunner: the kernel in the gateway process behind our AdaptiveBatcher; items are passed by
  reference, nothing is copied or serialized between gateway and runner.
- RemoteRunner: the kernel in a BentoML runner service (its own process, device and batching),
  reached with bentoml.depends; see service/runner_services.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any, Protocol

from service.batching.admission import Admission
from service.batching.batcher import AdaptiveBatcher
from service.core.errors import NotReady
from service.core.metrics import ModelMetrics, note_inferred, record_model
from service.core.settings import Settings
from service.runtime.kernels import KERNELS, Kernel, make_kernel
from service.store.specs import ModelSpec

log = logging.getLogger("deepserve.runners")


class Runner(Protocol):
    name: str
    spec: ModelSpec
    placement: str
    error: str | None
    """Why the model cannot serve (failed to load, wrong version); None while loading or fine."""
    admission: Admission
    """Hold a place for each request from before it is decoded until it is answered."""

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


class LocalRunner:
    """The model's kernel hosted in this process, fed by the adaptive batcher."""

    placement = "local"

    def __init__(self, spec: ModelSpec, settings: Settings):
        self.name = spec.name
        self.spec = spec
        self.settings = settings
        self.kernel: Kernel | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.load_seconds = 0.0
        self.error: str | None = None
        self.admission = admission_for(spec, settings)

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.error is None

    @property
    def provider(self) -> str:
        return self.kernel.provider if self.kernel else "none"

    def bucket(self, item: Any) -> Hashable:
        return KERNELS[self.spec.task].bucket(item) if self.settings.length_buckets else 0

    async def start(self) -> None:
        started = time.perf_counter()

        def load() -> Kernel:
            kernel = make_kernel(self.spec, self.settings.device, self.settings.intra_op_threads)
            kernel.warmup()
            return kernel

        try:
            self.kernel = await asyncio.to_thread(load)
        except Exception as error:  # a broken model must not take the others down
            self.error = f"{type(error).__name__}: {error}"
            log.error("model %s failed to load: %s", self.name, self.error)
            return
        self.load_seconds = time.perf_counter() - started
        kernel = self.kernel
        observer = ModelMetrics(self.spec.name, self.spec.version)
        self.batcher = AdaptiveBatcher(
            self.name,
            kernel.run,
            # NOTE: an imported graph with a fixed batch dim runs one item at a time
            max_batch_size=self.settings.batch_size_for(kernel.provider)
            if self.spec.extra.get("batchable", True) is not False
            else 1,
            max_latency_ms=self.settings.max_latency_ms,
            workers=self.settings.workers_per_model,
            max_queue=self.settings.max_queue,
            observer=observer,
        )
        await self.batcher.start()
        observer.loaded(self.load_seconds)
        record_model(self.spec, kernel.provider, self.placement)
        log.info(
            "model %s ready (local, %s) in %.2f s",
            self.spec.tag,
            kernel.provider,
            self.load_seconds,
        )

    async def refresh(self) -> None:
        """Nothing to fetch: the batcher's counters are in this process."""

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
            self.batcher = None

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        if self.batcher is None:
            raise NotReady(f"model {self.name} is not ready: {self.error or 'loading'}")
        result = await self.batcher.submit(item, key, deadline)
        note_inferred()
        return result

    def describe(self) -> dict[str, Any]:
        stats = self.batcher.stats if self.batcher else None
        return {
            "placement": self.placement,
            "provider": self.provider,
            "ready": self.ready,
            "error": self.error,
            "load_seconds": round(self.load_seconds, 3),
            "batching": {
                "max_batch_size": self.batcher.max_batch_size if self.batcher else None,
                "max_latency_ms": self.settings.max_latency_ms,
                "workers": self.settings.workers_per_model,
                "pending": self.batcher.pending if self.batcher else 0,
                "batches": stats.batches if stats else 0,
                "samples": stats.samples if stats else 0,
                "largest_batch": stats.largest if stats else 0,
                "expired": stats.expired if stats else 0,
                "abandoned": stats.abandoned if stats else 0,
            },
        }


def admission_for(spec: ModelSpec, settings: Settings) -> Admission:
    shed = ModelMetrics(spec.name, spec.version).rejected
    # never refuse what the model's workers could take in one round of full batches
    floor = max(1, settings.workers_per_model) * max(1, settings.max_batch_size)
    wait = settings.max_queue_wait_ms / 1000
    return Admission(spec.name, settings.max_queue, wait, shed, floor=floor)


def make_runner(spec: ModelSpec, settings: Settings, owner: Any = None) -> Runner:
    placement = settings.placement_of(spec.name)
    if placement == "remote":
        from service.runners.remote import RemoteRunner

        return RemoteRunner(spec, settings, owner)
    return LocalRunner(spec, settings)
