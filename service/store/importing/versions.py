"""Graphs newer than the installed onnxruntime reads: store them in a form it does, or say why not.

- **IR version.** The IR version is the file format's version; a graph that uses nothing a newer
  IR introduced (its opsets and element types say which IR they need) is stored with the highest
  IR version onnxruntime loads. A graph that does use something newer is refused, naming it.
- **Opset.** A default-domain opset newer than onnxruntime supports is converted down with
  `onnx.version_converter` to the newest one it supports; the converted graph is kept only if it
  gives the same outputs as the original, run by onnx's reference implementation, on generated
  inputs.

Both are recorded in the spec (`data.adapted`) and printed by `deepserve models import`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, version_converter

from service.store.importing.graph_inspect import (
    ImportRefused,
    default_opset,
    graph_io,
    max_abs_diff,
    sample,
    session,
    supported_opsets,
)
from service.store.importing.preparers import first_line

PARITY_ATOL = 1e-4
"""Largest |difference| between the original (reference evaluator) and the converted graph."""

_D = TensorProto
TYPE_IR: dict[int, int] = {
    _D.FLOAT8E4M3FN: 9,
    _D.FLOAT8E4M3FNUZ: 9,
    _D.FLOAT8E5M2: 9,
    _D.FLOAT8E5M2FNUZ: 9,
    _D.UINT4: 10,
    _D.INT4: 10,
    _D.FLOAT4E2M1: 11,
    _D.FLOAT8E8M0: 12,
}
"""The IR version that introduced an element type (onnx docs/IR.md). Types up to BFLOAT16 are
older than any IR onnxruntime reads; a type in neither set (newer ones) is taken to need the
installed onnx's own IR version, so such graphs are never relabelled."""
CLASSIC_TYPES = _D.BFLOAT16
TYPE_ATTRIBUTES = ("to", "dtype", "output_dtype")
"""Node attributes that name an element type (Cast's `to`, RandomNormal's `dtype`, ...)."""


@functools.cache
def supported_ir_version() -> int:
    """The highest IR version the installed onnxruntime loads (probed with a one-node graph)."""
    _, opset = supported_opsets()
    for ir in range(onnx.IR_VERSION, 2, -1):
        model = helper.make_model(
            helper.make_graph(
                [helper.make_node("Identity", ["x"], ["y"])],
                "probe",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            ),
            opset_imports=[helper.make_opsetid("", min(opset, 13))],
        )
        model.ir_version = ir
        try:
            session(model.SerializeToString())
        except ImportRefused:
            continue
        return ir
    raise RuntimeError("onnxruntime loads no IR version at all")


def _types(message: Any, found: set[int]) -> None:
    """Every element type a (nested) protobuf message declares."""
    if isinstance(message, onnx.TensorProto | onnx.SparseTensorProto):
        found.add(message.data_type if isinstance(message, onnx.TensorProto) else 0)
    if isinstance(message, onnx.TypeProto.Tensor | onnx.TypeProto.SparseTensor):
        found.add(message.elem_type)
    if isinstance(message, onnx.NodeProto):
        for attribute in message.attribute:
            if attribute.name in TYPE_ATTRIBUTES and attribute.type == onnx.AttributeProto.INT:
                found.add(attribute.i)
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        for item in value if field.is_repeated else [value]:
            _types(item, found)


def ir_needs(model: onnx.ModelProto) -> tuple[int, str]:
    """The lowest IR version the graph can be stored with, and what sets it."""
    need, why = 3, "the IR versions onnxruntime reads"
    opsets = list(model.opset_import)
    opset_ir = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    if opset_ir > need:
        listed = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in opsets)
        need, why = opset_ir, f"its opsets ({listed})"
    found: set[int] = set()
    _types(model.graph, found)
    for function in model.functions:
        _types(function, found)
    for elem in sorted(found):
        type_ir = TYPE_IR.get(elem, 0 if elem <= CLASSIC_TYPES else onnx.IR_VERSION)
        if type_ir > need:
            name = (
                TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() else elem
            )
            need, why = type_ir, f"element type {name}"
    return need, why


def adapt_ir(model: onnx.ModelProto) -> dict[str, Any] | None:
    """Relabel a graph newer than onnxruntime reads with the highest IR it does (in place);
    what was done, or None when nothing was needed."""
    highest = supported_ir_version()
    if model.ir_version <= highest:
        return None
    need, why = ir_needs(model)
    if need > highest:
        raise ImportRefused(
            f"the graph has IR version {model.ir_version} and needs at least IR {need} for {why}; "
            f"onnxruntime reads IR <= {highest}: re-export it without that"
        )
    adapted = {"ir_version": {"source": model.ir_version, "stored": highest}}
    model.ir_version = highest
    return adapted


def reference_outputs(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return [np.asarray(out) for out in ReferenceEvaluator(model).run(None, feed)]


def adapt_opset(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """Convert a default-domain opset newer than onnxruntime supports down to the newest it
    does, keeping the result only when it matches the original on generated inputs."""
    lowest, highest = supported_opsets()
    opset = default_opset(model)
    if opset is None or opset <= highest or opset > onnx.defs.onnx_opset_version():
        return model, None  # NOTE: an opset onnx itself does not know is refused by the checks
    advice = (
        f"onnxruntime {ort.__version__} supports opsets {lowest} to {highest}: re-export the "
        f"model with opset {highest}"
    )
    try:
        converted = version_converter.convert_version(model, highest)
        converted.ir_version = min(model.ir_version, supported_ir_version())
        onnx.checker.check_model(converted, full_check=True)
    except Exception as error:  # NOTE: no adapter for an op, a failed check, ...
        raise ImportRefused(
            f"the graph uses opset {opset} and converting it to {highest} failed "
            f"({first_line(error)}); {advice}"
        ) from None
    inputs, _ = graph_io(model)
    rng = np.random.default_rng(0)
    feed = {
        t.name: sample(t, [2 if isinstance(d, str) else d for d in t.shape], rng) for t in inputs
    }
    converted_session = session(converted.SerializeToString())
    try:
        expected = reference_outputs(model, feed)
        got = converted_session.run(None, feed)
    except Exception as error:
        raise ImportRefused(
            f"the graph uses opset {opset}; its conversion to {highest} could not be checked "
            f"({type(error).__name__}: {first_line(error)}); {advice}"
        ) from None
    diff = max_abs_diff(expected, got)
    if not diff <= PARITY_ATOL:
        raise ImportRefused(
            f"the graph uses opset {opset}; converted to {highest} it answers differently "
            f"(max |diff| {diff:.2e} on generated inputs); {advice}"
        )
    return converted, {"opset": {"source": opset, "stored": highest, "max_abs_diff": diff}}
