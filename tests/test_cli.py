from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service.cli import main
from tests.conftest import tiny_classifier


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, check=False
    )


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "models" in result.stdout and "deepserve" in result.stdout
    sub = run_cli("models", "--help")
    for action in ("build", "list", "show"):
        assert action in sub.stdout


def test_unknown_model_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "build", "no-such-model"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_list_on_an_empty_store_says_how_to_build(scratch_store, capsys) -> None:
    assert main(["models", "list"]) == 1
    assert "deepserve models build" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["models", "show", "nope"], "no Models with name 'nope'"),
        (["models", "show", "nope:v9"], "'nope:v9' is not found"),
        (["models", "show", "a:b:c"], "Invalid Tag a:b:c"),
        (["models", "tune", "nope"], "no Models with name 'nope'"),
    ],
)
def test_a_user_error_is_one_line_and_exit_2(scratch_store, capsys, args, needle) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepserve: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_setting_is_one_line_and_exit_2(scratch_store, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPSERVE_MAX_BEAM", "abc")
    assert main(["models", "list"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "deepserve: invalid setting (max_beam: Input should be a valid integer, "
        "unable to parse string as an integer)\n"
    )


def test_a_bug_still_shows_its_traceback(monkeypatch) -> None:
    import service.cli as cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "cmd_models", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["models", "list"])


@pytest.fixture
def serve_env(tmp_path, monkeypatch):
    """`serve` writes these variables before it execs the server: restored after the test."""
    for name in ("BENTOML_HOME", "DEEPSERVE_STORE", "DEEPSERVE_HOST", "DEEPSERVE_PORT"):
        value = os.environ.get(name)
        monkeypatch.setenv(name, value or "unset")  # recorded: undone after the test
        if value is None:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DEEPSERVE_RUNTIME_DIR", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize(
    ("onnx_files", "name", "needle"),
    [
        ([], "mine", "holds 0 .onnx files; expected exactly one"),
        (["a.onnx", "b/c.onnx"], "mine", "holds 2 .onnx files (a.onnx, b/c.onnx)"),
        (["model.onnx"], "digits-cnn", "belongs to a built-in model"),
        (["model.onnx"], "Not A Name", "is not allowed"),
    ],
)
def test_serve_model_dir_refuses_before_serving(
    scratch_store, serve_env, capsys, onnx_files, name, needle
) -> None:
    folder = serve_env / "mnt"
    folder.mkdir()
    for file in onnx_files:
        (folder / file).parent.mkdir(exist_ok=True)
        tiny_classifier(folder / file)
    assert main(["serve", "--model-dir", str(folder), "--model-name", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refused: ") and needle in err and err.count("\n") == 1


def test_serve_model_dir_needs_the_model_name(serve_env, capsys) -> None:
    assert main(["serve", "--model-dir", str(serve_env)]) == 2
    assert "--model-dir and --model-name go together" in capsys.readouterr().err
    assert main(["serve", "--task", "image-classification"]) == 2
    assert "the import options go with --model-dir" in capsys.readouterr().err
