"""The model repository extension (KServe V2 / Triton), transport-free: index, load, unload.

REST (service/protocols/http/repository.py) and gRPC (service/protocols/grpc/v2.py) parse their
messages into these calls. Load and unload change what is served only in explicit model control
(ServingState.load / unload); uploads (`file:<path>` parameters, stock tritonclient's
`load_model(..., config=..., files=...)`) need an admin key and go through the importer's checks
before anything reaches the store.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from service.core.errors import Forbidden, InvalidInput, PayloadTooLarge
from service.protocols.v2 import versions
from service.runners.repository import ServingState
from service.store.importing.importer import NAME_PATTERN, ImportRefused
from service.tasks import registry

FILE_PREFIX = "file:"
CONFIG_KEYS = {"task", "settings", "name", "backend", "platform"}
"""Keys a load's `config` parameter may hold: deepserve's `task` and `settings` (as `models
import --task/--setting`); Triton's name/backend/platform are accepted and must agree."""
UPLOAD_NEEDS_ADMIN = (
    "uploading model files needs an admin key (the admin_key setting); inference keys and "
    "unauthenticated clients cannot upload"
)
SIDE_FILES = {"labels.txt": "labels_file", "vocab.txt": "vocab_file"}


async def index(serving: ServingState, ready_only: bool = False) -> list[dict[str, str]]:
    """Every stored (and served) version, named by its number (service/protocols/v2/versions.py)."""
    rows = await serving.index(ready_only)
    return [row | {"version": versions.number(row["version"])} for row in rows]


def check_name(name: str) -> None:
    """A model name as the store names them (`*` and other patterns are not names)."""
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"{name[:80]!r} is not a model name: lowercase letters, digits, '.', '_', '-', "
            "starting with a letter or digit, at most 63 characters"
        )


def check_parameters(parameters: dict[str, Any], allowed: set[str], action: str) -> None:
    unknown = [key for key in parameters if key not in allowed and not key.startswith("file:")]
    if unknown:
        raise InvalidInput(
            f"{action} does not take parameter(s) {', '.join(sorted(unknown))}; "
            f"it takes {', '.join(sorted(allowed)) or 'none'}"
            + (" and file:<path> uploads" if action == "load" else "")
        )


async def load(serving: ServingState, name: str, parameters: dict[str, Any], admin: bool) -> None:
    """Load (or reload: pick up new versions of) `name`; with `file:` parameters, first import
    the uploaded ONNX graph as a new version of `name`."""
    check_name(name)
    check_parameters(parameters, {"config"}, "load")
    files = {k[len(FILE_PREFIX) :]: v for k, v in parameters.items() if k.startswith(FILE_PREFIX)}
    serving.check_explicit("load")
    if files:
        if not admin:
            raise Forbidden(UPLOAD_NEEDS_ADMIN)
        await upload(serving, name, files, parameters.get("config"))
    elif "config" in parameters:
        raise InvalidInput("a config parameter is only taken together with file: uploads")
    await serving.load(name)


async def unload(serving: ServingState, name: str, parameters: dict[str, Any]) -> None:
    check_name(name)
    check_parameters(parameters, {"unload_dependents"}, "unload")
    await serving.unload(name)


def config_of(config: Any, name: str) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, bytes):
        config = config.decode("utf-8", "replace")
    try:
        parsed = json.loads(config) if isinstance(config, str) else config
    except json.JSONDecodeError as error:
        raise InvalidInput(f"the config parameter is not JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("the config parameter must be a JSON object")
    unknown = set(parsed) - CONFIG_KEYS
    if unknown:
        raise InvalidInput(
            f"config keys {', '.join(sorted(unknown))} are not supported; "
            f"supported: {', '.join(sorted(CONFIG_KEYS))}"
        )
    if parsed.get("name", name) != name:
        raise InvalidInput(f"config names model {parsed['name']!r}, the call loads {name!r}")
    if not isinstance(parsed.get("task", "generic"), str):
        raise InvalidInput("config.task must be a task name (a string)")
    if not isinstance(parsed.get("settings", {}), dict):
        raise InvalidInput("config.settings must be a JSON object of per-model settings")
    return parsed


def file_bytes(path: str, content: Any) -> bytes:
    if isinstance(content, bytes | bytearray):
        return bytes(content)
    raise InvalidInput(f"upload file:{path} must carry bytes")


async def upload(serving: ServingState, name: str, files: dict[str, Any], config: Any) -> None:
    """Import uploaded files (one .onnx graph, optional labels.txt / vocab.txt) as a new version
    of `name`, with the importer's checks; sizes are checked before anything is written."""
    limit = serving.settings.max_upload_bytes
    total = sum(len(content) for content in files.values())
    if total > limit:
        raise PayloadTooLarge(f"upload of {total} bytes is over max_upload_bytes ({limit})")
    graphs = [path for path in files if path.lower().endswith(".onnx")]
    extra = [path for path in files if path not in graphs and Path(path).name not in SIDE_FILES]
    if len(graphs) != 1 or extra:
        raise InvalidInput(
            "upload exactly one file:<path>.onnx graph, optionally with file:labels.txt and "
            f"file:vocab.txt; got {', '.join(sorted(files)) or 'none'}"
        )
    parsed = config_of(config, name)
    task = parsed.get("task", "generic")

    def run_import() -> None:
        with tempfile.TemporaryDirectory(prefix="upload-", dir=serving.settings.runtime_dir) as d:
            folder = Path(d)
            graph = folder / "model.onnx"
            graph.write_bytes(file_bytes(graphs[0], files[graphs[0]]))
            side: dict[str, Any] = {}
            for path, content in files.items():
                if Path(path).name in SIDE_FILES:
                    target = folder / Path(path).name
                    target.write_bytes(file_bytes(path, content))
                    side[SIDE_FILES[target.name]] = target
            registry.import_model(graph, name, task, settings=parsed.get("settings"), **side)

    try:
        await asyncio.to_thread(run_import)
    except ImportRefused as error:
        raise InvalidInput(f"upload refused: {error}") from None
