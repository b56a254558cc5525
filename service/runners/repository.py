"""The model repository: which models and versions are served, their runners, readiness.

One ServingState is shared by every protocol front end. It is given, by the composition root
(service/gateway.py), the task registry's kernel lookup and the remote runner services' clients,
so this layer knows neither tasks nor BentoML's service object.

Length: ServingState is one state machine (load, warm, route, drain, retire) over one routing
table that is replaced, never mutated; its steps only make sense next to each other.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from service.core.errors import Conflict, ModelNotFound, NotReady
from service.core.machine import refreeze_heap
from service.core.metrics import note_model, observe_preprocess
from service.core.settings import Settings
from service.runners.base import KernelOf, Runner
from service.runners.client import ClientOf, RemoteRunner
from service.runners.local import LocalRunner
from service.store.specs import ModelSpec, list_specs, select_versions


def timed(func: Callable[[], Any]) -> Callable[[], Any]:
    """func, recording its run time as preprocessing (deepserve_preprocess_duration_seconds)
    for the request's model: it runs in the caller's context (the model noted in a contextvar)
    wherever it is called."""
    context = contextvars.copy_context()

    def measured() -> Any:
        started = time.perf_counter()
        try:
            return func()
        finally:
            observe_preprocess(time.perf_counter() - started)

    return lambda: context.run(measured)


log = logging.getLogger("deepserve.state")


READY, LOADING, UNAVAILABLE = "READY", "LOADING", "UNAVAILABLE"
"""Model version states in the repository index (Triton's names)."""


class ServingState:
    """The served model versions and their runners; `ready` once they have loaded and warmed up.

    What is served changes while requests flow (model_control poll or explicit): a new version is
    loaded and warmed beside the old ones and takes traffic only once ready; a version that
    leaves is first removed from routing, then drained (requests already admitted finish), then
    stopped. Routing tables are replaced, never mutated, so a reader (another thread, a request
    between two awaits) always sees one consistent set.
    """

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
        """Models asked for that serve nothing, with the reason."""
        self.loading: dict[str, Runner] = {}
        """Versions loading beside the served ones (tag -> runner), not yet taking traffic."""
        self.refused: dict[str, str] = {}
        """Versions that failed to load live (tag -> reason); the versions before keep serving."""
        self.unloaded: dict[str, str] = {}
        """Models taken out of service by a repository call or the store (name -> reason)."""
        self.started = False
        self.listeners: list[Callable[[], Awaitable[None]]] = []
        """Called after every change of what is served (e.g. gRPC health)."""
        self.changes = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._leaving: set[Any] = set()
        """Runners out of routing, draining (stopped at shutdown if still there)."""
        # Decoding and preprocessing run here, off the event loop, overlapping inference.
        self.preprocess_pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )

    @property
    def mode(self) -> str:
        return self.settings.model_control

    async def start(self) -> None:
        problems: dict[str, str] = {}
        settings = self.settings
        selected = await asyncio.to_thread(
            select_versions, settings.models, settings.version_policy_of, problems
        )
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
        if self.mode == "poll":
            self._poller = asyncio.create_task(self._poll(), name="model-store-poll")

    def make_runner(self, spec: ModelSpec) -> Runner:
        """The runner of one model version; KeyError when no kernel computes its task."""
        kernel_class = self.kernel_of(spec.task)
        if self.settings.for_model(spec.name, spec.settings, spec.tuned).placement == "remote":
            return RemoteRunner(spec, self.settings, kernel_class, self.client_of)
        return LocalRunner(spec, self.settings, kernel_class)

    def all_runners(self) -> list[Runner]:
        return [runner for versions in self.versions.values() for runner in versions.values()]

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        for task in list(self._retiring):
            task.cancel()
        leaving = self.all_runners() + list(self.loading.values()) + list(self._leaving)
        await asyncio.gather(*(runner.stop() for runner in leaving))
        self.preprocess_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def ready(self) -> bool:
        """Every model settled and serving; with require_all_models off, a model that is missing
        or failed to load (reported with its reason) does not hold the others back. In explicit
        mode a server that serves nothing yet is ready (it is ready to be told what to load)."""
        runners = self.all_runners()
        if not self.started:
            return False
        if self.settings.require_all_models:
            return not self.missing and all(runner.ready for runner in runners)
        settled = all(r.ready or r.error for r in runners)
        if self.mode == "explicit":
            return settled
        return any(r.ready for r in runners) and settled

    def failed(self) -> dict[str, str]:
        """Models that cannot serve, with the reason."""
        failed = dict(self.missing)
        failed.update({r.spec.tag: r.error for r in self.all_runners() if r.error})
        return failed

    def runner(self, name: str, task: str | None = None, version: str | None = None) -> Runner:
        """The runner of `name` at `version` (None or "": the newest served version)."""
        runner = self.runners.get(name)
        if runner is None:
            if not self.started:  # the first load is still choosing versions
                raise NotReady(f"model {name!r} is not loaded yet: the server is starting")
            if name in self.missing:
                raise NotReady(f"model {name!r} is not available: {self.missing[name]}")
            if name in self.unloaded:
                raise ModelNotFound(f"model {name!r} is not loaded ({self.unloaded[name]})")
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

    # -- changing what is served ------------------------------------------------------------

    async def _poll(self) -> None:
        """Poll mode: follow the store every poll_interval_s (one failed round is logged and
        retried next round; it never stops the loop)."""
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.follow_store()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model store poll failed; retrying in %.0f s", 5)

    async def follow_store(self, names: list[str] | None = None) -> dict[str, str]:
        """Serve what the store and the version policy select now for `names` (default: the
        `models` setting): load new versions, retire replaced ones, unload models gone from the
        store. Returns the problems found (name or tag -> reason)."""
        settings = self.settings
        if not (settings.store / "models").is_dir():  # an unmounted store is not an empty one
            raise NotReady(f"the model store {settings.store} is not readable")
        problems: dict[str, str] = {}
        wanted = settings.models if names is None else names
        async with self.changes:  # NOTE: read the store inside: two loads never roll back
            selected = await asyncio.to_thread(
                select_versions, wanted, settings.version_policy_of, problems
            )
            for name, specs in selected.items():  # forget refusals of versions no longer chosen
                chosen = {spec.tag for spec in specs}
                for tag in [t for t in self.refused if t.split(":")[0] == name]:
                    if tag not in chosen:
                        del self.refused[tag]
            if names is None:  # models served but no longer selected: gone from the store
                for name in set(self.versions) - set(selected):
                    if name not in problems or "not in the model store" in problems[name]:
                        self._retire_model(name, "removed from the model store")
            changed = await asyncio.gather(
                *(self._serve(name, specs) for name, specs in selected.items())
            )
            for name in selected:
                self.missing.pop(name, None)
            for name, why in problems.items():
                if name not in self.versions and name not in selected:
                    self.missing[name] = why
            if any(changed) or names is None:
                await self._changed()
        return problems

    async def _serve(self, name: str, specs: list[ModelSpec]) -> bool:
        """Make `specs` (newest first) the served versions of `name`; True if anything changed.
        New versions load beside the served ones; the old ones are retired only once every
        selected version is ready, so a version that fails leaves the old ones serving."""
        current = self.versions.get(name, {})
        # a version refused before is not retried by every poll (an explicit load retries it)
        usable = [s for s in specs if s.tag not in self.refused or s.version in current]
        fresh = [spec for spec in usable if spec.version not in current]
        if not fresh and list(current) == [spec.version for spec in usable]:
            return False
        loaded = await asyncio.gather(*(self._load(spec) for spec in fresh))
        ready = {spec.version: runner for spec, runner in zip(fresh, loaded) if runner}
        if not ready and fresh and current:
            return False  # every new version was refused: the served ones stay as they are
        complete = len(ready) == len(fresh) and len(usable) == len(specs)
        keep = {
            spec.version: current.get(spec.version) or ready[spec.version]
            for spec in usable
            if spec.version in current or spec.version in ready
        }
        leaving = [] if not complete else [v for v in current if v not in keep]
        for version in current:  # not selected now, but kept while a selected one failed
            if version not in keep and version not in leaving:
                keep[version] = current[version]
        if list(keep) == list(current) and all(keep[v] is current[v] for v in keep):
            return False
        self._route(name, keep)
        for version in leaving:
            self._retire(current[version], "replaced")
        self.unloaded.pop(name, None)
        self.missing.pop(name, None)
        return True

    async def _load(self, spec: ModelSpec) -> Runner | None:
        """Load and warm one version beside the served ones; None (with the reason kept in
        `refused`) when it fails or does not get ready within load_timeout_s."""
        try:
            runner = self.make_runner(spec)
        except KeyError as error:
            self.refused[spec.tag] = str(error.args[0])
            return None
        self.loading[spec.tag] = runner
        started = time.perf_counter()
        try:
            await runner.start()
            deadline = time.monotonic() + self.settings.load_timeout_s
            while not (runner.ready or runner.error) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a remote runner is ready once its service answers
        finally:
            self.loading.pop(spec.tag, None)
        if not runner.ready:
            why = runner.error or f"not ready within {self.settings.load_timeout_s:g} s"
            self.refused[spec.tag] = why
            log.error("model %s refused: %s (the served versions stay)", spec.tag, why)
            await runner.stop()
            return None
        self.refused.pop(spec.tag, None)
        log.info("model %s loaded in %.2f s", spec.tag, time.perf_counter() - started)
        return runner

    def _route(self, name: str, versions: dict[str, Runner]) -> None:
        """Replace the routing tables (a new dict each time: readers never see a half-change)."""
        served = dict(self.versions)
        runners = dict(self.runners)
        if versions:
            served[name] = versions
            runners[name] = next(iter(versions.values()))
        else:
            served.pop(name, None)
            runners.pop(name, None)
        self.versions, self.runners = served, runners

    def _retire_model(self, name: str, why: str) -> None:
        leaving = self.versions.get(name, {})
        self._route(name, {})
        self.unloaded[name] = why
        for runner in leaving.values():
            self._retire(runner, why)

    def _retire(self, runner: Runner, why: str) -> None:
        """Out of routing already: drain in the background (requests admitted finish), then
        stop; requests still queued after unload_drain_s get 503."""
        self._leaving.add(runner)
        task = asyncio.create_task(self._drain(runner, why), name=f"retire-{runner.spec.tag}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        task.add_done_callback(lambda _: refreeze_heap())  # the version's cycles can go

    async def _drain(self, runner: Runner, why: str) -> None:
        deadline = time.monotonic() + self.settings.unload_drain_s
        while runner.admission.inside and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = runner.admission.inside
        await runner.stop()
        self._leaving.discard(runner)
        log.info("model %s unloaded (%s)%s", runner.spec.tag, why,
                 f"; {left} requests still queued got 503" if left else "")  # fmt: skip

    async def drained(self) -> None:
        """Wait until every retired version has stopped (tests, unload callers)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    async def _changed(self) -> None:
        for listener in self.listeners:
            await listener()

    async def load(self, name: str) -> None:
        """The repository API's load: serve what the store and version policy select for `name`
        now (a model served already picks up new versions). Explicit mode only."""
        self.check_explicit("load")
        for tag in [t for t in self.refused if t.split(":")[0] == name]:
            del self.refused[tag]  # asked again: refused versions get another try
        problems = await self.follow_store([name])
        versions = self.versions.get(name, {})
        if not versions:
            refused = [f"{t}: {w}" for t, w in self.refused.items() if t.split(":")[0] == name]
            why = problems.get(name) or "; ".join(refused)
            raise ModelNotFound(f"failed to load {name!r}: {why or 'nothing to serve'}")
        failures = {
            tag: why
            for tag, why in self.refused.items()
            if tag.split(":", 1)[0] == name and tag.split(":", 1)[1] not in versions
        }
        if failures:
            raise NotReady(
                f"model {name!r}: version(s) failed to load, the others serve: "
                + "; ".join(f"{tag}: {why}" for tag, why in failures.items())
            )

    async def unload(self, name: str) -> None:
        """The repository API's unload: out of routing at once, drained, then stopped."""
        self.check_explicit("unload")
        async with self.changes:
            if name not in self.versions:
                known = ", ".join(sorted(self.versions)) or "none"
                raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {known}")
            self._retire_model(name, "unloaded by a repository call")
            await self._changed()

    def check_explicit(self, action: str) -> None:
        if self.mode != "explicit":
            raise Conflict(
                f"cannot {action} models: model_control is {self.mode!r}; the repository API "
                "changes what is served only with DEEPSERVE_MODEL_CONTROL=explicit"
            )

    async def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every model version in the store (and every served one), with its state and why."""
        problems: dict[str, str] = {}
        stored = await asyncio.to_thread(list_specs, problems)
        selected = await asyncio.to_thread(
            select_versions, self.settings.models, self.settings.version_policy_of, {}
        )
        entries: dict[tuple[str, str], dict[str, str]] = {}
        for spec in stored:
            entries[(spec.name, spec.version)] = self._entry(spec.name, spec.version, selected)
        for name, versions in self.versions.items():  # served, even if gone from the store
            for version in versions:
                entries[(name, version)] = self._entry(name, version, selected)
        for name, why in problems.items():  # unreadable versions: the tag is in the reason
            tag = why.split(":", 2)
            version = tag[1].split(" ")[0] if len(tag) > 1 else ""
            entries.setdefault(
                (name, version),
                {"name": name, "version": version, "state": UNAVAILABLE, "reason": why},
            )
        rows = [entries[key] for key in sorted(entries)]
        return [row for row in rows if row["state"] == READY] if ready_only else rows

    def _entry(
        self, name: str, version: str, selected: dict[str, list[ModelSpec]]
    ) -> dict[str, str]:
        tag = f"{name}:{version}"
        runner = self.versions.get(name, {}).get(version)
        state, reason = UNAVAILABLE, ""
        if runner is not None:
            if runner.ready:
                state = READY
            elif runner.error:
                reason = runner.error
            else:
                state = LOADING
        elif tag in self.loading:
            state = LOADING
        elif tag in self.refused:
            reason = f"refused: {self.refused[tag]}"
        elif name in self.unloaded:
            reason = self.unloaded[name]
        elif name in self.versions or name in selected:
            reason = "not selected by the version policy"
        elif self.mode == "explicit":
            reason = "not loaded (load it with the repository API)"
        else:
            reason = "not served (not in the models setting)"
        return {"name": name, "version": version, "state": state, "reason": reason}

    async def preprocess(self, func: Callable[[], Any]) -> Any:
        """func() (decode, validate, preprocess) in the preprocessing pool, off the event loop,
        timed as preprocessing."""
        return await self._in_pool(timed(func))

    async def postprocess(self, func: Callable[[], Any]) -> Any:
        """func() (render an answer: a PNG) in the preprocessing pool, off the event loop."""
        return await self._in_pool(func)

    async def _in_pool(self, func: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.preprocess_pool, func)

    async def prepare_and_submit(
        self,
        runner: Runner,
        prepare: Callable[[], Any],
        deadline: float | None = None,
        key_of: Callable[[Any], Hashable] | None = None,
    ) -> Any:
        """The runner's answer for the item prepare() makes (decode, validate, preprocess; its
        errors are the caller's), queued by key_of(item) (default: the runner's bucket). A local
        runner with nothing queued or computing prepares and runs it in one batch thread
        (AdaptiveBatcher.submit_prepared); otherwise the preprocessing pool prepares it."""
        key_of = key_of or runner.bucket
        if isinstance(runner, LocalRunner):
            return await runner.submit_prepared(timed(prepare), key_of, self._in_pool, deadline)
        item = await self.preprocess(prepare)
        return await runner.submit(item, key_of(item), deadline)

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
