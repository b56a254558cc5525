"""A server's own BentoML home: fresh at each start, the store's models linked in, and never a
folder deepserve did not make."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store import runtime_home


def store(tmp_path: Path) -> Path:
    (tmp_path / "store" / "models" / "m").mkdir(parents=True)
    return tmp_path / "store"


def test_prepare_links_the_models_and_makes_the_scratch_folders(tmp_path: Path):
    home = runtime_home.prepare(store(tmp_path), tmp_path / "home")
    assert (home / "models").is_symlink()
    assert (home / "models").resolve() == (tmp_path / "store" / "models").resolve()
    assert all((home / folder).is_dir() for folder in runtime_home.SCRATCH)
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["models"]  # untouched


def test_prepare_empties_its_own_home_at_each_start(tmp_path: Path):
    home = runtime_home.prepare(store(tmp_path), tmp_path / "home")
    (home / "prometheus_multiproc_dir" / "counter_1.db").write_bytes(b"old")
    runtime_home.prepare(tmp_path / "store", home)
    assert list((home / "prometheus_multiproc_dir").iterdir()) == []


def test_prepare_refuses_a_folder_it_did_not_make(tmp_path: Path):
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="was not made by deepserve"):
        runtime_home.prepare(store(tmp_path), mine)
    assert (mine / "notes.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="is the store itself"):
        runtime_home.prepare(tmp_path / "store", tmp_path / "store")


def test_default_home_is_one_folder_per_port():
    assert runtime_home.default_home(3000) != runtime_home.default_home(3001)
    assert runtime_home.default_home(3000) == runtime_home.default_home(3000)


def test_prepare_without_a_store_gives_the_home_an_empty_models_folder_of_its_own(tmp_path):
    home = runtime_home.prepare(None, tmp_path / "home")
    assert (home / "models").is_dir() and not (home / "models").is_symlink()
    (home / "models" / "imported").mkdir()
    runtime_home.prepare(None, home)  # the next start: imported again, nothing left over
    assert list((home / "models").iterdir()) == []
