"""Every model: in the store, loadable, symbolic where declared, parity recorded, metadata true."""

from __future__ import annotations

import subprocess
import sys

import bentoml
import onnx
import pytest

from export.store import sha256
from tests.conftest import MODEL_NAMES

BARS = {  # the held-out bars: metric -> (comparison, bound)
    "digits-cnn": {"accuracy": (">=", 0.97)},
    "sentiment-lstm": {"accuracy": (">=", 0.76)},
    "speech-ctc": {"cer": ("<=", 0.03), "wer": ("<=", 0.08)},
    "captioner": {
        "exact_match_greedy": (">=", 0.97),  # fresh scenes of the training renderer
        "exact_match_second_renderer": (">=", 0.95),  # export/data/scenes_pillow.py
    },
    "imagenet-cnn": {"photos_top1_sensible": (">=", 1.0)},
}


def meets(value: float, rule: tuple[str, float]) -> bool:
    op, bound = rule
    return value >= bound if op == ">=" else value <= bound


def test_all_five_models_are_stored(specs) -> None:
    assert sorted(specs) == sorted(MODEL_NAMES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_graphs_load_and_match_their_spec(name: str, specs, sessions) -> None:
    spec = specs[name]
    assert spec.graphs, name
    for graph_name, graph in spec.graphs.items():
        path = spec.graph_path(graph_name)
        assert sha256(path) == graph.sha256
        assert graph.opset == 17
        session = sessions(name, graph_name)
        assert [i.name for i in session.get_inputs()] == [t.name for t in graph.inputs]
        assert [o.name for o in session.get_outputs()] == [t.name for t in graph.outputs]
        model = onnx.load(str(path), load_external_data=False)
        declared = {t.name: t for t in graph.inputs + graph.outputs}
        for value in list(model.graph.input) + list(model.graph.output):
            dims = value.type.tensor_type.shape.dim
            for dim, want in zip(dims, declared[value.name].shape):
                if isinstance(want, str):
                    assert dim.dim_param, f"{name}/{graph_name}:{value.name} lost symbolic {want}"
        assert graph.inputs[0].shape[0] == "batch"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parity_was_checked_at_three_shapes_within_1e4(name: str, specs) -> None:
    for graph in specs[name].graphs.values():
        assert graph.parity["max_abs_diff"] <= 1e-4
        assert len({str(c["shapes"]) for c in graph.parity["cases"]}) >= 3
        labels = " ".join(c["label"] for c in graph.parity["cases"])
        assert "random" in labels, "parity must cover random inputs too"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_metadata_records_the_held_out_bar(name: str, specs) -> None:
    spec = specs[name]
    for metric, rule in BARS[name].items():
        assert meets(spec.metrics[metric], rule), f"{name} {metric}={spec.metrics[metric]} {rule}"
    stored = bentoml.models.get(spec.tag)
    assert stored.info.labels["spec_version"] == spec.spec_version
    for metric, value in spec.metrics.items():
        assert stored.info.metadata[f"metric.{metric}"] == pytest.approx(value)
    assert spec.data and spec.preprocessing
    assert (spec.path / "training_curve.png").exists() or not spec.training.get("epochs", 0)


def test_cli_lists_the_five_models_with_versions_and_metrics(specs) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    for spec in specs.values():
        line = next(row for row in result.stdout.splitlines() if row.startswith(spec.tag))
        assert spec.task in line and "=" in line
    show = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "show", "digits-cnn"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "image" in show.stdout and "UINT8" in show.stdout


def test_rebuild_skips_models_whose_spec_version_is_stored(specs) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "models", "build", "digits-cnn", "captioner"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.count("up to date") == 2, result.stdout
    assert "building" not in result.stdout
