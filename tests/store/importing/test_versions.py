"""Graphs newer than onnxruntime reads: relabelled to its IR version when they use nothing newer,
converted to its newest opset when the conversion keeps their outputs, refused (naming why)
otherwise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.store.importing import versions
from service.store.importing.graph_inspect import ImportRefused, supported_opsets
from service.tasks.registry import import_model, make_kernel

NEWEST_ORT_OPSET = supported_opsets()[1]


def model(nodes, opset: int, ir: int | None = None, weights=(), x_type=TensorProto.FLOAT):
    """x [N, 4] -> nodes -> y [N, 4], saved as the pinned onnx writes it unless `ir` is given."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", x_type, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(a, n) for n, a in weights],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir is not None:
        made.ir_version = ir
    return made


def save(made: onnx.ModelProto, path: Path) -> Path:
    onnx.save(made, str(path))
    return path


def test_the_pinned_onnx_writes_an_ir_onnxruntime_does_not_read():
    """The situation this module exists for (if it stops being true, the adaptation is idle)."""
    assert versions.supported_ir_version() < onnx.IR_VERSION
    assert model([helper.make_node("Relu", ["x"], ["y"])], 17).ir_version == onnx.IR_VERSION


def test_a_graph_saved_by_the_pinned_onnx_imports_and_serves(scratch_store, tmp_path: Path):
    scale = np.array([[1.0, -2.0, 3.0, 0.5]], np.float32)
    nodes = [helper.make_node("Mul", ["x", "scale"], ["y"])]
    source = save(model(nodes, 17, weights=[("scale", scale)]), tmp_path / "new.onnx")
    spec = import_model(source, "newer-ir")
    highest = versions.supported_ir_version()
    assert spec.data["adapted"] == {"ir_version": {"source": onnx.IR_VERSION, "stored": highest}}
    assert onnx.load(str(spec.graph_path())).ir_version == highest
    assert spec.data["source_sha256"]  # of the file as given, not of the relabelled one
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    got = make_kernel(spec, "cpu").graphs["model"].session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x * scale)


def test_an_element_type_newer_than_onnxruntime_reads_is_named():
    newest = max(TensorProto.DataType.values())
    cast = helper.make_node("Cast", ["x"], ["t"], to=newest)
    back = helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT)
    made = model([cast, back], 17)
    need, why = versions.ir_needs(made)
    assert need == onnx.IR_VERSION and TensorProto.DataType.Name(newest) in why
    with pytest.raises(ImportRefused, match=f"needs at least IR {need} for element type"):
        versions.adapt_ir(made)


@pytest.mark.parametrize(
    ("elem", "ir"), [(TensorProto.FLOAT, 3), (TensorProto.FLOAT8E4M3FN, 9), (TensorProto.INT4, 10)]
)
def test_types_set_the_ir_they_need(elem, ir):
    cast = helper.make_node("Cast", ["x"], ["y"], to=elem)
    need, _ = versions.ir_needs(model([cast], 7))
    assert need == max(ir, helper.find_min_ir_version_for([helper.make_opsetid("", 7)]))


def test_an_ir_onnxruntime_reads_is_left_alone():
    made = model([helper.make_node("Relu", ["x"], ["y"])], 17, ir=8)
    assert versions.adapt_ir(made) is None and made.ir_version == 8


@pytest.mark.skipif(onnx.defs.onnx_opset_version() <= NEWEST_ORT_OPSET, reason="no newer opset")
def test_a_newer_opset_is_converted_when_the_outputs_match(scratch_store, tmp_path: Path):
    opset = onnx.defs.onnx_opset_version()
    bias = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    nodes = [helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    source = save(model(nodes, opset, weights=[("b", bias)]), tmp_path / "future.onnx")
    spec = import_model(source, "newer-opset")
    adapted = spec.data["adapted"]["opset"]
    assert adapted["source"] == opset and adapted["stored"] == NEWEST_ORT_OPSET
    assert adapted["max_abs_diff"] <= versions.PARITY_ATOL
    assert spec.graphs["model"].opset == NEWEST_ORT_OPSET
    assert spec.data["adapted"]["ir_version"]["stored"] == versions.supported_ir_version()
    x = np.linspace(-3, 3, 8, dtype=np.float32).reshape(2, 4)
    got = make_kernel(spec, "cpu").graphs["model"].session.run(None, {"x": x})[0]
    np.testing.assert_allclose(got, np.maximum(x + bias, 0), atol=1e-6)


@pytest.mark.skipif(onnx.defs.onnx_opset_version() <= NEWEST_ORT_OPSET, reason="no newer opset")
def test_a_conversion_that_changes_the_outputs_is_refused(monkeypatch):
    made = model([helper.make_node("Relu", ["x"], ["y"])], onnx.defs.onnx_opset_version())
    # the reference run stands for the original graph: make it disagree
    monkeypatch.setattr(versions, "reference_outputs", lambda m, feed: [feed["x"] + 1.0])
    with pytest.raises(ImportRefused, match=r"answers differently \(max \|diff\| 1.00e\+00"):
        versions.adapt_opset(made)
