"""Optional API-key auth for HTTP (an ASGI middleware on the whole gateway) and gRPC (an
interceptor): `Authorization: Bearer <key>`, keys from settings or a mounted secret file.

Keys are compared with hmac.compare_digest against every configured key (no early exit), so the
time taken does not tell how much of a key was right. Messages never echo what was sent. A
request with more than one Authorization is refused. A client address that sends
auth_failure_limit refused keys within auth_failure_window_s gets 429 (gRPC RESOURCE_EXHAUSTED)
until the window ends, a right key included (FailedAuthLimiter), so keys cannot be guessed at
line rate.
"""

from __future__ import annotations

import hmac
import ipaddress
import math
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from pydantic import SecretStr

from service.core.errors import Forbidden, ServingError, TooManyRequests, Unauthenticated
from service.core.metrics import metrics
from service.core.settings import Settings
from service.protocols.grpc.errors import abort_grpc
from service.protocols.grpc.streams import behaviour_of, complete, same_kind
from service.protocols.http.docs import PATHS as DOCS_PATHS
from service.protocols.http.errors import send_error

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


def checked_key(key: str, source: str) -> str:
    """`key` if it can be sent in an HTTP header and matched, else RuntimeError (naming
    `source`, never the key)."""
    if not key.isascii():
        # NOTE: HTTP header values arrive as latin-1, so a key with other characters could
        # never match over HTTP: refuse it at start instead of serving with a dead key
        raise RuntimeError(
            f"{source}: an API key holds a non-ASCII character; keys must be printable ASCII"
        )
    if not all(33 <= ord(char) <= 126 for char in key):
        raise RuntimeError(
            f"{source}: an API key holds whitespace or a control character; keys must be "
            "printable ASCII without spaces"
        )
    return key


MANAGEMENT_PATH = "/v2/repository/"
"""HTTP paths of the model repository API (management: admin keys when set)."""
MANAGEMENT_METHOD = "/inference.GRPCInferenceService/Repository"
"""gRPC methods of the model repository API (prefix)."""


def keys_from(secret: SecretStr | None, path: Path | None, name: str) -> list[str]:
    """The keys of one setting pair (`name` and `name`_file); RuntimeError (the server does not
    start) when the file is unreadable or empty, or a key is not printable ASCII."""
    keys = []
    if secret is not None and secret.get_secret_value().strip():
        keys.append(checked_key(secret.get_secret_value().strip(), name))
    if path is not None:
        # NOTE: a configured but unreadable or empty key file fails the start: serving
        # without auth because a secret did not mount would be worse than not serving
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise RuntimeError(f"{name}_file cannot be read: {error.strerror}") from None
        except UnicodeDecodeError:
            raise RuntimeError(f"{name}_file is not UTF-8 text") from None
        from_file = [
            checked_key(line.strip(), f"{name}_file line {number}")
            for number, line in enumerate(text.split("\n"), start=1)
            if line.strip() and not line.startswith("#")
        ]
        if not from_file:
            raise RuntimeError(f"{name}_file holds no key")
        keys.extend(from_file)
    return keys


class ApiKeys:
    """The accepted keys: API keys (inference and model endpoints) and admin keys (the model
    repository API, and everything an API key may do). `enabled` when any is configured."""

    def __init__(self, keys: list[str], admin_keys: Sequence[str] = ()):
        self._keys = [key.encode() for key in keys]
        self._admin = [key.encode() for key in admin_keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The configured keys; RuntimeError (the server does not start) when a key file is
        unreadable or empty, or a key is not printable ASCII."""
        keys = keys_from(settings.api_key, settings.api_key_file, "api_key")
        admin = keys_from(settings.admin_key, settings.admin_key_file, "admin_key")
        return cls(keys, admin)

    @property
    def enabled(self) -> bool:
        return bool(self._keys or self._admin)

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin)

    def needs_key(self, management: bool = False) -> bool:
        """Whether a call needs a key: management calls when any key is set, the others when
        API keys are set (admin keys alone leave inference open)."""
        return bool(self._keys or (management and self._admin))

    @staticmethod
    def _matches(presented: bytes, keys: list[bytes]) -> bool:
        matched = False
        for key in keys:  # all of them, always
            matched |= hmac.compare_digest(presented, key)
        return matched

    def check(self, authorization: str | None, management: bool = False) -> None:
        """Raise Unauthenticated unless `authorization` is "Bearer <a configured key>";
        Forbidden when a management call (with admin keys set) brings an API key."""
        if not self.needs_key(management):
            return
        presented = self._presented(authorization)
        admin = self._matches(presented, self._admin)
        user = self._matches(presented, self._keys)
        if management and self._admin:
            if admin:
                return
            if user:
                raise Forbidden(
                    "this API key may not manage models; the repository API needs an admin key"
                )
            raise Unauthenticated("invalid admin key")
        if not (admin or user):
            raise Unauthenticated("invalid API key")

    def is_admin(self, authorizations: Sequence[str]) -> bool:
        """Whether the request's one Authorization is an admin key (model uploads need one)."""
        if not self._admin or len(authorizations) != 1:
            return False
        try:
            presented = self._presented(authorizations[0])
        except Unauthenticated:
            return False
        return self._matches(presented, self._admin)

    @staticmethod
    def _presented(authorization: str | None) -> bytes:
        if not authorization:
            raise Unauthenticated("missing API key: send the header Authorization: Bearer <key>")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected Bearer <key>")
        if not token.isascii():  # keys are ASCII (checked_key): it cannot match
            raise Unauthenticated("invalid API key")
        return token.strip().encode()

    def check_all(self, authorizations: Sequence[str], management: bool = False) -> None:
        """check() for every Authorization a request carries: more than one is refused (which
        one would count is not for the client to guess)."""
        if len(authorizations) > 1:
            raise Unauthenticated("only one Authorization header is allowed")
        self.check(authorizations[0] if authorizations else None, management)


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
        authorizations = [
            value if isinstance(value, str) else bytes(value).decode("latin-1")
            for name, value in details.invocation_metadata or ()
            if name.lower() == "authorization"
        ]
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
