"""The responses of one ModelStreamInfer request (parts and final flags, errors as
error_message). Run by test_v2_stream.py in a process of its own: service.protocols.grpc.v2's
inference_pb2 cannot share a process with tritonclient.grpc (service/protocols/proto/stubs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.core.errors import ModelNotFound
from service.core.settings import Settings
from service.protocols.grpc import v2
from service.protocols.grpc.malformed import MalformedRequest
from service.protocols.proto.gen import inference_pb2 as pb
from service.protocols.v2 import dataplane

TIMEOUT = 20.0  # generous: the machine is shared


# --- one request's responses ----------------------------------------------------------------


def servicer() -> v2.V2Servicer:
    state = SimpleNamespace(settings=Settings())
    return v2.V2Servicer(lambda: state)  # type: ignore[arg-type, return-value]


def request(request_id: str, **parameters: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="toy", id=request_id)
    for key, value in parameters.items():
        message.parameters[key].bool_param = value
    return message


def fake_parts(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    async def infer_stream(serving: Any, parsed: dataplane.InferRequest) -> AsyncIterator[Any]:
        for n in range(count):
            output = (dataplane.RequestedOutput("y"), np.array([n], np.int64))
            yield dataplane.InferResponse(parsed.model, "1", parsed.id, [output])

    monkeypatch.setattr(dataplane, "infer_stream", infer_stream)
    monkeypatch.setattr(dataplane, "in_parts", lambda serving, parsed: count > 1)


def answers_to(message: Any) -> list[pb.ModelStreamInferResponse]:
    async def collect() -> list[pb.ModelStreamInferResponse]:
        return [r async for r in servicer().stream_answers(message, None)]

    return asyncio.run(asyncio.wait_for(collect(), TIMEOUT))


def finals(responses: list[pb.ModelStreamInferResponse]) -> list[bool]:
    return [r.infer_response.parameters["triton_final_response"].bool_param for r in responses]


@pytest.mark.parametrize("count", [1, 3])
def test_parts_end_with_a_final_response(monkeypatch, count) -> None:
    fake_parts(monkeypatch, count)
    held = answers_to(request("a", stream=True))
    assert len(held) == count and finals(held) == [False] * (count - 1) + [True]
    assert all(r.infer_response.id == "a" and r.infer_response.outputs for r in held)
    at_once = answers_to(request("b", stream=True, triton_enable_empty_final_response=True))
    if count == 1:  # one answer: final itself, no empty response (Triton's non-decoupled)
        assert finals(at_once) == [True] and at_once[0].infer_response.outputs
    else:  # every part at once, then an empty final response (Triton's decoupled)
        assert finals(at_once) == [False] * count + [True]
        assert not at_once[-1].infer_response.outputs
        assert at_once[-1].infer_response.id == "b"


def test_a_failed_request_is_one_error_message(monkeypatch) -> None:
    async def unknown(serving: Any, parsed: dataplane.InferRequest) -> AsyncIterator[Any]:
        raise ModelNotFound("unknown model 'toy'")
        yield  # pragma: no cover

    monkeypatch.setattr(dataplane, "infer_stream", unknown)
    monkeypatch.setattr(dataplane, "in_parts", lambda serving, parsed: False)
    [failed] = answers_to(request("x"))
    assert failed.error_message == "[request id: x] unknown model 'toy'"
    assert failed.infer_response.id == "x"
    [malformed] = answers_to(MalformedRequest("malformed inference.ModelInferRequest"))
    assert malformed.error_message == "malformed inference.ModelInferRequest"
    [not_a_flag] = answers_to(
        pb.ModelInferRequest(
            model_name="toy",
            parameters={"triton_enable_empty_final_response": pb.InferParameter(int64_param=1)},
        )
    )
    assert "must be true or false" in not_a_flag.error_message
