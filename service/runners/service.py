"""Remote placement, the runner service's side: one BentoML service per model version (its own
process), declared by the gateway as a dependency (bentoml.depends) and reached from
service/runners/client.py.

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

import logging
import re
import time
from collections.abc import Hashable
from typing import Any

import bentoml

from service.batching.batcher import BatchStats, run_isolated
from service.core.errors import InferenceFailed, ServingError
from service.core.metrics import ModelMetrics
from service.core.settings import Settings
from service.runners.base import KernelOf
from service.runtime.kernels import Kernel
from service.store.specs import ModelSpec, load_spec, select_versions

log = logging.getLogger("deepserve.remote")

NEVER = 10**9  # requests / seconds: keep one client session for the life of the process
EXPIRED = {"expired": True}
"""A runner service's answer for an item whose deadline passed before it was computed."""
FAILED = "failed"
"""Key of a runner service's answer for an item that failed alone (see `failure`)."""


def failure(error: Exception) -> dict[str, Any]:
    """One item's failure as a runner-service answer: its neighbours in the batch still get
    theirs. Only ServingErrors (e.g. input the graph refused) carry their message out."""
    if isinstance(error, ServingError):
        return {FAILED: {"status": int(error.http_status), "message": error.message}}
    log.error("inference failed: %r", error)
    return {FAILED: {"status": 500, "message": "inference failed"}}


def attribute_name(model: str, version: str) -> str:
    return "runner_" + re.sub(r"\W", "_", f"{model}_{version}")


def runner_service(spec: ModelSpec, settings: Settings, kernel_of: KernelOf) -> Any:
    """Create the BentoML runner service class for one model version (import time,
    deterministic)."""
    model, version = spec.name, spec.version
    config = settings.for_model(model, spec.settings)
    gpu = config.device == "gpu"
    resources: dict[str, Any] = {"gpu": 1} if gpu else {"cpu": str(config.workers_per_model)}
    max_batch = config.gpu_max_batch_size if gpu else config.max_batch_size

    class ModelRunner:
        def __init__(self) -> None:
            settings.apply_store()
            self.stats = BatchStats()
            self.error: str | None = None
            self.kernel: Kernel | None = None
            self.version = version
            started = time.perf_counter()
            try:  # NOTE: a broken model must not crash-loop the process; describe() says why
                spec = load_spec(f"{model}:{version}")
                self.kernel = kernel_of(spec.task)(spec, config.device, config.intra_op_threads)
                self.kernel.warmup()
            except Exception as error:
                self.error = f"{type(error).__name__}: {error}"
                log.error("runner %s failed to load: %s", model, self.error)
                return
            self.metrics = ModelMetrics(spec.name, spec.version)
            self.metrics.loaded(time.perf_counter() - started)
            log.info("runner %s ready (%s)", spec.tag, self.kernel.provider)

        @bentoml.api(
            batchable=True,
            max_batch_size=max_batch if config.batching else 1,
            max_latency_ms=int(config.remote_max_latency_ms),
        )
        def infer(self, items: list[Any]) -> list[Any]:
            """items: (queue key, payload, deadline) triples; runs each key's items as one batch.

            The deadline is wall-clock (time.time(); None = none): items whose deadline passed
            while BentoML queued them are answered EXPIRED instead of being computed.
            """
            if self.kernel is None:
                raise InferenceFailed(f"{model} is not loaded: {self.error}")
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
                outputs = run_isolated(self.kernel.run, key, [items[i][1] for i in rows], model)
                self.stats.record(len(rows))
                self.metrics.batch_done(len(rows), [], time.perf_counter() - started)
                for row, output in zip(rows, outputs):  # one bad item fails alone
                    failed = isinstance(output, Exception)
                    results[row] = failure(output) if failed else self.kernel.to_wire(output)
            return results

        @bentoml.api
        def describe(self) -> dict[str, Any]:
            return {
                "provider": self.kernel.provider if self.kernel else "none",
                "version": self.version,
                "error": self.error,
                "batches": self.stats.batches,
                "samples": self.stats.samples,
                "largest_batch": self.stats.largest,
                "expired": self.stats.expired,
            }

    ModelRunner.__name__ = ModelRunner.__qualname__ = f"Runner_{attribute_name(model, version)}"
    return bentoml.service(
        name=f"runner-{model}-{version}".lower(),
        # NOTE: BentoML's CORK dispatcher runs one batch at a time per worker process, so on CPU
        # the runner gets a process per parallel inference slot; a GPU gets one worker
        workers=1 if gpu else config.workers_per_model,
        resources=resources,
        traffic={"timeout": 60},
        runner_connection={"max_requests": NEVER, "max_age": float(NEVER)},
        **settings.observability_config(["/infer", "/describe"]),
    )(ModelRunner)


def remote_versions(settings: Settings) -> list[ModelSpec]:
    """The model versions served by runner services (the version policy's selection)."""
    if not settings.may_place_remote():
        return []  # NOTE: no store listing at import time when every model is local
    selected = select_versions(settings.models, settings.version_policy_of)
    return [
        spec
        for name, specs in selected.items()
        if settings.placement_of(name) == "remote"
        for spec in specs
    ]


def build_runner_services(settings: Settings, kernel_of: KernelOf) -> dict[str, Any]:
    """The gateway's dependencies: one runner service per remote model version, by the
    attribute name RemoteRunner finds its client under."""
    return {
        attribute_name(spec.name, spec.version): bentoml.depends(
            runner_service(spec, settings, kernel_of)
        )
        for spec in remote_versions(settings)
    }
