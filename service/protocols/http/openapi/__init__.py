"""The service's OpenAPI 3.1 document, generated from the wire models (service/core/wire.py):
the /v1 task API, the /v2 Open Inference Protocol, probes.

Served at GET /openapi.json and rendered by Swagger UI at /docs (service/protocols/http/docs.py).
Model names and versions are enums of the served ones, so clients (and the schemathesis run in
tests/integration/test_openapi_fuzz.py) see which models exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from service.core.errors import ServingError
from service.core.model_settings import ModelSettings
from service.core.settings import Settings
from service.protocols.auth import MANAGEMENT_PATH, ApiKeys, open_paths
from service.protocols.http import wire
from service.protocols.http.openapi import paths as ops
from service.protocols.http.openapi.schema import TEXT_PLAIN, components, fill
from service.protocols.v2 import wire as v2

if TYPE_CHECKING:
    from service.runners.repository import ServingState

OPENAPI_VERSION = "3.1.0"
BODIES: list[type[BaseModel]] = [
    *(wire.Error, wire.ImageUpload, wire.ImageBase64, wire.AudioUpload, wire.AudioBase64),
    *(wire.ClassifyResult, wire.ExplainResult, wire.SentimentRequest, wire.SentimentResponse),
    *(wire.TranscribeResult, wire.CaptionResult, wire.ModelInfo, wire.ModelList),
    *(v2.V2Error, v2.ServerMetadata, v2.ServerLive, v2.ServerReady, v2.ModelReady),
    *(v2.ModelMetadata, v2.ModelConfig, v2.InferenceRequest, v2.InferenceResponse),
    v2.ModelStatisticsResponse,
    *(v2.RepositoryIndexRequest, v2.RepositoryModel),
    *(v2.RepositoryLoadRequest, v2.RepositoryUnloadRequest),
]
"""The wire models the document's operations name (and, through them, every other)."""


@dataclass(frozen=True)
class ServedModel:
    name: str
    task: str
    version: str


def served_models(serving: ServingState) -> list[ServedModel]:
    return [
        ServedModel(name, runner.spec.task, version)
        for name, versions in sorted(serving.versions.items())
        for version, runner in versions.items()
    ]


def task_names() -> list[str]:
    """Every task a model can have: the one source of the document's task enums."""
    from service.tasks import registry  # NOTE: the registry imports every task module

    return sorted(registry.TASKS)


def error_codes() -> list[str]:
    """Every `code` a /v1 error body can carry: the ServingError classes' and the routers'."""
    codes, pending = {"method_not_allowed"}, [ServingError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


@cache
def generated() -> tuple[dict[str, Any], dict[str, Any]]:
    """(paths, component schemas) before their `filled` values are known."""
    return (
        {**ops.v1_paths(), **ops.v2_paths(), **ops.repository_paths(), **ops.probe_paths()},
        components(BODIES),
    )


def values(
    models: Sequence[ServedModel], tasks: Sequence[str], settings: Settings
) -> Callable[[str], Any]:
    """The value of each name a `filled` keyword can give (service/protocols/http/wire.py)."""
    fields = {"models": "name", "versions": "version"}

    def value_of(name: str) -> Any:
        kind, _, task = name.partition(":")
        if kind in fields:
            served = sorted({getattr(m, fields[kind]) for m in models if task in ("", m.task)})
            # NOTE: empty means the default, as an unset string field does in the gRPC task API
            return (["", *served] if task else served) if served else None
        if kind == "tasks":
            return sorted(tasks)
        if kind == "error_codes":
            return error_codes()
        if kind in ModelSettings.model_fields and models:
            # NOTE: per-model limits: the widest any served model accepts (each model still
            # answers 400 beyond its own)
            return max(getattr(settings.for_model(m.name), kind) for m in models)
        return getattr(settings, kind)

    return value_of


def unroutable(paths: dict[str, Any]) -> None:
    """Let the 404 of every path with parameters be plain text too."""
    # NOTE: a parameter holding an encoded newline or slash matches no route (Starlette's Mount
    # regex stops at a newline), and BentoML's router answers such paths with a plain-text 404.
    for path, operations in paths.items():
        if "{" not in path:
            continue
        for operation in operations.values():
            answer = operation["responses"]["404"]
            operation["responses"]["404"] = {
                **answer,
                "content": {**answer["content"], **TEXT_PLAIN},
            }


def secure(paths: dict[str, Any], settings: Settings) -> None:
    """Mark every operation outside the open paths that needs a key (401 without, 429 after too
    many refused keys; management with admin keys set: 403 for an inference key)."""
    open_ = open_paths(settings)
    keys = ApiKeys.from_settings(settings)
    for path, operations in paths.items():
        management = path.startswith(MANAGEMENT_PATH)
        if path in open_ or not keys.needs_key(management):
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
            error = "V2Error" if path.startswith("/v2") else "Error"
            operation["responses"].update(ops.errors(error, 401, 429))


def document(
    models: Sequence[ServedModel], settings: Settings, tasks: Sequence[str] | None = None
) -> dict[str, Any]:
    """The OpenAPI document of a service that serves `models` with these settings; `tasks`:
    the task names (default: the task registry's)."""
    value_of = values(models, task_names() if tasks is None else tasks, settings)
    static_paths, schemas = generated()
    paths = fill(static_paths, value_of)
    texts = sorted((m.name, m.version) for m in models if m.task == "text-classification")
    for path in (
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    ):
        # the infer examples send a text: their path parameters name such a model
        for parameter, example in zip(paths[path]["post"]["parameters"], texts[0] if texts else ()):
            if parameter["in"] == "path":
                parameter["example"] = example
    unroutable(paths)
    components: dict[str, Any] = {"schemas": fill(schemas, value_of)}
    if ApiKeys.from_settings(settings).enabled:
        secure(paths, settings)
        components["securitySchemes"] = {"apiKey": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "deepserve",
            "version": "1",
            "description": "Model serving: the REST task API (/v1) and the Open Inference "
            f"Protocol (KServe V2, /v2). Bodies up to {settings.max_body_bytes} bytes.",
        },
        "tags": [
            {"name": ops.TASK_API, "description": 'errors: {"error": {"code", "message"}}'},
            {"name": ops.V2, "description": 'errors: {"error": "..."}'},
            {
                "name": ops.REPOSITORY,
                "description": "management (admin keys when admin_key is set); load and unload "
                'need model_control explicit; errors: {"error": "..."}',
            },
            {"name": ops.PROBES},
        ],
        "paths": paths,
        "components": components,
    }
