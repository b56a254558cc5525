"""A model version's own settings file (settings.json, written at import): validated before
anything is stored, read with the spec, and below the environment in precedence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx import TensorProto, helper

from service.core.settings import Settings
from service.runners.local import LocalRunner
from service.runtime.kernels import GenericKernel
from service.store import specs
from service.store.importing.importer import ImportRefused
from service.tasks.registry import import_model
from tests.store.importing.test_importer import run_cli, save


def relu(tmp_path: Path) -> Path:
    return save(
        tmp_path / "relu.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [("x", TensorProto.FLOAT, ["N", 4])],
        [("y", TensorProto.FLOAT, ["N", 4])],
    )


def test_own_settings_are_stored_read_back_and_applied(scratch_store, tmp_path: Path):
    spec = import_model(relu(tmp_path), "own", settings={"max_batch_size": 4, "max_beam": 2})
    assert json.loads((spec.path / specs.SETTINGS_FILE).read_text()) == spec.settings
    loaded = specs.load_spec("own")
    assert loaded.settings == {"max_batch_size": 4, "max_beam": 2}
    config = Settings().for_model("own", loaded.settings)
    assert (config.max_batch_size, config.max_beam, config.max_queue) == (4, 2, 512)
    assert LocalRunner(loaded, Settings(device="cpu"), GenericKernel).config.max_batch_size == 4


def test_the_environment_overrides_the_file(scratch_store, tmp_path: Path):
    spec = import_model(relu(tmp_path), "own", settings={"max_batch_size": 4, "max_beam": 2})
    settings = Settings(model_settings={"own": {"max_batch_size": 8}})
    config = settings.for_model("own", spec.settings)
    assert (config.max_batch_size, config.max_beam) == (8, 2)
    assert Settings().for_model("other", spec.settings).max_batch_size == 4  # per file, not name


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"placement": "remote"}, "placement cannot be set per model version"),
        ({"version_policy": "all"}, "version_policy cannot be set per model version"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_sise": 4}, "unknown per-model setting"),
    ],
)
def test_bad_own_settings_refuse_the_import_before_anything_is_stored(
    scratch_store, tmp_path: Path, settings, message
):
    with pytest.raises(ImportRefused, match=message):
        import_model(relu(tmp_path), "own", settings=settings)
    assert [s for s in specs.list_specs() if s.name == "own"] == []


def test_a_damaged_settings_file_makes_that_version_a_reported_problem(
    scratch_store, tmp_path: Path
):
    spec = import_model(relu(tmp_path), "own", settings={"max_batch_size": 4})
    (spec.path / specs.SETTINGS_FILE).write_text('{"max_batch_size": -1}')
    problems: dict[str, str] = {}
    assert [s for s in specs.list_specs(problems) if s.name == "own"] == []
    assert any("max_batch_size" in why for why in problems.values()), problems


def test_cli_setting_is_stored_and_shown(tmp_path: Path):
    home = tmp_path / "home"
    source = relu(tmp_path)
    imported = run_cli(
        home, "import", str(source), "--name", "own", "--setting", "max_batch_size=4"
    )
    assert imported.returncode == 0, imported.stderr
    shown = run_cli(home, "show", "own")
    assert '  own settings: {"max_batch_size": 4}' in shown.stdout, shown.stdout
    refused = run_cli(home, "import", str(source), "--name", "own", "--setting", "placement=x")
    assert refused.returncode == 2 and "cannot be set per model version" in refused.stderr
