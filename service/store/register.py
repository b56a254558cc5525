"""Register a model (built by export/ or imported) in the BentoML model store with its spec."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from service.store.specs import HELDOUT_FILE, SPEC_FILE, ModelSpec, file_sha256

sha256 = file_sha256


def stored_versions(name: str) -> list[dict[str, Any]]:
    """Labels of every stored version of a model (empty when none)."""
    try:
        return [dict(m.info.labels) | {"tag": str(m.tag)} for m in bentoml.models.list(name)]
    except bentoml.exceptions.NotFound:
        return []


def register(
    spec: dict[str, Any], files: dict[str, Path], heldout: dict[str, np.ndarray]
) -> ModelSpec:
    """Create a new versioned store entry holding the files, the held-out sample and spec.json."""
    now = dt.datetime.now(dt.UTC)
    version = f"v{spec['spec_version']}-{now:%Y%m%d%H%M%S}-{now.microsecond // 1000:03d}"
    spec = dict(spec, version=version, created=now.isoformat(timespec="microseconds"))
    ModelSpec.model_validate(spec)  # fail before writing anything
    for key, value in heldout.items():
        if value.dtype == object:
            raise TypeError(f"held-out array {key!r} is an object array; it would need pickle")
    metadata = {f"metric.{k}": float(v) for k, v in spec["metrics"].items()}
    metadata["task"] = spec["task"]
    with bentoml.models.create(
        f"{spec['name']}:{version}",
        labels={"spec_version": spec["spec_version"], "task": spec["task"], "framework": "onnx"},
        metadata=metadata,
    ) as model:
        target = Path(model.path)
        for name, source in files.items():
            shutil.copyfile(source, target / name)
        np.savez_compressed(target / HELDOUT_FILE, **heldout)  # type: ignore[arg-type]
        (target / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=False))
    return ModelSpec.from_dir(Path(bentoml.models.get(f"{spec['name']}:{version}").path))
