"""The Open Inference Protocol's core, shared by V2 REST and V2 gRPC (transports only convert).

Each served model answers V2 through its task's signature (service/tasks/<task>.py): raw tensors
in, tensors out, every row submitted to the model's runner as its own item, so V2 requests share
the batcher with /v1 and the task gRPC service. Row r of every output belongs to row r of the
inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from service.core.errors import InvalidInput
from service.processing.ranking import top_k
from service.protocols.v2 import versions
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.tasks import registry
from service.tasks.tensors import (
    InferRequest,
    InferResponse,
    RequestedOutput,
    Signature,
    Tensor,
    check_unknown_inputs,
)

__all__ = ["InferRequest", "InferResponse", "RequestedOutput", "Signature", "Tensor"]

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = [
    *("binary_tensor_data", "classification", "model_configuration", "health"),
    *("statistics", "model_repository"),
]


def server_version() -> str:
    try:
        return version("deepserve")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


def flag_parameter(value: Any, where: str) -> bool | None:
    """A boolean request parameter: JSON true/false only (bool("false") is true), None if absent."""
    if value is None or isinstance(value, bool):
        return value
    raise InvalidInput(f"{where} must be true or false (a JSON boolean), got {value!r:.40}")


def classification_parameter(value: Any, output: str) -> int:
    """Triton's `classification` output parameter: top-k as an integer >= 0 (0 = off)."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInput(
            f"output {output}: classification must be an integer >= 0 (top-k), got {value!r:.40}"
        )
    return value


_signatures: dict[str, Signature] = {}  # by model tag


def signature(runner: Runner) -> Signature:
    tag = runner.spec.tag
    if tag not in _signatures:
        _signatures[tag] = registry.get(runner.spec.task).signature(runner)
    return _signatures[tag]


# --- the protocol's operations ----------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "deepserve", "version": server_version(), "extensions": EXTENSIONS}


def resolve(serving: ServingState, name: str, model_version: str | None = None) -> Runner:
    """The runner of `name` at `model_version`, a number or a tag (none: the newest served)."""
    return serving.runner(name, version=versions.tag(serving, name, model_version))


def model_ready(serving: ServingState, name: str, model_version: str | None = None) -> bool:
    return resolve(serving, name, model_version).ready


def batch_size(runner: Runner) -> int:
    """The largest batch the model's runner forms, from the settings in force for it (what the
    batcher was built with; metadata and config both say this)."""
    return runner.config.batch_size_for(runner.provider)


def queue_delay_ms(runner: Runner) -> float:
    config = runner.config
    return config.remote_max_latency_ms if runner.placement == "remote" else config.max_latency_ms


def declared_shape(tensor: Tensor, sig: Signature) -> list[int]:
    """An input's shape as V2 declares it: a batching model's one value per row as [-1, 1],
    Triton's form (a Triton config needs a dim besides the batch dim, and perf_analyzer sends
    what the metadata says); requests may send it as [rows] or [rows, 1] (see `checked`)."""
    return [-1, 1] if sig.batchable and tensor.shape == [-1] else tensor.shape


def model_metadata(
    serving: ServingState, name: str, model_version: str | None = None
) -> dict[str, Any]:
    runner = resolve(serving, name, model_version)
    sig = signature(runner)
    config = runner.config
    batching = (
        sig.batching
        or runner.spec.extra.get("batching_reason")
        or f"adaptive batches of up to {batch_size(runner)} rows across requests "
        f"(model config dynamic_batching.preferred_batch_size), requests of up to "
        f"{config.max_batch_items} rows (model config max_batch_size)"
    )
    tags = list(serving.versions.get(name, {runner.spec.version: runner}))
    return {
        "name": name,
        "versions": [versions.number(tag) for tag in tags],
        "platform": PLATFORM,
        "inputs": [t.metadata() | {"shape": declared_shape(t, sig)} for t in sig.inputs],
        "outputs": [t.metadata() for t in sig.outputs],
        "parameters": {
            "task": runner.spec.task,
            "placement": runner.placement,
            "provider": runner.provider,
            "inputs": {t.name: t.description for t in sig.inputs if t.description},
            "optional_inputs": [t.name for t in sig.inputs if t.optional],
            "request_parameters": sig.parameters,
            "batching": batching,
            "version_tags": {versions.number(tag): tag for tag in tags},
        },
    }


def model_config(
    serving: ServingState, name: str, model_version: str | None = None
) -> dict[str, Any]:
    """Triton's model configuration (JSON form); dims exclude the batch dim."""
    runner = resolve(serving, name, model_version)
    sig = signature(runner)
    settings = runner.config
    skip = 1 if sig.batchable else 0  # Triton: dims exclude the batch dim only when batching
    config = {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": settings.max_batch_items if sig.batchable else 0,
        "input": [
            {
                "name": t.name,
                "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                "dims": declared_shape(t, sig)[skip:],
                "optional": t.optional,
            }
            for t in sig.inputs
        ],
        "output": [
            {
                "name": t.name,
                "data_type": f"TYPE_{'STRING' if t.datatype == 'BYTES' else t.datatype}",
                "dims": t.shape[skip:],
            }
            for t in sig.outputs
        ],
        "dynamic_batching": {
            "preferred_batch_size": [batch_size(runner)],
            "max_queue_delay_microseconds": int(queue_delay_ms(runner) * 1000),
        },
    }
    if not sig.batchable:
        del config["dynamic_batching"]
    return config


async def statistics(
    serving: ServingState, name: str = "", model_version: str = ""
) -> dict[str, Any]:
    """Triton's statistics extension: {"model_stats": [...]} of every served version of every
    model (no name), of every served version of `name` (no version), or of that one version.

    A remote model's execution counts are fetched from its runner service first."""
    if not name:
        runners = serving.all_runners()
    elif model_version:
        runners = [resolve(serving, name, model_version)]
    else:
        newest = resolve(serving, name)  # unknown (404) or unavailable (503) as on every route
        runners = list(serving.versions.get(name, {newest.spec.version: newest}).values())
    await asyncio.gather(*(r.refresh() for r in runners if r.placement == "remote"))
    return {
        "model_stats": [
            runner.statistics.snapshot(runner.spec.name, versions.number(runner.spec.version))
            for runner in runners
        ]
    }


def classification(probabilities: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: [batch, k] BYTES of "score:index:label"."""
    k = min(k, probabilities.shape[-1])
    out = np.empty((probabilities.shape[0], k), dtype=object)
    for row, scores in enumerate(probabilities):
        for column, index in enumerate(top_k(scores, k)):
            label = labels[index] if labels else str(index)
            out[row, column] = f"{scores[index]:f}:{index}:{label}".encode()
    return out


def checked(serving: ServingState, request: InferRequest) -> tuple[Runner, Signature]:
    """The runner and signature that answer `request`, once its inputs and outputs are known."""
    runner = resolve(serving, request.model, request.version)
    sig = signature(runner)
    check_unknown_inputs(request, sig)
    for tensor in sig.inputs:  # one value per row sent as [rows, 1] (declared_shape)
        array = request.inputs.get(tensor.name)
        if array is None or array.ndim != 2 or array.shape[1] != 1:
            continue
        if declared_shape(tensor, sig) != tensor.shape:
            request.inputs[tensor.name] = array.reshape(-1)
    known = {t.name for t in sig.outputs}
    for wanted in request.outputs:
        if wanted.name not in known:
            raise InvalidInput(
                f"model {request.model} has no output {wanted.name!r}; "
                f"outputs: {', '.join(sorted(known))}"
            )
        if wanted.classification and (sig.labels is None or wanted.name != sig.labelled_output):
            raise InvalidInput(f"output {wanted.name} does not support classification")
    return runner, sig


async def infer(serving: ServingState, request: InferRequest) -> InferResponse:
    runner, sig = checked(serving, request)
    with runner.admission.admit():
        results = await sig.infer(serving, runner, request)
    return answer(request, runner, sig, results)


def in_parts(serving: ServingState, request: InferRequest) -> bool:
    """Whether `request` is answered in parts: it sets the `stream` parameter (a boolean) and its
    model's signature streams (Triton's decoupled models). Otherwise it gets one answer."""
    runner = resolve(serving, request.model, request.version)
    wants_parts = flag_parameter(request.parameters.get("stream"), "parameter stream")
    return bool(wants_parts) and signature(runner).stream is not None


async def infer_stream(
    serving: ServingState, request: InferRequest
) -> AsyncGenerator[InferResponse, None]:
    """`request` answered in parts when `in_parts` (Signature.stream: the last part is the whole
    answer), else its one answer as `infer` gives it. Close it (contextlib.aclosing) when leaving
    early, so that the work it holds ends at once."""
    runner, sig = checked(serving, request)
    if sig.stream is None or not in_parts(serving, request):
        with runner.admission.admit():
            results = await sig.infer(serving, runner, request)
        yield answer(request, runner, sig, results)
        return
    # NOTE: no admission place around the parts: the signature admits its own work (as long
    # transcriptions do), so a long stream never looks like one request stuck in the queue
    parts = sig.stream(serving, runner, request)
    try:
        async for part in parts:
            yield answer(request, runner, sig, part.outputs, part.parameters)
    finally:
        close = getattr(parts, "aclose", None)
        if close is not None:
            await close()


def answer(
    request: InferRequest,
    runner: Runner,
    sig: Signature,
    results: dict[str, np.ndarray],
    parameters: dict[str, bool | int | float | str] | None = None,
) -> InferResponse:
    """The requested outputs of `results` (all of the signature's when none are named), with
    response `parameters`."""
    wanted_outputs = request.outputs or [RequestedOutput(t.name) for t in sig.outputs]
    outputs = []
    for wanted in wanted_outputs:
        array = results[wanted.name]
        if wanted.classification:
            array = classification(array, wanted.classification, sig.labels)
        outputs.append((wanted, array))
    number = versions.number(runner.spec.version)
    return InferResponse(request.model, number, request.id, outputs, parameters or {})
