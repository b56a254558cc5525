"""Generic: any imported ONNX graph, served with its own inputs and outputs (V2 only)."""

from __future__ import annotations

import asyncio

import numpy as np

from service.core.datatypes import datatype_of
from service.core.errors import InvalidInput
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import GenericKernel
from service.store.importing.importer import ImportRule
from service.store.importing.preparers import prepare_generic
from service.tasks.base import Task
from service.tasks.tensors import InferRequest, Signature, Tensor, check_rows

NAME = "generic"


def generic_input(request: InferRequest, tensor: Tensor) -> np.ndarray:
    """An imported graph's input as given: its datatype, rank and fixed dims (BYTES -> str)."""
    array = request.inputs.get(tensor.name)
    if array is None:
        raise InvalidInput(
            f"model {request.model} needs input {tensor.name!r} ({tensor.datatype} {tensor.shape})"
        )
    got = datatype_of(array.dtype)
    if got != tensor.datatype:
        raise InvalidInput(f"input {tensor.name} must be {tensor.datatype}, got datatype {got}")
    if array.ndim != len(tensor.shape) or any(
        want not in (-1, got) for want, got in zip(tensor.shape, array.shape)
    ):
        raise InvalidInput(
            f"input {tensor.name} must have shape {tensor.shape} (-1: any size), "
            f"got {list(array.shape)}"
        )
    if tensor.datatype == "BYTES":  # NOTE: onnxruntime string tensors take str, not bytes
        try:
            text = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in array.flat]
        except UnicodeDecodeError:
            raise InvalidInput(f"input {tensor.name} holds bytes that are not UTF-8") from None
        array = np.array(text, dtype=object).reshape(array.shape)
    return array


def generic_output(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind == "O":  # onnxruntime answers str; V2 BYTES are bytes
        return np.array([str(s).encode() for s in array.flat], dtype=object).reshape(array.shape)
    return array


def signature(runner: Runner) -> Signature:
    """An imported graph's own inputs/outputs; rows batched when its spec says batchable."""
    spec = runner.spec
    graph = spec.graphs["model"]
    inputs = [
        Tensor(t.name, t.datatype, t.v2_shape, description=t.description) for t in graph.inputs
    ]
    outputs = [Tensor(t.name, t.datatype, t.v2_shape) for t in graph.outputs]
    batchable = spec.extra.get("batchable") is True
    scores = [t.name for t in outputs if t.datatype == "FP32" and len(t.shape) == 2]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        arrays = {t.name: generic_input(request, t) for t in inputs}
        if not batchable:
            result = await runner.submit(arrays, runner.bucket(arrays), request.deadline)
            return {name: generic_output(array) for name, array in result.items()}
        count = check_rows(request, runner, *arrays.values())
        rows = [{name: array[i] for name, array in arrays.items()} for i in range(count)]
        results = await asyncio.gather(
            *(runner.submit(row, runner.bucket(row), request.deadline) for row in rows)
        )
        return {t.name: generic_output(np.stack([r[t.name] for r in results])) for t in outputs}

    return Signature(
        inputs=inputs,
        outputs=outputs,
        infer=infer,
        labels=spec.labels if len(scores) == 1 else None,
        labelled_output=scores[0] if len(scores) == 1 else "",
        batchable=batchable,
        batching="" if batchable else spec.extra.get("batching_reason", "one request at a time"),
    )


TASK = Task(
    name=NAME,
    position=50,
    summary="any ONNX graph: its own tensors in and out",
    kernel=GenericKernel,
    signature=signature,
    importing=ImportRule(NAME, prepare_generic, check_rows_independent=True),
)
