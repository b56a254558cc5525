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

from service.batching.batcher import BatchStats, run_isolated
from service.core.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    NotReady,
    Overloaded,
    ServingError,
)
from service.core.metrics import ModelMetrics, batch_totals, note_inferred, record_model
from service.core.settings import Settings, get_settings
from service.runners.base import admission_for
from service.runtime.kernels import KERNELS, Kernel, make_kernel
from service.store.specs import ModelSpec, load_spec, select_versions

log = logging.getLogger("deepserve.remote")

NEVER = 10**9  # requests / seconds: keep one client session for the life of the process
PROBE_PERIOD_S, PROBE_TIMEOUT_S, PROBE_FAILURES = 1.0, 2.0, 2
"""Runner service health probing from the gateway (see RemoteRunner._supervise)."""
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


def failure_error(answer: dict[str, Any], model: str) -> ServingError:
    if answer.get("status") == 400:
        return InvalidInput(str(answer.get("message")))
    return InferenceFailed(f"{model}: {answer.get('message')}")


def attribute_name(model: str, version: str) -> str:
    return "runner_" + re.sub(r"\W", "_", f"{model}_{version}")


def runner_service(model: str, version: str, settings: Settings) -> Any:
    """Create the BentoML runner service class for one model version (import time,
    deterministic)."""
    gpu = settings.device == "gpu"
    resources: dict[str, Any] = {"gpu": 1} if gpu else {"cpu": str(settings.workers_per_model)}
    max_batch = settings.gpu_max_batch_size if gpu else settings.max_batch_size

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
                self.kernel = make_kernel(spec, settings.device, settings.intra_op_threads)
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
            max_batch_size=max_batch if settings.batching else 1,
            max_latency_ms=int(settings.remote_max_latency_ms),
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
        workers=1 if gpu else max(1, settings.workers_per_model),
        resources=resources,
        traffic={"timeout": 60},
        runner_connection={"max_requests": NEVER, "max_age": float(NEVER)},
        **settings.observability_config(["/infer", "/describe"]),
    )(ModelRunner)


def remote_versions(settings: Settings) -> list[tuple[str, str]]:
    """(model, version) pairs served by runner services (the version policy's selection)."""
    if settings.placement != "remote" and "remote" not in settings.placements.values():
        return []  # NOTE: no store listing at import time when every model is local
    selected = select_versions(settings.models, settings.version_policy, settings.versions)
    return [
        (name, spec.version)
        for name, specs in selected.items()
        if settings.placement_of(name) == "remote"
        for spec in specs
    ]


async def until_deadline(call: Any, deadline: float) -> Any:
    """Await `call` until `deadline` (time.monotonic()), else raise TimeoutError at once.

    NOTE: asyncio.wait_for would also wait for the cancelled call to unwind, which for a call
    to a dead runner service takes seconds; the caller's deadline must not wait for that."""
    task = asyncio.ensure_future(call)
    done, _ = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
    if task in done:
        return task.result()
    task.cancel()
    task.add_done_callback(lambda finished: finished.cancelled() or finished.exception())
    raise TimeoutError


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
        self.admission = admission_for(spec, settings)
        self.in_flight = 0
        self.described = False
        self.remote_stats: dict[str, int] = {}
        self._probe: asyncio.Task[None] | None = None
        self.lost_since: float | None = None
        """time.monotonic() when calls to the runner service started failing (None: healthy)."""

    @property
    def ready(self) -> bool:
        return self.client is not None and self.described and self.error is None

    def _unavailable(self, error: Exception) -> NotReady:
        """The runner service stopped answering (crashed, restarting): not ready until the
        supervising probe reaches it again. Returns the error for the caller (503)."""
        if self.lost_since is None:
            self.lost_since = time.monotonic()
            log.error("model %s: runner service lost (%r); probing for it", self.name, error)
        self.described = False
        return NotReady(
            f"model {self.name}'s runner service is unavailable (restarting?); retry shortly",
            headers={"Retry-After": "1"},
        )

    @property
    def provider(self) -> str:
        return self.remote_provider

    def bucket(self, item: Any) -> Hashable:
        return self.kernel_class.bucket(item) if self.settings.length_buckets else 0

    async def start(self) -> None:
        self.client = getattr(self.owner, attribute_name(self.name, self.spec.version), None)
        if self.client is None:
            self.error = "no runner service dependency declared for this model"
            return
        self._probe = asyncio.create_task(self._supervise(), name=f"supervise-{self.name}")

    async def _supervise(self) -> None:
        """Probe the runner service (its describe API) for as long as the gateway runs: until it
        first answers (it may still be loading), then every PROBE_PERIOD_S. PROBE_FAILURES
        probes in a row without an answer in PROBE_TIMEOUT_S mean it is gone (killed,
        restarting: the socket stays open while circus respawns it, so calls would only hang)
        and the model is not ready, failing fast with 503, until it answers again."""
        failures = 0
        while self.client is not None:
            try:
                info = await asyncio.wait_for(
                    self.client.to_async.call("describe"), PROBE_TIMEOUT_S
                )
            except Exception as error:
                failures += 1
                if self.described and failures >= PROBE_FAILURES:
                    self._unavailable(error)
                await asyncio.sleep(0.2 if not self.described else PROBE_PERIOD_S / 4)
                continue
            failures = 0
            if not self.described:
                self._described(info)
            await asyncio.sleep(PROBE_PERIOD_S)

    def _described(self, info: dict[str, Any]) -> None:
        self.remote_provider = info["provider"]
        if info.get("error"):
            self.error = f"runner service failed to load the model: {info['error']}"
            log.error("model %s: %s", self.name, self.error)
        elif info["version"] != self.spec.version:
            self.error = f"runner serves {info['version']}, gateway expects {self.spec.version}"
            log.error("model %s: %s", self.name, self.error)
        self.described = True
        if self.lost_since is not None:
            back_after = time.monotonic() - self.lost_since
            log.info("model %s: runner service back after %.1f s", self.name, back_after)
            self.lost_since = None
        record_model(self.spec, self.remote_provider, self.placement)

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
        if self.client is None or not self.ready:
            why = self.error or ("runner service unavailable" if self.lost_since else "loading")
            raise NotReady(f"model {self.name} is not ready: {why}", headers={"Retry-After": "1"})
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
                call = self.client.to_async.call("infer", [(key, item, wall_deadline)])
                if deadline is None:
                    (result,) = await call
                else:
                    (result,) = await until_deadline(call, deadline)
                if result == EXPIRED:  # counted by the runner service
                    raise DeadlineExceeded(f"deadline passed while {self.name} queued it")
                if isinstance(result, dict) and FAILED in result:
                    raise failure_error(result[FAILED], self.name)
                note_inferred()
                return self.kernel_class.from_wire(result)
            except ServingError:
                raise
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    self.metrics.rejected("deadline")
                    raise DeadlineExceeded(f"deadline passed waiting for {self.name}") from None
                if attempt == 2:
                    raise self._unavailable(TimeoutError("runner call timed out")) from None
            except bentoml.exceptions.BentoMLException as error:
                status = getattr(error, "error_code", None)
                if status is not None and int(status) in (429, 503):
                    self.metrics.rejected("runner_overloaded")
                    raise Overloaded(f"runner for {self.name} is shedding load: {error}") from None
                if attempt == 2:
                    raise InferenceFailed(f"runner for {self.name} failed: {error}") from None
            except Exception as error:  # transport: the session was swapped or reset
                if attempt == 2:
                    raise self._unavailable(error) from None
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
        attribute_name(m, v): bentoml.depends(runner_service(m, v, settings))
        for m, v in remote_versions(settings)
    }
