"""Remote placement, the runner service's side: one BentoML service per remote model (its own
processes), declared by the gateway as a dependency (bentoml.depends) and reached from
service/runners/client.py. The set of remote models is fixed at start (REMOTE_MODELS_ENV); the
versions each one holds follow the gateway's live repository through a desired-versions file
that every worker process of the service follows (class Versions).

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

import atexit
import contextlib
import glob
import json
import logging
import os
import re
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import bentoml

from service.batching.results import BatchStats, run_isolated
from service.core.errors import NotReady, ServingError
from service.core.machine import freeze_startup_heap, refreeze_heap
from service.core.metrics import ModelMetrics
from service.core.settings import Settings
from service.runners.base import KernelOf
from service.runtime.kernels import Kernel
from service.store.runtime_home import default_home
from service.store.specs import load_spec, select_versions

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


def attribute_name(model: str) -> str:
    return "runner_" + re.sub(r"\W", "_", model)


DESIRED_DIR = "runner-versions"
"""Folder (in this server's runtime directory) of the versions each remote model's runner
service must hold: desired/<model>.json, written by the gateway; each worker process answers
with held/<model>.<pid>.json (what it holds, or why a version failed)."""
REMOTE_MODELS_ENV = "DEEPSERVE_REMOTE_MODELS"
"""The remote models and their runner services' settings, fixed by `deepserve serve` at start
and inherited by every process (gateway workers, runner services, respawned ones)."""
FOLLOW_PERIOD_S = 0.1
RETRY_FAILED_S = 10.0
"""A worker retries a version it failed to load this often while the gateway still wants it."""


def versions_dir(settings: Settings) -> Path:
    return (settings.runtime_dir or default_home(settings.port)) / DESIRED_DIR


def write_json(path: Path, value: Any) -> None:
    """Replace `path` in one rename (readers never see a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def desire(settings: Settings, model: str, versions: list[str]) -> None:
    """The gateway's side: the versions `model`'s runner service must hold from now on."""
    write_json(versions_dir(settings) / "desired" / f"{model}.json", versions)


def held(settings: Settings, model: str) -> list[dict[str, Any]]:
    """What each live worker process of `model`'s runner service holds: [{"pid", "versions":
    {version: None or the error}}]; files of processes that died are left out."""
    found = []
    for path in (versions_dir(settings) / "held").glob(f"{glob.escape(model)}.*.json"):
        pid_text = path.name[len(model) + 1 : -len(".json")]
        if not pid_text.isdigit() or not alive(int(pid_text)):
            continue
        status = read_json(path)
        if isinstance(status, dict):
            found.append({"pid": int(pid_text), "versions": status})
    return found


class Versions:
    """One runner-service process's kernels by version, following the desired versions file."""

    def __init__(self, settings: Settings, model: str, kernel_of: KernelOf, config: Any):
        self.settings, self.model, self.kernel_of, self.config = settings, model, kernel_of, config
        self.kernels: dict[str, Kernel] = {}
        self.metrics: dict[str, ModelMetrics] = {}
        self.errors: dict[str, str] = {}
        self.failed_at: dict[str, float] = {}
        self.desired_file = versions_dir(settings) / "desired" / f"{model}.json"
        self.status_file = versions_dir(settings) / "held" / f"{model}.{os.getpid()}.json"
        self._seen: str | None = None
        self.lock = threading.Lock()

    def follow(self) -> None:
        """Load what the desired file adds, drop what it removes (the gateway drained those),
        then say what this process holds."""
        try:
            text = self.desired_file.read_text()
        except OSError:
            text = "[]"
        now = time.monotonic()
        retry = [v for v, at in self.failed_at.items() if now - at >= RETRY_FAILED_S]
        if text == self._seen and not retry and self.status_file.exists():
            return
        for version in retry:  # e.g. a respawn that found the device still busy: try again
            self.errors.pop(version, None)
            self.failed_at.pop(version, None)
        try:
            desired = json.loads(text)
        except ValueError:
            desired = []
        if not isinstance(desired, list):
            desired = []
        for version in desired:
            if version not in self.kernels and version not in self.errors:
                self._load(str(version))
        with self.lock:
            dropped = [v for v in self.kernels if v not in desired]
            for version in dropped:
                del self.kernels[version]
                log.info("runner %s:%s unloaded", self.model, version)
            for version in [v for v in self.errors if v not in desired]:
                del self.errors[version]
                self.failed_at.pop(version, None)
        if dropped:
            refreeze_heap()  # a version loaded at startup may hold cycles
        self._seen = text
        status = {v: None for v in self.kernels} | self.errors
        write_json(self.status_file, status)

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        try:  # NOTE: a broken version must not crash-loop the process; the status says why
            spec = load_spec(f"{self.model}:{version}")
            kernel = self.kernel_of(spec.task)(
                spec, self.config.device, self.config.intra_op_threads, 1, self.config.io_binding
            )
            kernel.warmup()
        except Exception as error:
            self.errors[version] = f"{type(error).__name__}: {error}"
            self.failed_at[version] = time.monotonic()
            log.error("runner %s:%s failed to load: %s", self.model, version, self.errors[version])
            return
        metrics = ModelMetrics(self.model, version)
        metrics.loaded(time.perf_counter() - started)
        with self.lock:
            self.kernels[version] = kernel
            self.metrics[version] = metrics
        log.info("runner %s:%s ready (%s)", self.model, version, kernel.provider)

    def run_forever(self) -> None:
        while True:
            try:
                self.follow()
            except Exception:  # never let the follower die: the next round retries
                log.exception("runner %s: following the desired versions failed", self.model)
            time.sleep(FOLLOW_PERIOD_S)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.status_file.unlink()


def runner_service(model: str, own: dict[str, Any], settings: Settings, kernel_of: KernelOf) -> Any:
    """Create the BentoML runner service class of one remote model (import time,
    deterministic: `own` is the model's settings fixed at start). It holds every version the
    gateway wants (see Versions) and runs each item on the version the item names."""
    config = settings.for_model(model, own)
    gpu = config.device == "gpu"
    resources: dict[str, Any] = {"gpu": 1} if gpu else {"cpu": str(config.workers_per_model)}
    max_batch = config.gpu_max_batch_size if gpu else config.max_batch_size

    class ModelRunner:
        def __init__(self) -> None:
            settings.apply_store()
            self.stats = BatchStats()
            self.versions = Versions(settings, model, kernel_of, config)
            self.versions.follow()  # what is wanted now, loaded before the first request
            freeze_startup_heap()
            threading.Thread(
                target=self.versions.run_forever, name=f"follow-{model}", daemon=True
            ).start()
            atexit.register(self.versions.close)

        @bentoml.api(
            batchable=True,
            max_batch_size=max_batch if config.batching else 1,
            max_latency_ms=int(config.remote_max_latency_ms),
        )
        def infer(self, items: list[Any]) -> list[Any]:
            """items: (queue key, payload, deadline, version) tuples; runs each (version, key)'s
            items as one batch.

            The deadline is wall-clock (time.time(); None = none): items whose deadline passed
            while BentoML queued them are answered EXPIRED instead of being computed.
            """
            results: list[Any] = [None] * len(items)
            groups: dict[tuple[str, Hashable], list[int]] = {}
            now = time.time()
            with self.versions.lock:
                kernels = dict(self.versions.kernels)
                metrics = dict(self.versions.metrics)
            for index, (key, _, deadline, version) in enumerate(items):
                if version not in kernels:
                    why = self.versions.errors.get(version, "not loaded in this runner process")
                    results[index] = failure(NotReady(f"{model}:{version}: {why}"))
                elif deadline is not None and now >= deadline:
                    self.stats.expired += 1
                    metrics[version].rejected("deadline")
                    results[index] = EXPIRED
                else:
                    groups.setdefault((version, key), []).append(index)
            for (version, key), rows in groups.items():  # one executed batch per queue key
                kernel = kernels[version]
                started = time.perf_counter()
                outputs = run_isolated(kernel.run, key, [items[i][1] for i in rows], model)
                self.stats.record(len(rows))
                metrics[version].batch_done(len(rows), [], time.perf_counter() - started)
                for row, output in zip(rows, outputs):  # one bad item fails alone
                    failed = isinstance(output, Exception)
                    results[row] = failure(output) if failed else kernel.to_wire(output)
            return results

        @bentoml.api
        def describe(self) -> dict[str, Any]:
            with self.versions.lock:
                providers = {v: k.provider for v, k in self.versions.kernels.items()}
            return {
                "providers": providers,
                "errors": dict(self.versions.errors),
                "batches": self.stats.batches,
                "samples": self.stats.samples,
                "largest_batch": self.stats.largest,
                "expired": self.stats.expired,
            }

    ModelRunner.__name__ = ModelRunner.__qualname__ = f"Runner_{attribute_name(model)}"
    return bentoml.service(
        name=f"runner-{model}".lower(),
        # NOTE: BentoML's CORK dispatcher runs one batch at a time per worker process, so on CPU
        # the runner gets a process per parallel inference slot; a GPU gets one worker
        workers=1 if gpu else config.workers_per_model,
        resources=resources,
        traffic={"timeout": 60},
        runner_connection={"max_requests": NEVER, "max_age": float(NEVER)},
        **settings.observability_config(["/infer", "/describe"]),
    )(ModelRunner)


def remote_models(settings: Settings) -> dict[str, dict[str, Any]]:
    """The models served by runner services, with the settings their services are built with
    (the newest selected version's own settings): from REMOTE_MODELS_ENV when `deepserve serve`
    fixed them at start, else read from the store now."""
    fixed = os.environ.get(REMOTE_MODELS_ENV)
    if fixed:
        return dict(json.loads(fixed))
    if not settings.may_place_remote():
        return {}  # NOTE: no store listing at import time when every model is local
    # NOTE: in explicit mode any stored model may be loaded later: each gets its service
    names = ["*"] if settings.model_control == "explicit" else settings.models
    selected = select_versions(names, settings.version_policy_of)
    return {
        name: specs[0].settings
        for name, specs in selected.items()
        if settings.placement_of(name) == "remote"
    }


def build_runner_services(settings: Settings, kernel_of: KernelOf) -> dict[str, Any]:
    """The gateway's dependencies: one runner service per remote model, by the attribute name
    RemoteRunner finds its client under."""
    return {
        attribute_name(model): bentoml.depends(runner_service(model, own, settings, kernel_of))
        for model, own in remote_models(settings).items()
    }
