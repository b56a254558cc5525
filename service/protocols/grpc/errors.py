"""ServingErrors as gRPC status: the one place a gRPC call is ended with an error."""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from service.core.errors import ServingError


def grpc_code(error: ServingError) -> grpc.StatusCode:
    return grpc.StatusCode[error.grpc_status]


async def abort_grpc(context: Any, error: ServingError) -> NoReturn:
    """End a gRPC call (grpc.aio.ServicerContext) with `error`'s status and message; a
    Retry-After travels as the `retry-after` trailer."""
    if "Retry-After" in error.headers:
        context.set_trailing_metadata((("retry-after", error.headers["Retry-After"]),))
    await context.abort(grpc_code(error), error.message)
    raise AssertionError("unreachable: abort raises")
