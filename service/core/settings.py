"""Settings from the environment (DEEPSERVE_ prefix); every field says what it controls.

Length: one documented field per setting, and the few methods that resolve them together (per
model, gateway workers); the per-model fields and their file sources are in model_settings.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.core.device import device_class, uses_gpu
from service.core.machine import usable_cores
from service.core.model_settings import (
    FiniteNonNegative,
    FinitePositive,
    ModelOverrides,
    ModelSettings,
    PerModelFields,
    Placement,
    VersionPolicy,
    read_tuned_file,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
IN_BENTO = PROJECT_ROOT.name == "src" and (PROJECT_ROOT.parent / "bento.yaml").is_file()
"""This code runs from a built Bento (`bentoml serve <bento>`, its container): BentoML copies
the project into the Bento's src/, beside bento.yaml, and its models come with the Bento."""

Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings, PerModelFields):
    """Every setting, from DEEPSERVE_<FIELD>; a bad value stops the server at start. The settings
    that may differ per model (batching, workers, queue and input limits, placement, device) are
    declared in service/core/model_settings.py (PerModelFields): here they are the defaults of
    every model, and `for_model(name)` gives one model's ModelSettings."""

    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_")
    _per_model: dict[tuple[str, str], ModelSettings] = PrivateAttr(default_factory=dict)
    _tuned_file: dict[str, Any] | None = PrivateAttr(default=None)

    store: Path = PROJECT_ROOT / "model_store"
    """BentoML home holding the model store (BENTOML_HOME); models live under its models/ folder.
    Serving only reads it (see runtime_dir)."""

    runtime_dir: Path | None = None
    """The server's own scratch folder (its BentoML home: metrics multiprocess files, tmp/,
    bentos/, envs/; the store's models/ linked in), emptied at each start. Unset: a folder per
    HTTP port under the system's temporary directory. `deepserve serve` sets it up, so two
    servers never share their metrics files and the store can be mounted read-only."""

    host: str = Field(default="127.0.0.1", min_length=1)
    """Address the HTTP server binds (0.0.0.0 in containers)."""

    port: Port = 3000
    """HTTP port of the gateway."""

    grpc: bool = True
    """Serve gRPC (V2 inference, deepserve.v1.Inference, health, reflection) beside HTTP."""

    grpc_port: Port = 50051
    """gRPC port of the gateway (every gateway worker binds it with SO_REUSEPORT)."""

    grpc_max_concurrent_rpcs: int = Field(default=1024, gt=0)
    """Unary RPCs in flight beyond which new ones get RESOURCE_EXHAUSTED at once. Health RPCs
    and streams have quotas of their own (grpc_max_health_rpcs, grpc_max_streams), so they never
    take this room; grpc.aio's own limit is set above the three together."""

    grpc_max_health_rpcs: int = Field(default=256, ge=0)
    """Health RPCs at once (grpc.health.v1 Check and Watch, V2 ServerLive/ServerReady: the ones
    open without a key). A new one beyond this closes the oldest with UNAVAILABLE (a watching
    client reconnects), so never-ending Watch streams cannot fill the server."""

    grpc_max_streams: int = Field(default=128, ge=0)
    """Other streaming RPCs at once (server reflection). A new one beyond this closes the oldest
    with UNAVAILABLE."""

    grpc_max_inference_streams: int = Field(default=128, ge=0)
    """Inference streams at once (TranscribeStream, ModelStreamInfer). A new one beyond this is
    refused with RESOURCE_EXHAUSTED: live work is never closed for a newcomer."""

    stream_idle_timeout_s: FinitePositive = 30.0
    """A stream (SSE transcription, TranscribeStream, ModelStreamInfer) that receives nothing
    and has nothing in progress for this long is ended (DEADLINE_EXCEEDED, an SSE error
    event). Streams are exempt from the 60 s request timeout and live under grpc_max_streams."""

    stream_max_seconds: FinitePositive = 3600.0
    """Longest a stream may stay open, however busy (then ended as above)."""

    grpc_request_timeout_s: FinitePositive = 10.0
    """A unary call whose request message has not arrived this long after the call started is
    ended (DEADLINE_EXCEEDED), so that calls which send nothing cannot hold their quota."""

    grpc_max_connection_idle_s: FiniteNonNegative = 300.0
    """A gRPC connection with no RPC for this long is closed (GOAWAY); 0 = never."""

    grpc_max_connection_age_s: FiniteNonNegative = 0.0
    """A gRPC connection older than this is closed (GOAWAY; clients reconnect, which also
    spreads them again over gateway workers and replicas); 0 = never."""

    grpc_max_connection_age_grace_s: FiniteNonNegative = 30.0
    """After grpc_max_connection_age_s, how long the RPCs of the closing connection (Watch
    streams included) get to finish before it is cut."""

    models: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: ["*"], min_length=1
    )
    """Models to serve, JSON: DEEPSERVE_MODELS='["digits-cnn", "my-model"]'; "*" = every model
    in the store (built or imported). Which versions: version_policy and versions."""

    version_policy: str = "latest"
    """Versions served of each model without its own entry in `versions` (Triton's version
    policy): "latest" (the newest), "latest:N" (the N newest), "all". Requests that name no
    version get the newest served one. Checked at start (VersionPolicy.parse); a model's policy
    in force: for_model(name).version_policy."""

    versions: dict[str, str | list[str]] = Field(default_factory=dict)
    """Per-model version policy, JSON: DEEPSERVE_VERSIONS='{"digits-cnn": "latest:2",
    "my-model": ["v1-20261122...", "v1-20261123..."], "other": "all"}'; a list pins versions.
    Every entry is checked at start; it wins over a version_policy in model_settings."""

    placements: dict[str, Placement] = Field(default_factory=dict)
    """Per-model placement overrides, JSON: DEEPSERVE_PLACEMENTS='{"imagenet-cnn": "remote"}';
    an entry wins over a placement in model_settings. The default: `placement`."""

    model_settings: dict[str, ModelOverrides] = Field(default_factory=dict)
    """Per-model overrides of any ModelSettings field, JSON: DEEPSERVE_MODEL_SETTINGS=
    '{"imagenet-cnn": {"max_batch_size": 32, "placement": "remote"}}'. Checked at start with the
    same constraints as the global fields; unknown keys are refused. See for_model."""

    access_log: bool = False
    """One log line per HTTP request (BentoML's access log), in the gateway and the runner
    services. Off by default: /metrics counts and times every request, and the log line costs
    about 0.4 core-ms per request on the event loop (small models serve 17-20 % more requests/s
    without it, make bench). Errors are logged either way."""

    tracing: bool = False
    """OpenTelemetry spans for /v1, /v2 and the runner services' calls. Turn on together with an
    exporter in BentoML's config (BENTOML_CONFIG: tracing.exporter_type ...); off, those paths
    skip BentoML's tracing middleware, which otherwise costs about 0.5 core-ms per request even
    with no exporter."""

    use_tuned: bool = True
    """Serve each model with its tuned settings for this machine's device class (`deepserve
    models tune`: tuned.json next to the model, or tuned_file), below every other per-model
    source. Off: the defaults and the other sources only."""

    tuned_file: Path | None = None
    """A tuned-settings file (`deepserve models tune NAME --out FILE`) for stores the server
    cannot or should not write: {model: {device class: entry}}; its entries win over the
    store's tuned.json."""

    gateway_workers: int = Field(default=0, ge=0)
    """Gateway worker processes, sharing the HTTP and gRPC ports (the kernel spreads
    connections). 0 = from the machine: the cores this process may use (service/core/
    machine.py), at most 4 (each worker loads every model: its own sessions and batcher, so
    memory grows with workers); one with DEEPSERVE_DEVICE=gpu (one process feeds the GPU big
    batches and holds its memory). One, and more refused, in explicit model control (the
    repository API reaches one worker only) and when any model may be remote (a runner service
    follows the versions one gateway process wants). Per worker: admission, batching, the
    failed-auth table and the gRPC call quotas (so those limits are N times looser); /metrics
    and the V2 statistics add up every worker."""

    preprocess_threads: int = Field(default=2, ge=1)
    """Threads that decode and preprocess requests (images, audio) off the event loop, shared by
    all models; decoding overlaps inference."""

    max_body_bytes: int = Field(default=20 * 1024 * 1024, ge=1)
    """Largest request body accepted (413 beyond)."""

    http_idle_timeout_s: FinitePositive = 5.0
    """An HTTP connection, new or kept alive, that starts no request for this long is closed
    (also the keep-alive timeout); see service/protocols/http/server.py."""

    http_header_timeout_s: FinitePositive = 10.0
    """A request whose headers are not complete this long after its first byte: connection
    closed (slow-header clients cannot hold sockets)."""

    http_body_timeout_s: FinitePositive = 30.0
    """A request body that sends no bytes for this long while the server waits for it is
    answered 408 and its connection closed."""

    max_json_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """Largest JSON document parsed from a request (a /v1 JSON body, a V2 inference header).
    Python's JSON parser holds the event loop (about 30 ms per MB); send bigger tensors as V2
    binary data or /v1 raw/multipart bodies."""

    max_explain_png_px: int = Field(default=512, ge=16)
    """Largest side of the heatmap PNG /v1/explain draws (its `size`; 400 beyond)."""

    max_json_elements: int = Field(default=1 << 20, gt=0)
    """Most elements in one V2 tensor sent as JSON data or gRPC typed contents (decoded one by
    one), checked against its declared shape before decoding."""

    max_bytes_elements: int = Field(default=1 << 16, gt=0)
    """Most elements in one V2 BYTES tensor, checked against its declared shape before
    decoding."""

    api_key: SecretStr | None = None
    """API key clients must send on inference and model endpoints (REST `Authorization: Bearer
    <key>`, gRPC metadata `authorization: Bearer <key>`). Unset (and no api_key_file) = no auth."""

    api_key_file: Path | None = None
    """File holding API keys, one per line (a mounted Kubernetes/compose secret); used together
    with api_key, so keys can be rotated by adding the new one before removing the old."""

    admin_key: SecretStr | None = None
    """Key for the model repository API (V2 repository index/load/unload, REST and gRPC). Set
    (or admin_key_file), management calls need one of the admin keys and inference keys are
    refused there; unset, any API key may manage models (and with no keys at all, anyone may).
    Uploading model files with a load call (`file:` parameters) always needs an admin key."""

    admin_key_file: Path | None = None
    """File holding admin keys, one per line (like api_key_file)."""

    open_health: bool = True
    """Health probes (/livez, /readyz, V2 health, grpc.health.v1) answer without an API key."""

    open_metrics: bool = True
    """/metrics answers without an API key (Prometheus scrapes it)."""

    open_docs: bool = False
    """/openapi.json, the Swagger UI page /docs (and its files) and / answer without an API key.
    Off: with API keys on they need one too (the document names every served model)."""

    auth_failure_limit: int = Field(default=50, ge=0)
    """Refused API keys (wrong, malformed or repeated Authorization; a missing one does not
    count) from one client address within auth_failure_window_s, HTTP and gRPC together, beyond
    which that address gets 429 + Retry-After (gRPC RESOURCE_EXHAUSTED) without its key being
    checked, a right one included, until the window ends; 0 = no limit. Behind a proxy every
    client has the proxy's address."""

    auth_failure_window_s: FinitePositive = 60.0
    """Window of auth_failure_limit, from an address's first refused key."""

    auth_failure_max_clients: int = Field(default=10_000, gt=0)
    """Client addresses whose refused keys are tracked (IPv6 by /64); beyond this the one that
    failed least recently is forgotten, so the table stays bounded whatever addresses are
    used."""

    model_control: Literal["none", "poll", "explicit"] = "poll"
    """What changes the served models while the server runs (Triton's model control modes):
    "none": what the store holds at start, until a restart; "poll": the store is re-read every
    poll_interval_s, and a new version the version policy selects is loaded and warmed before it
    takes traffic, then the version it replaces is drained and unloaded; "explicit": only the
    V2 repository API (load/unload) changes what is served, from `models` at start."""

    poll_interval_s: FinitePositive = 5.0
    """How often poll mode re-reads the model store."""

    load_timeout_s: FinitePositive = 300.0
    """Longest a model version may take to load and warm up during a live load before it is
    refused (the version it would replace keeps serving)."""

    unload_drain_s: FiniteNonNegative = 30.0
    """On unload (or when a new version replaces an old one), how long requests already admitted
    to the old version get to finish before it stops; any still queued then get 503."""

    max_upload_bytes: int = Field(default=256 << 20, gt=0)
    """Largest model upload with a repository load call (`file:` parameters, all files
    together); the HTTP body limit max_body_bytes applies as well."""

    require_all_models: bool = False
    """Readiness needs every configured model. Off: a model that is missing or fails to load is
    reported (GET /v1/models, V2 model ready, the log) and the others are served."""

    shutdown_grace_s: FiniteNonNegative = 20.0
    """On SIGTERM the listeners close at once (new connections are refused) and requests in
    flight, HTTP and gRPC, get this long to finish before they are cancelled. Keep it below the
    orchestrator's grace period (Kubernetes terminationGracePeriodSeconds, 30 s by default)."""

    runner_lost_liveness_s: FinitePositive = 60.0
    """A remote runner service unreachable this long makes /livez fail, so the orchestrator
    restarts the pod (inside containers BentoML does not respawn dead runner processes)."""

    def observability_config(self, paths: list[str]) -> dict[str, Any]:
        """BentoML service config for its access log and for tracing requests on `paths`."""
        config: dict[str, Any] = {"logging": {"access": {"enabled": self.access_log}}}
        if not self.tracing:
            config["tracing"] = {"excluded_urls": paths}
        return config

    @field_validator("version_policy")
    @classmethod
    def _check_version_policy(cls, policy: str) -> str:
        _check_policy("DEEPSERVE_VERSION_POLICY", policy)
        return policy

    @field_validator("versions")
    @classmethod
    def _check_versions(cls, versions: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for model, policy in versions.items():
            _check_policy(f"DEEPSERVE_VERSIONS, model {model!r}", policy)
        return versions

    def model_defaults(self) -> ModelSettings:
        """The settings of a model with no entries of its own (the global fields). Unless
        DEEPSERVE_WORKERS_PER_MODEL is set, a model's parallel runs per gateway worker are the
        cores shared out among the gateway workers (at least 1), so that the workers together
        never run more single-thread batches than there are cores: 2 workers x 2 runs on 2
        cores made imagenet-cnn's p99 at 32 clients 926 ms instead of about 300."""
        values = {name: getattr(self, name) for name in PerModelFields.model_fields}
        if "workers_per_model" not in self.model_fields_set:
            values["workers_per_model"] = max(1, usable_cores() // self.gateway_workers_in_force())
        return ModelSettings.model_validate({**values, "version_policy": self.version_policy})

    def model_layers(
        self, model: str, own: Mapping[str, Any] | None = None
    ) -> list[Mapping[str, Any]]:
        """The entries for `model` that override model_defaults(), lowest precedence first:
        `own`, the model version's settings file in the store (settings.json, written at
        import), then its model_settings entry (DEEPSERVE_MODEL_SETTINGS), then its placements
        and versions entries (DEEPSERVE_PLACEMENTS / DEEPSERVE_VERSIONS), which name one setting
        each and so are the more specific. More sources (tuned per-device entries) go first in
        this list, so the environment keeps the last word."""
        layers: list[Mapping[str, Any]] = [own or {}, self.model_settings.get(model, {})]
        if model in self.placements:
            layers.append({"placement": self.placements[model]})
        if model in self.versions:
            layers.append({"version_policy": self.versions[model]})
        return layers

    def for_model(
        self,
        model: str,
        own: Mapping[str, Any] | None = None,
        tuned: Mapping[str, Any] | None = None,
    ) -> ModelSettings:
        """The settings `model` is served with: model_defaults() overridden by its tuned entry
        for this device class (tuned_entry) and then model_layers() (global field < tuned
        entry < the version's own file (`own`: ModelSpec.settings) < DEEPSERVE_MODEL_SETTINGS
        entry < DEEPSERVE_PLACEMENTS / DEEPSERVE_VERSIONS entry). `tuned`: the version's
        tuned.json entries by device class (ModelSpec.tuned). Cached per model and files:
        settings are not changed once loaded."""
        key = (model, json.dumps([own, tuned], sort_keys=True, default=str))
        cached = self._per_model.get(key)
        if cached is None:
            layers = self.model_layers(model, own)
            base = self.model_defaults().layered(*layers)
            # NOTE: tuned entries are for the local placement (a remote runner service takes
            # its batching from BentoML's service config, fixed at import)
            local = base.placement == "local"
            entry = self.tuned_entry(model, base.device, tuned) if local else {}
            cached = self._per_model[key] = self.model_defaults().layered(entry, *layers)
        return cached

    def tuned_entry(
        self, model: str, device: str, tuned: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The tuned settings of `model` for this machine's device class: from tuned_file
        when it has an entry, else from the version's own tuned.json; {} with use_tuned off or
        no entry for this class (another machine's entries never apply)."""
        if not self.use_tuned:
            return {}
        klass = device_class(uses_gpu(device))
        entries = self.tuned_file_entries().get(model, {})
        chosen = entries.get(klass) or (tuned or {}).get(klass) or {}
        workers = chosen.get("gateway_workers", 1)
        if workers != self.gateway_workers_in_force():  # tuned per worker, for another count
            return {}
        return dict(chosen.get("settings", {}))

    def tuned_file_entries(self) -> dict[str, Any]:
        """tuned_file's {model: {device class: entry}} (read once)."""
        if self.tuned_file is None:
            return {}
        if self._tuned_file is None:
            self._tuned_file = read_tuned_file(self.tuned_file)
        return self._tuned_file

    def solo_threads_for(self, config: ModelSettings) -> int:
        """Intra-op threads of a request that runs alone (config.solo_intra_op_threads; 0 = the
        cores this process may use). NOTE: not divided by the gateway workers: when several
        workers each run a request alone the solo sessions slow down, and each worker's batcher
        measures that and goes back to the shared sessions (SoloChoice)."""
        return config.solo_intra_op_threads or usable_cores()

    def gateway_workers_in_force(self) -> int:
        """Gateway worker processes: gateway_workers, or the machine's cores, at most 4 (each
        worker loads every model); one in explicit model control or when any model may be
        remote (see gateway_workers)."""
        if self.gateway_workers:
            return self.gateway_workers
        if self.model_control == "explicit" or "remote" in self.placements_named():
            return 1
        if self.device == "gpu":  # one process feeds the GPU big batches (and holds its memory)
            return 1
        return min(usable_cores(), 4)

    def placements_named(self) -> set[str]:
        """The default placement and every placement an entry names (read from the entries
        themselves: for_model needs the gateway workers)."""
        entries = {self.placements.get(m, self.model_settings.get(m, {}).get("placement"))
                   for m in {*self.model_settings, *self.placements}}  # fmt: skip
        return {self.placement, *(e for e in entries if e is not None)}

    @model_validator(mode="after")
    def _one_worker_where_workers_would_disagree(self) -> Settings:
        if self.gateway_workers > 1 and self.model_control == "explicit":
            raise ValueError(
                f"DEEPSERVE_GATEWAY_WORKERS={self.gateway_workers} with "
                "DEEPSERVE_MODEL_CONTROL=explicit: a repository load or unload reaches one "
                "worker only; use one worker, or model_control poll"
            )
        if self.gateway_workers > 1 and "remote" in self.placements_named():
            raise ValueError(
                f"DEEPSERVE_GATEWAY_WORKERS={self.gateway_workers} with a remote placement: a "
                "runner service follows the versions one gateway process wants; use one "
                "worker with remote models"
            )
        return self

    @field_validator("tuned_file")
    @classmethod
    def _check_tuned_file(cls, path: Path | None) -> Path | None:
        if path is not None:
            read_tuned_file(path)  # a clear error at start, not in the middle of a load
        return path

    def placement_of(self, model: str) -> Placement:
        """Where `model` runs (for_model(model).placement)."""
        return self.for_model(model).placement

    def version_policy_of(self, model: str) -> VersionPolicy:
        """Which stored versions of `model` are served (for_model(model).version_policy)."""
        return self.for_model(model).version_policy

    def may_place_remote(self) -> bool:
        """Whether any model may be placed remote, known without listing the store: the default
        placement is remote, or a model with entries of its own resolves to remote."""
        named = {*self.model_settings, *self.placements}
        return self.placement == "remote" or any(self.placement_of(m) == "remote" for m in named)

    def apply_store(self) -> None:
        """Point BentoML at our store. Call before bentoml is first used in this process.

        Not in a Bento: there BentoML's own home holds the Bento, the worker processes it starts
        look the Bento up in it (they inherit this environment), and the models are the Bento's."""
        if not IN_BENTO:
            os.environ.setdefault("BENTOML_HOME", str(self.store))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


def _check_policy(variable: str, policy: str | list[str]) -> None:
    try:
        VersionPolicy.parse(policy)
    except ValueError as error:
        raise ValueError(f"{variable}: {error}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
