"""The client stands alone: it imports the standard library and httpx, nothing of the service.
import-linter forbids the service's packages and its third-party dependencies by name
(pyproject.toml); this checks the allow-list itself, which import-linter cannot state."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

CLIENT = Path(__file__).resolve().parents[2] / "service" / "client"
ALLOWED = {"httpx"}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted(CLIENT.glob("*.py")), ids=lambda p: p.name)
def test_a_client_module_imports_the_stdlib_httpx_and_the_client_only(path: Path) -> None:
    for name in imported(path):
        top = name.split(".")[0]
        inside = name == "service.client" or name.startswith("service.client.")
        assert inside or top in ALLOWED or top in sys.stdlib_module_names, (path.name, name)


def test_importing_the_client_loads_nothing_of_the_service() -> None:
    program = (
        "import sys, service.client; print(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('service', 'numpy', 'pydantic', 'bentoml', 'starlette', "
        "'onnxruntime', 'grpc', 'PIL'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=CLIENT.parents[1],
    ).stdout.split()
    assert "service.client.sync" in loaded
    assert [m for m in loaded if m != "service" and not m.startswith("service.client")] == []
