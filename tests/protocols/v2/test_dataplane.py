"""The transport-neutral V2 core against fake runners: metadata, config, infer, classification and
the errors a bad request gets. No model store, no server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest

from service.core.errors import InvalidInput, ModelNotFound
from service.core.settings import Settings
from service.core.statistics import ModelStatistics
from service.protocols.v2 import dataplane, wire
from service.protocols.v2.dataplane import InferRequest, RequestedOutput
from service.runners.repository import ServingState
from service.runtime.kernels import Classified
from service.store.specs import ModelSpec
from service.tasks import registry

LABELS = ["cat", "dog", "fish"]


def image_spec() -> ModelSpec:
    tensor = {"name": "image", "datatype": "UINT8", "shape": ["batch", 8, 8, 3]}
    scores = {"name": "probabilities", "datatype": "FP32", "shape": ["batch", 3]}
    return ModelSpec.model_validate(
        {
            "name": "tiny",
            "version": "v1",
            "task": "image-classification",
            "spec_version": "1",
            "graphs": {
                "model": {
                    "file": "model.onnx",
                    "inputs": [tensor],
                    "outputs": [scores],
                    "opset": 17,
                    "sha256": "0" * 64,
                }
            },
            "labels": LABELS,
        }
    )


class FakeRunner:
    """Answers each image row with scores from its mean pixel; records what was submitted."""

    placement, provider, ready, error = "local", "CPUExecutionProvider", True, None

    def __init__(self, spec: ModelSpec) -> None:
        self.name, self.spec, self.submitted = spec.name, spec, []
        self.admission = self
        self.statistics = ModelStatistics()
        self.config = Settings(max_batch_size=3, max_batch_items=4).for_model(spec.name)
        self.admitted = 0

    @contextlib.contextmanager
    def admit(self):
        self.admitted += 1
        yield

    def bucket(self, item: Any) -> Hashable:
        return 0

    async def submit(self, item: Any, key: Hashable = 0, deadline: float | None = None) -> Any:
        self.submitted.append(item)
        level = float(np.mean(item)) / 255
        return Classified(np.array([level, 1 - level, 0.0], np.float32))

    def describe(self) -> dict[str, Any]:
        return {"batching": {"max_batch_size": 4, "max_latency_ms": 5.0}}


def serving(runner: FakeRunner, settings: Settings | None = None) -> ServingState:
    state = ServingState(settings or Settings(max_batch_items=4), registry.kernel_of)
    state.versions = {runner.name: {runner.spec.version: runner}}  # type: ignore[dict-item]
    state.runners = {runner.name: runner}  # type: ignore[dict-item]
    state.started = True
    return state


def run(coro):
    return asyncio.run(coro)


def test_metadata_and_config_come_from_the_task_signature():
    runner = FakeRunner(image_spec())
    state = serving(runner)
    meta = dataplane.model_metadata(state, "tiny")
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 8, 8, 3]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["task"] == "image-classification"
    config = dataplane.model_config(state, "tiny")
    assert config["max_batch_size"] == 4  # max_batch_items
    assert config["input"][0]["dims"] == [8, 8, 3]  # without the batch dim
    # metadata and config agree, both from the settings in force for the model
    assert config["dynamic_batching"]["preferred_batch_size"] == [3]
    assert "batches of up to 3 rows" in meta["parameters"]["batching"]
    assert "requests of up to 4 rows" in meta["parameters"]["batching"]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 5000


def test_every_row_is_its_own_item_and_rows_stay_in_order():
    runner = FakeRunner(image_spec())
    images = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 255, 51)])
    request = InferRequest("tiny", inputs={"image": images})
    response = run(dataplane.infer(serving(runner), request))
    assert len(runner.submitted) == 3 and runner.admitted == 1
    ((wanted, scores),) = response.outputs
    assert wanted.name == "probabilities" and response.version == "1"  # tag v1: number 1
    np.testing.assert_allclose(scores[:, 0], [0.0, 1.0, 0.2], atol=1e-6)


def test_classification_extension_answers_score_index_label():
    runner = FakeRunner(image_spec())
    images = np.full((1, 8, 8, 3), 255, np.uint8)
    request = InferRequest(
        "tiny",
        inputs={"image": images},
        outputs=[RequestedOutput("probabilities", classification=2)],
    )
    ((_, top),) = run(dataplane.infer(serving(runner), request)).outputs
    assert top.shape == (1, 2)
    assert top[0, 0].decode().split(":")[1:] == ["0", "cat"]


@pytest.mark.parametrize(
    ("inputs", "outputs", "message"),
    [
        ({}, [], "needs input 'image'"),
        ({"image": np.zeros((1, 8, 8, 3), np.float32)}, [], "must be UINT8"),
        ({"image": np.zeros((1, 4, 4, 3), np.uint8)}, [], r"must be \[batch, 8, 8, 3\]"),
        ({"image": np.zeros((5, 8, 8, 3), np.uint8)}, [], "batch of 5 rows; send between 1 and 4"),
        ({"image": np.zeros((1, 8, 8, 3), np.uint8), "x": np.zeros(1)}, [], "no input 'x'"),
        ({"image": np.zeros((1, 8, 8, 3), np.uint8)}, [RequestedOutput("y")], "no output 'y'"),
    ],
)
def test_bad_requests_are_invalid_input_and_reach_no_runner(inputs, outputs, message):
    runner = FakeRunner(image_spec())
    request = InferRequest("tiny", inputs=inputs, outputs=outputs)
    with pytest.raises(InvalidInput, match=message):
        run(dataplane.infer(serving(runner), request))
    assert runner.submitted == []


def test_unknown_model_and_version():
    state = serving(FakeRunner(image_spec()))
    with pytest.raises(ModelNotFound, match="unknown model 'nope'; served models: tiny"):
        dataplane.model_ready(state, "nope")
    with pytest.raises(ModelNotFound, match="no served version 'v9'"):
        dataplane.model_ready(state, "tiny", "v9")
    assert dataplane.model_ready(state, "tiny", "v1")


@pytest.mark.parametrize("value", ["true", 1, None])
def test_flag_parameters_are_json_booleans(value):
    if value is None:
        assert dataplane.flag_parameter(value, "binary_data") is None
        return
    with pytest.raises(InvalidInput, match="must be true or false"):
        dataplane.flag_parameter(value, "binary_data")


def test_statistics_of_every_model_of_one_model_and_of_one_version():
    runner = FakeRunner(image_spec())
    other = FakeRunner(image_spec().model_copy(update={"version": "v2"}))
    state = serving(runner)
    state.versions["tiny"]["v2"] = other  # type: ignore[assignment]
    runner.statistics.batch_done(2, 1, 2, 3)
    everything = run(dataplane.statistics(state))
    wire.ModelStatisticsResponse.model_validate(everything)  # the REST body's model
    assert [(s["name"], s["version"]) for s in everything["model_stats"]] == [
        ("tiny", "1"),
        ("tiny", "2"),
    ]
    assert run(dataplane.statistics(state, "tiny")) == everything  # every served version
    (one,) = run(dataplane.statistics(state, "tiny", "v1"))["model_stats"]
    assert run(dataplane.statistics(state, "tiny", "1"))["model_stats"] == [one]  # its number
    assert one["execution_count"] == 1 and one["batch_stats"][0]["batch_size"] == 2
    with pytest.raises(ModelNotFound, match="unknown model 'nope'"):
        run(dataplane.statistics(state, "nope"))
    with pytest.raises(ModelNotFound, match="no served version 'v9'"):
        run(dataplane.statistics(state, "tiny", "v9"))
    assert "statistics" in dataplane.server_metadata()["extensions"]
