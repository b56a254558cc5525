"""Build models: train (recipe) -> ONNX export -> verify -> register in the model store."""

from __future__ import annotations

import importlib
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from export.base import BuildContext, Built
from export.onnx_tools import OPSET, check_graph, check_parity, export_graph
from export.store import register, sha256, stored_versions
from service.store.specs import ModelSpec
from service.tasks.registry import builtin_models

# Model name -> recipe module (export/models/<name>.py); the names are the task registry's built-in
# models. Each module defines NAME, SPEC_VERSION and build(ctx) -> Built.
RECIPES: dict[str, str] = {
    name: f"export.models.{name.replace('-', '_')}" for name in builtin_models()
}


def recipe_module(name: str) -> Any:
    if name not in RECIPES:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(RECIPES)}")
    return importlib.import_module(RECIPES[name])


def is_current(name: str) -> str | None:
    """The stored tag built from the current spec version, if there is one."""
    module = recipe_module(name)
    for labels in stored_versions(name):
        if labels.get("spec_version") == module.SPEC_VERSION:
            return str(labels["tag"])
    return None


def build_model(name: str, seed: int = 0, cache_dir: Path | None = None) -> ModelSpec:
    """Train, export, verify and register one model; returns its stored spec."""
    module = recipe_module(name)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"deepserve-{name}-") as tmp:
        workdir = Path(tmp)
        ctx = BuildContext(workdir=workdir, seed=seed, cache_dir=cache_dir)
        ctx.seed_everything()
        built: Built = module.build(ctx)
        trained = time.perf_counter() - started
        graphs: dict[str, Any] = {}
        files: dict[str, Path] = dict(built.files)
        for graph_name, graph in built.graphs.items():
            file_name = f"{graph_name}.onnx"
            path = export_graph(graph, workdir / file_name)
            check = check_graph(graph, path)
            parity = check_parity(graph, path, workdir)
            print(
                f"  {name}/{file_name}: checker ok, symbolic dims ok, parity max |diff| "
                f"{parity['max_abs_diff']:.2e} over {len(parity['cases'])} cases",
                flush=True,
            )
            graphs[graph_name] = {
                "file": file_name,
                "inputs": [asdict(d) for d in graph.inputs],
                "outputs": [asdict(d) for d in graph.outputs],
                "opset": check["opset"],
                "sha256": sha256(path),
                "parity": parity,
            }
            files[file_name] = path
        spec = {
            "name": name,
            "task": built.task,
            "spec_version": module.SPEC_VERSION,
            "graphs": graphs,
            "labels": built.labels,
            "vocabulary": built.vocabulary,
            "preprocessing": built.preprocessing,
            "metrics": built.metrics,
            "data": built.data,
            "training": dict(
                built.training,
                seed=seed,
                build_seconds=round(time.perf_counter() - started, 1),
                train_seconds=round(trained, 1),
                opset=OPSET,
            ),
            "extra": built.extra,
        }
        stored = register(spec, files, built.heldout)
    print(f"  {stored.tag}: {json.dumps(stored.metrics)}", flush=True)
    return stored


def build_all(names: list[str] | None = None, force: bool = False, seed: int = 0) -> list[str]:
    """Build every named model (default: all) whose spec version is not in the store yet."""
    cache = Path(tempfile.gettempdir()) / "deepserve-cache"
    done = []
    for name in names or list(RECIPES):
        current = None if force else is_current(name)
        if current:
            print(f"{name}: up to date ({current}), skipped", flush=True)
            done.append(current)
            continue
        print(f"{name}: building", flush=True)
        started = time.perf_counter()
        spec = build_model(name, seed=seed, cache_dir=cache)
        print(f"{name}: built {spec.tag} in {time.perf_counter() - started:.0f} s", flush=True)
        done.append(spec.tag)
    return done
