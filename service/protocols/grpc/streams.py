"""Long-lived gRPC calls: a quota per class of call, so that streams never crowd out unary calls,
and a health servicer whose Watch streams all see every status change.

grpc.aio has one concurrency limit (maximum_concurrent_rpcs), counted before the method is known:
health Watch streams, which need no key and never end, could use all of it. So each call is put
in a class when it starts, and each class has its own bound:

- health: grpc.health.v1 Check/Watch, V2 ServerLive/ServerReady (open without a key);
- inference stream: a streaming RPC of the inference services (TranscribeStream,
  ModelStreamInfer): live work that must not be closed for a newcomer;
- stream: every other streaming RPC (server reflection);
- unary: every other call.

A health or stream call beyond its quota closes the oldest call of its class (UNAVAILABLE; a
health-watching client reconnects) and is admitted; a unary or inference-stream call beyond its
quota is refused (RESOURCE_EXHAUSTED), so that cheap streams opened in a loop can never close
anyone's transcription. grpc.aio's own limit is set above the sum of the quotas (server_limit), so
it never refuses a call that its class has room for.

Inside one stream of requests (ModelStreamInfer), `answer_concurrently` answers them as they
arrive, at most STREAM_WINDOW at once, under the stream's StreamClock.

Length: the quota interceptor, the per-stream answering loop and the health servicer all decide
when a long-lived call ends; they share Ticket/Quota and are read together.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.core.errors import Overloaded, RequestTimeout
from service.core.settings import Settings
from service.core.streaming import StreamClock
from service.protocols.grpc.errors import abort_grpc

log = logging.getLogger("deepserve.grpc")

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN

HEADROOM = 64
"""grpc.aio's limit exceeds the sum of the quotas by this much: room for calls that are being
refused and for closed streams that have not finished yet (each lasts a few loop turns)."""

CLOSED_STATUS = grpc.StatusCode.UNAVAILABLE
"""Status that ends a stream closed for a newer one: clients (grpc's client-side health checks
included) retry on UNAVAILABLE."""

STREAM_WINDOW = 4
"""Requests of one stream answered at once: reading the stream pauses while this many are in
flight (its client waits on gRPC flow control), so one stream cannot flood a model's queue nor,
with a few others, fill its admission floor; more concurrency takes more streams."""

_MAX_CACHED_HANDLERS = 512

Request = TypeVar("Request")
Response = TypeVar("Response")


# --- quotas ---------------------------------------------------------------------------------------


class Ticket:
    """One admitted call; `closed` is set when its quota closes it for a newer call."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = asyncio.Event()


class Quota:
    """The open calls of one class, oldest first, at most `limit` of them."""

    def __init__(self, kind: str, limit: int, setting: str, *, closes_oldest: bool) -> None:
        self.kind = kind
        self.limit = limit
        self.setting = setting
        self.closes_oldest = closes_oldest
        """Full: close the oldest call for the new one (True) or refuse the new one (False)."""
        self._open: dict[Ticket, None] = {}  # insertion order = age

    def __len__(self) -> int:
        return len(self._open)

    def admit(self) -> Ticket | None:
        """A ticket for a new call (closing the oldest ones if full and allowed), or None."""
        if len(self._open) >= self.limit:
            if not self.closes_oldest or self.limit <= 0:
                return None
            while len(self._open) >= self.limit:
                oldest = next(iter(self._open))
                del self._open[oldest]
                oldest.closed.set()
        ticket = Ticket()
        self._open[ticket] = None
        return ticket

    def release(self, ticket: Ticket) -> None:
        self._open.pop(ticket, None)

    @property
    def full_message(self) -> str:
        return f"{self.limit} {self.kind} RPCs at once is the limit (setting {self.setting})"


class CallQuotaInterceptor(grpc.aio.ServerInterceptor):
    """Puts every call in its class (health, stream, unary) and admits it against that class's
    quota when the call starts, before its request message is read (a client that never sends
    one still counts). Place it after the auth interceptor: refused calls never take a place."""

    def __init__(
        self,
        settings: Settings,
        health_methods: tuple[str, ...],
        work_services: tuple[str, ...] = (),
    ) -> None:
        self.health_methods = health_methods
        self.work_services = work_services
        """Method prefixes ("/package.Service/") whose streams are inference work."""
        self.read_timeout_s = settings.grpc_request_timeout_s
        self.health = Quota(
            "health", settings.grpc_max_health_rpcs, "grpc_max_health_rpcs", closes_oldest=True
        )
        self.streams = Quota(
            "streaming", settings.grpc_max_streams, "grpc_max_streams", closes_oldest=True
        )
        self.work_streams = Quota(
            "inference streaming",
            settings.grpc_max_inference_streams,
            "grpc_max_inference_streams",
            closes_oldest=False,
        )
        self.unary = Quota(
            "unary",
            settings.grpc_max_concurrent_rpcs,
            "grpc_max_concurrent_rpcs",
            closes_oldest=False,
        )
        self._wrapped: dict[tuple[Any, str], grpc.RpcMethodHandler] = {}

    @property
    def server_limit(self) -> int:
        """grpc.aio's maximum_concurrent_rpcs: above every quota together."""
        quotas = (self.health, self.streams, self.work_streams, self.unary)
        return sum(quota.limit for quota in quotas) + HEADROOM

    def quota_for(self, method: str, handler: grpc.RpcMethodHandler) -> Quota:
        if method.startswith(self.health_methods):
            return self.health
        if handler.request_streaming or handler.response_streaming:
            return self.work_streams if method.startswith(self.work_services) else self.streams
        return self.unary

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        quota = self.quota_for(details.method or "", handler)
        key = (handler, quota.kind)
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = admitted(handler, quota, self.read_timeout_s)
            if len(self._wrapped) < _MAX_CACHED_HANDLERS:  # bounded if handlers are per call
                self._wrapped[key] = wrapped
        return wrapped


def admitted(
    handler: grpc.RpcMethodHandler, quota: Quota, read_timeout_s: float
) -> grpc.RpcMethodHandler:
    """`handler` admitted against `quota` when its call starts. The handler returned always
    streams its requests, so that grpc.aio runs it at once instead of after the request message
    arrives; for a unary request it reads the one message itself."""
    behaviour = behaviour_of(handler)
    streams_requests = handler.request_streaming

    async def run(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        if streams_requests:
            return await complete(behaviour(requests, context), context)
        try:
            # NOTE: bounded, or a call that never sends its message would hold its slot forever
            request = await asyncio.wait_for(context.read(), read_timeout_s)
        except TimeoutError:
            await abort_grpc(
                context,
                RequestTimeout(
                    f"no request message within {read_timeout_s:g} s of the call's start "
                    "(setting grpc_request_timeout_s)"
                ),
            )
        except grpc.aio.AbortError:
            raise
        except Exception as failure:  # NOTE: bytes that are not the method's message
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"malformed request message: {failure}"
            )
        if request is grpc.aio.EOF:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no request message was sent")
        return await complete(behaviour(request, context), context)

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        ticket = quota.admit()
        if ticket is None:
            await abort_grpc(context, Overloaded(quota.full_message))
        try:
            if not quota.closes_oldest:
                return await run(requests, context)
            return await until_closed(run(requests, context), ticket, quota, context)
        finally:
            quota.release(ticket)

    return same_kind(handler, call, requests_streamed=True)


async def until_closed(
    work: Awaitable[Any], ticket: Ticket, quota: Quota, context: grpc.aio.ServicerContext
) -> Any:
    """Run `work` until it ends, or until the quota closes `ticket` for a newer call: then
    cancel it and end the call with CLOSED_STATUS."""
    running = asyncio.ensure_future(work)
    closing = asyncio.ensure_future(ticket.closed.wait())
    try:
        await asyncio.wait((running, closing), return_when=asyncio.FIRST_COMPLETED)
    finally:
        closing.cancel()
        if not running.done():
            running.cancel()
    if not running.cancelled() and running.done():
        return running.result()  # its abort (AbortError) too, as grpc.aio expects
    await asyncio.wait((running,))  # the cancelled call has let go of its context
    log.debug("%s call closed for a newer one", quota.kind)
    await context.abort(CLOSED_STATUS, f"stream closed for a newer call: {quota.full_message}")


def behaviour_of(handler: grpc.RpcMethodHandler) -> Behaviour:
    return (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )


async def complete(produced: Any, context: grpc.aio.ServicerContext) -> Any:
    """Finish what a behaviour returned: await a coroutine, write out an async generator."""
    if inspect.isasyncgen(produced):
        async for response in produced:
            await context.write(response)
        return None
    if inspect.isawaitable(produced):
        return await produced
    return produced


def same_kind(
    handler: grpc.RpcMethodHandler, behaviour: Behaviour, *, requests_streamed: bool = False
) -> grpc.RpcMethodHandler:
    """A handler with `handler`'s serializers and response kind running `behaviour`; its
    requests stream when `handler`'s do or `requests_streamed`."""
    streamed = requests_streamed or handler.request_streaming
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(bool(streamed), bool(handler.response_streaming))]
    return make(
        behaviour,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def answer_concurrently(
    requests: AsyncIterable[Request],
    answer: Callable[[Request], AsyncIterator[Response]],
    settings: Settings,
    window: int = STREAM_WINDOW,
) -> AsyncGenerator[Response, None]:
    """The responses to a stream's requests, as each is ready: every request is answered (by
    `answer`, its responses in order) as soon as it arrives, at most `window` at once. Ends when
    the client has half-closed and every request is answered; StreamTimedOut when the stream
    idles (nothing received, nothing in flight) or outlives its limit (StreamClock).

    Close it (contextlib.aclosing) when leaving early: that cancels the answers in flight."""
    in_flight: set[asyncio.Task[None]] = set()
    ready: asyncio.Queue[Response] = asyncio.Queue(maxsize=window)  # a slow reader holds answers
    room = asyncio.Semaphore(window)
    clock = StreamClock(settings, busy=lambda: bool(in_flight))

    async def run(request: Request) -> None:
        try:
            responses = answer(request)
            try:
                async for response in responses:
                    await ready.put(response)
            finally:
                await aclose(responses)
        finally:
            room.release()

    async def read() -> None:
        incoming = clock.bounded(requests)
        try:
            while True:
                await room.acquire()  # NOTE: before reading: a full window stops reading
                try:
                    request = await anext(incoming)
                except StopAsyncIteration:
                    break
                task = asyncio.create_task(run(request))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            while in_flight:
                await asyncio.wait(set(in_flight))
        finally:
            await aclose(incoming)

    reader = asyncio.create_task(read())
    getter: asyncio.Future[Response] | None = None
    try:
        while True:
            getter = asyncio.ensure_future(ready.get())
            done, _ = await asyncio.wait(
                {getter, reader},
                timeout=max(0.0, clock.remaining()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()  # NOTE: an item it was about to take stays in the queue
            if reader in done:
                reader.result()  # the reader's StreamTimedOut, if any
                while not ready.empty():
                    yield ready.get_nowait()
                return
            clock.check()
    finally:
        if getter is not None:
            getter.cancel()
        for task in (reader, *in_flight):
            task.cancel()  # the batcher drops items whose request was cancelled
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(reader, *in_flight, return_exceptions=True)


async def aclose(iterator: AsyncIterator[Any]) -> None:
    """Close an async generator now (its `finally` runs); other async iterators have nothing to
    close."""
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc server options that close idle and (when set) old connections."""
    options = []
    if settings.grpc_max_connection_idle_s > 0:
        options.append(
            ("grpc.max_connection_idle_ms", int(settings.grpc_max_connection_idle_s * 1000))
        )
    if settings.grpc_max_connection_age_s > 0:
        options.append(
            ("grpc.max_connection_age_ms", int(settings.grpc_max_connection_age_s * 1000))
        )
        grace = int(settings.grpc_max_connection_age_grace_s * 1000)
        options.append(("grpc.max_connection_age_grace_ms", grace))
    return options


# --- health ---------------------------------------------------------------------------------------


class HealthServicer(health_pb2_grpc.HealthServicer):
    """grpc.health.v1.Health (Check and Watch). Every Watch stream sees every change.

    NOTE: grpc_health's own aio servicer shares one condition per service name among its
    watchers and drops it when any of them ends, after which the others see no more changes
    (NOT_SERVING on drain included). Here each change wakes all watchers through a fresh event.
    """

    def __init__(self) -> None:
        self._statuses: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Event()
        self._shutting_down = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        status = self._statuses.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        sent = None
        while True:
            changed = self._changed  # before reading: a change while writing is not missed
            status = self._statuses.get(request.service, SERVICE_UNKNOWN)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if self._shutting_down:  # NOT_SERVING told: end, so the drain need not wait for us
                return
            await changed.wait()

    def status(self, service: str) -> int | None:
        return self._statuses.get(service)

    def set(self, service: str, status: int) -> None:
        """Set `service`'s status (ignored once shutting down) and tell every watcher."""
        if not self._shutting_down:
            self._set(service, status)

    def enter_graceful_shutdown(self) -> None:
        """NOT_SERVING for every service from now on; later `set` calls are ignored."""
        self._shutting_down = True
        for service in list(self._statuses):
            self._set(service, NOT_SERVING)

    def _set(self, service: str, status: int) -> None:
        if self._statuses.get(service) == status:
            return
        self._statuses[service] = status
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
