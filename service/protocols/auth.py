"""Optional API-key auth for HTTP (an ASGI middleware on the whole gateway) and gRPC (an
interceptor): `Authorization: Bearer <key>`, keys from settings or a mounted secret file (which
keys, and whether one is right: service/protocols/keys.py).

Keys are compared with hmac.compare_digest against every configured key (no early exit), so the
time taken does not tell how much of a key was right. Messages never echo what was sent. A
request with more than one Authorization is refused. A client address that sends
auth_failure_limit refused keys within auth_failure_window_s gets 429 (gRPC RESOURCE_EXHAUSTED)
until the window ends, a right key included (FailedAuthLimiter), so keys cannot be guessed at
line rate.
"""

from __future__ import annotations

import ipaddress
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import grpc

from service.core.errors import Forbidden, ServingError, TooManyRequests, Unauthenticated
from service.core.metrics import metrics
from service.core.settings import Settings
from service.protocols.grpc.errors import abort_grpc
from service.protocols.grpc.streams import behaviour_of, complete, same_kind
from service.protocols.http.docs import PATHS as DOCS_PATHS
from service.protocols.http.errors import send_error
from service.protocols.keys import (
    MANAGEMENT_METHOD,
    MANAGEMENT_PATH,
    ApiKeys,
    grpc_authorizations,
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

HEALTH_PATHS = ("/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready")
METRICS_PATHS = ("/metrics",)
GRPC_HEALTH = (
    "/grpc.health.v1.Health/",
    "/inference.GRPCInferenceService/ServerLive",
    "/inference.GRPCInferenceService/ServerReady",
)
"""gRPC methods that are health probes (prefixes): grpc.health.v1 and V2 server live/ready."""


# --- refused keys per client address ------------------------------------------------------------


def client_key(address: str) -> str:
    """The address refused keys are counted against: an IP address, IPv6 by its /64 (a client
    usually has all of one), an IPv4-mapped IPv6 address as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


def peer_address(peer: str) -> str:
    """The IP address in a gRPC peer ("ipv4:127.0.0.1:5000", "ipv6:%5B::1%5D:5000"); other
    peers (unix sockets) as they are."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = urllib.parse.unquote(rest).rpartition(":")[0]
    return host.strip("[]")


class FailedAuthLimiter:
    """Refused keys per client address in a fixed window from the first one: an address with
    `limit` of them is refused until its window ends. At most `max_clients` addresses are kept
    (the one that failed least recently is forgotten first), so memory stays bounded whatever
    addresses are used."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        max_clients: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self.clock = clock
        self._failures: OrderedDict[str, tuple[float, int]] = OrderedDict()  # start, count

    @classmethod
    def from_settings(cls, settings: Settings) -> FailedAuthLimiter:
        """A limiter with these settings; the gateway makes one and hands it to the HTTP
        middleware and the gRPC interceptor, so both protocols count together."""
        return cls(
            settings.auth_failure_limit,
            settings.auth_failure_window_s,
            settings.auth_failure_max_clients,
        )

    def __len__(self) -> int:
        return len(self._failures)

    def retry_after(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it is not limited."""
        if self.limit <= 0:
            return None
        entry = self._failures.get(client)
        if entry is None:
            return None
        start, count = entry
        left = start + self.window_s - self.clock()
        if left <= 0:
            del self._failures[client]
            return None
        return left if count >= self.limit else None

    def failed(self, client: str) -> None:
        """Count a refused key from `client`."""
        if self.limit <= 0:
            return
        now = self.clock()
        start, count = self._failures.pop(client, (now, 0))
        if now - start >= self.window_s:
            start, count = now, 0
        self._failures[client] = (start, count + 1)  # now the most recent
        while len(self._failures) > self.max_clients:
            self._failures.popitem(last=False)
        # forget expired entries from the least recent end, a few at a time
        for _ in range(2):
            oldest, (first, _count) = next(iter(self._failures.items()))
            if now - first < self.window_s or oldest == client:
                break
            del self._failures[oldest]

    def check(self, client: str) -> None:
        """Raise TooManyRequests while `client` is limited."""
        left = self.retry_after(client)
        if left is not None:
            seconds = max(1, math.ceil(left))
            raise TooManyRequests(
                f"too many refused API keys from this address: retry in {seconds} s",
                retry_after_s=seconds,
            )


def authorize(
    keys: ApiKeys,
    failures: FailedAuthLimiter,
    client: str,
    authorizations: Sequence[str],
    management: bool = False,
) -> None:
    """Check one request's Authorization values from `client`: TooManyRequests while it is
    limited (the key is not checked), Unauthenticated when refused (counted against `client`
    when something was sent: a missing key is no guess)."""
    failures.check(client)
    try:
        keys.check_all(authorizations, management)
    except Unauthenticated:
        if authorizations:
            failures.failed(client)
        raise


# --- HTTP ---------------------------------------------------------------------------------------


def open_paths(settings: Settings) -> tuple[str, ...]:
    """HTTP paths served without a key."""
    paths: tuple[str, ...] = ()
    if settings.open_health:
        paths += HEALTH_PATHS
    if settings.open_metrics:
        paths += METRICS_PATHS
    if settings.open_docs:
        paths += DOCS_PATHS
    return paths


class ApiKeyMiddleware:
    """Refuses HTTP requests without a valid key, except on the open paths."""

    def __init__(
        self,
        app: Any,
        settings: Settings,
        keys: ApiKeys,
        failures: FailedAuthLimiter,
    ):
        self.app = app
        self.keys = keys
        self.open = open_paths(settings)
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        management = scope.get("path", "").startswith(MANAGEMENT_PATH)
        if (
            scope["type"] != "http"
            or not self.keys.needs_key(management)
            or scope["path"] in self.open
        ):
            await self.app(scope, receive, send)
            return
        authorizations = [
            value.decode("latin-1")
            for name, value in scope.get("headers") or ()
            if name.lower() == b"authorization"
        ]
        client = scope.get("client")
        try:
            address = client_key(client[0]) if client else ""
            authorize(self.keys, self.failures, address, authorizations, management)
        except ServingError as error:
            v2 = scope["path"].startswith("/v2")
            metrics().auth_failures.labels("v2-rest" if v2 else "rest").inc()
            await send_error(scope, send, error)
            return
        await self.app(scope, receive, send)


# --- gRPC ---------------------------------------------------------------------------------------


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses gRPC calls without `authorization: Bearer <key>` metadata (UNAUTHENTICATED), and
    every call from a limited client address (RESOURCE_EXHAUSTED); the health methods
    (GRPC_HEALTH) stay open when health is."""

    def __init__(self, settings: Settings, keys: ApiKeys, failures: FailedAuthLimiter):
        self.keys = keys
        self.open_health = settings.open_health
        self.failures = failures
        self._guarded: dict[Any, grpc.RpcMethodHandler] = {}  # by the handler it guards

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        management = method.startswith(MANAGEMENT_METHOD)
        if not self.keys.needs_key(management) or (
            self.open_health and method.startswith(GRPC_HEALTH)
        ):
            return await continuation(details)
        authorizations = grpc_authorizations(details.invocation_metadata)
        protocol = "v2-grpc" if method.startswith("/inference.") else "grpc"
        try:
            self.keys.check_all(authorizations, management)
        except Forbidden as error:
            return refusal(self.failures, error, False, protocol)
        except Unauthenticated as error:
            # NOTE: the refusal does not look up the method's handler, so a refused call never
            # reaches the quotas after this interceptor
            return refusal(self.failures, error, bool(authorizations), protocol)
        handler = await continuation(details)
        if handler is None:
            return None
        guarded = self._guarded.get(handler)
        if guarded is None:
            guarded = limited(handler, self.failures, protocol)
            if len(self._guarded) < 512:  # bounded even if handlers were made per call
                self._guarded[handler] = guarded
        return guarded


def refusal(
    failures: FailedAuthLimiter, error: ServingError, counted: bool, protocol: str
) -> grpc.RpcMethodHandler:
    """A handler that refuses its call at once, for any kind of call: it streams requests, so
    grpc.aio runs it without waiting for a request message. A limited client address gets
    RESOURCE_EXHAUSTED; otherwise `error`, counted against the address when `counted`."""

    async def refuse(requests: Any, context: grpc.aio.ServicerContext) -> None:
        metrics().auth_failures.labels(protocol).inc()
        client = client_key(peer_address(context.peer()))
        try:
            failures.check(client)
        except TooManyRequests as limited:
            await abort_grpc(context, limited)
        if counted:
            failures.failed(client)
        await abort_grpc(context, error)

    return grpc.stream_stream_rpc_method_handler(refuse)


def limited(
    handler: grpc.RpcMethodHandler, failures: FailedAuthLimiter, protocol: str
) -> grpc.RpcMethodHandler:
    """`handler` refusing calls from a limited client address (RESOURCE_EXHAUSTED)."""
    behaviour = behaviour_of(handler)

    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if len(failures):  # NOTE: no address to parse while nobody is being counted
            try:
                failures.check(client_key(peer_address(context.peer())))
            except TooManyRequests as error:
                metrics().auth_failures.labels(protocol).inc()
                await abort_grpc(context, error)
        return await complete(behaviour(request, context), context)

    return same_kind(handler, guarded)
