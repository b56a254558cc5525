"""Settings from the environment (DEEPSERVE_ prefix); every field says what it controls."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAMES = ["digits-cnn", "imagenet-cnn", "sentiment-lstm", "speech-ctc", "captioner"]

Placement = Literal["local", "remote"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPSERVE_")

    store: Path = PROJECT_ROOT / "model_store"
    """BentoML home holding the model store (BENTOML_HOME); models live under its models/ folder."""

    host: str = "127.0.0.1"
    """Address the HTTP server binds (0.0.0.0 in containers)."""

    port: int = 3000
    """HTTP port of the gateway."""

    grpc: bool = True
    """Serve gRPC (V2 inference, deepserve.v1.Inference, health, reflection) beside HTTP."""

    grpc_port: int = 50051
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
    """Other streaming RPCs at once (server reflection, ...). A new one beyond this closes the
    oldest with UNAVAILABLE."""

    grpc_request_timeout_s: float = Field(default=10.0, gt=0)
    """A unary call whose request message has not arrived this long after the call started is
    ended (DEADLINE_EXCEEDED), so that calls which send nothing cannot hold their quota."""

    grpc_max_connection_idle_s: float = Field(default=300.0, ge=0)
    """A gRPC connection with no RPC for this long is closed (GOAWAY); 0 = never."""

    grpc_max_connection_age_s: float = Field(default=0.0, ge=0)
    """A gRPC connection older than this is closed (GOAWAY; clients reconnect, which also
    spreads them again over gateway workers and replicas); 0 = never."""

    grpc_max_connection_age_grace_s: float = Field(default=30.0, ge=0)
    """After grpc_max_connection_age_s, how long the RPCs of the closing connection (Watch
    streams included) get to finish before it is cut."""

    models: list[str] = Field(default_factory=lambda: ["*"])
    """Models to serve, JSON: DEEPSERVE_MODELS='["digits-cnn", "my-model"]'; "*" = every model
    in the store (built or imported). Which versions: version_policy and versions."""

    version_policy: str = "latest"
    """Versions served of each model without its own entry in `versions` (Triton's version
    policy): "latest" (the newest), "latest:N" (the N newest), "all". Requests that name no
    version get the newest served one."""

    versions: dict[str, str | list[str]] = Field(default_factory=dict)
    """Per-model version policy, JSON: DEEPSERVE_VERSIONS='{"digits-cnn": "latest:2",
    "my-model": ["v1-20261122...", "v1-20261123..."], "other": "all"}'; a list pins versions."""

    placement: Placement = "local"
    """Default runner placement: "local" = in the gateway process with our adaptive batcher;
    "remote" = a BentoML runner service per model (its own process), reached with
    bentoml.depends and batched by BentoML's adaptive batching."""

    placements: dict[str, Placement] = Field(default_factory=dict)
    """Per-model placement overrides, JSON: DEEPSERVE_PLACEMENTS='{"imagenet-cnn": "remote"}'."""

    device: Literal["auto", "cpu", "gpu"] = "auto"
    """auto: CUDA execution provider when onnxruntime-gpu sees a GPU, else CPU."""

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

    batching: bool = True
    """Adaptive batching on (off = every request runs alone; for benchmarks)."""

    length_buckets: bool = True
    """Route variable-length inputs (tokens, audio) to per-length queues (off = one queue per
    model, every batch padded to its longest item; for benchmarks)."""

    max_batch_size: int = 16
    """Largest batch a runner forms on CPU before it stops waiting for more requests."""

    gpu_max_batch_size: int = 64
    """Largest batch on a GPU, where batches pay off far more than on CPU."""

    max_latency_ms: float = 5.0
    """Longest a request waits for batch-mates (only while waiting pays; see batching.py)."""

    remote_max_latency_ms: float = 1000.0
    """max_latency_ms for BentoML's remote batching; BentoML answers 503 for requests it predicts
    would exceed it, so it is a shedding bound there, not a wait."""

    workers_per_model: int = 2
    """Parallel inference slots per model (ORT runs concurrently on one shared session)."""

    preprocess_threads: int = 2
    """Threads that decode and preprocess requests (images, audio) off the event loop, shared by
    all models; decoding overlaps inference."""

    intra_op_threads: int = 1
    """ONNX Runtime intra-op threads per run (1 x several workers beat 2 threads here)."""

    max_queue: int = 512
    """Requests in progress per model (decoding, queued or computing) beyond which new ones get
    503 + Retry-After at once (gRPC RESOURCE_EXHAUSTED); bounds memory
    (service/batching/admission.py)."""

    max_body_bytes: int = 20 * 1024 * 1024
    """Largest request body accepted (413 beyond)."""

    http_idle_timeout_s: float = Field(default=5.0, gt=0)
    """An HTTP connection, new or kept alive, that starts no request for this long is closed
    (also the keep-alive timeout); see service/protocols/http/server.py."""

    http_header_timeout_s: float = Field(default=10.0, gt=0)
    """A request whose headers are not complete this long after its first byte: connection
    closed (slow-header clients cannot hold sockets)."""

    http_body_timeout_s: float = Field(default=30.0, gt=0)
    """A request body that sends no bytes for this long while the server waits for it is
    answered 408 and its connection closed."""

    max_image_pixels: int = 40_000_000
    """Largest decoded image (width x height); bigger declared sizes are refused (image bombs)."""

    max_audio_seconds: float = 15.0
    """Longest audio clip accepted by /v1/transcribe."""

    max_text_chars: int = 5000
    """Longest text accepted by /v1/sentiment, per text."""

    max_batch_items: int = 64
    """Most items in one request (texts in {"texts": [...]})."""

    max_json_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    """Largest JSON document parsed from a request (a /v1 JSON body, a V2 inference header).
    Python's JSON parser holds the event loop (about 30 ms per MB); send bigger tensors as V2
    binary data or /v1 raw/multipart bodies."""

    max_json_elements: int = Field(default=1 << 20, gt=0)
    """Most elements in one V2 tensor sent as JSON data or gRPC typed contents (decoded one by
    one), checked against its declared shape before decoding."""

    max_bytes_elements: int = Field(default=1 << 16, gt=0)
    """Most elements in one V2 BYTES tensor, checked against its declared shape before
    decoding."""

    max_beam: int = 8
    """Largest beam width /v1/caption accepts."""

    max_queue_wait_ms: float = 1000.0
    """Admission bound per model: about how long an admitted request may wait. New requests get
    503 + Retry-After at once (gRPC RESOURCE_EXHAUSTED) while the model has more in progress than
    it answers in this time (Little's law on its recent answer rate, never fewer than
    workers_per_model x max_batch_size), or while its oldest request has waited longer. Bounds
    the latency of admitted requests under overload; 0 turns it off (then only max_queue)."""

    api_key: SecretStr | None = None
    """API key clients must send on inference and model endpoints (REST `Authorization: Bearer
    <key>`, gRPC metadata `authorization: Bearer <key>`). Unset (and no api_key_file) = no auth."""

    api_key_file: Path | None = None
    """File holding API keys, one per line (a mounted Kubernetes/compose secret); used together
    with api_key, so keys can be rotated by adding the new one before removing the old."""

    open_health: bool = True
    """Health probes (/livez, /readyz, V2 health, grpc.health.v1) answer without an API key."""

    open_metrics: bool = True
    """/metrics answers without an API key (Prometheus scrapes it)."""

    auth_failure_limit: int = Field(default=50, ge=0)
    """Refused API keys (wrong, malformed or repeated Authorization; a missing one does not
    count) from one client address within auth_failure_window_s, HTTP and gRPC together, beyond
    which that address gets 429 + Retry-After (gRPC RESOURCE_EXHAUSTED) without its key being
    checked, a right one included, until the window ends; 0 = no limit. Behind a proxy every
    client has the proxy's address."""

    auth_failure_window_s: float = Field(default=60.0, gt=0)
    """Window of auth_failure_limit, from an address's first refused key."""

    auth_failure_max_clients: int = Field(default=10_000, gt=0)
    """Client addresses whose refused keys are tracked (IPv6 by /64); beyond this the one that
    failed least recently is forgotten, so the table stays bounded whatever addresses are
    used."""

    require_all_models: bool = False
    """Readiness needs every configured model. Off: a model that is missing or fails to load is
    reported (GET /v1/models, V2 model ready, the log) and the others are served."""

    shutdown_grace_s: float = 20.0
    """On SIGTERM the listeners close at once (new connections are refused) and requests in
    flight, HTTP and gRPC, get this long to finish before they are cancelled. Keep it below the
    orchestrator's grace period (Kubernetes terminationGracePeriodSeconds, 30 s by default)."""

    runner_lost_liveness_s: float = 60.0
    """A remote runner service unreachable this long makes /livez fail, so the orchestrator
    restarts the pod (inside containers BentoML does not respawn dead runner processes)."""

    def observability_config(self, paths: list[str]) -> dict[str, Any]:
        """BentoML service config for its access log and for tracing requests on `paths`."""
        config: dict[str, Any] = {"logging": {"access": {"enabled": self.access_log}}}
        if not self.tracing:
            config["tracing"] = {"excluded_urls": paths}
        return config

    def placement_of(self, model: str) -> Placement:
        return self.placements.get(model, self.placement)

    def batch_size_for(self, provider: str) -> int:
        if not self.batching:
            return 1
        return self.gpu_max_batch_size if provider.startswith("CUDA") else self.max_batch_size

    def apply_store(self) -> None:
        """Point BentoML at our store. Call before bentoml is first used in this process."""
        os.environ.setdefault("BENTOML_HOME", str(self.store))
        os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
