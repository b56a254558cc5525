"""The house rules that no linter checks: a module of service/ over ~400 lines says why at its
top (a paragraph starting "Length:" in its docstring)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[1] / "service"
LIMIT = 400
GENERATED = SERVICE / "protocols" / "proto" / "gen"


def modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if GENERATED not in p.parents)


def test_the_walk_finds_the_service_modules() -> None:
    assert len(modules()) > 40


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(SERVICE)))
def test_a_long_module_says_why(path: Path) -> None:
    source = path.read_text()
    if source.count("\n") <= LIMIT:
        return
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert "Length:" in docstring, (
        f"{path.relative_to(SERVICE.parent)} has {source.count(chr(10))} lines (over {LIMIT}): "
        "split it, or say why it is one module in a 'Length:' paragraph of its docstring"
    )
