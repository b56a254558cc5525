"""Prometheus metrics of the serving path (prometheus_client; BentoML's own metrics stay too).

Every series carries `model` and `version`; request series also `protocol` (rest, v2-rest, grpc,
v2-grpc). `bentoml serve` runs prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR is
set before any worker starts), so series written by the gateway and by remote runner services add
up in the gateway's one /metrics; gauges declare how processes combine.

Batch size is counted in samples per executed batch (BentoML's own histogram counts requests), with
a batches counter beside it, so average batch = samples / batches, as Triton's
nv_inference_count / nv_inference_exec_count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

from prometheus_client import Counter, Gauge, Histogram

# sub-millisecond to tens of seconds: small models take ~0.3 ms, a beam-8 caption or a loaded
# queue several seconds
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

PROTOCOLS = ("rest", "v2-rest", "grpc", "v2-grpc")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
UNMATCHED = "unmatched"
"""The `route` of every HTTP request that reached no route (404s, and requests refused before
routing: authentication, body limits): label values never come from what a client sent."""
STATUS_CLASSES = ("2xx", "4xx", "5xx")
REJECT_REASONS = ("queue_full", "queue_wait", "deadline", "abandoned", "runner_overloaded")
STREAM_PROTOCOLS = ("rest-sse", "grpc-stream", "v2-grpc-stream")
"""Streaming transports: /v1/transcribe?stream=true (SSE), deepserve.v1.Inference/
TranscribeStream, inference.GRPCInferenceService/ModelStreamInfer."""
STREAM_ENDS = ("completed", "error", "client_gone", "idle_timeout", "time_limit")
"""How a stream ended: completed (all answered), error (ended by an error event or status),
client_gone (disconnect or cancel; grpc.aio reports a server shutdown's cancel the same way),
idle_timeout (stream_idle_timeout_s: nothing received and nothing in progress, or a client that
reads nothing), time_limit (stream_max_seconds)."""
SEGMENT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """All collectors, created once per process (lazily: after PROMETHEUS_MULTIPROC_DIR is set)."""

    def __init__(self) -> None:
        model = ["model", "version"]
        self.requests = Counter(
            "deepserve_requests",
            "Requests answered, by protocol and status class (2xx, 4xx, 5xx).",
            [*model, "protocol", "status"],
        )
        self.request_seconds = Histogram(
            "deepserve_request_duration_seconds",
            "Request latency inside the server (read, preprocess, queue, infer, answer).",
            [*model, "protocol"],
            buckets=LATENCY_BUCKETS,
        )
        self.queue_seconds = Histogram(
            "deepserve_queue_duration_seconds",
            "Time a request waited in its model's queue before its batch started.",
            model,
            buckets=LATENCY_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "deepserve_inference_duration_seconds",
            "Compute time of one executed batch (collate, ONNX Runtime, split).",
            model,
            buckets=LATENCY_BUCKETS,
        )
        self.preprocess_seconds = Histogram(
            "deepserve_preprocess_duration_seconds",
            "Decode, validate and preprocess time of one request, before it joins a batch.",
            model,
            buckets=LATENCY_BUCKETS,
        )
        self.postprocess_seconds = Histogram(
            "deepserve_postprocess_duration_seconds",
            "Time to turn a model result into the response (top-k, tensors, JSON).",
            [*model, "protocol"],
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "deepserve_batch_size",
            "Samples per executed batch.",
            model,
            buckets=BATCH_BUCKETS,
        )
        self.batches = Counter("deepserve_batches", "Batches executed.", model)
        self.samples = Counter(
            "deepserve_inference_samples", "Samples computed (sum of batch sizes).", model
        )
        self.pending = Gauge(
            "deepserve_pending_requests",
            "Requests queued for a batch, not yet computing (the autoscaling signal).",
            model,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "deepserve_rejected_requests",
            "Requests shed or dropped unrun: queue_full, queue_wait (the model is not keeping "
            "up), deadline, abandoned (caller went away), runner_overloaded.",
            [*model, "reason"],
        )
        self.auth_failures = Counter(
            "deepserve_auth_failures",
            "Requests refused for a missing, malformed, invalid or repeated API key, or for too "
            "many refused keys from one client address, by protocol.",
            ["protocol"],
        )
        for protocol in PROTOCOLS:
            self.auth_failures.labels(protocol)
        self.http_requests = Counter(
            "deepserve_http_requests",
            "HTTP requests answered, by route template (unmatched: no route), method and status "
            "code. Every label comes from a bounded set.",
            ["route", "method", "code"],
        )
        self.http_seconds = Histogram(
            "deepserve_http_request_duration_seconds",
            "HTTP request latency from the first byte of the request to the last of the answer.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
        )
        self.open_streams = Gauge(
            "deepserve_open_streams",
            "Streams open now (SSE transcriptions, TranscribeStream, ModelStreamInfer).",
            ["protocol"],
            multiprocess_mode="livesum",
        )
        self.streams = Counter(
            "deepserve_streams",
            "Streams ended, by protocol and how they ended (completed, error, client_gone, "
            "idle_timeout, time_limit).",
            ["protocol", "end"],
        )
        for protocol in STREAM_PROTOCOLS:
            self.open_streams.labels(protocol)
            for end in STREAM_ENDS:
                self.streams.labels(protocol, end)
        self.first_result_seconds = Histogram(
            "deepserve_stream_first_result_seconds",
            "Time from a stream's start to its first result (segment or answer).",
            ["protocol"],
            buckets=LATENCY_BUCKETS,
        )
        self.segments = Histogram(
            "deepserve_transcription_segments",
            "Segments per transcription (long-form and streamed audio split at silences).",
            model,
            buckets=SEGMENT_BUCKETS,
        )
        self.segment_seconds = Histogram(
            "deepserve_segment_result_seconds",
            "Time from a segment's end in the audio being available (the voice-activity "
            "detector closed it) to its transcript being ready.",
            model,
            buckets=LATENCY_BUCKETS,
        )
        self.dropped_segments = Counter(
            "deepserve_dropped_segments",
            "Segments dropped unrun or unanswered because their stream ended early (client "
            "gone, timeout, error): work freed.",
            model,
        )
        self.load_seconds = Gauge(
            "deepserve_model_load_seconds",
            "Time to load and warm the model up.",
            model,
            multiprocess_mode="max",
        )
        self.info = Gauge(
            "deepserve_model_info",
            "1 for each served model: version, ONNX opset, execution provider, placement.",
            [*model, "opset", "provider", "placement"],
            multiprocess_mode="max",
        )


@lru_cache(maxsize=1)
def metrics() -> Metrics:
    return Metrics()


class ModelMetrics:
    """The batcher-facing view of one model's series (labels bound once)."""

    def __init__(self, model: str, version: str) -> None:
        collectors = metrics()
        self.queue = collectors.queue_seconds.labels(model, version)
        self.inference = collectors.inference_seconds.labels(model, version)
        self.batch = collectors.batch_size.labels(model, version)
        self.batches = collectors.batches.labels(model, version)
        self.samples = collectors.samples.labels(model, version)
        self.pending_gauge = collectors.pending.labels(model, version)
        self.model, self.version = model, version
        # NOTE: every series exists from the start (at 0), so rates and ratios over them return
        # data before the first error or shed request, and alerts see a baseline
        for protocol in PROTOCOLS:
            for status in STATUS_CLASSES:
                collectors.requests.labels(model, version, protocol, status)
        for reason in REJECT_REASONS:
            collectors.rejected.labels(model, version, reason)

    def batch_done(self, size: int, queue_waits: list[float], compute_seconds: float) -> None:
        for wait in queue_waits:
            self.queue.observe(wait)
        self.inference.observe(compute_seconds)
        self.batch.observe(size)
        self.batches.inc()
        self.samples.inc(size)

    def pending(self, count: int) -> None:
        self.pending_gauge.set(count)

    def rejected(self, reason: str) -> None:
        metrics().rejected.labels(self.model, self.version, reason).inc()

    def loaded(self, seconds: float) -> None:
        metrics().load_seconds.labels(self.model, self.version).set(seconds)


def record_model(
    name: str, version: str, opsets: Iterable[int], provider: str, placement: str
) -> None:
    """The info series of a served model (`opsets`: of its graphs)."""
    joined = ",".join(sorted({str(opset) for opset in opsets}))
    metrics().info.labels(name, version, joined, provider, placement).set(1)


@dataclass
class RequestRecord:
    """One inference request in flight; the serving core fills in what it learns."""

    protocol: str
    started: float
    model: str = "none"
    """"none" until a served model is resolved (unknown names never become label values)."""
    version: str = "none"
    inferred_at: float | None = None
    status: int = 500
    """The HTTP status (or its equivalent) answered; a scope left by an exception keeps 500."""


class StreamRecord:
    """One open stream: counted in deepserve_open_streams until `close`; `end` says how it
    ended (a value of STREAM_ENDS), `first_result` times its first result once."""

    def __init__(self, protocol: str) -> None:
        self.protocol = protocol
        self.started = time.perf_counter()
        self.end = "completed"
        self._first = False
        metrics().open_streams.labels(protocol).inc()

    def first_result(self) -> None:
        if not self._first:
            self._first = True
            metrics().first_result_seconds.labels(self.protocol).observe(
                time.perf_counter() - self.started
            )

    def close(self) -> None:
        collectors = metrics()
        collectors.open_streams.labels(self.protocol).dec()
        collectors.streams.labels(self.protocol, self.end).inc()


@contextmanager
def track_stream(protocol: str) -> Iterator[StreamRecord]:
    """Scope one stream (see StreamRecord); cancelled = client_gone unless `end` says more."""
    record = StreamRecord(protocol)
    try:
        yield record
    except BaseException as error:
        if record.end == "completed":
            cancelled = isinstance(error, (GeneratorExit, asyncio.CancelledError))
            record.end = "client_gone" if cancelled else "error"
        raise
    finally:
        record.close()


def observe_segments(model: str, version: str, count: int) -> None:
    metrics().segments.labels(model, version).observe(count)


def observe_segment_result(model: str, version: str, seconds: float) -> None:
    metrics().segment_seconds.labels(model, version).observe(seconds)


def note_dropped_segments(model: str, version: str, count: int) -> None:
    if count:
        metrics().dropped_segments.labels(model, version).inc(count)


_current: ContextVar[RequestRecord | None] = ContextVar("deepserve_request", default=None)


@contextmanager
def track_request(protocol: str | None) -> Iterator[RequestRecord]:
    """Scope one request; set `record.status` before leaving. With a `protocol` it is an
    inference request, counted and timed when the scope ends; None records nothing."""
    record = RequestRecord(protocol or "", time.perf_counter())
    if protocol is None:
        yield record
        return
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)
        _finish(record)


def _finish(record: RequestRecord) -> None:
    collectors = metrics()
    now = time.perf_counter()
    labels = (record.model, record.version, record.protocol)
    collectors.requests.labels(*labels, f"{record.status // 100}xx").inc()
    collectors.request_seconds.labels(*labels).observe(now - record.started)
    if record.status < 400 and record.inferred_at is not None:
        collectors.postprocess_seconds.labels(*labels).observe(now - record.inferred_at)


def note_model(model: str, version: str) -> None:
    """The request being served resolved this model (called when a runner is looked up)."""
    record = _current.get()
    if record is not None:
        record.model, record.version = model, version


def note_inferred() -> None:
    """The request's (last) model result arrived: postprocessing starts."""
    record = _current.get()
    if record is not None:
        record.inferred_at = time.perf_counter()


def observe_preprocess(seconds: float) -> None:
    record = _current.get()
    if record is not None and record.model != "none":
        metrics().preprocess_seconds.labels(record.model, record.version).observe(seconds)


def batch_totals(model: str, version: str) -> dict[str, int] | None:
    """Batches, samples and expired requests of a model summed over every process that writes
    to this host's metrics directory (the gateway and its runner services); None when
    prometheus_client is not in multiprocess mode."""
    import os

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not directory:
        return None
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    wanted = {"model": model, "version": version}
    totals = {"batches": 0.0, "samples": 0.0, "expired": 0.0}
    names = {
        "deepserve_batches_total": "batches",
        "deepserve_inference_samples_total": "samples",
        "deepserve_rejected_requests_total": "expired",
    }
    buckets: dict[float, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "deepserve_batch_size_bucket" and all(
                sample.labels.get(k) == v for k, v in wanted.items()
            ):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            key = names.get(sample.name)
            if key is None or any(sample.labels.get(k) != v for k, v in wanted.items()):
                continue
            if key == "expired" and sample.labels.get("reason") != "deadline":
                continue
            totals[key] += sample.value
    result = {k: int(v) for k, v in totals.items()}
    # the largest batch, to the batch-size histogram's resolution (the first full bucket)
    full = [bound for bound, count in buckets.items() if count >= totals["batches"] > 0]
    result["largest_batch"] = int(min(full)) if full and min(full) != float("inf") else 0
    return result
