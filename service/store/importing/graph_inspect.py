"""What an ONNX graph declares and whether onnxruntime can serve it, for the model importer.

Torch-free: onnx and onnxruntime only. Everything that cannot be imported raises ImportRefused with
a message that says what is wrong and what is expected.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from service.core import datatypes
from service.store.specs import TensorSpec

UNKNOWN_DIM = "?"
"""How a dim with neither a value nor a name is recorded (symbolic, like a named one)."""
ORT_MIN_OPSET = 7
"""onnxruntime only guarantees default-domain opsets from 7 on (it warns below that)."""


class ImportRefused(ValueError):
    """An ONNX file the importer will not store; the message says what is wrong and what is
    expected."""


@functools.cache
def supported_opsets() -> tuple[int, int]:
    """(lowest, highest) default-domain opset the installed onnxruntime loads.

    onnxruntime has no API for its highest opset, so probe: newest first, a one-node graph per
    opset until a session loads (it refuses opsets still under development)."""
    newest = onnx.defs.onnx_opset_version()
    try:  # NOTE: onnxruntime may embed a newer onnx than the installed package
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        newest = max(newest, *(s.since_version for s in state.get_all_operator_schema()))
    except (ImportError, AttributeError):
        pass
    for opset in range(newest + 1, ORT_MIN_OPSET - 1, -1):
        value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            "probe",
            [value],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = 8
        try:
            session(model.SerializeToString())
        except ImportRefused:
            continue
        return ORT_MIN_OPSET, opset
    raise RuntimeError("onnxruntime loads no default-domain opset at all")


def default_opset(model: onnx.ModelProto) -> int | None:
    """The model's default-domain (ai.onnx) opset, None when it imports none."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def session(model: bytes | Path) -> ort.InferenceSession:
    """A quiet single-threaded CPU session; ImportRefused when onnxruntime cannot load it."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # NOTE: onnxruntime raises several pybind error types
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ImportRefused(
            f"onnxruntime {ort.__version__} cannot load the graph: {reason}"
        ) from None


def real_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (old exporters list weights as inputs too)."""
    weights = {i.name for i in graph.initializer} | {
        s.values.name for s in graph.sparse_initializer
    }
    return [value for value in graph.input if value.name not in weights]


def tensor_spec(value: onnx.ValueInfoProto, role: str) -> TensorSpec:
    """A graph input/output as a TensorSpec: V2 datatype, ints for fixed dims, strings else."""
    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        raise ImportRefused(
            f"{role} {value.name} is a {kind or 'typeless value'}, not a tensor; only tensors "
            "have a V2 datatype (e.g. a classifier's ZipMap output: export it without ZipMap)"
        )
    elem = value.type.tensor_type.elem_type
    try:
        datatype = datatypes.datatype_of_onnx(elem)
    except KeyError:
        name = TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem
        supported = ", ".join(TensorProto.DataType.Name(e) for e in datatypes.ONNX_OF.values())
        raise ImportRefused(
            f"{role} {value.name} has element type {name}, which has no V2 datatype; "
            f"supported: {supported}"
        ) from None
    if not value.type.tensor_type.HasField("shape"):
        raise ImportRefused(
            f"{role} {value.name} declares no shape (unknown rank); declare its rank and dims in "
            "the graph (dim_param names for the variable ones)"
        )
    shape: list[int | str] = [
        dim.dim_value if dim.HasField("dim_value") else (dim.dim_param or UNKNOWN_DIM)
        for dim in value.type.tensor_type.shape.dim
    ]
    return TensorSpec(name=value.name, datatype=datatype, shape=shape)


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The graph's inputs and outputs as TensorSpecs (shape inference fills shapeless outputs)."""
    inputs, outputs = real_inputs(model.graph), list(model.graph.output)
    if not inputs:
        raise ImportRefused("the graph has no inputs; a served model needs at least one")
    if not outputs:
        raise ImportRefused("the graph has no outputs; a served model needs at least one")
    if any(not o.type.tensor_type.HasField("shape") for o in outputs):
        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph.output
        except Exception:  # NOTE: inference fails on some valid graphs; keep what we have
            inferred = model.graph.output
        outputs = [
            new if not old.type.tensor_type.HasField("shape") else old
            for old, new in zip(outputs, inferred)
        ]
    return [tensor_spec(v, "input") for v in inputs], [tensor_spec(v, "output") for v in outputs]


def batching(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
    """None when rows can be batched (every input's and output's first dim is one symbolic batch
    dim, used nowhere else), else why not."""
    tensors = [("input", t) for t in inputs] + [("output", t) for t in outputs]
    for role, t in tensors:
        if not t.shape:
            return f"{role} {t.name} is a scalar (no batch dim): requests run one at a time"
        if isinstance(t.shape[0], int):
            return (
                f"{role} {t.name} has a fixed first dim {t.shape[0]}: requests run one at a "
                "time, no batching"
            )
    names = {str(t.shape[0]) for _, t in tensors} - {UNKNOWN_DIM}
    if len(names) > 1:
        return (
            f"the first dims have different names ({', '.join(sorted(names))}), so they need not "
            "be one batch dim: requests run one at a time, no batching"
        )
    for role, t in tensors:
        if names & {str(d) for d in t.shape[1:]}:
            return (
                f"{role} {t.name} {t.shape} uses the batch dim on another axis too, so rows "
                "are not independent: requests run one at a time, no batching"
            )
    return None


def sample(spec: TensorSpec, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Test data of a spec's dtype: normal floats, random booleans, zeros (valid ids) else."""
    dtype = datatypes.numpy_of(spec.datatype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind == "O":
        return np.full(shape, "a", dtype=object)
    return np.zeros(shape, dtype)


def max_abs_diff(expected: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> float:
    """Largest |difference| over matching arrays (inf on a shape or string mismatch)."""
    worst = 0.0
    for a, b in zip(expected, got):
        if a.shape != b.shape:
            return float("inf")
        if a.dtype == object or b.dtype == object:
            worst = max(worst, 0.0 if np.array_equal(a, b) else float("inf"))
        elif a.size:
            worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))))
    return worst


def rows_independent(graph: ort.InferenceSession, inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """Run 3 random rows as one batch and one by one; rows of a batchable graph must not
    influence each other. Only possible when every dim but the batch dim is fixed."""
    if any(isinstance(d, str) for t in inputs for d in t.shape[1:]):
        return {"checked": False, "why": "inputs have symbolic dims besides the batch dim"}
    rng = np.random.default_rng(0)
    feed = {t.name: sample(t, [3, *t.shape[1:]], rng) for t in inputs}  # type: ignore[list-item]
    try:
        batched = graph.run(None, feed)
        alone = [graph.run(None, {k: v[i : i + 1] for k, v in feed.items()}) for i in range(3)]
    except Exception as error:  # NOTE: random data may be invalid for the graph (e.g. ids)
        return {"checked": False, "why": f"random inputs did not run ({type(error).__name__})"}
    joined = [np.concatenate([row[j] for row in alone]) for j in range(len(batched))]
    independent = all(
        a.shape == b.shape
        and (
            np.array_equal(a, b)
            if a.dtype.kind not in "fc"
            else np.allclose(a, b, rtol=1e-3, atol=1e-4, equal_nan=True)
        )
        for a, b in zip(joined, batched)
    )
    return {
        "checked": True,
        "rows": 3,
        "independent": independent,
        "max_abs_diff": max_abs_diff(joined, batched),
    }
