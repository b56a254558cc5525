"""Open Inference Protocol over HTTP (/v2), with the binary tensor data extension.

A request with an `Inference-Header-Content-Length` header is a JSON header followed by the binary
data of every input whose parameters carry `binary_data_size`, in input order. Outputs go back as
binary when the output asks for it (`"binary_data": true`) or the request says
`"binary_data_output": true` (tritonclient's default), else as JSON data.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from service.core.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.protocols.http import common, repository
from service.protocols.http.common import answer, read_body
from service.protocols.http.errors import method_not_allowed, renderer
from service.protocols.http.limits import plain_int
from service.protocols.v2 import codecs, dataplane, wire
from service.runners.repository import ServingState

log = logging.getLogger("deepserve.v2")

StateGetter = Callable[[], ServingState]
HEADER_LENGTH = "Inference-Header-Content-Length"


error_response = renderer("/v2")


def parameter_dict(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} parameters must be a JSON object")
    return value


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip or deflate, refusing output beyond `limit` bytes before producing it (a small
    compressed body can expand a thousandfold)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidInput(f"body is not valid {encoding} data: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidInput(f"body is not valid {encoding} data: the stream is truncated")
    if inflater.unused_data:  # NOTE: a second gzip member or garbage: refused, not ignored
        raise InvalidInput(
            f"body has {len(inflater.unused_data)} bytes after the end of its {encoding} stream; "
            "send exactly one compressed stream"
        )
    return data


def decode_body(
    request: Request, body: bytes, limit: int, json_limit: int
) -> tuple[dict[str, Any], memoryview]:
    """(JSON header, binary tail) of an infer request, undoing any Content-Encoding."""
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        body = inflate(body, encoding, limit)
    elif encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} not supported; use gzip or deflate"
        )
    declared = request.headers.getlist(HEADER_LENGTH)
    if not declared:
        header_bytes, tail = body, b""
    else:
        length = plain_int(declared[0]) if len(declared) == 1 else None
        if length is None or length > len(body):
            shown = declared[0][:40] if len(declared) == 1 else f"{len(declared)} headers"
            raise InvalidInput(
                f"{HEADER_LENGTH}: {shown!r} is not one length within the {len(body)}-byte body"
            )
        header_bytes, tail = body[:length], body[length:]
    if len(header_bytes) > json_limit:
        raise PayloadTooLarge(
            f"JSON inference header is {len(header_bytes)} bytes; the limit is {json_limit} "
            "(setting max_json_bytes): send tensors as binary data"
        )
    try:
        header = json.loads(header_bytes)
    except (ValueError, RecursionError) as error:  # NOTE: also too deep, or a 5000-digit int
        raise InvalidInput(f"malformed JSON inference header: {error}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, memoryview(tail)


def wire_of(tensor: dict[str, Any]) -> str:
    """How an input tensor's data travels: "raw" (binary data extension) or "json"."""
    parameters = tensor.get("parameters")
    binary = isinstance(parameters, dict) and parameters.get("binary_data_size") is not None
    return "raw" if binary else "json"


def parse_infer(
    header: dict[str, Any],
    tail: memoryview,
    model: str,
    model_version: str | None,
    limits: codecs.TensorLimits = codecs.DEFAULT_LIMITS,
) -> dataplane.InferRequest:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('"inputs" must be a non-empty list of tensors')
    request = dataplane.InferRequest(
        model=model,
        version=model_version or "",
        id=str(header.get("id", "")),
        parameters=parameter_dict(header.get("parameters"), "request"),
    )
    limits.check_request(
        [
            (t.get("name"), t.get("datatype"), t.get("shape"), wire_of(t))
            for t in inputs
            if isinstance(t, dict)
        ]
    )
    offset = 0
    for position, tensor in enumerate(inputs):
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise InvalidInput(f"inputs[{position}] must be an object with a string name")
        name = tensor["name"]
        if name in request.inputs:
            raise InvalidInput(f"input {name} appears twice")
        datatype, shape = tensor.get("datatype"), tensor.get("shape")
        if not isinstance(datatype, str):
            raise InvalidInput(f"input {name}: datatype must be a string such as FP32")
        parameters = parameter_dict(tensor.get("parameters"), f"input {name}")
        size = parameters.get("binary_data_size")
        if size is not None:
            valid = isinstance(size, int) and not isinstance(size, bool) and size >= 0
            if not valid or offset + size > len(tail):
                raise InvalidInput(
                    f"input {name}: binary_data_size {size} does not fit the "
                    f"{len(tail) - offset} binary bytes left"
                )
            raw = bytes(tail[offset : offset + size])
            offset += size
            request.inputs[name] = codecs.from_raw(name, datatype, shape, raw, limits)
        else:
            if "data" not in tensor:
                raise InvalidInput(f"input {name} has neither data nor binary_data_size")
            request.inputs[name] = codecs.from_json(name, datatype, shape, tensor["data"], limits)
    if offset != len(tail):
        raise InvalidInput(f"{len(tail) - offset} binary bytes after the last binary input")
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise InvalidInput('"outputs" must be a list')
    for position, wanted in enumerate(outputs):
        if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
            raise InvalidInput(f"outputs[{position}] must be an object with a string name")
        name = wanted["name"]
        parameters = parameter_dict(wanted.get("parameters"), f"output {name}")
        k = dataplane.classification_parameter(parameters.get("classification"), name)
        binary = dataplane.flag_parameter(
            parameters.get("binary_data"), f"output {name} parameter binary_data"
        )
        request.outputs.append(dataplane.RequestedOutput(name, k, binary))
    return request


def render_infer(result: dataplane.InferResponse, binary_default: bool) -> Response:
    outputs, chunks = [], []
    for wanted, array in result.outputs:
        tensor: dict[str, Any] = {
            "name": wanted.name,
            "datatype": codecs.datatype_of(array),
            "shape": list(array.shape),
        }
        if wanted.binary if wanted.binary is not None else binary_default:
            raw = codecs.to_raw(array)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = codecs.to_json_data(array)
        outputs.append(tensor)
    body: dict[str, Any] = {
        "model_name": result.model,
        "model_version": result.version,
        "outputs": outputs,
    }
    if result.id:
        body["id"] = result.id
    header = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


def build_app(state: StateGetter, is_admin: repository.IsAdmin | None = None) -> Starlette:
    """The /v2 routes; `state` returns the gateway's ServingState at request time, `is_admin`
    tells whether a request's Authorization holds an admin key (model uploads)."""

    async def server_metadata(request: Request) -> Response:
        return answer(wire.ServerMetadata.model_validate(dataplane.server_metadata()))

    async def live(request: Request) -> Response:
        return answer(wire.ServerLive(live=True))

    async def ready(request: Request) -> Response:
        is_ready = state().ready
        return answer(wire.ServerReady(ready=is_ready), 200 if is_ready else 503)

    def version_of(request: Request) -> str | None:
        return request.path_params.get("model_version")

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["model_name"]
        metadata = dataplane.model_metadata(state(), name, version_of(request))
        return answer(wire.ModelMetadata.model_validate(metadata))

    async def model_ready(request: Request) -> Response:
        name = request.path_params["model_name"]
        is_ready = dataplane.model_ready(state(), name, version_of(request))
        return answer(wire.ModelReady(name=name, ready=is_ready), 200 if is_ready else 503)

    async def model_config(request: Request) -> Response:
        name = request.path_params["model_name"]
        config = dataplane.model_config(state(), name, version_of(request))
        return answer(wire.ModelConfig.model_validate(config))

    async def model_statistics(request: Request) -> Response:
        name = request.path_params.get("model_name", "")  # none: every served model
        stats = await dataplane.statistics(state(), name, version_of(request) or "")
        return answer(wire.ModelStatisticsResponse.model_validate(stats))

    async def infer(request: Request) -> Response:
        serving = state()
        deadline = common.deadline_of(request)
        body = await read_body(request, serving.settings.max_body_bytes)
        settings = serving.settings
        header, tail = decode_body(request, body, settings.max_body_bytes, settings.max_json_bytes)
        limits = codecs.TensorLimits.of(serving.settings)
        name = request.path_params["model_name"]
        parsed = parse_infer(header, tail, name, version_of(request), limits)
        parsed.deadline = deadline
        result = await dataplane.infer(serving, parsed)
        binary_default = dataplane.flag_parameter(
            parsed.parameters.get("binary_data_output"), "parameter binary_data_output"
        )
        return render_infer(result, bool(binary_default))

    def guarded(handler: Callable[[Request], Awaitable[Response]], protocol: str | None = None):
        return common.guarded(handler, error_response, protocol)

    # NOTE: mounted at "/" (BentoML's mounts only match their own routes), so GET /v2 itself is
    # a route; a mount at /v2 would redirect it to /v2/, which clients do not follow.
    model = "/v2/models/{model_name}"
    versioned = "/v2/models/{model_name}/versions/{model_version}"
    routes: list[BaseRoute] = [
        Route("/v2", guarded(server_metadata), methods=["GET"]),
        Route("/v2/health/live", guarded(live), methods=["GET"]),
        Route("/v2/health/ready", guarded(ready), methods=["GET"]),
        # NOTE: before the model routes, which would take "stats" for a model's name
        Route("/v2/models/stats", guarded(model_statistics), methods=["GET"]),
    ]
    for prefix in (model, versioned):
        routes += [
            Route(prefix, guarded(model_metadata), methods=["GET"]),
            Route(prefix + "/ready", guarded(model_ready), methods=["GET"]),
            Route(prefix + "/config", guarded(model_config), methods=["GET"]),
            Route(prefix + "/stats", guarded(model_statistics), methods=["GET"]),
            Route(prefix + "/infer", guarded(infer, "v2-rest"), methods=["POST"]),
        ]

    routes += repository.routes(state, guarded, is_admin or (lambda authorizations: False))
    routes.append(common.Fallback(error_response, prefix="/v2"))  # mounted at "/": /v2 only

    return Starlette(routes=routes, exception_handlers={405: method_not_allowed})
