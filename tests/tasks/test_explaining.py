"""/v1/explain's task (service/tasks/explaining.py) in process, no model store: the grid's caps,
and whole explanations through a real LocalRunner (its adaptive batcher and admission) whose
kernel is a classifier with a known answer: the brightness of the image's top-left quarter."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest
from PIL import Image

from service.core.errors import InvalidInput, ModelNotFound, Overloaded
from service.core.model_settings import ModelSettings
from service.core.settings import Settings
from service.runners.local import LocalRunner
from service.runners.repository import ServingState
from service.runtime.kernels import Classified
from service.store.specs import ModelSpec
from service.tasks import explaining, registry
from service.tasks.image_classification import ExplainResult

SIDE = 16


def spec(name: str = "quarter", side: int = SIDE, task: str = "image-classification") -> ModelSpec:
    tensor = {"name": "image", "datatype": "UINT8", "shape": ["batch", side, side, 3]}
    output = {"name": "probabilities", "datatype": "FP32", "shape": ["batch", 2]}
    graph = {"file": "m.onnx", "inputs": [tensor], "outputs": [output], "opset": 17, "sha256": ""}
    return ModelSpec.model_validate(
        {
            "name": name,
            "version": "v1",
            "task": task,
            "spec_version": "1",
            "graphs": {"model": graph},
            "labels": ["dark", "bright"],
            "preprocessing": {"image_size": [side, side], "resize": side},
        }
    )


class QuarterKernel:
    """P(bright) = the mean brightness of the top-left quarter; notes each batch's size and how
    many items admission counted inside while it ran."""

    provider = "CPUExecutionProvider"
    solo, solo_speedup, solo_times = False, None, None
    runner: ClassVar[LocalRunner | None] = None
    batches: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, spec: Any, *args: Any) -> None:
        self.spec = spec

    @classmethod
    def bucket(cls, item: Any) -> int:
        return 0

    def warmup(self) -> None:
        pass

    def run(self, key: Any, items: list[np.ndarray]) -> list[Classified]:
        inside = self.runner.admission.inside if self.runner else 0
        QuarterKernel.batches.append((len(items), inside))
        half = SIDE // 2
        bright = [float(item[:half, :half].mean()) / 255 for item in items]
        return [Classified(np.array([1 - b, b], np.float32)) for b in bright]


@pytest.fixture
def serving(monkeypatch) -> Iterator[ServingState]:
    monkeypatch.setattr("service.runners.local.record_model", lambda *a, **k: None)
    settings = Settings(
        max_batch_size=32, model_settings={"small-queue": {"max_queue": 50}}, device="cpu"
    )
    state = ServingState(settings, registry.kernel_of)
    for model in (spec(), spec("small-queue"), spec("reviews", task="text-classification")):
        runner = LocalRunner(model, settings, QuarterKernel)
        state.versions[model.name] = {"v1": runner}
        state.runners[model.name] = runner
    state.started = True
    QuarterKernel.batches = []
    yield state
    state.preprocess_pool.shutdown()


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def quarter_lit() -> bytes:
    """Black, its top-left quarter white: mean colour 64."""
    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[: SIDE // 2, : SIDE // 2] = 255
    return png(pixels)


def run(state: ServingState, coroutine: Any) -> Any:
    async def served() -> Any:
        await asyncio.gather(*(r.start() for r in state.all_runners()))
        QuarterKernel.runner = state.runners["quarter"]  # type: ignore[assignment]
        try:
            return await coroutine
        finally:
            await asyncio.gather(*(r.stop() for r in state.all_runners()))

    return asyncio.run(served())


def test_only_the_cells_the_model_looks_at_lower_its_score(serving) -> None:
    explained = run(serving, explaining.explain(serving, quarter_lit(), "quarter", grid=4))
    answer = ExplainResult.model_validate(explained.answer).model_dump()
    assert answer["target"] == {"label": "bright", "index": 1, "score": 1.0}
    assert (answer["grid_size"], answer["fill"], answer["fill_value"]) == (4, "mean", [64] * 3)
    assert answer["input_size"] == [SIDE, SIDE] and explained.png is None
    drops = np.array(answer["grid"])
    occluded = (3 * 255 + 64) / 4 / 255  # a quarter of the lit quarter painted 64
    np.testing.assert_allclose(drops[:2, :2], 1 - occluded, atol=1e-6)
    assert (drops[2:] == 0).all() and (drops[:, 2:] == 0).all()
    # 17 items (the image and 16 copies) batched together, admission counting all of them
    assert sum(size for size, _ in QuarterKernel.batches) == 17
    assert max(size for size, _ in QuarterKernel.batches) > 1
    assert {inside for _, inside in QuarterKernel.batches} == {17}
    assert serving.runners["quarter"].admission.inside == 0


def test_another_target_and_the_heatmap(serving) -> None:
    explained = run(
        serving,
        explaining.explain(
            serving, quarter_lit(), "quarter", grid=2, target=0, heatmap=True, png_side=40
        ),
    )
    assert explained.answer["target"]["label"] == "dark"
    assert explained.answer["grid"][0][0] < 0  # occluding the light raises P(dark)
    image = Image.open(io.BytesIO(explained.png or b""))
    assert image.format == "PNG" and image.size == (40, 40)
    top_left, bottom_right = image.getpixel((5, 5)), image.getpixel((35, 35))
    assert isinstance(top_left, tuple) and top_left[2] > top_left[0]  # blue: against "dark"
    assert bottom_right == (0, 0, 0)  # no effect: the image itself


def test_a_request_counts_its_every_item_against_admission(serving) -> None:
    runner = serving.runners["quarter"]

    async def crowded() -> None:
        # the wait bound of a model that has answered nothing yet: its floor (64 items)
        with runner.admission.admit(items=runner.admission.floor - 16):
            # 17 items do not fit beside them; 10 do
            with pytest.raises(Overloaded, match="counts as 17") as refused:
                await explaining.explain(serving, quarter_lit(), "quarter", grid=4)
            assert refused.value.headers["Retry-After"] == "1"
            await explaining.explain(serving, quarter_lit(), "quarter", grid=3)

    run(serving, crowded())


def test_the_grid_is_capped_by_its_setting_the_queue_and_the_input_side() -> None:
    settings = ModelSettings()
    assert explaining.checked_grid(spec(side=224), settings, 16) == 16
    with pytest.raises(InvalidInput, match=r"grid=17 must be between 2 and 16 .*max_explain_grid"):
        explaining.checked_grid(spec(side=224), settings, 17)
    with pytest.raises(InvalidInput, match="grid=1 must be between 2 and 16"):
        explaining.checked_grid(spec(side=224), settings, 1)
    small_queue = ModelSettings(max_queue=50)  # 7² + 1 = 50 items fit, 8² + 1 do not
    assert explaining.checked_grid(spec(side=224), small_queue, 7) == 7
    with pytest.raises(InvalidInput, match=r"between 2 and 7 .*max_queue=50"):
        explaining.checked_grid(spec(side=224), small_queue, 8)
    with pytest.raises(InvalidInput, match=r"between 2 and 12 .*12 px input"):
        explaining.checked_grid(spec(side=12), settings, 13)
    with pytest.raises(InvalidInput, match="cannot be explained"):
        explaining.checked_grid(spec(side=224), ModelSettings(max_queue=4), 2)
    assert explaining.items_of(16) == 257


def test_bad_parameters_and_models_are_refused_before_any_work(serving) -> None:
    image = quarter_lit()
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"model": "small-queue", "grid": 8}, InvalidInput, "max_queue=50"),
        ({"target": 2}, InvalidInput, "target=2 must be between 0 and 1"),
        ({"png_side": 8}, InvalidInput, "size=8 must be between 16 and 512"),
        ({"model": "reviews"}, ModelNotFound, "text-classification model"),
        ({"model": "nope"}, ModelNotFound, "unknown model 'nope'"),
    ]
    for given, error, message in cases:
        arguments = {"model": "quarter", **given}
        with pytest.raises(error, match=message):
            run(serving, explaining.explain(serving, image, **arguments))
    assert QuarterKernel.batches == []
