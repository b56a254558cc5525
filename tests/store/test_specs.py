"""Spec round trip through a real (scratch) BentoML model store, torch-free."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export.store import register, sha256, stored_versions
from service.core.model_settings import VersionPolicy
from service.store import specs as registry


def tiny_spec(path: Path, spec_version: str = "1") -> dict:
    tensor = {"name": "x", "datatype": "FP32", "shape": ["batch", 4], "description": ""}
    return {
        "name": "tiny",
        "task": "image-classification",
        "spec_version": spec_version,
        "graphs": {
            "model": {
                "file": "model.onnx",
                "inputs": [tensor],
                "outputs": [dict(tensor, name="probabilities", shape=["batch", 3])],
                "opset": 17,
                "sha256": sha256(path),
                "parity": {"max_abs_diff": 0.0},
            }
        },
        "labels": ["a", "b", "c"],
        "metrics": {"accuracy": 0.5},
        "data": {"source": "onnx.helper"},
    }


def test_register_then_load_round_trips_the_spec(scratch_store, tiny_onnx: Path) -> None:
    heldout = {"x": np.ones((2, 4), np.float32), "label": np.array(["a", "b"])}
    stored = register(tiny_spec(tiny_onnx), {"model.onnx": tiny_onnx}, heldout)

    loaded = registry.load_spec("tiny")
    assert loaded.tag == stored.tag
    assert loaded.version.startswith("v1-")
    assert loaded.graphs["model"].inputs[0].shape == ["batch", 4]
    assert loaded.graphs["model"].inputs[0].v2_shape == [-1, 4]
    assert loaded.graphs["model"].inputs[0].numpy_dtype == np.float32
    assert loaded.labels == ["a", "b", "c"]
    assert loaded.metrics == {"accuracy": 0.5}
    assert sha256(loaded.graph_path()) == loaded.graphs["model"].sha256
    assert loaded.heldout()["label"].tolist() == ["a", "b"]
    session = ort.InferenceSession(str(loaded.graph_path()), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"x": loaded.heldout()["x"]})
    assert probabilities.shape == (2, 3)
    assert stored_versions("tiny")[0]["spec_version"] == "1"


def test_each_register_makes_a_new_version(scratch_store, tiny_onnx: Path) -> None:
    first = register(tiny_spec(tiny_onnx, "1"), {"model.onnx": tiny_onnx}, {})
    second = register(tiny_spec(tiny_onnx, "2"), {"model.onnx": tiny_onnx}, {})
    assert first.version != second.version
    assert [s.version for s in registry.list_specs()] == [second.version, first.version]
    assert registry.latest_specs()["tiny"].version == second.version
    assert sorted(v["spec_version"] for v in stored_versions("tiny")) == ["1", "2"]


def test_object_arrays_are_refused_because_they_need_pickle(scratch_store, tiny_onnx) -> None:
    with pytest.raises(TypeError, match="pickle"):
        register(tiny_spec(tiny_onnx), {"model.onnx": tiny_onnx}, {"bad": np.array([{}], object)})
    assert registry.list_specs() == []


def test_invalid_spec_writes_nothing(scratch_store, tiny_onnx: Path) -> None:
    spec = tiny_spec(tiny_onnx)
    del spec["graphs"]
    with pytest.raises(ValueError):
        register(spec, {"model.onnx": tiny_onnx}, {})
    assert stored_versions("tiny") == []


@pytest.mark.parametrize("file", ["../model.onnx", "/etc/passwd", "sub/../../x.onnx", "spec.json"])
def test_graph_files_outside_the_model_folder_or_not_onnx_are_refused(
    tmp_path: Path, tiny_onnx: Path, file: str
) -> None:
    raw = tiny_spec(tiny_onnx)
    raw["graphs"]["model"]["file"] = file
    spec = registry.ModelSpec.model_validate({**raw, "version": "v1"})
    spec.path = tmp_path
    with pytest.raises(ValueError, match="refusing to load it"):
        spec.graph_path()


def test_unreadable_spec_is_skipped_and_reported(scratch_store, tiny_onnx: Path) -> None:
    stored = register(tiny_spec(tiny_onnx), {"model.onnx": tiny_onnx}, {})
    (Path(stored.path) / registry.SPEC_FILE).write_text("{not json")
    problems: dict[str, str] = {}
    assert registry.latest_specs(problems) == {}
    assert "unreadable spec.json" in problems["tiny"]


def test_a_changed_onnx_file_fails_its_checksum(scratch_store, tiny_onnx: Path) -> None:
    from service.runtime.sessions import load_graph

    register(tiny_spec(tiny_onnx), {"model.onnx": tiny_onnx}, {})
    spec = registry.load_spec("tiny")
    path = spec.graph_path()
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(RuntimeError, match="SHA-256"):
        load_graph(path, spec.graphs["model"])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("latest", VersionPolicy(latest=1)),
        ("latest:3", VersionPolicy(latest=3)),
        ("all", VersionPolicy(all=True)),
        (["v1-a", "v1-b"], VersionPolicy(pinned=("v1-a", "v1-b"))),
        ("v1-a, v1-b", VersionPolicy(pinned=("v1-a", "v1-b"))),
    ],
)
def test_version_policies_parse(policy, expected) -> None:
    assert VersionPolicy.parse(policy) == expected


@pytest.mark.parametrize("policy", ["latest:0", "latest:x", "latest:", ""])
def test_bad_version_policies_are_refused(policy) -> None:
    with pytest.raises(ValueError, match="version policy"):
        VersionPolicy.parse(policy)


def test_version_selection_latest_n_all_pinned(scratch_store, tiny_onnx: Path) -> None:
    versions = [
        register(tiny_spec(tiny_onnx), {"model.onnx": tiny_onnx}, {}).version for _ in range(3)
    ]
    newest_first = versions[::-1]

    def policy_of(default: str, policies: dict) -> Callable[[str], VersionPolicy]:
        return lambda name: VersionPolicy.parse(policies.get(name, default))

    def chosen(default: str, policies: dict | None = None, names=("*",)) -> list[str]:
        problems: dict[str, str] = {}
        selected = registry.select_versions(
            list(names), policy_of(default, policies or {}), problems
        )
        return [s.version for s in selected.get("tiny", [])]

    assert chosen("latest") == newest_first[:1]
    assert chosen("latest:2") == newest_first[:2]
    assert chosen("all") == newest_first
    assert chosen("latest", {"tiny": [versions[0], versions[2]]}) == [versions[2], versions[0]]
    assert chosen("latest", {"tiny": "all"}, names=["tiny"]) == newest_first
    problems: dict[str, str] = {}
    only_v9 = policy_of("latest", {"tiny": ["v9"]})
    selected = registry.select_versions(["tiny", "absent"], only_v9, problems)
    assert selected == {}
    assert "pinned version(s) v9 not in the store" in problems["tiny"]
    assert "not in the model store" in problems["absent"]
