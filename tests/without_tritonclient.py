"""Run a checks file with pytest in a process of its own: importing the server's inference_pb2
registers the inference.* protobuf symbols, which tritonclient, imported by other tests in this
process, registers too (see service/protocols/proto/stubs.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_checks(checks: Path) -> str:
    """pytest's summary of `checks`, asserting that it passed."""
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)]
    done = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
    return done.stdout
