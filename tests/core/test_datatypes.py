"""The one datatype table: every V2 datatype round-trips through numpy and ONNX, and its users
(V2 codecs, model specs) accept exactly its datatypes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.core import datatypes
from service.core.errors import InvalidInput
from service.protocols.v2 import codecs
from service.store.specs import TensorSpec

# The Open Inference Protocol's tensor datatypes, in its order, less BF16 (numpy has no bfloat16).
PROTOCOL = (
    *("BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"),
    *("FP16", "FP32", "FP64", "BYTES"),
)


def sample(datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([b"a", b"", b"bc"], dtype=object)
    return np.array([0, 1, 1], dtype=datatypes.numpy_of(datatype))


def test_the_table_holds_the_protocol_datatypes_in_order() -> None:
    assert datatypes.DATATYPES == PROTOCOL
    assert list(datatypes.NUMPY_OF) == list(datatypes.ONNX_OF) == list(PROTOCOL)


@pytest.mark.parametrize("datatype", PROTOCOL)
def test_every_datatype_round_trips_through_numpy_and_onnx(datatype: str) -> None:
    dtype, elem = datatypes.numpy_of(datatype), datatypes.onnx_of(datatype)
    assert datatypes.datatype_of(dtype) == datatype
    assert datatypes.datatype_of_onnx(elem) == datatype
    assert helper.np_dtype_to_tensor_dtype(dtype) == elem
    tensor = numpy_helper.from_array(sample(datatype), "x")
    assert tensor.data_type == elem
    back = numpy_helper.to_array(tensor)
    assert datatypes.datatype_of(back.dtype) == datatype
    values = [v.encode() if isinstance(v, str) else v for v in back.tolist()]  # NOTE: onnx decodes
    assert values == sample(datatype).tolist()


@pytest.mark.parametrize("datatype", PROTOCOL)
def test_onnxruntime_returns_every_datatype_as_its_dtype(datatype: str) -> None:
    elem = datatypes.onnx_of(datatype)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, [3])],
        [helper.make_tensor_value_info("y", elem, [3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = sample(datatype)
    if datatype == "BYTES":  # NOTE: onnxruntime string tensors take str, not bytes
        feed = np.array([v.decode() for v in feed], dtype=object)
    (out,) = session.run(["y"], {"x": feed})
    assert datatypes.datatype_of(out.dtype) == datatype


def test_what_has_no_v2_datatype_is_refused() -> None:
    with pytest.raises(KeyError):
        datatypes.numpy_of("BF16")
    with pytest.raises(KeyError):
        datatypes.onnx_of("FLOAT")
    with pytest.raises(KeyError):
        datatypes.datatype_of(np.dtype("U3"))
    with pytest.raises(KeyError):
        datatypes.datatype_of_onnx(TensorProto.BFLOAT16)


@pytest.mark.parametrize("datatype", PROTOCOL)
def test_the_v2_codecs_accept_every_datatype_of_the_table(datatype: str) -> None:
    assert codecs.numpy_dtype(datatype, "x") == datatypes.numpy_of(datatype)
    array = sample(datatype)
    back = codecs.from_raw("x", datatype, [3], codecs.to_raw(array))
    assert codecs.datatype_of(back) == datatype
    assert back.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", ["BF16", "FLOAT", "fp32", "STRING", ""])
def test_the_v2_codecs_refuse_datatypes_outside_the_table(datatype: str) -> None:
    with pytest.raises(InvalidInput, match="unknown datatype"):
        codecs.numpy_dtype(datatype, "x")


@pytest.mark.parametrize("datatype", PROTOCOL)
def test_model_specs_accept_every_datatype_of_the_table(datatype: str) -> None:
    spec = TensorSpec(name="x", datatype=datatype, shape=["batch"])
    assert spec.numpy_dtype == datatypes.numpy_of(datatype)


def test_model_specs_refuse_datatypes_outside_the_table() -> None:
    with pytest.raises(ValueError, match="unknown datatype 'BF16'"):
        TensorSpec(name="x", datatype="BF16", shape=[1])
