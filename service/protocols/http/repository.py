"""The model repository extension over HTTP: POST /v2/repository/index, .../models/{name}/load
and .../unload (KServe V2 / Triton; stock tritonclient.http's get_model_repository_index,
load_model and unload_model). The calls themselves are in service/protocols/v2/repository.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core.errors import Forbidden, InvalidInput, PayloadTooLarge
from service.protocols.http.common import read_json
from service.protocols.v2 import repository, wire
from service.runners.repository import ServingState

StateGetter = Callable[[], ServingState]
IsAdmin = Callable[[Sequence[str]], bool]
"""The request's Authorization values -> whether they hold an admin key."""


NO_BODY = object()


def body_of(data: Any, model: type[wire.RequestModel]) -> Any:
    if data is NO_BODY:
        return model()
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object (or empty)")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None


async def json_body(request: Request, limit: int) -> Any:
    """The JSON body, or NO_BODY when there is none (tritonclient sends none without
    parameters)."""
    if request.headers.get("content-length") in (None, "0") and "chunked" not in (
        request.headers.get("transfer-encoding", "")
    ):
        return NO_BODY
    return await read_json(request, limit)


def decoded_files(parameters: dict[str, Any], limit: int) -> dict[str, Any]:
    """`file:` parameters are base64 over HTTP: size-checked before decoding, then bytes."""
    out = dict(parameters)
    encoded = {k: v for k, v in parameters.items() if k.startswith(repository.FILE_PREFIX)}
    total = sum(len(v) * 3 // 4 for v in encoded.values() if isinstance(v, str))
    if total > limit:
        raise PayloadTooLarge(f"upload of about {total} bytes is over max_upload_bytes ({limit})")
    for key, value in encoded.items():
        if not isinstance(value, str):
            raise InvalidInput(f"parameter {key} must be a base64 string")
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidInput(f"parameter {key} is not valid base64") from None
    return out


def routes(state: StateGetter, guarded: Callable[[Any], Any], is_admin: IsAdmin) -> list[BaseRoute]:
    async def index(request: Request) -> Response:
        serving = state()
        data = await json_body(request, serving.settings.max_json_bytes)
        asked = body_of(data, wire.RepositoryIndexRequest)
        entries = [
            wire.RepositoryModel.model_validate(entry)
            for entry in await repository.index(serving, asked.ready)
        ]
        body = b"[" + b",".join(entry.body() for entry in entries) + b"]"
        return Response(body, media_type="application/json")

    async def load(request: Request) -> Response:
        serving = state()
        data = await json_body(request, serving.settings.max_body_bytes)
        asked = body_of(data, wire.RepositoryLoadRequest)
        admin = is_admin(request.headers.getlist("authorization"))
        if any(key.startswith(repository.FILE_PREFIX) for key in asked.parameters):
            serving.check_explicit("load")  # both before any decoding
            if not admin:
                raise Forbidden(repository.UPLOAD_NEEDS_ADMIN)
        parameters = decoded_files(asked.parameters, serving.settings.max_upload_bytes)
        await repository.load(serving, request.path_params["model_name"], parameters, admin)
        return Response(b"", media_type="application/json")

    async def unload(request: Request) -> Response:
        serving = state()
        data = await json_body(request, serving.settings.max_json_bytes)
        asked = body_of(data, wire.RepositoryUnloadRequest)
        await repository.unload(serving, request.path_params["model_name"], asked.parameters)
        return Response(b"", media_type="application/json")

    prefix = "/v2/repository"
    return [
        Route(prefix + "/index", guarded(index), methods=["POST"]),
        Route(prefix + "/models/{model_name}/load", guarded(load), methods=["POST"]),
        Route(prefix + "/models/{model_name}/unload", guarded(unload), methods=["POST"]),
    ]
