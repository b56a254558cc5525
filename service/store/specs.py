"""Model specs read from the BentoML model store (no torch needed, no pickles loaded)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field, field_validator

from service.core import datatypes
from service.core.model_settings import VersionPolicy, checked_tuned, file_entry

log = logging.getLogger("deepserve.registry")

SPEC_FILE = "spec.json"
HELDOUT_FILE = "heldout.npz"
SETTINGS_FILE = "settings.json"
TUNED_FILE = "tuned.json"
"""Tuned settings by device class (`deepserve models tune`), next to spec.json."""
"""A model version's own serving settings (ModelSettings fields), optional."""


class TensorSpec(BaseModel):
    """One graph input or output. Symbolic dims are strings (e.g. "batch")."""

    name: str
    datatype: str
    shape: list[int | str]
    description: str = ""

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, datatype: str) -> str:
        if datatype not in datatypes.DATATYPES:
            raise ValueError(
                f"unknown datatype {datatype!r}; one of {', '.join(datatypes.DATATYPES)}"
            )
        return datatype

    @property
    def v2_shape(self) -> list[int]:
        """The shape as the V2 protocol writes it: -1 for every symbolic dim."""
        return [dim if isinstance(dim, int) else -1 for dim in self.shape]

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return datatypes.numpy_of(self.datatype)


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
    settings: dict[str, Any] = Field(default_factory=dict, exclude=True)
    """This version's own serving settings (SETTINGS_FILE next to spec.json, validated when
    loaded; empty when there is none)."""

    tuned: dict[str, Any] = Field(default_factory=dict, exclude=True)
    """This version's tuned settings by device class (TUNED_FILE, validated when loaded)."""

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def graph_path(self, graph: str = "model") -> Path:
        """The graph's ONNX file, which must be an .onnx file inside the model's own folder."""
        if self.path is None:
            raise ValueError(f"{self.tag} was not loaded from a store")
        folder = self.path.resolve()
        path = (folder / self.graphs[graph].file).resolve()
        if path.parent != folder or path.suffix != ".onnx":
            raise ValueError(
                f"{self.tag}: graph file {self.graphs[graph].file!r} is not an .onnx file in "
                "the model's folder; refusing to load it"
            )
        return path

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
        own = path / SETTINGS_FILE
        if own.is_file():
            entries = json.loads(own.read_text())
            if not isinstance(entries, dict):
                raise ValueError(f"{own}: expected a JSON object of settings")
            spec.settings = file_entry(entries, str(own))
        tuned = path / TUNED_FILE
        if tuned.is_file():
            # NOTE: an optional optimisation: a damaged file is logged and ignored, never a
            # reason to skip the version (poll mode would fall back to an older one)
            try:
                spec.tuned = checked_tuned(json.loads(tuned.read_text()), str(tuned))
            except (OSError, ValueError) as error:
                log.error("%s: ignoring %s: %s", spec.tag, TUNED_FILE, error)
        return spec


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (recorded in specs at export, checked before a graph is loaded)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_spec(tag: str) -> ModelSpec:
    """Load a model's spec by tag ("name" for the latest version, or "name:version")."""
    import bentoml  # NOTE: late, so that Settings.apply_store() can point it at our store first

    model = bentoml.models.get(tag)
    return ModelSpec.from_dir(Path(model.path))


def list_specs(problems: dict[str, str] | None = None) -> list[ModelSpec]:
    """Every model in the store that carries a readable deepserve spec, newest first per name.

    A stored model whose spec cannot be read is skipped (and described in `problems`, by
    model name), so one damaged entry cannot hide the others."""
    import bentoml

    specs = []
    try:
        models = bentoml.models.list()
    except FileNotFoundError:  # no store yet
        return []
    for model in models:
        path = Path(model.path)
        if not (path / SPEC_FILE).exists():
            continue
        try:
            specs.append(ModelSpec.from_dir(path))
        except (OSError, ValueError) as error:  # pydantic's ValidationError is a ValueError
            own = f"{SETTINGS_FILE}: " in str(error)
            why = f"{model.tag}: unreadable {SETTINGS_FILE if own else SPEC_FILE}"
            detail = " ".join(str(error).split())[:300] if own else type(error).__name__
            why += f" ({detail})"
            log.error("skipping %s", why)
            if problems is not None:
                problems[model.tag.name] = why
    specs.sort(key=lambda s: (s.name, s.created), reverse=True)
    specs.sort(key=lambda s: s.name)
    return specs


def latest_specs(problems: dict[str, str] | None = None) -> dict[str, ModelSpec]:
    """The newest readable version of each model in the store (see list_specs)."""
    latest: dict[str, ModelSpec] = {}
    for spec in list_specs(problems):
        current = latest.get(spec.name)
        if current is None or spec.created > current.created:
            latest[spec.name] = spec
    return latest


def select_versions(
    names: list[str],
    policy_of: Callable[[str], VersionPolicy],
    problems: dict[str, str] | None = None,
) -> dict[str, list[ModelSpec]]:
    """The stored versions to serve per model, newest first, by each model's version policy
    (`policy_of(name)`: Settings.for_model(name).version_policy). `names` may hold "*" (every
    model in the store). Models with nothing to serve are described in `problems`."""
    problems = {} if problems is None else problems
    stored: dict[str, list[ModelSpec]] = {}
    for spec in list_specs(problems):  # newest first per name
        stored.setdefault(spec.name, []).append(spec)
    wanted = list(dict.fromkeys(n for name in names for n in (stored if name == "*" else [name])))
    selected: dict[str, list[ModelSpec]] = {}
    for name in wanted:
        versions = sorted(stored.get(name, []), key=lambda s: s.created, reverse=True)
        if not versions:
            problems.setdefault(name, "not in the model store (run `deepserve models build`)")
            continue
        policy = policy_of(name)
        if policy.all:
            chosen = versions
        elif policy.latest is not None:
            chosen = versions[: policy.latest]
        else:
            by_version = {s.version: s for s in versions}
            absent = [v for v in policy.pinned if v not in by_version]
            if absent:
                problems[name] = (
                    f"pinned version(s) {', '.join(absent)} not in the store; stored: "
                    + ", ".join(by_version)
                )
            chosen = [by_version[v] for v in by_version if v in policy.pinned]
        if chosen:
            selected[name] = chosen
        else:
            problems.setdefault(name, "the version policy selects no stored version")
    return selected
