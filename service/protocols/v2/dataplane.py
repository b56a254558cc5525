"""The Open Inference Protocol's core, shared by V2 REST and V2 gRPC (transports only convert).

Each served model gets a V2 signature by task: raw tensors in, tensors out, every row submitted to
the model's runner as its own item, so V2 requests share the batcher with /v1 and the task gRPC
service. Row r of every output belongs to row r of the inputs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from service.core.errors import InvalidInput
from service.processing.ranking import top_k
from service.processing.speech import SAMPLE_RATE
from service.protocols.v2.codecs import NUMPY_OF, datatype_of
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.tasks import core as tasks

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "health"]


def server_version() -> str:
    try:
        return version("deepserve")
    except PackageNotFoundError:  # running from a source tree without installing
        return "0.0.0"


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


Infer = Callable[[ServingState, Runner, InferRequest], Awaitable[dict[str, np.ndarray]]]


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


def batch_of(request: InferRequest, name: str, datatype: str, ndim: int) -> np.ndarray:
    array = request.inputs.get(name)
    if array is None:
        raise InvalidInput(f"model {request.model} needs input {name!r}")
    if array.dtype != NUMPY_OF[datatype]:
        raise InvalidInput(f"input {name} must be {datatype}, got datatype {datatype_of(array)}")
    if array.ndim != ndim:
        raise InvalidInput(f"input {name} must have {ndim} dims, got shape {list(array.shape)}")
    return array


def check_rows(request: InferRequest, serving: ServingState, *arrays: np.ndarray) -> int:
    rows = {int(a.shape[0]) for a in arrays}
    if len(rows) != 1:
        raise InvalidInput(f"inputs disagree on the batch size: {sorted(rows)}")
    count = rows.pop()
    limit = serving.settings.max_batch_items
    if not 1 <= count <= limit:
        raise InvalidInput(f"batch of {count} rows; send between 1 and {limit}")
    return count


def image_batch(
    request: InferRequest, serving: ServingState, inner: list[int], preprocessing: dict[str, Any]
) -> np.ndarray:
    """The "image" input: NHWC uint8 at exactly the model's size."""
    images = batch_of(request, "image", "UINT8", 4)
    if list(images.shape[1:]) != inner:
        how = preprocessing.get("resize", "resize to the model's size")
        if isinstance(how, int):  # imported models: the shorter side before the centre crop
            how = f"shorter side to {how}, centre crop {inner[0]}"
        raise InvalidInput(
            f"input image must be [batch, {', '.join(map(str, inner))}] "
            f"(NHWC uint8, preprocessed: {how}), got shape {list(images.shape)}"
        )
    check_rows(request, serving, images)
    return images


def check_unknown_inputs(request: InferRequest, signature: Signature) -> None:
    known = {t.name for t in signature.inputs}
    unknown = sorted(set(request.inputs) - known)
    if unknown:
        raise InvalidInput(
            f"model {request.model} has no input {unknown[0]!r}; inputs: {', '.join(sorted(known))}"
        )


# --- per-task signatures ---------------------------------------------------------------------


def image_classification(runner: Runner) -> Signature:
    graph = runner.spec.graphs["model"]
    image = graph.inputs[0]
    classes = int(graph.outputs[-1].shape[-1])
    inner = [int(d) for d in image.shape[1:]]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        images = image_batch(request, serving, inner, runner.spec.preprocessing)
        rows = await asyncio.gather(
            *(runner.submit(row, deadline=request.deadline) for row in images)
        )
        return {"probabilities": np.stack(rows).astype(np.float32, copy=False)}

    return Signature(
        inputs=[Tensor("image", "UINT8", [-1, *inner], description="NHWC uint8 pixels")],
        outputs=[Tensor("probabilities", "FP32", [-1, classes])],
        infer=infer,
        labels=runner.spec.labels,
    )


def text_classification(runner: Runner) -> Signature:
    spec = runner.spec
    vocabulary_size = len(spec.vocabulary or [])
    max_tokens = int(spec.preprocessing["max_tokens"])
    pad = int(spec.preprocessing.get("pad_index", 0))

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        if ("text" in request.inputs) == ("tokens" in request.inputs):
            raise InvalidInput(
                f"model {spec.name} takes either input 'text' (BYTES [batch]) or input 'tokens' "
                "(INT64 [batch, tokens], with optional 'lengths' INT64 [batch])"
            )
        if "text" in request.inputs:
            texts = batch_of(request, "text", "BYTES", 1)
            check_rows(request, serving, texts)
            decoded = []
            for i, raw in enumerate(texts):
                try:
                    decoded.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InvalidInput(f"input text[{i}] is not UTF-8") from None
            items = tasks.encode_texts(serving, spec, decoded, single=False)
        else:
            tokens = batch_of(request, "tokens", "INT64", 2)
            count = check_rows(request, serving, tokens)
            width = tokens.shape[1]
            if not 1 <= width <= max_tokens:
                raise InvalidInput(f"input tokens has {width} columns; send 1 to {max_tokens}")
            if tokens.min() < 0 or tokens.max() >= vocabulary_size:
                raise InvalidInput(f"token ids must be in [0, {vocabulary_size - 1}]")
            if "lengths" in request.inputs:
                lengths = batch_of(request, "lengths", "INT64", 1)
                check_rows(request, serving, tokens, lengths)
            else:  # up to the last non-pad token
                nonpad = tokens != pad
                lengths = np.where(nonpad.any(1), width - np.argmax(nonpad[:, ::-1], 1), 0)
            if lengths.min() < 1 or lengths.max() > width:
                raise InvalidInput(f"lengths must be between 1 and {width} (the tokens' width)")
            items = [tokens[i, : int(lengths[i])].tolist() for i in range(count)]
        rows = await asyncio.gather(
            *(runner.submit(ids, runner.bucket(ids), request.deadline) for ids in items)
        )
        return {"probabilities": np.stack(rows).astype(np.float32, copy=False)}

    return Signature(
        inputs=[
            Tensor("text", "BYTES", [-1], optional=True, description="UTF-8 texts"),
            Tensor("tokens", "INT64", [-1, -1], optional=True, description="token ids, 0 = pad"),
            Tensor("lengths", "INT64", [-1], optional=True, description="valid tokens per row"),
        ],
        outputs=[Tensor("probabilities", "FP32", [-1, len(spec.labels or [])])],
        infer=infer,
        labels=spec.labels,
    )


def speech_recognition(runner: Runner) -> Signature:
    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        waveform = batch_of(request, "waveform", "FP32", 2)
        count = check_rows(request, serving, waveform)
        samples = waveform.shape[1]
        if "lengths" in request.inputs:
            lengths = batch_of(request, "lengths", "INT64", 1)
            check_rows(request, serving, waveform, lengths)
            if lengths.min() < 1 or lengths.max() > samples:
                raise InvalidInput(f"lengths must be between 1 and {samples} (the waveform width)")
        else:
            lengths = np.full(count, samples)
        if not np.isfinite(waveform).all():
            raise InvalidInput("waveform holds NaN or infinite samples")
        clips = [
            tasks.check_audio(serving, np.ascontiguousarray(waveform[i, : int(lengths[i])]))
            for i in range(count)
        ]
        transcripts = await asyncio.gather(
            *(runner.submit(clip, runner.bucket(clip), request.deadline) for clip in clips)
        )
        texts = np.array([t.text.encode() for t in transcripts], dtype=object)
        confidence = np.array([t.confidence for t in transcripts], dtype=np.float32)
        return {"transcript": texts, "confidence": confidence}

    return Signature(
        inputs=[
            Tensor("waveform", "FP32", [-1, -1], description=f"mono {SAMPLE_RATE} Hz, [-1, 1]"),
            Tensor("lengths", "INT64", [-1], optional=True, description="valid samples per row"),
        ],
        outputs=[Tensor("transcript", "BYTES", [-1]), Tensor("confidence", "FP32", [-1])],
        infer=infer,
    )


def image_captioning(runner: Runner) -> Signature:
    inner = [int(d) for d in runner.spec.graphs["encoder"].inputs[0].shape[1:]]

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        images = image_batch(request, serving, inner, runner.spec.preprocessing)
        beam = request.parameters.get("beam", 1)
        if not isinstance(beam, int) or isinstance(beam, bool):
            raise InvalidInput(f"parameter beam must be an integer, got {beam!r}")
        tasks.check_range("beam", beam, 1, serving.settings.max_beam)
        results = await asyncio.gather(
            *(runner.submit(row, beam, request.deadline) for row in images)
        )
        return {
            "caption": np.array([r.text.encode() for r in results], dtype=object),
            "score": np.array([r.score for r in results], dtype=np.float32),
        }

    return Signature(
        inputs=[Tensor("image", "UINT8", [-1, *inner], description="NHWC uint8 pixels")],
        outputs=[Tensor("caption", "BYTES", [-1]), Tensor("score", "FP32", [-1])],
        infer=infer,
        parameters={"beam": "beam width (int, default 1 = greedy)"},
    )


def generic_input(request: InferRequest, tensor: Tensor) -> np.ndarray:
    """An imported graph's input as given: its datatype, rank and fixed dims (BYTES -> str)."""
    array = request.inputs.get(tensor.name)
    if array is None:
        raise InvalidInput(
            f"model {request.model} needs input {tensor.name!r} ({tensor.datatype} {tensor.shape})"
        )
    if datatype_of(array) != tensor.datatype:
        raise InvalidInput(
            f"input {tensor.name} must be {tensor.datatype}, got datatype {datatype_of(array)}"
        )
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


def generic(runner: Runner) -> Signature:
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
        count = check_rows(request, serving, *arrays.values())
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


SIGNATURES: dict[str, Callable[[Runner], Signature]] = {
    "image-classification": image_classification,
    "text-classification": text_classification,
    "speech-recognition": speech_recognition,
    "image-captioning": image_captioning,
    "generic": generic,
}

_signatures: dict[str, Signature] = {}  # by model tag


def signature(runner: Runner) -> Signature:
    tag = runner.spec.tag
    if tag not in _signatures:
        _signatures[tag] = SIGNATURES[runner.spec.task](runner)
    return _signatures[tag]


# --- the protocol's operations ----------------------------------------------------------------


def server_metadata() -> dict[str, Any]:
    return {"name": "deepserve", "version": server_version(), "extensions": EXTENSIONS}


def resolve(serving: ServingState, name: str, model_version: str | None = None) -> Runner:
    """The runner of `name` at `model_version` (none: the newest served version)."""
    return serving.runner(name, version=model_version or None)


def model_ready(serving: ServingState, name: str, model_version: str | None = None) -> bool:
    return resolve(serving, name, model_version).ready


def model_metadata(
    serving: ServingState, name: str, model_version: str | None = None
) -> dict[str, Any]:
    runner = resolve(serving, name, model_version)
    sig = signature(runner)
    largest = runner.describe().get("batching", {}).get("max_batch_size")
    batching = (
        sig.batching
        or runner.spec.extra.get("batching_reason")
        or f"adaptive, up to {largest or serving.settings.max_batch_size} rows"
    )
    return {
        "name": name,
        "versions": list(serving.versions.get(name, {runner.spec.version: runner})),
        "platform": PLATFORM,
        "inputs": [t.metadata() for t in sig.inputs],
        "outputs": [t.metadata() for t in sig.outputs],
        "parameters": {
            "task": runner.spec.task,
            "placement": runner.placement,
            "provider": runner.provider,
            "inputs": {t.name: t.description for t in sig.inputs if t.description},
            "optional_inputs": [t.name for t in sig.inputs if t.optional],
            "request_parameters": sig.parameters,
            "batching": batching,
        },
    }


def model_config(
    serving: ServingState, name: str, model_version: str | None = None
) -> dict[str, Any]:
    """Triton's model configuration (JSON form); dims exclude the batch dim."""
    runner = resolve(serving, name, model_version)
    sig = signature(runner)
    settings = serving.settings
    batching = runner.describe().get("batching", {})
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
                "dims": t.shape[skip:],
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
            "preferred_batch_size": [int(batching.get("max_batch_size") or 1)],
            "max_queue_delay_microseconds": int(float(batching.get("max_latency_ms") or 0) * 1000),
        },
    }
    if not sig.batchable:
        del config["dynamic_batching"]
    return config


def classification(probabilities: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: [batch, k] BYTES of "score:index:label"."""
    k = min(k, probabilities.shape[-1])
    out = np.empty((probabilities.shape[0], k), dtype=object)
    for row, scores in enumerate(probabilities):
        for column, index in enumerate(top_k(scores, k)):
            label = labels[index] if labels else str(index)
            out[row, column] = f"{scores[index]:f}:{index}:{label}".encode()
    return out


async def infer(serving: ServingState, request: InferRequest) -> InferResponse:
    runner = resolve(serving, request.model, request.version)
    sig = signature(runner)
    check_unknown_inputs(request, sig)
    known = {t.name for t in sig.outputs}
    for wanted in request.outputs:
        if wanted.name not in known:
            raise InvalidInput(
                f"model {request.model} has no output {wanted.name!r}; "
                f"outputs: {', '.join(sorted(known))}"
            )
        if wanted.classification and (sig.labels is None or wanted.name != sig.labelled_output):
            raise InvalidInput(f"output {wanted.name} does not support classification")
    with runner.admission.admit():
        results = await sig.infer(serving, runner, request)
    wanted_outputs = request.outputs or [RequestedOutput(t.name) for t in sig.outputs]
    outputs = []
    for wanted in wanted_outputs:
        array = results[wanted.name]
        if wanted.classification:
            array = classification(array, wanted.classification, sig.labels)
        outputs.append((wanted, array))
    return InferResponse(request.model, runner.spec.version, request.id, outputs)
