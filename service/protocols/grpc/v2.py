"""Open Inference Protocol over gRPC: inference.GRPCInferenceService (KServe V2 + ModelConfig).

Inputs are read from raw_input_contents when the client sends them (tritonclient does), else from
the typed `contents` fields; outputs always go back in raw_output_contents, which is all that
tritonclient's as_numpy() reads. ModelStreamInfer (Triton's bidirectional stream) answers each
request of a stream as ModelInfer would, concurrently, matched to it by id (see its docstring).

Length: one servicer with one method per RPC of the V2 service; the request bytes checks live in
malformed.py and the stream window in streams.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf.json_format import ParseDict

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.core import datatypes
from service.core.errors import InvalidInput, ModelNotFound, NotReady, ServingError, StreamTimedOut
from service.core.metrics import track_request, track_stream
from service.core.streaming import StreamClock
from service.protocols.grpc.errors import abort_grpc
from service.protocols.grpc.malformed import MalformedRequest, answers_malformed
from service.protocols.grpc.streams import answer_concurrently
from service.protocols.keys import grpc_authorizations
from service.protocols.proto.gen import inference_pb2 as pb
from service.protocols.proto.gen import inference_pb2_grpc
from service.protocols.v2 import codecs, dataplane, repository
from service.runners.repository import ServingState

IsAdmin = Callable[[Sequence[str]], bool]
log = logging.getLogger("deepserve.grpc")
StateGetter = Callable[[], ServingState]
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]

FINAL_RESPONSE = "triton_final_response"
"""Response parameter of ModelStreamInfer answers: true on the last one of its request."""
EMPTY_FINAL_RESPONSE = "triton_enable_empty_final_response"
"""Request parameter (tritonclient's enable_empty_final_response): parts go out as they come and
an empty response closes them."""


def _contents_field(datatype: str) -> str | None:
    """The InferTensorContents field that carries a datatype when raw contents are not used
    (None: it travels only raw). Protobuf has no 8- or 16-bit integers: those widen to the
    32-bit int_contents / uint_contents."""
    dtype = datatypes.numpy_of(datatype)
    if dtype.kind in "iu" and dtype.itemsize < 8:
        return "uint_contents" if dtype.kind == "u" else "int_contents"
    field = f"{datatype.lower()}_contents"
    return field if field in pb.InferTensorContents.DESCRIPTOR.fields_by_name else None


CONTENTS_FIELD: dict[str, str] = {
    datatype: field
    for datatype in datatypes.DATATYPES
    if (field := _contents_field(datatype)) is not None
}


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The client's deadline as a time.monotonic() value (requests past it are not computed)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def rpc(protocol: str | None = None) -> Callable[[Handler], Handler]:
    """Decorate an RPC: a ServingError becomes the gRPC status its class names (one table for all
    protocols); with a `protocol`, the RPC is an inference request counted in the metrics."""

    def decorate(method: Handler) -> Handler:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            with track_request(protocol) as record:
                try:
                    if isinstance(request, MalformedRequest):
                        raise InvalidInput(request.message)
                    reply = await method(self, request, context)
                except ServingError as error:
                    record.status = error.http_status
                    await abort_grpc(context, error)
                except asyncio.CancelledError:  # deadline passed or the client cancelled
                    remaining = context.time_remaining()
                    record.status = 504 if remaining is not None and remaining <= 0 else 499
                    raise
                except grpc.aio.AbortError:
                    raise
                except Exception:
                    # NOTE: a bug, not the client's fault: logged whole, answered without
                    # details (grpc.aio would answer UNKNOWN with the exception's type and text)
                    log.exception("%s failed", method.__name__)
                    record.status = 500
                    await context.abort(grpc.StatusCode.INTERNAL, "internal error (logged)")
                    raise
                record.status = 200
                return reply

        wrapper.answers_malformed = True  # type: ignore[attr-defined]
        return wrapper

    return decorate


def parameter_value(parameter: pb.InferParameter | pb.ModelRepositoryParameter) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def parameters_of(mapping: Any) -> dict[str, Any]:
    return {key: parameter_value(value) for key, value in mapping.items()}


def read_inputs(
    request: pb.ModelInferRequest, limits: codecs.TensorLimits = codecs.DEFAULT_LIMITS
) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs; send one per input"
        )
    limits.check_request(
        [(t.name, t.datatype, list(t.shape), "raw" if raw else "json") for t in request.inputs]
    )
    arrays: dict[str, np.ndarray] = {}
    for position, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, list(tensor.shape)
        if name in arrays:
            raise InvalidInput(f"input {name} appears twice")
        if raw:
            arrays[name] = codecs.from_raw(name, datatype, shape, raw[position], limits)
            continue
        field = CONTENTS_FIELD.get(datatype)
        if field is None:
            codecs.numpy_dtype(datatype, name)  # unknown datatype: says which are known
            raise InvalidInput(f"input {name}: {datatype} travels only in raw_input_contents")
        dims = codecs.check_shape(shape, name)
        count = limits.check(name, datatype, dims, "json")
        contents = getattr(tensor.contents, field)
        if len(contents) != count:  # NOTE: before copying them: a [1] may carry 20 M values
            raise InvalidInput(
                f"input {name}: shape {shape} needs {count} elements, got {len(contents)}"
            )
        values = list(contents)
        if datatype == "BYTES":
            array = np.empty(count, dtype=object)
            array[:] = values
            arrays[name] = array.reshape(shape)
        else:
            arrays[name] = codecs.from_json(name, datatype, shape, values, limits)
    return arrays


class V2Servicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: StateGetter, is_admin: IsAdmin | None = None):
        self.state = state
        self.is_admin: IsAdmin = is_admin or (lambda authorizations: False)
        """The call's authorization metadata -> whether it holds an admin key (uploads)."""

    # -- model repository extension ---------------------------------------------------------

    @rpc()
    async def RepositoryIndex(self, request, context):
        entries = await repository.index(self.state(), request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in entries]
        )

    @rpc()
    async def RepositoryModelLoad(self, request, context):
        authorizations = grpc_authorizations(context.invocation_metadata())
        parameters = parameters_of(request.parameters)
        await repository.load(
            self.state(), request.model_name, parameters, self.is_admin(authorizations)
        )
        return pb.RepositoryModelLoadResponse()

    @rpc()
    async def RepositoryModelUnload(self, request, context):
        await repository.unload(self.state(), request.model_name, parameters_of(request.parameters))
        return pb.RepositoryModelUnloadResponse()

    @rpc()
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @rpc()
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.state().ready)

    @rpc()
    async def ModelReady(self, request, context):
        try:
            ready = dataplane.model_ready(self.state(), request.name, request.version)
        except (ModelNotFound, NotReady):  # as Triton: an unknown or unloaded model is not ready
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @rpc()
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(**dataplane.server_metadata())

    @rpc()
    async def ModelMetadata(self, request, context):
        meta = dataplane.model_metadata(self.state(), request.name, request.version)
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in meta["outputs"]],
        )

    @rpc()
    async def ModelConfig(self, request, context):
        config = dataplane.model_config(self.state(), request.name, request.version)
        return pb.ModelConfigResponse(
            config=pb.ModelConfig(
                name=config["name"],
                platform=config["platform"],
                backend=config["backend"],
                max_batch_size=config["max_batch_size"],
                input=[
                    pb.ModelInput(
                        name=t["name"],
                        data_type=pb.DataType.Value(t["data_type"]),
                        dims=t["dims"],
                        optional=t["optional"],
                    )
                    for t in config["input"]
                ],
                output=[
                    pb.ModelOutput(
                        name=t["name"], data_type=pb.DataType.Value(t["data_type"]), dims=t["dims"]
                    )
                    for t in config["output"]
                ],
                dynamic_batching=pb.ModelDynamicBatching(**config["dynamic_batching"])
                if "dynamic_batching" in config  # absent when the model is not batchable
                else None,
            )
        )

    @rpc()
    async def ModelStatistics(self, request, context):
        stats = await dataplane.statistics(self.state(), request.name, request.version)
        return ParseDict(stats, pb.ModelStatisticsResponse())

    @rpc("v2-grpc")
    async def ModelInfer(self, request, context):
        parsed = self.infer_request_of(request, deadline_of(context))
        return infer_response_of(await dataplane.infer(self.state(), parsed))

    def infer_request_of(
        self, request: pb.ModelInferRequest, deadline: float | None
    ) -> dataplane.InferRequest:
        parsed = dataplane.InferRequest(
            model=request.model_name,
            version=request.model_version,
            id=request.id,
            parameters=parameters_of(request.parameters),
            inputs=read_inputs(request, codecs.TensorLimits.of(self.state().settings)),
            deadline=deadline,
        )
        for wanted in request.outputs:
            k = parameters_of(wanted.parameters).get("classification")
            k = dataplane.classification_parameter(k, wanted.name)
            parsed.outputs.append(dataplane.RequestedOutput(wanted.name, k))
        return parsed

    @answers_malformed
    async def ModelStreamInfer(self, requests, context):
        """Triton's bidirectional stream: each request is answered as soon as it arrives, as
        ModelInfer would answer it, at most STREAM_WINDOW at once (reading pauses meanwhile);
        answers come in the order they are ready, each with its request's id. A request that
        fails (bad input, unknown model, overload, bytes that are not a ModelInferRequest) gets
        one response with error_message, and the stream carries on.

        Every answer carries the response parameter triton_final_response. Without the
        request parameter `stream` = true, or for a model whose signature does not stream, the
        request gets one answer, final (Triton's non-decoupled models, which never send an empty
        final response). With `stream` = true and a streaming model (Triton's decoupled ones)
        it gets one answer per part: by default each part is held until the next one comes, so
        that the last part carries true; with enable_empty_final_response the parts go out at
        once, all false, and an empty response (no outputs) carrying true follows them.

        The call's deadline applies to every request in it. The stream ends with
        DEADLINE_EXCEEDED after stream_idle_timeout_s with nothing received and nothing in
        flight, or after stream_max_seconds. When the client cancels or goes away, grpc.aio
        cancels this handler, which cancels the requests in flight: their items still queued
        in a batcher are dropped there, unrun (its `abandoned` count)."""
        deadline = deadline_of(context)
        clock = StreamClock(self.state().settings)  # for the writes and the total
        with track_stream("v2-grpc-stream") as record:
            answers = answer_concurrently(
                requests,
                lambda request: self.stream_answers(request, deadline),
                self.state().settings,
            )

            async def write_all() -> None:
                async with contextlib.aclosing(answers):
                    async for response in answers:
                        if not response.error_message:
                            record.first_result()
                        await clock.sent(context.write(response))

            try:
                await clock.within(write_all())
            except StreamTimedOut as error:
                record.end = error.end
                await abort_grpc(context, error)

    async def stream_answers(
        self, request: pb.ModelInferRequest | MalformedRequest, deadline: float | None
    ) -> AsyncGenerator[pb.ModelStreamInferResponse, None]:
        """The responses to one request of a ModelStreamInfer stream (an error_message when it
        fails), counted in the request metrics as ModelInfer counts its requests."""
        name, version, request_id = "", "", ""
        if isinstance(request, pb.ModelInferRequest):
            name, version, request_id = request.model_name, request.model_version, request.id
        held: pb.ModelInferResponse | None = None
        with track_request("v2-grpc") as record:
            try:
                if isinstance(request, MalformedRequest):
                    raise InvalidInput(request.message)
                parsed = self.infer_request_of(request, deadline)
                empty_final = dataplane.flag_parameter(
                    parsed.parameters.get(EMPTY_FINAL_RESPONSE), EMPTY_FINAL_RESPONSE
                )
                at_once = empty_final and dataplane.in_parts(self.state(), parsed)
                async with contextlib.aclosing(
                    dataplane.infer_stream(self.state(), parsed)
                ) as parts:
                    async for part in parts:
                        if held is not None:
                            yield final_marked(held, False)
                        held = infer_response_of(part)
                        version = part.version
                        if at_once:
                            yield final_marked(held, False)
                            held = None
                if at_once:
                    empty = pb.ModelInferResponse(
                        model_name=name, model_version=version, id=request_id
                    )
                    yield final_marked(empty, True)
                elif held is not None:
                    yield final_marked(held, True)
            except ServingError as error:
                record.status = error.http_status
                if held is not None:  # parts answered before the failure are not lost
                    yield final_marked(held, False)
                yield stream_error(error.message, name, version, request_id)
                return
            except (asyncio.CancelledError, GeneratorExit):  # the stream ended, or the deadline
                expired = deadline is not None and time.monotonic() >= deadline
                record.status = 504 if expired else 499
                raise
            except Exception:
                log.exception("ModelStreamInfer request failed")  # a bug, answered without details
                record.status = 500
                if held is not None:
                    yield final_marked(held, False)
                yield stream_error("internal error (logged)", name, version, request_id)
                return
            record.status = 200


def infer_response_of(result: dataplane.InferResponse) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=result.version, id=result.id
    )
    for wanted, array in result.outputs:
        response.outputs.add(
            name=wanted.name, datatype=codecs.datatype_of(array), shape=list(array.shape)
        )
        response.raw_output_contents.append(codecs.to_raw(array))
    for key, value in result.parameters.items():
        parameter = response.parameters[key]
        if isinstance(value, bool):
            parameter.bool_param = value
        elif isinstance(value, int):
            parameter.int64_param = value
        elif isinstance(value, float):
            parameter.double_param = value
        else:
            parameter.string_param = value
    return response


def final_marked(response: pb.ModelInferResponse, final: bool) -> pb.ModelStreamInferResponse:
    response.parameters[FINAL_RESPONSE].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


def stream_error(
    message: str, name: str, version: str, request_id: str
) -> pb.ModelStreamInferResponse:
    """A failed request's answer on a stream, its last (triton_final_response true): as Triton,
    its id leads the message (all that tritonclient's callback gets) and is in infer_response
    too."""
    if request_id:
        message = f"[request id: {request_id}] {message}"
    response = pb.ModelInferResponse(model_name=name, model_version=version, id=request_id)
    response.parameters[FINAL_RESPONSE].bool_param = True  # the request's last answer
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)
