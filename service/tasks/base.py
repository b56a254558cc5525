"""What a task is: one `Task` object per module of this package (service/tasks/<task>.py), holding
everything the layers need to serve that kind of model. The registry (registry.py) collects them;
every other table (kernels, V2 signatures, default models, import rules, built-in model names) is
derived from it, so a new task is one new module."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.core.errors import InvalidInput
from service.core.wire import ResponseModel
from service.runners.base import Runner
from service.runtime.kernels import Kernel
from service.store.importing.importer import ImportRule
from service.store.specs import ModelSpec
from service.tasks.tensors import Signature


@dataclass(frozen=True)
class Task:
    name: str
    """The spec's `task` field (e.g. "image-classification")."""
    summary: str
    kernel: type[Kernel]
    """Collates, runs ONNX Runtime and splits a batch of this task's items (service/runtime)."""
    signature: Callable[[Runner], Signature]
    """A served model's tensor interface (V2 metadata, config and infer)."""
    results: tuple[type[ResponseModel], ...] = ()
    """The JSON answers of its /v1 endpoint (wire models; the OpenAPI document is generated from
    them and the REST handler answers through them)."""
    default_model: str | None = None
    """The model /v1 and the task gRPC service use when a request names none."""
    builtin_models: tuple[str, ...] = ()
    """Models of this task trained by this project (export/models/<name>.py builds each)."""
    importing: ImportRule | None = None
    """How `deepserve models import --task NAME` adapts a user's graph; None: not importable."""
    understands: Callable[[ModelSpec], dict[str, Any] | None] | None = None
    """What a model of this task was trained to recognise, for /v1/models (`understands`; e.g.
    speech-ctc's phrases and digit words): an input outside it gets an answer it never learnt."""
    position: int = 100
    """Order of the task in listings and of its built-in models in `deepserve models build`
    (cheap models first)."""


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{name}={value} must be between {low} and {high}")
    return value
