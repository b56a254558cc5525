"""Model specs read from the BentoML model store (no torch needed, no pickles loaded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

SPEC_FILE = "spec.json"
HELDOUT_FILE = "heldout.npz"

# V2 protocol datatype -> numpy dtype (BYTES travels as object arrays of bytes).
V2_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}


class TensorSpec(BaseModel):
    """One graph input or output. Symbolic dims are strings (e.g. "batch")."""

    name: str
    datatype: str
    shape: list[int | str]
    description: str = ""

    @property
    def v2_shape(self) -> list[int]:
        """The shape as the V2 protocol writes it: -1 for every symbolic dim."""
        return [dim if isinstance(dim, int) else -1 for dim in self.shape]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return (
            np.dtype(V2_TO_NUMPY[self.datatype])
            if self.datatype in V2_TO_NUMPY
            else np.dtype(object)
        )


class GraphSpec(BaseModel):
    """One ONNX file of a model (most models have one, the captioner an encoder and a decoder)."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    sha256: str
    parity: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(BaseModel):
    """Everything a server needs to know about a stored model, written by the export pipeline."""

    name: str
    version: str
    task: str
    spec_version: str
    graphs: dict[str, GraphSpec]
    labels: list[str] | None = None
    vocabulary: list[str] | None = None
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    created: str = ""
    path: Path | None = Field(default=None, exclude=True)
    """Directory of the stored model (set when loaded from the store, never serialized)."""

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def graph_path(self, graph: str = "model") -> Path:
        if self.path is None:
            raise ValueError(f"{self.tag} was not loaded from a store")
        return self.path / self.graphs[graph].file

    def heldout(self) -> dict[str, np.ndarray]:
        """The small held-out sample stored with the model (plain arrays, no pickles)."""
        if self.path is None:
            raise ValueError(f"{self.tag} was not loaded from a store")
        with np.load(self.path / HELDOUT_FILE, allow_pickle=False) as saved:
            return {key: saved[key] for key in saved.files}

    @classmethod
    def from_dir(cls, path: Path) -> ModelSpec:
        spec = cls.model_validate(json.loads((path / SPEC_FILE).read_text()))
        spec.path = path
        return spec


def _store():  # type: ignore[no-untyped-def]
    from bentoml._internal.configuration.containers import BentoMLContainer

    return BentoMLContainer.model_store.get()


def load_spec(tag: str) -> ModelSpec:
    """Load a model's spec by tag ("name" for the latest version, or "name:version")."""
    model = _store().get(tag)
    return ModelSpec.from_dir(Path(model.path))


def list_specs() -> list[ModelSpec]:
    """Every model in the store that carries a deepserve spec, newest first per name."""
    specs = []
    try:
        models = _store().list()
    except FileNotFoundError:  # no store yet
        return []
    for model in models:
        path = Path(model.path)
        if (path / SPEC_FILE).exists():
            specs.append(ModelSpec.from_dir(path))
    specs.sort(key=lambda s: (s.name, s.created), reverse=True)
    specs.sort(key=lambda s: s.name)
    return specs


def latest_specs() -> dict[str, ModelSpec]:
    """The newest version of each model in the store."""
    latest: dict[str, ModelSpec] = {}
    for spec in list_specs():
        current = latest.get(spec.name)
        if current is None or spec.created > current.created:
            latest[spec.name] = spec
    return latest
