"""Local placement: the model's kernel in the gateway process, fed by our adaptive batcher (or,
for a kernel that decodes step by step, the step batcher: caption_decoding); items are passed by
reference, nothing is copied or serialized between gateway and runner."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable
from typing import Any

from service.batching.batcher import AdaptiveBatcher, KeyOf, Prepare, Preprocess
from service.batching.iteration import StepBatcher, StepModel
from service.core.errors import NotReady
from service.core.metrics import ModelMetrics, note_inferred, record_model
from service.core.settings import Settings
from service.runners.base import admission_for, statistics_for
from service.runtime.kernels import Kernel
from service.store.specs import ModelSpec

log = logging.getLogger("deepserve.runners")


class LocalRunner:
    """The model's kernel hosted in this process, fed by the adaptive batcher."""

    placement = "local"

    def __init__(self, spec: ModelSpec, settings: Settings, kernel_class: type[Kernel]):
        self.name = spec.name
        self.kernel_class = kernel_class
        self.spec = spec
        self.settings = settings
        self.config = settings.for_model(spec.name, spec.settings, spec.tuned)
        """This model's settings (the global ones with its own overrides)."""
        self.kernel: Kernel | None = None
        self.batcher: AdaptiveBatcher | StepBatcher | None = None
        self.load_seconds = 0.0
        self.error: str | None = None
        self.statistics = statistics_for(spec, settings)
        self.admission = admission_for(spec, settings, self.statistics)

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.error is None

    @property
    def provider(self) -> str:
        return self.kernel.provider if self.kernel else "none"

    def bucket(self, item: Any) -> Hashable:
        return self.kernel_class.bucket(item) if self.config.length_buckets else 0

    async def start(self) -> None:
        started = time.perf_counter()

        steps = self.config.caption_decoding == "step" and self.config.batching

        def load() -> Kernel:
            kernel = self.kernel_class(
                self.spec,
                self.config.device,
                self.config.intra_op_threads,
                # the step batcher runs no batch alone: no solo sessions for it
                1 if steps else self.settings.solo_threads_for(self.config),
                self.config.io_binding,
            )
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
        batch_size = self.config.batch_size_for(kernel.provider)
        if steps and isinstance(kernel, StepModel):  # it decodes step by step: continuous batching
            self.batcher = StepBatcher(
                self.name,
                kernel,
                # NOTE: a step never runs more rows than a batch-at-once batch could
                max_rows=batch_size * self.config.max_beam,
                max_join=batch_size,
                workers=self.config.workers_per_model,
                max_queue=self.config.max_queue,
                observer=observer,
                statistics=self.statistics,
            )
        else:
            self.batcher = AdaptiveBatcher(
                self.name,
                kernel.run,
                # NOTE: an imported graph with a fixed batch dim runs one item at a time
                max_batch_size=batch_size
                if self.spec.extra.get("batchable", True) is not False
                else 1,
                max_latency_ms=self.config.max_latency_ms,
                workers=self.config.workers_per_model,
                max_queue=self.config.max_queue,
                observer=observer,
                statistics=self.statistics,
                run_solo=kernel.run_solo if kernel.solo else None,
                adapt_batch_size=self.config.adapt_batch_size,
            )
            if kernel.solo_times is not None:
                self.batcher.solo_choice.seed(*kernel.solo_times)
        await self.batcher.start()
        observer.loaded(self.load_seconds)
        opsets = [graph.opset for graph in self.spec.graphs.values()]
        record_model(self.spec.name, self.spec.version, opsets, kernel.provider, self.placement)
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

    async def submit_prepared(
        self,
        prepare: Prepare,
        key_of: KeyOf,
        preprocess: Preprocess,
        deadline: float | None = None,
    ) -> Any:
        """prepare()'s item, answered (see AdaptiveBatcher.submit_prepared: one thread hop
        when the model is idle). Only a request alone in the model (admission counts those
        decoding too) goes that way: under load, deciding before decoding runs items alone
        that a batch could have taken (imagenet-cnn at 16 clients after an overload spike
        stayed under 0.8 of its saturation throughput). The step batcher prepares first and
        queues."""
        if self.batcher is None:
            raise NotReady(f"model {self.name} is not ready: {self.error or 'loading'}")
        if isinstance(self.batcher, AdaptiveBatcher) and self.admission.inside <= 1:
            result = await self.batcher.submit_prepared(prepare, key_of, preprocess, deadline)
        else:
            item = await preprocess(prepare)
            result = await self.batcher.submit(item, key_of(item), deadline)
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
                "max_latency_ms": self.config.max_latency_ms,
                "workers": self.config.workers_per_model,
                **self._solo(),
                **self._cap(),
                "pending": self.batcher.pending if self.batcher else 0,
                "batches": stats.batches if stats else 0,
                "samples": stats.samples if stats else 0,
                "largest_batch": stats.largest if stats else 0,
                "expired": stats.expired if stats else 0,
                "abandoned": stats.abandoned if stats else 0,
                **self._step_counts(),
            },
        }

    def _cap(self) -> dict[str, Any]:
        """The measured batch cap (sizing.py): one value, or one per queue key when several."""
        batcher = self.batcher
        if not isinstance(batcher, AdaptiveBatcher) or batcher.batch_cap is None:
            return {}
        return batcher.batch_cap.describe_all()

    def _solo(self) -> dict[str, Any]:
        """Solo runs (one request alone on all its threads): threads, the measured speed-up
        (the batcher's running estimate for the warm-up's queue), batches run solo."""
        kernel, batcher = self.kernel, self.batcher
        if kernel is None or not kernel.solo or not isinstance(batcher, AdaptiveBatcher):
            return {}
        key = kernel.solo_times[0] if kernel.solo_times is not None else 0
        speedup = batcher.solo_choice.speedup(key)
        return {
            "solo_threads": kernel.solo_threads,
            "solo_speedup": round(speedup, 2) if speedup is not None else None,
            "solo_batches": batcher.stats.solo,
        }

    def _step_counts(self) -> dict[str, Any]:
        """Continuous batching's own counters (a batch there is one join of new requests)."""
        if not isinstance(self.batcher, StepBatcher):
            return {}
        stats = self.batcher.stats
        return {
            "decoding": "step",
            "max_rows": self.batcher.max_rows,
            "steps": stats.steps,
            "average_step_rows": round(stats.step_rows / stats.steps, 2) if stats.steps else 0,
            "largest_step_rows": stats.largest_step,
        }
