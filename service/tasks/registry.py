"""The task registry: every `TASK` declared by a module of this package, found at import.

Everything keyed by task is derived from here: the kernel a runner executes, a model's V2
signature, the default model of the /v1 endpoints, how a task's models are imported, and the names
of the built-in models (which export/ builds). A new task is a new module with a `TASK`.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Collection
from typing import Any

import service.tasks as package
from service.runtime.kernels import Kernel
from service.store.importing.graph_inspect import ImportRefused
from service.store.importing.importer import import_model as store_import
from service.store.specs import ModelSpec
from service.tasks.base import Task

NOT_TASKS = {"base", "catalog", "explaining", "registry", "tensors", "transcription", "tuning"}
"""Modules of this package that declare no task."""


def _discover() -> dict[str, Task]:
    found: dict[str, Task] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        if module in NOT_TASKS:
            continue
        task = getattr(importlib.import_module(f"{package.__name__}.{module}"), "TASK", None)
        if not isinstance(task, Task):
            raise TypeError(
                f"service/tasks/{module}.py declares no TASK (a Task object); a helper module "
                "that declares none belongs in NOT_TASKS"
            )
        if task.name in found:
            raise ValueError(f"task {task.name!r} is declared twice")
        found[task.name] = task
    return dict(sorted(found.items(), key=lambda item: (item[1].position, item[0])))


TASKS: dict[str, Task] = _discover()


def get(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; one of {', '.join(TASKS)}") from None


def kernel_of(task: str) -> type[Kernel]:
    return get(task).kernel


def make_kernel(
    spec: ModelSpec,
    device: str = "auto",
    intra_op_threads: int = 1,
    solo_threads: int = 1,
    io_binding: str = "auto",
) -> Kernel:
    """Load a model's kernel (its graphs in ONNX Runtime sessions) by its spec's task."""
    try:
        kernel_class = kernel_of(spec.task)
    except KeyError:
        raise ValueError(f"{spec.tag}: no kernel for task {spec.task!r}") from None
    return kernel_class(spec, device, intra_op_threads, solo_threads, io_binding)


def builtin_models() -> list[str]:
    """The models this project trains (`deepserve models build`), by task."""
    return [name for task in TASKS.values() for name in task.builtin_models]


def importable() -> list[str]:
    return [name for name, task in TASKS.items() if task.importing is not None]


def import_model(
    path: str | os.PathLike[str],
    name: str,
    task: str = "generic",
    labels_file: str | os.PathLike[str] | None = None,
    vocab_file: str | os.PathLike[str] | None = None,
    preprocess: dict[str, str] | None = None,
    reserved: Collection[str] | None = None,
    settings: dict[str, Any] | None = None,
    domain_threshold: float | None = None,
) -> ModelSpec:
    """`deepserve models import`: the store's importer with the task's import rule; the built-in
    models' names are reserved."""
    rule = TASKS[task].importing if task in TASKS else None
    if rule is None:
        raise ImportRefused(f"unknown task {task!r}; one of {', '.join(importable())}")
    reserved = builtin_models() if reserved is None else reserved
    return store_import(
        path,
        name,
        rule,
        labels_file,
        vocab_file,
        preprocess,
        reserved,
        settings=settings,
        domain_threshold=domain_threshold,
    )


def default_models() -> dict[str, str]:
    """Task -> the model its /v1 endpoint serves when a request names none."""
    return {name: t.default_model for name, t in TASKS.items() if t.default_model is not None}
