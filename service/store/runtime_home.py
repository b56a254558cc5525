"""The server's own BentoML home: scratch state that belongs to one server process, never to
the store.

BentoML keeps its runtime state in its home (BENTOML_HOME): prometheus_client's multiprocess
files (`prometheus_multiproc_dir/`, wiped when a server starts, so two servers sharing a home
wipe each other's /metrics), `tmp/`, and it expects `bentos/` and `envs/`. `deepserve serve` gives
each server a home of its own with the store's `models/` linked in, so the store is only read
(mountable read-only) and servers started from one checkout keep their own metrics.
`deepserve serve --model-dir` gives its home a models/ of its own instead: a store holding only
the model imported at that start (KServe's /mnt/models), gone with the home at the next start.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

MARKER = ".deepserve-runtime-home"
"""A folder holding this file was made here, so it may be emptied at the next start."""
SCRATCH = ("bentos", "envs", "tmp", "prometheus_multiproc_dir")


def default_home(port: int) -> Path:
    """One folder per HTTP port (two servers cannot share a port): reused, not accumulated."""
    return Path(tempfile.gettempdir()) / f"deepserve-{port}"


def prepare(store: Path | None, home: Path) -> Path:
    """Make `home` a fresh BentoML home whose models/ is `store`'s (linked, only read), or with
    no store an empty models/ of its own (the home is then the store too)."""
    home = home.absolute()
    if store is not None and home.resolve() == store.resolve():
        raise ValueError(f"the runtime home {home} is the store itself; choose another folder")
    if home.exists() and any(home.iterdir()):
        if not (home / MARKER).is_file():
            raise ValueError(
                f"{home} exists and was not made by deepserve (no {MARKER}); refusing to empty "
                "it: set DEEPSERVE_RUNTIME_DIR to an empty or new folder"
            )
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / MARKER).write_text("scratch state of one deepserve server; emptied at its start\n")
    for folder in SCRATCH:
        (home / folder).mkdir()
    if store is None:
        (home / "models").mkdir()
    else:
        (home / "models").symlink_to(store.resolve() / "models", target_is_directory=True)
    return home
