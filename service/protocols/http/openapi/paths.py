"""The operations of the OpenAPI document: /v1, /v2 and the probes, each with its parameters,
bodies (wire models), examples and every answer it can give.

Length: one table of operations, each a few lines of parameters, bodies, examples and answers;
splitting it by prefix would scatter the shared helpers without making any part clearer.
"""

from __future__ import annotations

import base64
import io
import math
import wave
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from service.core.wire import Absent, RequestModel, absent
from service.protocols.http import wire
from service.protocols.http.common import MAX_TIMEOUT_MS, TIMEOUT_HEADER, TIMEOUT_PARAM
from service.protocols.http.openapi.schema import (
    BINARY,
    TEXT_PLAIN,
    Schema,
    json_content,
    parameters,
    ref,
)

IMAGE_TYPES = ["image/png", "image/jpeg", "image/bmp", "image/gif", "image/webp", "image/tiff"]
AUDIO_TYPES = ["audio/wav", "audio/x-wav", "audio/wave"]
TASK_API, V2, PROBES = "task API", "open inference protocol", "probes"
REPOSITORY = "model repository"
WHY = {
    400: "Invalid input: malformed body, undecodable media, a value out of range",
    401: "Missing or invalid API key (Authorization: Bearer <key>)",
    403: "The key may not do this (management calls need an admin key when admin_key is set)",
    404: "Unknown model (or a model of another task), or no such model version",
    408: "The request body stopped arriving (setting http_body_timeout_s)",
    409: "Not allowed in this model control mode (load/unload need model_control explicit)",
    413: "The body (or a decoded image) exceeds its limit",
    415: "A content type (or Content-Encoding) the endpoint does not accept",
    422: "The input is outside what the model knows, and reject_out_of_domain=true was asked",
    429: "Too many refused API keys from this address (setting auth_failure_limit)",
    500: "Inference failed",
    503: "The model is not ready, or it is overloaded (then with Retry-After)",
    504: "The request's deadline passed before its inference ran",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}
INFERENCE_ERRORS = (400, 404, 408, 413, 500, 503, 504)
HEADER_LENGTH = "Inference-Header-Content-Length"


class Deadline(RequestModel):
    timeout_ms: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_MS)] | Absent = absent(
        alias=TIMEOUT_PARAM
    )
    """The request's deadline in milliseconds from arrival; work still queued when it passes is
    dropped and answered 504. The header of the same name may say it instead (the sooner
    wins)."""


class DeadlineHeader(RequestModel):
    timeout_ms: Annotated[float, Field(gt=0, le=MAX_TIMEOUT_MS)] | Absent = absent(
        alias=TIMEOUT_HEADER
    )
    """The request's deadline in milliseconds from arrival (as timeout_ms)."""


class InferHeaders(RequestModel):
    header_length: Annotated[int, Field(ge=0)] | Absent = absent(alias=HEADER_LENGTH)
    """Binary data extension: the JSON header's length; binary tensors follow it."""
    encoding: Literal["gzip", "deflate", "identity"] | Absent = absent(alias="Content-Encoding")


DEADLINE = [*parameters(DeadlineHeader, "header"), *parameters(Deadline, "query")]


def errors(model: str, *statuses: int) -> dict[str, Any]:
    """Error responses of these statuses, each with a body of component `model`."""
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[str(status)] = {"description": WHY[status], "content": json_content(ref(model))}
        if status in HEADERS:
            responses[str(status)]["headers"] = HEADERS[status]
    return responses


def ok(schema: Schema, description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": json_content(schema)}}


def get(
    tag: str, operation_id: str, summary: str, responses: dict[str, Any], params: Sequence = ()
) -> Schema:
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if params:
        operation["parameters"] = list(params)
    return {"get": {**operation, "responses": responses}}


# --- examples: one valid request per operation that takes a body -------------------------------

# NOTE: a 8x8 grey PNG; fuzzers replay examples first, so every task's answer gets checked too
PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEElEQVR42mM8wQABTAwUMQA6AADYbMmlZgAAAABJRU5Erk"
    "Jggg=="
)
TEXT = "a great and moving film"


def wav_b64(seconds: float = 0.2, rate: int = 8000) -> str:
    """A short 8-bit PCM WAV of a low tone, base64."""
    samples = bytes(128 + round(40 * math.sin(i / 4)) for i in range(int(rate * seconds)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(rate)
        out.writeframes(samples)
    return base64.b64encode(buffer.getvalue()).decode()


SENTIMENT_EXAMPLES = {
    "one": {"summary": "one text", "value": {"text": TEXT}},
    "batch": {"summary": "a batch of texts", "value": {"texts": [TEXT, "dull and far too long"]}},
}
TEXT_INPUT = {"name": "text", "datatype": "BYTES", "shape": [1], "data": [TEXT]}
INFER_EXAMPLES = {
    "json": {
        "summary": "a text for a text-classification model, outputs as JSON",
        "value": {"id": "1", "inputs": [TEXT_INPUT]},
    },
    "binary": {
        "summary": "the same, outputs as binary data (the binary tensor data extension)",
        "value": {"inputs": [TEXT_INPUT], "parameters": {"binary_data_output": True}},
    },
    "classification": {
        "summary": "the same, top-2 classes as BYTES score:index:label",
        "value": {
            "inputs": [TEXT_INPUT],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}],
        },
    },
}


# --- /v1 -------------------------------------------------------------------------------------


def media_body(field: str, raw_types: list[str]) -> Schema:
    """A file as a multipart upload, JSON base64, or a raw body of one of `raw_types`."""
    title = field.capitalize()
    example = {f"{field}_b64": PNG_B64 if field == "image" else wav_b64()}
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": ref(f"{title}Upload"),
            "encoding": {field: {"contentType": ", ".join(raw_types)}},
        },
        "application/json": {"schema": ref(f"{title}Base64"), "example": example},
    }
    for media_type in [*raw_types, "application/octet-stream"]:
        content[media_type] = {"schema": BINARY}
    return {"required": True, "content": content}


V1_TASKS: list[tuple[str, str, type[RequestModel], str, str]] = [
    # operationId (and path), summary, query model, body, answer model
    (
        "classify",
        "Classify an image: top-k labels with probabilities",
        wire.ClassifyQuery,
        "image",
        "ClassifyResult",
    ),
    (
        "explain",
        "Explain an image classification: occlusion-sensitivity map of a class (JSON or PNG)",
        wire.ExplainQuery,
        "image",
        "ExplainResult",
    ),
    (
        "sentiment",
        "Sentiment of one text ({text}) or of a batch ({texts})",
        wire.SentimentQuery,
        "texts",
        "SentimentResponse",
    ),
    (
        "transcribe",
        "Transcribe a PCM WAV clip (mono or multichannel)",
        wire.TranscribeQuery,
        "audio",
        "TranscribeResult",
    ),
    ("caption", "Caption an image", wire.CaptionQuery, "image", "CaptionResult"),
]


SSE_EVENT: Schema = {
    "oneOf": [
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": kind},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": ref(model),
                },
            },
        }
        for kind, model in (
            ("segment", "TranscribedSegment"),
            ("transcript", "TranscribeResult"),
            ("error", "Error"),
        )
    ]
}
"""One server-sent event of /v1/transcribe?stream=true: its `data` is one line of JSON."""

SSE_EXAMPLE = (
    'event: segment\ndata: {"index":0,"start_s":0.62,"end_s":1.9,"text":"volume up",'
    '"confidence":0.97}\n\n'
    'event: transcript\ndata: {"model":"speech-ctc","version":"v1","text":"volume up",'
    '"confidence":0.97,"duration_s":2.4,"segments":[...]}\n\n'
)


def v1_paths() -> dict[str, Any]:
    bodies = {
        "image": media_body("image", IMAGE_TYPES),
        "audio": media_body("audio", AUDIO_TYPES),
        "texts": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ref("SentimentRequest"),
                    "examples": SENTIMENT_EXAMPLES,
                }
            },
        },
    }
    paths: dict[str, Any] = {}
    for operation_id, summary, query, body, answer in V1_TASKS:
        # NOTE: a JSON body is parsed whatever its content type says: no 415
        media = (415,) if body != "texts" else ()
        judged = (422,) if "reject_out_of_domain" in query.model_fields else ()
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [TASK_API],
            "summary": summary,
            "parameters": [*parameters(query, "query"), *DEADLINE],
            "requestBody": bodies[body],
            "responses": {
                **ok(ref(answer)),
                **errors("Error", *INFERENCE_ERRORS, *media, *judged),
            },
        }
        if operation_id == "transcribe":
            operation["responses"]["200"]["content"]["text/event-stream"] = {
                "schema": SSE_EVENT,  # OpenAPI 3.1: the schema of each event
                "example": SSE_EXAMPLE,
            }
            operation["responses"]["200"]["description"] = (
                "The transcript; with stream=true, server-sent events: `segment` per stretch of "
                "speech (a TranscribedSegment), then `transcript` (a TranscribeResult), or "
                "`error` (an Error body)"
            )
        if operation_id == "explain":
            operation["responses"]["200"]["content"]["image/png"] = {"schema": BINARY}
            operation["responses"]["200"]["description"] = (
                "The map (an ExplainResult); with format=png (or Accept: image/png), a heatmap "
                "PNG over the model's input, its longer side `size` pixels"
            )
        paths[f"/v1/{operation_id}"] = {"post": operation}
    show = [*parameters(wire.ModelPath, "path"), *parameters(wire.ShowModelQuery, "query")]
    return {
        **paths,
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
            {**ok(ref("ModelInfo")), **errors("Error", 404, 503)},
            show,
        ),
    }


# --- /v2 -------------------------------------------------------------------------------------


def v2_model_paths(prefix: str, suffix: str, path: type[RequestModel]) -> Schema:
    """Metadata, ready, config and infer of a model at `prefix` (with or without a version)."""
    params = parameters(path, "path")
    missing = errors("V2Error", 404, 503)
    not_ready = {
        "description": "The model is not ready (or not available)",
        "content": json_content({"anyOf": [ref("ModelReady"), ref("V2Error")]}),
    }
    infer = {
        "operationId": "modelInfer" + suffix,
        "tags": [V2],
        "summary": "Inference: JSON tensors, or the binary tensor data extension",
        "parameters": [
            *params,
            *parameters(InferHeaders, "header"),
            *DEADLINE,
        ],
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
                "headers": {
                    HEADER_LENGTH: {
                        "description": "the JSON header's length; binary outputs follow it",
                        "schema": {"type": "integer", "minimum": 0},
                    }
                },
                "content": {
                    **json_content(ref("InferenceResponse")),
                    "application/octet-stream": {"schema": BINARY},
                },
            },
            **errors("V2Error", *INFERENCE_ERRORS, 415, 422),
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
        prefix + "/stats": get(
            V2,
            "modelStatistics" + suffix,
            "Inference statistics (Triton's extension): every served version of the model"
            if not suffix
            else "Inference statistics (Triton's extension) of this version",
            {**ok(ref("ModelStatisticsResponse")), **missing},
            params,
        ),
        prefix + "/infer": {"post": infer},
    }


def v2_paths() -> dict[str, Any]:
    not_ready = {
        "description": "Not every model is ready",
        "content": json_content(ref("ServerReady")),
    }
    return {
        "/v2": get(V2, "serverMetadata", "Server metadata", ok(ref("ServerMetadata"))),
        "/v2/health/live": get(V2, "serverLive", "Server liveness", ok(ref("ServerLive"))),
        "/v2/health/ready": get(
            V2, "serverReady", "Server readiness", {**ok(ref("ServerReady")), "503": not_ready}
        ),
        "/v2/models/stats": get(
            V2,
            "serverStatistics",
            "Inference statistics (Triton's extension) of every served model version",
            ok(ref("ModelStatisticsResponse")),
        ),
        **v2_model_paths("/v2/models/{model_name}", "", wire.V2ModelPath),
        **v2_model_paths(
            "/v2/models/{model_name}/versions/{model_version}", "Version", wire.V2VersionPath
        ),
    }


def repository_paths() -> dict[str, Any]:
    """The model repository extension (KServe V2 / Triton)."""
    params = parameters(wire.V2ModelPath, "path")

    def post(operation_id: str, summary: str, body: str, responses: dict[str, Any]) -> Schema:
        request = {"required": False, "content": json_content(ref(body))}
        operation: dict[str, Any] = {
            "operationId": operation_id,
            "tags": [REPOSITORY],
            "summary": summary,
        }
        if operation_id != "repositoryIndex":
            operation["parameters"] = params
        return {"post": {**operation, "requestBody": request, "responses": responses}}

    done = {"200": {"description": "Done (empty body)"}}
    return {
        "/v2/repository/index": post(
            "repositoryIndex",
            "Every model version in the store with its state (READY, LOADING, UNAVAILABLE)",
            "RepositoryIndexRequest",
            {
                **ok({"type": "array", "items": ref("RepositoryModel")}),
                **errors("V2Error", 400, 403),
            },
        ),
        "/v2/repository/models/{model_name}/load": post(
            "repositoryModelLoad",
            "Load a model (or pick up its new versions); uploads need an admin key",
            "RepositoryLoadRequest",
            {**done, **errors("V2Error", 400, 403, 404, 409, 413, 503)},
        ),
        "/v2/repository/models/{model_name}/unload": post(
            "repositoryModelUnload",
            "Unload a model: out of routing at once, queued requests finish",
            "RepositoryUnloadRequest",
            {**done, **errors("V2Error", 400, 403, 404, 409)},
        ),
    }


# --- probes ------------------------------------------------------------------------------------


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
            "This document (its Swagger UI: /docs)",
            ok({"type": "object", "required": ["openapi", "info", "paths"]}, "OpenAPI 3.1"),
        ),
    }
