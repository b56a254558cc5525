"""The gateway's side of remote placement: RemoteRunner, the handle of a model's runner service
(service/runners/service.py), called through the BentoML dependency client the gateway declared.

NOTE (bentoml 1.4.39): the dependency client replaces its aiohttp session every 100 requests,
closing it while requests are in flight (bentoml/BentoML#5540, #5544); the runner service raises
both refresh limits (runner_connection) and RemoteRunner retries an idempotent call once on a
transport error, so a refresh that still happens cannot fail a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import bentoml

from service.core.errors import (
    DeadlineExceeded,
    InferenceFailed,
    InvalidInput,
    NotReady,
    Overloaded,
    ServingError,
)
from service.core.metrics import ModelMetrics, batch_totals, note_inferred, record_model
from service.core.settings import Settings
from service.core.statistics import RequestScope, ns
from service.runners.base import admission_for, statistics_for
from service.runners.service import EXPIRED, FAILED, desire, held, remote_models
from service.runtime.kernels import Kernel
from service.store.specs import ModelSpec

log = logging.getLogger("deepserve.remote")

PROBE_PERIOD_S, PROBE_TIMEOUT_S, PROBE_FAILURES = 1.0, 2.0, 2
"""Runner service health probing from the gateway (see RemoteRunner._supervise)."""

ClientOf = Callable[[str, str], Any]
"""(model, version) -> the gateway's BentoML dependency client of that runner service, or None."""


def failure_error(answer: dict[str, Any], model: str) -> ServingError:
    if answer.get("status") == 400:
        return InvalidInput(str(answer.get("message")))
    if answer.get("status") == 503:
        return NotReady(str(answer.get("message")), headers={"Retry-After": "1"})
    return InferenceFailed(f"{model}: {answer.get('message')}")


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


_wanted: dict[str, Counter[str]] = {}
"""Versions this gateway wants each remote model's runner service to hold, counted per runner
that wants it (a version reloaded while its old runner still drains is wanted twice; one gateway
process per server: the desired-versions file is written from here only)."""


def want(settings: Settings, model: str, version: str, wanted: bool) -> None:
    versions = _wanted.setdefault(model, Counter())
    versions[version] += 1 if wanted else -1
    desire(settings, model, sorted(v for v, n in versions.items() if n > 0))


class RemoteRunner:
    """Gateway-side handle of a model's runner service."""

    placement = "remote"

    def __init__(
        self, spec: ModelSpec, settings: Settings, kernel_class: type[Kernel], client_of: ClientOf
    ):
        self.client_of = client_of
        self.name = spec.name
        self.spec = spec
        self.settings = settings
        self.config = settings.for_model(spec.name, spec.settings, spec.tuned)
        self.client: Any = None
        self.remote_provider = "unknown"
        self.error: str | None = None
        self.calls = 0
        self.retries = 0
        """Runner calls that failed once and were retried (session swaps, resets)."""
        self.expired = 0
        """Calls not made because their deadline had passed (checked before the hop only)."""
        self.kernel_class = kernel_class
        self.metrics = ModelMetrics(spec.name, spec.version)
        self.statistics = statistics_for(spec, settings)
        """Gateway-side: a call to the runner service (its queue and batch included) counts as
        compute_infer, decoding its answer as compute_output; execution and inference counts
        come from the runner service's batch counters (`refresh`)."""
        self.admission = admission_for(spec, settings, self.statistics)
        self.in_flight = 0
        self.described = False
        self.remote_stats: dict[str, int] = {}
        self._probe: asyncio.Task[None] | None = None
        # NOTE: the runner service was built at start with its model's settings then, which a
        # later version's own settings cannot change
        service_config = settings.for_model(spec.name, remote_models(settings).get(spec.name))
        gpu = service_config.device == "gpu"
        self.processes = 1 if gpu else service_config.workers_per_model
        """Worker processes of the model's runner service, each of which must hold this
        version before it takes traffic."""
        self.holding = 0
        """How many of them hold this version now (their status files)."""
        self.lost_since: float | None = None
        """time.monotonic() when calls to the runner service started failing (None: healthy)."""

    @property
    def ready(self) -> bool:
        return (
            self.client is not None
            and self.described
            and self.error is None
            and self.holding >= self.processes
        )

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
        return self.kernel_class.bucket(item) if self.config.length_buckets else 0

    async def start(self) -> None:
        self.client = self.client_of(self.name, self.spec.version)
        if self.client is None:
            self.error = (
                "no runner service for this model: the remote models are fixed when the server "
                "starts; restart it to serve a model newly placed remote"
            )
            return
        want(self.settings, self.name, self.spec.version, True)
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
            self._check_held()
            # settled: every worker holds it, and this answer (from one of them, maybe asked
            # before it had loaded) knows it; or a worker failed to load it
            held_here = self.spec.version in info.get("providers", {})
            if not self.described and (
                self.error or (self.holding >= self.processes and held_here)
            ):
                self._described(info)
            await asyncio.sleep(PROBE_PERIOD_S if self.ready else 0.1)

    def _check_held(self) -> None:
        """How many worker processes hold this version; a process that failed to load it makes
        it fail (the versions served before stay)."""
        version, holding = self.spec.version, 0
        for process in held(self.settings, self.name):
            versions = process["versions"]
            if version in versions and versions[version] is None:
                holding += 1
            elif versions.get(version) and not self.described:  # later: that worker retries
                self.error = f"runner service failed to load the model: {versions[version]}"
        self.holding = holding

    def _described(self, info: dict[str, Any]) -> None:
        self.remote_provider = info.get("providers", {}).get(self.spec.version, "unknown")
        if self.error:
            log.error("model %s: %s", self.spec.tag, self.error)
        self.described = True
        if self.lost_since is not None:
            back_after = time.monotonic() - self.lost_since
            log.info("model %s: runner service back after %.1f s", self.name, back_after)
            self.lost_since = None
        opsets = [graph.opset for graph in self.spec.graphs.values()]
        record_model(
            self.spec.name, self.spec.version, opsets, self.remote_provider, self.placement
        )

    async def refresh(self) -> None:
        """The runner service's batch counters (for /v1/models), summed over its worker
        processes: read from the shared metrics directory when this host runs them, else asked
        from one worker."""
        totals = await asyncio.to_thread(batch_totals, self.spec.name, self.spec.version)
        if totals is not None:
            self.remote_stats = totals
            self.statistics.executed_elsewhere(totals["batches"], totals["samples"])
            return
        if self.ready:
            try:
                info = await self.client.to_async.call("describe")
            except Exception as error:
                log.warning("model %s: describe failed: %s", self.name, error)
                return
            keys = ("batches", "samples", "largest_batch", "expired")
            self.remote_stats = {k: int(info.get(k, 0)) for k in keys}
            self.statistics.executed_elsewhere(
                self.remote_stats["batches"], self.remote_stats["samples"]
            )

    async def stop(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self.client is not None:  # drained by now: the runner service may drop it
            want(self.settings, self.name, self.spec.version, False)
        self.client = None

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        if self.client is None or not self.ready:
            why = self.error or ("runner service unavailable" if self.lost_since else "loading")
            raise NotReady(f"model {self.name} is not ready: {why}", headers={"Retry-After": "1"})
        request = self.statistics.reached()
        if deadline is not None and time.monotonic() >= deadline:
            self.expired += 1
            self.metrics.rejected("deadline")
            raise DeadlineExceeded(f"deadline passed before {self.name} was called")
        self.calls += 1
        self.in_flight += 1
        self.metrics.pending(self.in_flight)  # queued or computing at the runner service
        try:
            return await self._call(key, item, deadline, request)
        finally:
            self.in_flight -= 1
            self.metrics.pending(self.in_flight)

    async def _call(
        self, key: Hashable, item: Any, deadline: float | None, request: RequestScope | None
    ) -> Any:
        # the runner service checks the deadline again when BentoML hands it the batch
        wall_deadline = None if deadline is None else time.time() + deadline - time.monotonic()
        for attempt in (1, 2):
            try:
                sent = time.monotonic()
                call = self.client.to_async.call(
                    "infer", [(key, item, wall_deadline, self.spec.version)]
                )
                if deadline is None:
                    (result,) = await call
                else:
                    (result,) = await until_deadline(call, deadline)
                if result == EXPIRED:  # counted by the runner service
                    raise DeadlineExceeded(f"deadline passed while {self.name} queued it")
                if isinstance(result, dict) and FAILED in result:
                    raise failure_error(result[FAILED], self.name)
                called = time.monotonic()
                note_inferred()
                answer = self.kernel_class.from_wire(result)
                self.statistics.answered(1)
                if request is not None:
                    request.item_done(0, 0, ns(called - sent), ns(time.monotonic() - called))
                return answer
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
                "max_latency_ms": self.config.remote_max_latency_ms,
                "calls": self.calls,
                "retries": self.retries,
                **self.remote_stats,
            },
        }
