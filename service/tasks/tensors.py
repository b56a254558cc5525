"""The tensor interface of a task: what its models take and answer as named tensors (the form
KServe V2 serves), and the request that carries them. Transport-neutral: V2 REST and gRPC decode
into an InferRequest (service/protocols/v2/), each task's signature validates and submits it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.datatypes import NUMPY_OF, datatype_of
from service.core.errors import InvalidInput
from service.runners.base import Runner
from service.runners.repository import ServingState


@dataclass
class Tensor:
    """A tensor in a V2 signature; -1 marks a variable dim (the first one is the batch)."""

    name: str
    datatype: str
    shape: list[int]
    optional: bool = False
    description: str = ""

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.shape}


@dataclass
class RequestedOutput:
    name: str
    classification: int = 0
    """>0: answer the top-k classes as BYTES "score:index:label" (Triton's classification)."""
    binary: bool | None = None
    """REST only: send this output as binary data (None: the request-level default)."""


@dataclass
class InferRequest:
    model: str
    version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: list[RequestedOutput] = field(default_factory=list)
    deadline: float | None = None


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[tuple[RequestedOutput, np.ndarray]]
    parameters: dict[str, bool | int | float | str] = field(default_factory=dict)


Infer = Callable[[ServingState, Runner, InferRequest], Awaitable[dict[str, np.ndarray]]]


@dataclass
class Part:
    """One response of a request answered in parts: its outputs and response parameters."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, bool | int | float | str] = field(default_factory=dict)


StreamInfer = Callable[[ServingState, Runner, InferRequest], AsyncIterator[Part]]
"""A request answered in parts (ModelStreamInfer with the `stream` parameter): one Part per
response, in order; the last one is the whole answer."""


@dataclass
class Signature:
    inputs: list[Tensor]
    outputs: list[Tensor]
    infer: Infer
    labels: list[str] | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    """Request parameters the model understands, with what they do."""
    labelled_output: str = "probabilities"
    """The output Triton's classification extension applies to (when labels are set)."""
    batchable: bool = True
    """False: the first dim is no batch dim (model config max_batch_size 0, Triton's way)."""
    batching: str = ""
    """Why requests are not batched, when they are not."""
    stream: StreamInfer | None = None
    """Partial answers for requests that set the `stream` parameter (None: one answer only)."""


def batch_of(request: InferRequest, name: str, datatype: str, ndim: int) -> np.ndarray:
    array = request.inputs.get(name)
    if array is None:
        raise InvalidInput(f"model {request.model} needs input {name!r}")
    if array.dtype != NUMPY_OF[datatype]:
        raise InvalidInput(
            f"input {name} must be {datatype}, got datatype {datatype_of(array.dtype)}"
        )
    if array.ndim != ndim:
        raise InvalidInput(f"input {name} must have {ndim} dims, got shape {list(array.shape)}")
    return array


def check_rows(request: InferRequest, runner: Runner, *arrays: np.ndarray) -> int:
    rows = {int(a.shape[0]) for a in arrays}
    if len(rows) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
    count = rows.pop()
    limit = runner.config.max_batch_items
    if not 1 <= count <= limit:
        raise InvalidInput(f"batch of {count} rows; send between 1 and {limit}")
    return count


def image_batch(request: InferRequest, runner: Runner, inner: list[int]) -> np.ndarray:
    """The "image" input: NHWC uint8 at exactly the model's size."""
    images = batch_of(request, "image", "UINT8", 4)
    if list(images.shape[1:]) != inner:
        how = runner.spec.preprocessing.get("resize", "resize to the model's size")
        if isinstance(how, int):  # imported models: the shorter side before the centre crop
            how = f"shorter side to {how}, centre crop {inner[0]}"
        raise InvalidInput(
            f"input image must be [batch, {', '.join(map(str, inner))}] "
            f"(NHWC uint8, preprocessed: {how}), got shape {list(images.shape)}"
        )
    check_rows(request, runner, images)
    return images


def check_unknown_inputs(request: InferRequest, signature: Signature) -> None:
    known = {t.name for t in signature.inputs}
    unknown = sorted(set(request.inputs) - known)
    if unknown:
        raise InvalidInput(
            f"model {request.model} has no input {unknown[0]!r}; inputs: {', '.join(sorted(known))}"
        )
