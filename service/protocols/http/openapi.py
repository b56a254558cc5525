"""The service's OpenAPI 3 document: the /v1 task API, the /v2 Open Inference Protocol, probes.

Served at GET /openapi.json (service/protocols/http/v2.py); the JSON schemas are in
openapi_schemas.py.
Model names are enums of the served models, so clients (and the schemathesis run in
tests/integration/test_openapi_fuzz.py) see which models exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.core.settings import Settings
from service.protocols.auth import ApiKeys, open_paths
from service.protocols.http.openapi_schemas import (
    BINARY,
    INFER_EXAMPLES,
    SENTIMENT_EXAMPLES,
    TEXT_PLAIN,
    Schema,
    json_content,
    media_example,
    ref,
    v1_schemas,
    v2_schemas,
)
from service.protocols.http.rest import MAX_TIMEOUT_MS, TIMEOUT_HEADER, TIMEOUT_PARAM
from service.tasks.core import DEFAULT_MODELS

if TYPE_CHECKING:
    from service.runners.repository import ServingState

OPENAPI_VERSION = "3.0.3"
IMAGE_TYPES = ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff"]
AUDIO_TYPES = ["audio/wav", "audio/x-wav", "audio/wave"]
TASK_API, V2, PROBES = "task API", "open inference protocol", "probes"
WHY = {
    400: "Invalid input: malformed body, undecodable media, a value out of range",
    401: "Missing or invalid API key (Authorization: Bearer <key>)",
    404: "Unknown model (or a model of another task), or no such model version",
    413: "The body (or a decoded image) exceeds its limit",
    415: "A content type (or Content-Encoding) the endpoint does not accept",
    500: "Inference failed",
    503: "The model is not ready, or it is overloaded (then with Retry-After)",
    504: "The request's deadline passed before its inference ran",
}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    503: {
        "Retry-After": {
            "description": "seconds to wait before retrying (when overloaded)",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}
INFERENCE_ERRORS = (400, 404, 413, 500, 503, 504)
TIMEOUT: Schema = {
    "type": "number",
    "minimum": 0,
    "exclusiveMinimum": True,
    "maximum": MAX_TIMEOUT_MS,
    "description": "the request's deadline in milliseconds from arrival; work still queued when "
    "it passes is dropped and answered 504",
}
DEADLINE = [
    {"name": TIMEOUT_HEADER, "in": "header", "required": False, "schema": TIMEOUT},
    {"name": TIMEOUT_PARAM, "in": "query", "required": False, "schema": TIMEOUT},
]
HEADER_LENGTH = {
    "description": "binary extension: the JSON header's length; binary tensors follow it",
    "schema": {"type": "integer", "minimum": 0},
}
INFER_HEADERS = [
    {"name": "Inference-Header-Content-Length", "in": "header", "required": False, **HEADER_LENGTH},
    {
        "name": "Content-Encoding",
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": ["gzip", "deflate", "identity"]},
    },
]


@dataclass(frozen=True)
class ServedModel:
    name: str
    task: str
    version: str


def served_models(serving: ServingState) -> list[ServedModel]:
    return [
        ServedModel(name, runner.spec.task, runner.spec.version)
        for name, runner in sorted(serving.runners.items())
    ]


# --- building blocks -------------------------------------------------------------------------


def errors(schema: str, *statuses: int) -> dict[str, Any]:
    """Error responses of these statuses, each with a body of component `schema`."""
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[str(status)] = {"description": WHY[status], "content": json_content(ref(schema))}
        if status in HEADERS:
            responses[str(status)]["headers"] = HEADERS[status]
    return responses


def ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": json_content(schema)}}


def name_enum(names: Sequence[str]) -> Schema:
    """A name: one of `names` when there are any (a free string otherwise)."""
    return {"type": "string", "enum": sorted(names)} if names else {"type": "string"}


def query(name: str, schema: Schema, description: str) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def path_param(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def get(
    tag: str,
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    params: Sequence[Schema] = (),
) -> Schema:
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if params:
        operation["parameters"] = list(params)
    return {"get": {**operation, "responses": responses}}


# --- /v1 -------------------------------------------------------------------------------------


def media_body(field: str, raw_types: list[str]) -> Schema:
    """A file as a multipart upload, JSON base64, or a raw body of one of `raw_types`."""
    title = field.capitalize()
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": ref(f"{title}Upload"),
            "encoding": {field: {"contentType": ", ".join(raw_types)}},
        },
        "application/json": {"schema": ref(f"{title}Base64"), "example": media_example(field)},
    }
    for media_type in [*raw_types, "application/octet-stream"]:
        content[media_type] = {"schema": BINARY}
    return {"required": True, "content": content}


def task_post(
    operation_id: str, summary: str, params: list[Schema], body: Schema, answer: str, *extra: int
) -> Schema:
    return {
        "post": {
            "operationId": operation_id,
            "tags": [TASK_API],
            "summary": summary,
            "parameters": [*params, *DEADLINE],
            "requestBody": body,
            "responses": {**ok(ref(answer)), **errors("Error", *INFERENCE_ERRORS, *extra)},
        }
    }


def v1_paths(models: Sequence[ServedModel], settings: Settings) -> dict[str, Any]:
    def model(task: str) -> Schema:
        # NOTE: empty means the default, as an unset string field does in the gRPC task API
        names = [m.name for m in models if m.task == task]
        schema = name_enum(["", *names]) if names else name_enum(names)
        why = f"a {task} model; absent or empty: {DEFAULT_MODELS[task]}"
        return query("model", schema, why)

    top_k = query(
        "top_k",
        {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 5},
        "how many predictions, at most the model's label count",
    )
    beam = query(
        "beam",
        {"type": "integer", "minimum": 1, "maximum": settings.max_beam, "default": 1},
        "beam width; 1 is greedy decoding",
    )
    image, audio = media_body("image", IMAGE_TYPES), media_body("audio", AUDIO_TYPES)
    texts = {
        "required": True,
        "content": {
            "application/json": {"schema": ref("SentimentRequest"), "examples": SENTIMENT_EXAMPLES}
        },
    }
    return {
        "/v1/classify": task_post(
            "classify",
            "Classify an image: top-k labels with probabilities",
            [model("image-classification"), top_k],
            image,
            "Classification",
            415,
        ),
        "/v1/sentiment": task_post(
            "sentiment",
            "Sentiment of one text ({text}) or of a batch ({texts})",
            [model("text-classification")],
            texts,
            "SentimentResponse",
        ),
        "/v1/transcribe": task_post(
            "transcribe",
            "Transcribe a PCM WAV clip (mono or multichannel)",
            [model("speech-recognition")],
            audio,
            "Transcript",
            415,
        ),
        "/v1/caption": task_post(
            "caption",
            "Caption an image",
            [model("image-captioning"), beam],
            image,
            "Caption",
            415,
        ),
        "/v1/models": get(
            TASK_API,
            "listModels",
            "Every configured model: spec, placement, provider, batching",
            ok(ref("ModelList")),
        ),
        "/v1/models/{name}": get(
            TASK_API,
            "showModel",
            "One served model",
            {**ok(ref("Model")), **errors("Error", 404, 503)},
            [path_param("name", name_enum([m.name for m in models]))],
        ),
    }


# --- /v2 -------------------------------------------------------------------------------------


def v2_model_paths(
    prefix: str, suffix: str, params: list[Schema], infer_params: list[Schema]
) -> dict[str, Any]:
    """Metadata, ready, config and infer of a model, at `prefix` (with or without a version);
    `infer_params` are `params` with examples that suit the infer examples."""
    missing = errors("V2Error", 404, 503)
    not_ready = {
        "description": "The model is not ready (or not available)",
        "content": json_content({"anyOf": [ref("ModelReady"), ref("V2Error")]}),
    }
    infer = {
        "operationId": "modelInfer" + suffix,
        "tags": [V2],
        "summary": "Inference: JSON tensors, or the binary tensor data extension",
        "parameters": [*infer_params, *INFER_HEADERS, *DEADLINE],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref("InferenceRequest"), "examples": INFER_EXAMPLES},
                "application/octet-stream": {"schema": BINARY},
            },
        },
        "responses": {
            "200": {
                "description": "Outputs as JSON, or (binary extension) JSON then binary outputs",
                "headers": {"Inference-Header-Content-Length": HEADER_LENGTH},
                "content": {
                    **json_content(ref("InferenceResponse")),
                    "application/octet-stream": {"schema": BINARY},
                },
            },
            **errors("V2Error", *INFERENCE_ERRORS, 415),
        },
    }
    return {
        prefix: get(
            V2,
            "modelMetadata" + suffix,
            "Model metadata",
            {**ok(ref("ModelMetadata")), **missing},
            params,
        ),
        prefix + "/ready": get(
            V2,
            "modelReady" + suffix,
            "Model readiness",
            {**ok(ref("ModelReady")), **errors("V2Error", 404), "503": not_ready},
            params,
        ),
        prefix + "/config": get(
            V2,
            "modelConfig" + suffix,
            "Model configuration",
            {**ok(ref("ModelConfig")), **missing},
            params,
        ),
        prefix + "/infer": {"post": infer},
    }


def v2_paths(models: Sequence[ServedModel]) -> dict[str, Any]:
    name = path_param("name", name_enum([m.name for m in models]))
    version = path_param("version", name_enum(sorted({m.version for m in models})))
    # the infer examples send a text: their parameters name a text-classification model
    texts = [m for m in models if m.task == "text-classification"]
    infer_name, infer_version = dict(name), dict(version)
    if texts:
        infer_name["example"], infer_version["example"] = texts[0].name, texts[0].version
    not_ready = {"description": "Not every model is ready", "content": json_content(ref("Ready"))}
    return {
        "/v2": get(V2, "serverMetadata", "Server metadata", ok(ref("ServerMetadata"))),
        "/v2/health/live": get(V2, "serverLive", "Server liveness", ok(ref("Live"))),
        "/v2/health/ready": get(
            V2, "serverReady", "Server readiness", {**ok(ref("Ready")), "503": not_ready}
        ),
        **v2_model_paths("/v2/models/{name}", "", [name], [infer_name]),
        **v2_model_paths(
            "/v2/models/{name}/versions/{version}",
            "Version",
            [name, version],
            [infer_name, infer_version],
        ),
    }


# --- probes, auth and the document -------------------------------------------------------------


def probe_paths() -> dict[str, Any]:
    def text(answers: dict[int, str]) -> dict[str, Any]:
        return {str(s): {"description": d, "content": TEXT_PLAIN} for s, d in answers.items()}

    return {
        "/livez": get(PROBES, "livez", "Liveness (BentoML)", text({200: "Alive", 503: "Dead"})),
        "/readyz": get(
            PROBES,
            "readyz",
            "Readiness (BentoML): the models loaded and warmed up",
            text({200: "Ready", 503: "Not ready yet"}),
        ),
        "/metrics": get(PROBES, "metrics", "Prometheus metrics", text({200: "Text exposition"})),
        "/openapi.json": get(
            PROBES,
            "openapi",
            "This document",
            ok({"type": "object", "required": ["openapi", "info", "paths"]}, "OpenAPI 3"),
        ),
    }


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
    """Mark every operation outside the open paths as needing the API key (401 without)."""
    open_ = open_paths(settings)
    for path, operations in paths.items():
        if path in open_:
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}]
            operation["responses"].update(
                errors("V2Error" if path.startswith("/v2") else "Error", 401)
            )


def document(models: Sequence[ServedModel], settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of a service that serves `models` with these settings."""
    paths = {**v1_paths(models, settings), **v2_paths(models), **probe_paths()}
    unroutable(paths)
    components: dict[str, Any] = {"schemas": {**v1_schemas(settings), **v2_schemas()}}
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
            {"name": TASK_API, "description": 'errors: {"error": {"code", "message"}}'},
            {"name": V2, "description": 'errors: {"error": "..."}'},
            {"name": PROBES},
        ],
        "paths": paths,
        "components": components,
    }
