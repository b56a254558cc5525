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
