"""Optional API-key auth for HTTP (an ASGI middleware on the whole gateway) and gRPC (an
interceptor): `Authorization: Bearer <key>`, keys from settings or a mounted secret file.

Keys are compared with hmac.compare_digest against every configured key (no early exit), so the
time taken does not tell how much of a key was right. Messages never echo what was sent.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import grpc

from service.errors import Unauthenticated
from service.metrics import metrics
from service.settings import Settings

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


class ApiKeys:
    """The accepted keys; `enabled` only when at least one is configured."""

    def __init__(self, keys: list[str]):
        self._keys = [key.encode() for key in keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        keys = []
        if settings.api_key is not None and settings.api_key.get_secret_value().strip():
            keys.append(settings.api_key.get_secret_value().strip())
        if settings.api_key_file is not None:
            # NOTE: a configured but unreadable or empty key file fails the start: serving
            # without auth because a secret did not mount would be worse than not serving
            try:
                lines = settings.api_key_file.read_text().splitlines()
            except OSError as error:
                raise RuntimeError(f"api_key_file cannot be read: {error.strerror}") from None
            from_file = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
            if not from_file:
                raise RuntimeError("api_key_file holds no key")
            keys.extend(from_file)
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> None:
        """Raise Unauthenticated unless `authorization` is "Bearer <a configured key>"."""
        if not self.enabled:
            return
        if not authorization:
            raise Unauthenticated("missing API key: send the header Authorization: Bearer <key>")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected Bearer <key>")
        presented = token.strip().encode()
        matched = False
        for key in self._keys:  # all of them, always
            matched |= hmac.compare_digest(presented, key)
        if not matched:
            raise Unauthenticated("invalid API key")


def open_paths(settings: Settings) -> tuple[str, ...]:
    """HTTP paths served without a key."""
    paths: tuple[str, ...] = ()
    if settings.open_health:
        paths += HEALTH_PATHS
    if settings.open_metrics:
        paths += METRICS_PATHS
    return paths


class ApiKeyMiddleware:
    """Refuses HTTP requests without a valid key, except on the open paths."""

    def __init__(self, app: Any, settings: Settings, keys: ApiKeys):
        self.app = app
        self.keys = keys
        self.open = open_paths(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys.enabled or scope["path"] in self.open:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        try:
            self.keys.check(authorization)
        except Unauthenticated as error:
            v2 = scope["path"].startswith("/v2")
            metrics().auth_failures.labels("v2-rest" if v2 else "rest").inc()
            body = {"error": error.message} if v2 else error.to_json()
            await send(
                {
                    "type": "http.response.start",
                    "status": int(error.http_status),
                    "headers": [
                        (b"content-type", b"application/json"),
                        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": json.dumps(body).encode()})
            return
        await self.app(scope, receive, send)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses gRPC calls without `authorization: Bearer <key>` metadata (UNAUTHENTICATED);
    the health methods (GRPC_HEALTH) stay open when health is."""

    def __init__(self, settings: Settings, keys: ApiKeys):
        self.keys = keys
        self.open_health = settings.open_health

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = details.method or ""
        if not self.keys.enabled or (self.open_health and method.startswith(GRPC_HEALTH)):
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        authorization = metadata.get("authorization")
        try:
            self.keys.check(authorization if isinstance(authorization, str) else None)
        except Unauthenticated as error:
            v2 = method.startswith("/inference.")
            metrics().auth_failures.labels("v2-grpc" if v2 else "grpc").inc()
            return refusal(await continuation(details), error)
        return await continuation(details)


def refusal(handler: grpc.RpcMethodHandler | None, error: Unauthenticated) -> Any:
    """A handler of the same streaming kind as `handler` that aborts with `error`."""

    async def abort(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.grpc_code, error.message)

    if handler is not None and handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler is not None and handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)
