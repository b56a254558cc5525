"""The serving side must never need torch: import every service module with torch blocked."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch imported by the serving side")

    sys.meta_path.insert(0, NoTorch())
    import service
    names = [m.name for m in pkgutil.walk_packages(service.__path__, "service.")]
    for name in names:
        importlib.import_module(name)
    assert "torch" not in sys.modules
    print(len(names))
    """
)


def test_no_service_module_imports_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 5  # the walk really found the package's modules


def test_the_probe_would_catch_a_torch_import() -> None:
    probe = PROBE.replace("import service\n", "import service\nimport export.base\n")
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode != 0 and "torch imported by the serving side" in result.stderr
