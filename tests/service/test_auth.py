"""API keys: parsing, rotation, refusal messages that never echo what was sent, fail-closed
configuration."""

from __future__ import annotations

import pytest

from service.auth import ApiKeys, open_paths
from service.errors import Unauthenticated
from service.settings import Settings


def test_no_keys_means_auth_off() -> None:
    keys = ApiKeys.from_settings(Settings())
    assert not keys.enabled
    keys.check(None)  # nothing to check


def test_keys_from_setting_and_file_both_work(tmp_path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("# comment\n\nfile-key-1\n  file-key-2  \n")
    keys = ApiKeys.from_settings(Settings(api_key="env-key", api_key_file=key_file))
    for key in ("env-key", "file-key-1", "file-key-2"):
        keys.check(f"Bearer {key}")
        keys.check(f"bearer   {key}  ")


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (None, "missing API key"),
        ("", "missing API key"),
        ("Bearer", "malformed"),
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer secret-keyX", "invalid API key"),
        ("Bearer secret-ke", "invalid API key"),
        ("Bearer # comment", "invalid API key"),
    ],
)
def test_refusals_name_the_problem_without_echoing(header, needle) -> None:
    keys = ApiKeys(["secret-key"])
    with pytest.raises(Unauthenticated, match=needle) as refused:
        keys.check(header)
    assert "secret" not in refused.value.message
    assert refused.value.http_status == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_unreadable_or_empty_key_file_fails_closed(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="cannot be read"):
        ApiKeys.from_settings(Settings(api_key_file=tmp_path / "absent"))
    empty = tmp_path / "empty"
    empty.write_text("# no keys yet\n")
    with pytest.raises(RuntimeError, match="holds no key"):
        ApiKeys.from_settings(Settings(api_key_file=empty))


def test_open_paths_follow_settings() -> None:
    assert "/readyz" in open_paths(Settings()) and "/metrics" in open_paths(Settings())
    closed = open_paths(Settings(open_health=False, open_metrics=False))
    assert closed == ()
