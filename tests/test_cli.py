from __future__ import annotations

import subprocess
import sys

import pytest

from service.cli import main


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
