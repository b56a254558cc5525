"""The model repository: which models and versions are served, their runners, readiness.

One ServingState is shared by every protocol front end. It is given, by the composition root
(service/gateway.py), the task registry's kernel lookup and the remote runner services' clients,
so this layer knows neither tasks nor BentoML's service object.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.core.errors import ModelNotFound, NotReady
from service.core.metrics import note_model, observe_preprocess
from service.core.settings import Settings
from service.runners.base import KernelOf, Runner
from service.runners.client import ClientOf, RemoteRunner
from service.runners.local import LocalRunner
from service.store.specs import ModelSpec, select_versions

log = logging.getLogger("deepserve.state")


class ServingState:
    """Owns one runner per served model version; `ready` once they have loaded and warmed up."""

    def __init__(
        self, settings: Settings, kernel_of: KernelOf, client_of: ClientOf | None = None
    ) -> None:
        self.settings = settings
        self.kernel_of = kernel_of
        """Task name -> kernel class (the task registry's lookup)."""
        self.client_of: ClientOf = client_of or (lambda model, version: None)
        """(model, version) -> the runner service client (remote placement) or None."""
        self.versions: dict[str, dict[str, Runner]] = {}
        """Served runners per model name, by version, newest first."""
        self.runners: dict[str, Runner] = {}
        """The default (newest served) runner per model name: requests naming no version."""
        self.missing: dict[str, str] = {}
        self.started = False
        # Decoding and preprocessing run here, off the event loop, overlapping inference.
        self.preprocess_pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )

    async def start(self) -> None:
        problems: dict[str, str] = {}
        settings = self.settings
        selected = select_versions(settings.models, settings.version_policy_of, problems)
        for name, why in problems.items():
            if name in selected:  # e.g. one pinned version absent: the others are served
                log.warning("model %s: %s", name, why)
            else:
                self.missing[name] = why
                log.error("model %s: %s", name, why)
        for name, specs in selected.items():
            runners = {}
            for spec in specs:
                try:
                    runners[spec.version] = self.make_runner(spec)
                except KeyError as error:  # a task this build does not know: this model only
                    log.error("model %s: %s", spec.tag, error.args[0])
                    self.missing.setdefault(name, f"{spec.tag}: {error.args[0]}")
            if runners:
                self.versions[name] = runners
                self.runners[name] = next(iter(runners.values()))
        await asyncio.gather(*(runner.start() for runner in self.all_runners()))
        self.started = True

    def make_runner(self, spec: ModelSpec) -> Runner:
        """The runner of one model version; KeyError when no kernel computes its task."""
        kernel_class = self.kernel_of(spec.task)
        if self.settings.for_model(spec.name, spec.settings).placement == "remote":
            return RemoteRunner(spec, self.settings, kernel_class, self.client_of)
        return LocalRunner(spec, self.settings, kernel_class)

    def all_runners(self) -> list[Runner]:
        return [runner for versions in self.versions.values() for runner in versions.values()]

    async def stop(self) -> None:
        await asyncio.gather(*(runner.stop() for runner in self.all_runners()))
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """Every model settled and serving; with require_all_models off, a model that is missing
        or failed to load (reported with its reason) does not hold the others back."""
        runners = self.all_runners()
        if not self.started:
            return False
        if self.settings.require_all_models:
            return not self.missing and all(runner.ready for runner in runners)
        return any(r.ready for r in runners) and all(r.ready or r.error for r in runners)

    def failed(self) -> dict[str, str]:
        """Models that cannot serve, with the reason."""
        failed = dict(self.missing)
        failed.update({r.spec.tag: r.error for r in self.all_runners() if r.error})
        return failed

    def runner(self, name: str, task: str | None = None, version: str | None = None) -> Runner:
        """The runner of `name` at `version` (None or "": the newest served version)."""
        runner = self.runners.get(name)
        if runner is None:
            if name in self.missing:
                raise NotReady(f"model {name!r} is not available: {self.missing[name]}")
            known = ", ".join(sorted(self.runners)) or "none"
            raise ModelNotFound(f"unknown model {name!r}; served models: {known}")
        if version:
            runner = self.versions[name].get(version)  # type: ignore[assignment]
            if runner is None:
                served = ", ".join(self.versions[name])
                raise ModelNotFound(
                    f"model {name!r} has no served version {version!r}; served: {served}"
                )
        if task is not None and runner.spec.task != task:
            raise ModelNotFound(f"model {name!r} is a {runner.spec.task} model, not {task}")
        note_model(runner.spec.name, runner.spec.version)
        return runner

    async def preprocess(self, func: Any, *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.preprocess_pool, func, *args
            )
        finally:
            observe_preprocess(time.perf_counter() - started)

    def describe(self, name: str, version: str | None = None) -> dict[str, Any]:
        runner = self.runner(name, version=version)
        spec = runner.spec
        return {
            "name": spec.name,
            "version": spec.version,
            "default": runner is self.runners[name],
            "served_versions": list(self.versions[name]),
            "task": spec.task,
            "metrics": spec.metrics,
            "inputs": {
                g: [t.model_dump() for t in graph.inputs] for g, graph in spec.graphs.items()
            },
            "outputs": {
                g: [t.model_dump() for t in graph.outputs] for g, graph in spec.graphs.items()
            },
            "labels": len(spec.labels) if spec.labels else None,
            "preprocessing": spec.preprocessing,
            "data": spec.data,
            **runner.describe(),
        }
