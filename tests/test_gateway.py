"""The gateway's startup order (tests/gateway_checks.py), in a process without tritonclient."""

from __future__ import annotations

from pathlib import Path

from tests.without_tritonclient import run_checks


def test_the_gateway_startup_checks_pass() -> None:
    assert "2 passed" in run_checks(Path(__file__).with_name("gateway_checks.py"))
