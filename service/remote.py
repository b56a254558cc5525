"""Remote placement: one BentoML runner service per model, reached with bentoml.depends.

Each runner service is its own process (own device, scaled on its own: one per GPU) and batches
with BentoML's adaptive (CORK) batching: `@bentoml.api(batchable=True)`. The gateway sends each
request's validated item, compact (uint8 images, int64 ids, float32 audio), and the runner
collates, normalises inside the graph and answers one result per item.

NOTE (bentoml 1.4.39): the dependency client replaces its aiohttp session every 100 requests,
closing it while requests are in flight, which fails them with HTTP 500 under load
(bentoml/BentoML#5540, #5544). `runner_connection` raises both refresh limits so the session is
never swapped under load; RemoteRunner also retries an idempotent call once on a
transport error, so a refresh that still happens cannot fail a request.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Hashable
from typing import Any

import bentoml

from service.batching import BatchStats
from service.errors import (
    DeadlineExceeded,
    InferenceFailed,
    NotReady,
    Overloaded,
    ServingError,
)
from service.kernels import KERNELS, Kernel, make_kernel
from service.metrics import ModelMetrics, batch_totals, note_inferred, record_model
from service.registry import ModelSpec, latest_specs
from service.settings import Settings, get_settings

log = logging.getLogger("deepserve.remote")

NEVER = 10**9  # requests / seconds: keep one client session for the life of the process
EXPIRED = {"expired": True}
"""A runner service's answer for an item whose deadline passed before it was computed."""


def attribute_name(model: str) -> str:
    return "runner_" + re.sub(r"\W", "_", model)


def runner_service(model: str, settings: Settings) -> Any:
    """Create the BentoML runner service class for one model (import time, deterministic)."""
    gpu = settings.device == "gpu"
    resources: dict[str, Any] = {"gpu": 1} if gpu else {"cpu": str(settings.workers_per_model)}
    max_batch = settings.gpu_max_batch_size if gpu else settings.max_batch_size

    class ModelRunner:
        def __init__(self) -> None:
            settings.apply_store()
            spec = latest_specs().get(model)
            if spec is None:
                raise RuntimeError(f"model {model} is not in the store (deepserve models build)")
            self.spec = spec
            started = time.perf_counter()
            self.kernel: Kernel = make_kernel(self.spec, settings.device, settings.intra_op_threads)
            self.kernel.warmup()
            self.stats = BatchStats()
            self.metrics = ModelMetrics(spec.name, spec.version)
            self.metrics.loaded(time.perf_counter() - started)
            log.info("runner %s ready (%s)", self.spec.tag, self.kernel.provider)

        @bentoml.api(
            batchable=True,
            max_batch_size=max_batch if settings.batching else 1,
            max_latency_ms=int(settings.remote_max_latency_ms),
        )
        def infer(self, items: list[Any]) -> list[Any]:
            """items: (queue key, payload, deadline) triples; runs each key's items as one batch.

            The deadline is wall-clock (time.time(); None = none): items whose deadline passed
            while BentoML queued them are answered EXPIRED instead of being computed.
            """
            results: list[Any] = [None] * len(items)
            groups: dict[Hashable, list[int]] = {}
            now = time.time()
            for index, (key, _, deadline) in enumerate(items):
                if deadline is not None and now >= deadline:
                    self.stats.expired += 1
                    self.metrics.rejected("deadline")
                    results[index] = EXPIRED
                else:
                    groups.setdefault(key, []).append(index)
            for key, rows in groups.items():  # one executed batch per queue key
                started = time.perf_counter()
                outputs = self.kernel.run(key, [items[i][1] for i in rows])
                self.stats.record(len(rows))
                self.metrics.batch_done(len(rows), [], time.perf_counter() - started)
                if len(outputs) != len(rows):
                    raise InferenceFailed(f"{model}: {len(outputs)} results for {len(rows)} items")
                for row, output in zip(rows, outputs):
                    results[row] = self.kernel.to_wire(output)
            return results

        @bentoml.api
        def describe(self) -> dict[str, Any]:
            return {
                "provider": self.kernel.provider,
                "version": self.spec.version,
                "batches": self.stats.batches,
                "samples": self.stats.samples,
                "largest_batch": self.stats.largest,
                "expired": self.stats.expired,
            }

    ModelRunner.__name__ = ModelRunner.__qualname__ = f"Runner_{attribute_name(model)}"
    return bentoml.service(
        name=f"runner-{model}",
        # NOTE: BentoML's CORK dispatcher runs one batch at a time per worker process, so on CPU
        # the runner gets a process per parallel inference slot; a GPU gets one worker
        workers=1 if gpu else max(1, settings.workers_per_model),
        resources=resources,
        traffic={"timeout": 60},
        runner_connection={"max_requests": NEVER, "max_age": float(NEVER)},
        **settings.observability_config(["/infer", "/describe"]),
    )(ModelRunner)


def remote_models(settings: Settings) -> list[str]:
    return [m for m in settings.models if settings.placement_of(m) == "remote"]


class RemoteRunner:
    """Gateway-side handle of a model's runner service."""

    placement = "remote"

    def __init__(self, spec: ModelSpec, settings: Settings, owner: Any):
        self.owner = owner
        self.name = spec.name
        self.spec = spec
        self.settings = settings
        self.client: Any = None
        self.remote_provider = "unknown"
        self.error: str | None = None
        self.calls = 0
        self.retries = 0
        """Runner calls that failed once and were retried (session swaps, resets)."""
        self.expired = 0
        """Calls not made because their deadline had passed (checked before the hop only)."""
        self.kernel_class = KERNELS[spec.task]
        self.metrics = ModelMetrics(spec.name, spec.version)
        self.in_flight = 0
        self.described = False
        self.remote_stats: dict[str, int] = {}
        self._probe: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.client is not None and self.described and self.error is None

    @property
    def provider(self) -> str:
        return self.remote_provider

    def bucket(self, item: Any) -> Hashable:
        return self.kernel_class.bucket(item) if self.settings.length_buckets else 0

    async def start(self) -> None:
        self.client = getattr(self.owner, attribute_name(self.name), None)
        if self.client is None:
            self.error = "no runner service dependency declared for this model"
            return
        # The runner process may still be loading: ask it in the background until it answers.
        self._probe = asyncio.create_task(self._describe_runner())

    async def _describe_runner(self) -> None:
        delay = 0.2
        while self.client is not None:
            try:
                info = await self.client.to_async.call("describe")
            except Exception as error:
                log.info("model %s: runner not answering yet (%s)", self.name, error)
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)
                continue
            self.remote_provider = info["provider"]
            if info["version"] != self.spec.version:
                self.error = f"runner serves {info['version']}, gateway expects {self.spec.version}"
                log.error("model %s: %s", self.name, self.error)
            self.described = True
            record_model(self.spec, self.remote_provider, self.placement)
            return

    async def refresh(self) -> None:
        """The runner service's batch counters (for /v1/models), summed over its worker
        processes: read from the shared metrics directory when this host runs them, else asked
        from one worker."""
        totals = await asyncio.to_thread(batch_totals, self.spec.name, self.spec.version)
        if totals is not None:
            self.remote_stats = totals
            return
        if self.ready:
            try:
                info = await self.client.to_async.call("describe")
            except Exception as error:
                log.warning("model %s: describe failed: %s", self.name, error)
                return
            keys = ("batches", "samples", "largest_batch", "expired")
            self.remote_stats = {k: int(info.get(k, 0)) for k in keys}

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        self.client = None

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        if self.client is None:
            raise NotReady(f"model {self.name} is not ready: {self.error or 'loading'}")
        if deadline is not None and time.monotonic() >= deadline:
            self.expired += 1
            self.metrics.rejected("deadline")
            raise DeadlineExceeded(f"deadline passed before {self.name} was called")
        self.calls += 1
        self.in_flight += 1
        self.metrics.pending(self.in_flight)  # queued or computing at the runner service
        try:
            return await self._call(key, item, deadline)
        finally:
            self.in_flight -= 1
            self.metrics.pending(self.in_flight)

    async def _call(self, key: Hashable, item: Any, deadline: float | None) -> Any:
        # the runner service checks the deadline again when BentoML hands it the batch
        wall_deadline = None if deadline is None else time.time() + deadline - time.monotonic()
        for attempt in (1, 2):
            try:
                (result,) = await self.client.to_async.call("infer", [(key, item, wall_deadline)])
                if result == EXPIRED:  # counted by the runner service
                    raise DeadlineExceeded(f"deadline passed while {self.name} queued it")
                note_inferred()
                return self.kernel_class.from_wire(result)
            except ServingError:
                raise
            except bentoml.exceptions.BentoMLException as error:
                status = getattr(error, "error_code", None)
                if status is not None and int(status) in (429, 503):
                    self.metrics.rejected("runner_overloaded")
                    raise Overloaded(f"runner for {self.name} is shedding load: {error}") from None
                if attempt == 2:
                    raise InferenceFailed(f"runner for {self.name} failed: {error}") from None
            except Exception as error:  # transport: the session was swapped or reset
                if attempt == 2:
                    raise InferenceFailed(f"runner for {self.name} unreachable: {error}") from None
            self.retries += 1
            log.warning("model %s: retrying a failed runner call", self.name)
        raise AssertionError("unreachable")

    def describe(self) -> dict[str, Any]:
        return {
            "placement": self.placement,
            "provider": self.provider,
            "ready": self.ready,
            "error": self.error,
            "batching": {
                "engine": "bentoml adaptive batching (runner service)",
                "max_latency_ms": self.settings.remote_max_latency_ms,
                "calls": self.calls,
                "retries": self.retries,
                **self.remote_stats,
            },
        }


def build_runner_services(settings: Settings | None = None) -> dict[str, Any]:
    settings = settings or get_settings()
    return {
        attribute_name(m): bentoml.depends(runner_service(m, settings))
        for m in remote_models(settings)
    }
