"""Request bytes that are not the method's protobuf message: answered INVALID_ARGUMENT naming
what is wrong, instead of grpc.aio's UNKNOWN "Unexpected DecodeError" (and, on a stream, instead
of ending the whole call)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor


class MalformedRequest:
    """Stands in for a request message that did not parse, so that the RPC answers
    INVALID_ARGUMENT naming the problem (grpc.aio itself answers UNKNOWN "Unexpected
    DecodeError")."""

    def __init__(self, message: str):
        self.message = message


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos
    raise ValueError("the message is truncated or not protobuf (a varint runs past its end)")


def wire_problem(descriptor: Descriptor, data: bytes, depth: int = 0) -> str | None:
    """What makes `data` unparseable as a `descriptor` message, from a walk of its wire format
    (the parser itself only says that parsing failed); None when the walk finds nothing."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        field = descriptor.fields_by_number.get(key >> 3)
        wire_type = key & 7
        if wire_type == 0:
            _, pos = _varint(data, pos)
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
            if pos > len(data):
                break
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    return f"string field {field.full_name} is not valid UTF-8"
            if field is not None and field.type == FieldDescriptor.TYPE_MESSAGE and depth < 8:
                inner = wire_problem(field.message_type, value, depth + 1)
                if inner is not None:
                    return inner
        else:
            return f"invalid wire type {wire_type} at byte {start}: not protobuf"
    if pos > len(data):
        return "the message is truncated"
    return None


def tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that answers a MalformedRequest instead of raising."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)

    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as error:
            name = descriptor.full_name if descriptor is not None else "request"
            problem = None
            if descriptor is not None:
                try:
                    problem = wire_problem(descriptor, data)
                except ValueError as truncated:
                    problem = str(truncated)
            return MalformedRequest(f"malformed {name} protobuf message: {problem or error}")

    return parse_or_mark


def answers_malformed(method: Any) -> Any:
    """Mark an RPC that takes MalformedRequest in place of request messages and answers it."""
    method.answers_malformed = True
    return method


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    """Unary requests whose bytes are not the method's protobuf message get INVALID_ARGUMENT with
    what is wrong (RPCs decorated with `rpc` answer it themselves, so it is counted). Streaming
    RPCs marked `answers_malformed` get a MalformedRequest for each such message of their stream
    (grpc.aio would end the whole call); other streaming RPCs are left as they are."""

    def __init__(self) -> None:
        self._wrapped: dict[Any, grpc.RpcMethodHandler] = {}  # by the handler it wraps

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        if handler.request_streaming:
            behaviour = handler.stream_stream or handler.stream_unary
            if not getattr(behaviour, "answers_malformed", False):
                return handler
        elif handler.unary_unary is None:
            return handler
        if handler not in self._wrapped:
            self._wrapped[handler] = self._wrap(handler)
        return self._wrapped[handler]

    @staticmethod
    def _wrap(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.request_streaming:  # its behaviour answers MalformedRequest itself
            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.response_streaming
                else grpc.stream_unary_rpc_method_handler
            )
            return make(
                handler.stream_stream or handler.stream_unary,
                request_deserializer=tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        behaviour = handler.unary_unary
        if getattr(behaviour, "answers_malformed", False):
            guarded = behaviour
        else:

            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, MalformedRequest):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
                return await behaviour(request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
