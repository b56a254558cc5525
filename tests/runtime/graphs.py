"""Small ONNX graphs for runtime tests, built with onnx.helper (no model store needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_graph(path: Path, size: int = 256) -> Path:
    """x [N, size] -> x @ W -> Relu -> @ W -> y [N, size]: enough work for threads to matter."""
    weight = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32) / size
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def matmul_and_transpose_graph(path: Path, size: int = 8) -> Path:
    """x [N, size] -> y = x @ W [N, size] (shape known from the batch), t = x^T [size, N] (its
    batch dim is not first), s = sum(x) [] (a scalar) and m = mean of x's rows [1, size] (a
    fixed first dim)."""
    weight = np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1),
        ],
        "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", size])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", size]),
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [size, "N"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, size]),
        ],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
