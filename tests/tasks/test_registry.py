"""The task registry: one Task per module, every per-task table derived from it (no store)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import service.tasks as package
from service.runtime.kernels import Kernel
from service.store.importing.graph_inspect import ImportRefused
from service.tasks import registry
from service.tasks.base import Task

BUILT_BY_EXPORT = sorted(
    m.name.replace("_", "-")
    for m in pkgutil.iter_modules(importlib.import_module("export.models").__path__)
)


def test_every_task_module_declares_one_task_and_is_registered():
    modules = [m.name for m in pkgutil.iter_modules(package.__path__)]
    declared = [m for m in modules if m not in registry.NOT_TASKS]
    assert len(declared) == len(registry.TASKS) >= 5
    for module in declared:
        task = importlib.import_module(f"service.tasks.{module}").TASK
        assert isinstance(task, Task)
        assert registry.TASKS[task.name] is task
        assert module == task.name.replace("-", "_")  # one module per task, named after it


def test_tables_are_derived_from_the_registry():
    for name, task in registry.TASKS.items():
        assert issubclass(task.kernel, Kernel)
        assert registry.kernel_of(name) is task.kernel
        if task.importing is not None:
            assert task.importing.task == name
    defaults = registry.default_models()
    assert set(defaults) == {n for n, t in registry.TASKS.items() if t.default_model}
    # every default model is a built-in one of the same task
    for name, model in defaults.items():
        assert model in registry.TASKS[name].builtin_models


def test_builtin_models_are_exactly_the_export_recipes():
    """The built-in model names live once (the tasks); export/ builds each from its recipe."""
    from export.pipeline import RECIPES

    assert sorted(registry.builtin_models()) == BUILT_BY_EXPORT == sorted(RECIPES)


def test_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown task 'nope'; one of"):
        registry.get("nope")


def test_import_refuses_tasks_without_an_import_rule(tmp_path):
    not_importable = [n for n, t in registry.TASKS.items() if t.importing is None]
    assert not_importable == ["image-captioning"]
    for task in [*not_importable, "nope"]:
        with pytest.raises(ImportRefused, match=f"unknown task '{task}'"):
            registry.import_model(tmp_path / "x.onnx", "x", task)


def test_builtin_names_are_reserved_for_imports(tmp_path):
    source = tmp_path / "x.onnx"
    source.write_bytes(b"not read: the name is refused first")
    with pytest.raises(ImportRefused, match="belongs to a built-in model"):
        registry.import_model(source, registry.builtin_models()[0])


def test_tasks_declare_their_v1_answers_and_the_document_publishes_them():
    from service.core.settings import Settings
    from service.core.wire import ResponseModel
    from service.protocols.http import openapi

    schemas = openapi.document([], Settings())["components"]["schemas"]
    for task in registry.TASKS.values():
        if task.default_model is None:  # no /v1 endpoint (generic): V2 only
            assert task.results == ()
            continue
        assert task.results, f"{task.name} declares no /v1 answer model"
        for model in task.results:
            assert issubclass(model, ResponseModel)
            assert model.__name__ in schemas


def test_a_built_in_recogniser_lists_what_it_understands_and_an_imported_one_nothing() -> None:
    from service.store.specs import ModelSpec

    task = registry.get("speech-recognition")
    assert task.understands is not None
    base = {"name": "s", "version": "v1", "task": task.name, "spec_version": "1", "graphs": {}}
    built = ModelSpec.model_validate(
        {**base, "extra": {"phrases": ["turn on the light"], "digit_words": ["zero", "one"]}}
    )
    understood = task.understands(built)
    assert understood is not None
    assert understood["phrases"] == ["turn on the light"]
    assert understood["digit_words"] == ["zero", "one"]
    assert task.understands(ModelSpec.model_validate(base)) is None
    others = [t for t in registry.TASKS.values() if t.name != task.name]
    assert all(t.understands is None for t in others)
