"""The gateway's gRPC server: V2 inference, the typed task service, health and reflection.

BentoML 1.4 has no gRPC serving for new-style services, so a grpc.aio server runs in the gateway
process on the gateway's event loop (started by its startup hook), calling the same runners as
REST. With several gateway workers each binds the port with SO_REUSEPORT and the kernel spreads
connections across them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.core.errors import InvalidInput, ServingError, StreamTimedOut
from service.core.metrics import track_stream
from service.core.settings import Settings
from service.core.streaming import StreamClock
from service.protocols.auth import GRPC_HEALTH, ApiKeyInterceptor, ApiKeys, FailedAuthLimiter
from service.protocols.grpc.errors import abort_grpc
from service.protocols.grpc.malformed import (
    MalformedRequest,
    MalformedRequestInterceptor,
    answers_malformed,
)
from service.protocols.grpc.streams import (
    HEALTH_SERVICE,
    CallQuotaInterceptor,
    HealthServicer,
    connection_options,
)
from service.protocols.grpc.v2 import V2Servicer, deadline_of, rpc
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc, inference_pb2, inference_pb2_grpc
from service.runners.repository import ServingState
from service.tasks import (
    catalog,
    image_captioning,
    image_classification,
    speech_recognition,
    text_classification,
)

log = logging.getLogger("deepserve.grpc")

StateGetter = Callable[[], ServingState]
V2_SERVICE = inference_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
TASK_SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name


class TaskServicer(deepserve_pb2_grpc.InferenceServicer):
    """deepserve.v1.Inference: the /v1 task API over gRPC (same fields, same core)."""

    def __init__(self, state: StateGetter):
        self.state = state

    @rpc("grpc")
    async def Classify(self, request, context):
        answer = await image_classification.classify(
            self.state(),
            request.image,
            request.model or None,
            request.top_k or None,
            deadline_of(context),
            request.version or None,
            request.reject_out_of_domain,
        )
        predictions = [pb.Prediction(**p) for p in answer.pop("predictions")]
        return pb.ClassifyResponse(**answer, predictions=predictions)

    @rpc("grpc")
    async def Sentiment(self, request, context):
        spec, results = await text_classification.sentiment(
            self.state(),
            list(request.texts),
            request.model or None,
            deadline=deadline_of(context),
            version=request.version or None,
            reject_out_of_domain=request.reject_out_of_domain,
        )
        return pb.SentimentResponse(
            model=spec.name,
            version=spec.version,
            results=[pb.SentimentResult(**r) for r in results],
        )

    @rpc("grpc")
    async def Transcribe(self, request, context):
        answer = await speech_recognition.transcribe(
            self.state(),
            request.audio,
            request.model or None,
            deadline_of(context),
            request.version or None,
            request.reject_out_of_domain,
        )
        return transcribe_response(answer)

    @answers_malformed
    async def TranscribeStream(self, requests, context):
        """Audio chunks in, each segment's text out as soon as the speaker pauses, then the
        whole transcript once the client half-closes (service/tasks/transcription.py). Bounded
        by the stream settings (idle input, a client that reads nothing, total time) and the
        call's deadline; a cancelled call drops its unfinished segments."""
        clock = StreamClock(self.state().settings)
        with track_stream("grpc-stream") as record:
            try:
                await clock.within(self._transcribe_stream(requests, context, record, clock))
            except ServingError as error:
                record.end = error.end if isinstance(error, StreamTimedOut) else "error"
                await abort_grpc(context, error)

    async def _transcribe_stream(self, requests, context, record, clock) -> None:
        serving = self.state()
        messages = aiter(requests)
        try:
            first = await asyncio.wait_for(anext(messages), min(clock.idle_s, clock.remaining()))
        except StopAsyncIteration:
            raise InvalidInput("no audio chunk was sent") from None
        except TimeoutError:
            raise StreamTimedOut(
                f"no audio chunk within {clock.idle_s:g} s (setting stream_idle_timeout_s)",
                "idle_timeout",
            ) from None
        first = checked_chunk(first)
        runner = serving.runner(
            first.model or speech_recognition.DEFAULT_MODEL,
            speech_recognition.NAME,
            first.version or None,
        )
        encoding = first.encoding or "s16le"
        decoder: speech_recognition.AudioDecoder = (
            speech_recognition.WavBytes()
            if encoding == "wav"
            else speech_recognition.PcmStream(first.sample_rate or 16000, encoding)
        )

        async def chunks():
            yield first.audio
            async for message in messages:
                yield checked_chunk(message).audio

        events = speech_recognition.stream_transcription(
            serving, runner, chunks(), decoder, deadline_of(context), clock
        )
        async with contextlib.aclosing(events):
            async for kind, answer in events:
                if kind == "segment":
                    event = pb.TranscribeEvent(segment=pb.TranscribedSegment(**answer))
                else:
                    event = pb.TranscribeEvent(transcript=transcribe_response(answer))
                record.first_result()
                await clock.sent(context.write(event))

    @rpc("grpc")
    async def Caption(self, request, context):
        answer = await image_captioning.caption(
            self.state(),
            request.image,
            request.model or None,
            request.beam or None,
            deadline_of(context),
            request.version or None,
            request.reject_out_of_domain,
        )
        return pb.CaptionResponse(**answer)

    @rpc()
    async def ListModels(self, request, context):
        models = await catalog.list_models(self.state())
        return pb.ListModelsResponse(
            models=[
                pb.ModelInfo(
                    name=m["name"],
                    version=m.get("version", ""),
                    task=m.get("task", ""),
                    placement=m.get("placement", ""),
                    provider=m.get("provider", ""),
                    ready=bool(m.get("ready")),
                    error=m.get("error") or "",
                    default_version=bool(m.get("default")),
                )
                for m in models
            ]
        )


def transcribe_response(answer: dict) -> pb.TranscribeResponse:
    segments = [pb.TranscribedSegment(**segment) for segment in answer["segments"]]
    return pb.TranscribeResponse(**{**answer, "segments": segments})


def checked_chunk(message: object) -> pb.AudioChunk:
    """A stream's message, or INVALID_ARGUMENT for bytes that are not an AudioChunk."""
    if isinstance(message, MalformedRequest):
        raise InvalidInput(message.message)
    assert isinstance(message, pb.AudioChunk)
    return message


class GrpcServer:
    """Owns the grpc.aio server and keeps health statuses in step with readiness."""

    def __init__(
        self, state: StateGetter, settings: Settings, keys: ApiKeys, failures: FailedAuthLimiter
    ):
        self.state = state
        self.settings = settings
        self.keys = keys
        self.failures = failures
        """Shared with the HTTP middleware: refused keys count together on both protocols."""
        self.server: grpc.aio.Server | None = None
        self.health = HealthServicer()
        self.port = 0
        self._watch: asyncio.Task[None] | None = None
        self._draining: asyncio.Task[None] | None = None
        self._serving: bool | None = None

    async def start(self) -> None:
        keys = self.keys
        work = (f"/{V2_SERVICE}/", f"/{TASK_SERVICE}/")
        quotas = CallQuotaInterceptor(self.settings, GRPC_HEALTH, work)
        server = grpc.aio.server(
            options=[
                ("grpc.so_reuseport", 1),
                ("grpc.max_receive_message_length", self.settings.max_body_bytes),
                ("grpc.max_send_message_length", self.settings.max_body_bytes),
                *connection_options(self.settings),
            ],
            # NOTE: above the quotas together, so that it never refuses a call whose class has
            # room (it counts every call before its method is known; see grpc_streams.py)
            maximum_concurrent_rpcs=quotas.server_limit,
            # after auth: refused calls take no quota and are not parsed
            interceptors=(
                [ApiKeyInterceptor(self.settings, keys, self.failures)] if keys.enabled else []
            )
            + [quotas, MalformedRequestInterceptor()],
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            V2Servicer(self.state, keys.is_admin), server
        )
        deepserve_pb2_grpc.add_InferenceServicer_to_server(TaskServicer(self.state), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [V2_SERVICE, TASK_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME], server
        )
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        if not self.port:
            raise RuntimeError(f"gRPC could not bind {address}")
        await server.start()
        self.server = server
        await self.sync_health()
        self._watch = asyncio.create_task(self._follow_readiness(), name="grpc-health")
        log.info("gRPC listening on %s:%d", self.settings.host, self.port)

    def _set_health(self, ready: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", V2_SERVICE, TASK_SERVICE):
            self.health.set(name, status)

    async def _follow_readiness(self) -> None:
        while True:
            await self.sync_health()
            await asyncio.sleep(0.5)

    async def sync_health(self) -> None:
        """Set the health statuses from readiness now (also polled every 0.5 s)."""
        ready = self.state().ready
        if ready != self._serving:
            self._serving = ready
            self._set_health(ready)

    def drain(self) -> None:
        """Refuse new RPCs now and let those in flight finish (on SIGTERM)."""
        if self.server is not None and self._draining is None:
            log.info("gRPC draining: new calls refused, in-flight calls finish")
            self._draining = asyncio.create_task(self.stop(self.settings.shutdown_grace_s))

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        self.health.enter_graceful_shutdown()
        if self.server is not None:
            server, self.server = self.server, None
            await server.stop(grace)
        elif self._draining is not None and self._draining is not asyncio.current_task():
            await self._draining
