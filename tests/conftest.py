"""Shared fixtures. Model tests read the real store built by `make models` (BENTOML_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BENTOML_HOME", str(ROOT / "model_store"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
# NOTE: test servers run one gateway worker unless a test asks for more: many tests count what
# one process did (statistics, quotas, failed-auth limits), which several workers split.
# tests/integration/test_gateway_workers.py runs the default's several workers.
os.environ.setdefault("DEEPSERVE_GATEWAY_WORKERS", "1")

from service.tasks.registry import builtin_models  # noqa: E402

MODEL_NAMES = builtin_models()  # the built-in models (the task registry's), for the tests


def tiny_classifier(path: Path, features: int = 4, classes: int = 3) -> Path:
    """A toy onnx.helper model: x [batch, features] -> softmax(x W) [batch, classes]."""
    weights = np.arange(features * classes, dtype=np.float32).reshape(features, classes) / 10
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
        ],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, weights.shape, weights.flatten())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    return tiny_classifier(tmp_path / "tiny.onnx")


@pytest.fixture
def scratch_store(tmp_path: Path):
    """A fresh, empty BentoML model store for this test only."""
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models.model import ModelStore

    store = ModelStore(str(tmp_path / "models"))
    with BentoMLContainer.model_store.patch(store):
        yield store
