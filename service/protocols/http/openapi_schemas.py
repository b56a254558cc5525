"""JSON schemas of the OpenAPI document (service/protocols/http/openapi.py): bodies of /v1 and /v2,
and helpers.

Request schemas say what the service accepts, no more and no less (extra JSON keys are ignored,
so objects stay open); response schemas say exactly what it answers.
"""

from __future__ import annotations

import base64
import io
import math
import wave
from typing import Any

from service.core.errors import ServingError
from service.core.settings import Settings
from service.protocols.v2.codecs import NUMPY_OF
from service.tasks.core import DEFAULT_MODELS

Schema = dict[str, Any]

STRING: Schema = {"type": "string"}
NAME: Schema = {"type": "string", "minLength": 1}
PROBABILITY: Schema = {"type": "number", "minimum": 0, "maximum": 1}
TEXT_PLAIN: Schema = {"text/plain": {"schema": STRING}}
BINARY: Schema = {"type": "string", "format": "binary"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def closed(required: list[str], **properties: Schema) -> Schema:
    """An object with exactly these properties (`required` of them always there)."""
    return {
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": False,
    }


def error_codes() -> list[str]:
    """Every `code` a /v1 error body can carry: the ServingError classes' and the routers'."""
    codes, pending = {"not_found", "method_not_allowed"}, [ServingError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return sorted(codes)


# --- /v1: the REST task API ---------------------------------------------------------------------


def text_schema(settings: Settings) -> Schema:
    # NOTE: a text needs a letter, digit, "!" or "?" to make a token (service/processing/text.py)
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": settings.max_text_chars,
        "pattern": "[A-Za-z0-9!?]",
    }


def media_schemas(field: str, kind: str) -> dict[str, Schema]:
    """A file sent as a multipart upload (`field`) or as JSON base64 (`{field}_b64`)."""
    title = field.capitalize()
    return {
        f"{title}Upload": {
            "type": "object",
            "required": [field],
            "properties": {field: {**BINARY, "description": f"the {kind} file"}},
        },
        f"{title}Base64": {
            "type": "object",
            "required": [f"{field}_b64"],
            "properties": {
                f"{field}_b64": {
                    "type": "string",
                    "format": "byte",
                    "minLength": 1,
                    "description": f"the {kind} file, base64 (RFC 4648, padded)",
                }
            },
        },
    }


def v1_schemas(settings: Settings) -> dict[str, Schema]:
    text = text_schema(settings)
    answered = {"model": NAME, "version": NAME}
    return {
        "Error": closed(
            ["error"],
            error=closed(["code", "message"], code={"enum": error_codes()}, message=STRING),
        ),
        **media_schemas("image", "PNG, JPEG, BMP, GIF, WEBP or TIFF image"),
        **media_schemas("audio", "PCM WAV (8/16/24/32-bit integer or 32/64-bit float samples)"),
        "SentimentRequest": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["text"],
                    "properties": {"text": text},
                    "not": {"required": ["texts"]},
                },
                {
                    "type": "object",
                    "required": ["texts"],
                    "properties": {
                        "texts": {
                            "type": "array",
                            "items": text,
                            "minItems": 1,
                            "maxItems": settings.max_batch_items,
                        }
                    },
                    "not": {"required": ["text"]},
                },
            ]
        },
        "Prediction": closed(
            ["label", "index", "score"],
            label=STRING,
            index={"type": "integer", "minimum": 0},
            score=PROBABILITY,
        ),
        "Classification": closed(
            ["model", "version", "predictions"],
            **answered,
            predictions={"type": "array", "items": ref("Prediction"), "minItems": 1},
        ),
        "Sentiment": closed(["label", "score"], label=STRING, score=PROBABILITY),
        "SentimentResponse": {
            "oneOf": [
                closed(
                    ["model", "version", "label", "score"],
                    **answered,
                    label=STRING,
                    score=PROBABILITY,
                ),
                closed(
                    ["model", "version", "results"],
                    **answered,
                    results={"type": "array", "items": ref("Sentiment"), "minItems": 1},
                ),
            ]
        },
        "Transcript": closed(
            ["model", "version", "text", "confidence", "duration_s"],
            **answered,
            text=STRING,
            confidence=PROBABILITY,
            duration_s={"type": "number", "minimum": 0},
        ),
        "Caption": closed(
            ["model", "version", "caption", "score", "beam"],
            **answered,
            caption=STRING,
            score={"type": "number", "maximum": 0, "description": "log-probability"},
            beam={"type": "integer", "minimum": 1, "maximum": settings.max_beam},
        ),
        "Model": {
            "type": "object",
            "required": ["name", "ready"],
            "description": "A configured model; one that failed to load has only name, ready "
            "and error.",
            "properties": {
                "name": NAME,
                "ready": {"type": "boolean"},
                "error": {"type": "string", "nullable": True},
                "version": NAME,
                "task": {"enum": sorted(DEFAULT_MODELS)},
                "placement": {"enum": ["local", "remote"]},
                "provider": STRING,
                "labels": {"type": "integer", "minimum": 1, "nullable": True},
                "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
                "inputs": {"type": "object"},
                "outputs": {"type": "object"},
                "preprocessing": {"type": "object"},
                "data": {"type": "object"},
                "load_seconds": {"type": "number", "minimum": 0},
                "batching": {"type": "object"},
            },
        },
        "ModelList": closed(["models"], models={"type": "array", "items": ref("Model")}),
    }


# --- /v2: the Open Inference Protocol (KServe V2) -----------------------------------------------

DATATYPE: Schema = {"enum": list(NUMPY_OF)}
SCALAR: Schema = {"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "boolean"}]}
SHAPE: Schema = {"type": "array", "items": {"type": "integer", "minimum": 0}}
TENSOR_DATA: Schema = {
    "description": "row-major tensor data, flat or nested; BYTES elements are strings",
    "oneOf": [
        {"type": "array", "items": {}},
        {"type": "number"},
        {"type": "string"},
        {"type": "boolean"},
    ],
}


def v2_schemas() -> dict[str, Schema]:
    metadata_tensor = closed(
        ["name", "datatype", "shape"],
        name=NAME,
        datatype=DATATYPE,
        shape={"type": "array", "items": {"type": "integer", "minimum": -1}},
    )
    return {
        "V2Error": closed(["error"], error=STRING),
        "ServerMetadata": closed(
            ["name", "version", "extensions"],
            name=NAME,
            version=STRING,
            extensions={"type": "array", "items": STRING},
        ),
        "Live": closed(["live"], live={"type": "boolean"}),
        "Ready": closed(["ready"], ready={"type": "boolean"}),
        "ModelReady": closed(["name", "ready"], name=STRING, ready={"type": "boolean"}),
        "MetadataTensor": metadata_tensor,
        "ModelMetadata": closed(
            ["name", "versions", "platform", "inputs", "outputs"],
            name=STRING,
            versions={"type": "array", "items": NAME},
            platform=NAME,
            inputs={"type": "array", "items": ref("MetadataTensor")},
            outputs={"type": "array", "items": ref("MetadataTensor")},
            parameters={"type": "object"},
        ),
        "ModelConfig": {
            "type": "object",
            "description": "Triton's model configuration (JSON form); dims exclude the batch dim",
            "required": ["name", "platform", "max_batch_size", "input", "output"],
            "properties": {
                "name": STRING,
                "platform": NAME,
                "backend": NAME,
                "max_batch_size": {"type": "integer", "minimum": 0},
                "input": {"type": "array", "items": {"type": "object"}},
                "output": {"type": "array", "items": {"type": "object"}},
                "dynamic_batching": {"type": "object"},
            },
        },
        "InferenceInput": {
            "type": "object",
            "required": ["name", "shape", "datatype"],
            "properties": {
                "name": NAME,
                "shape": SHAPE,
                "datatype": DATATYPE,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "binary_data_size": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "binary extension: this input's bytes follow the "
                            "JSON header",
                        }
                    },
                },
                "data": TENSOR_DATA,
            },
            "anyOf": [
                {"required": ["data"]},
                {
                    "required": ["parameters"],
                    "properties": {"parameters": {"required": ["binary_data_size"]}},
                },
            ],
        },
        "InferenceOutputRequest": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": NAME,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "classification": {"type": "integer", "minimum": 0},
                        "binary_data": {"type": "boolean"},
                    },
                },
            },
        },
        "InferenceRequest": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": STRING,
                "parameters": {
                    "type": "object",
                    "properties": {
                        "binary_data_output": {"type": "boolean"},
                        "beam": {"type": "integer", "minimum": 1},
                    },
                },
                "inputs": {"type": "array", "items": ref("InferenceInput"), "minItems": 1},
                "outputs": {"type": "array", "items": ref("InferenceOutputRequest")},
            },
        },
        "InferenceOutput": {
            "type": "object",
            "required": ["name", "datatype", "shape"],
            "additionalProperties": False,
            "properties": {
                "name": NAME,
                "datatype": DATATYPE,
                "shape": SHAPE,
                "data": {"type": "array", "items": SCALAR},
                "parameters": closed(
                    ["binary_data_size"], binary_data_size={"type": "integer", "minimum": 0}
                ),
            },
        },
        "InferenceResponse": closed(
            ["model_name", "model_version", "outputs"],
            model_name=NAME,
            model_version=NAME,
            id=STRING,
            outputs={"type": "array", "items": ref("InferenceOutput"), "minItems": 1},
        ),
    }


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


def media_example(field: str) -> dict[str, str]:
    return {f"{field}_b64": PNG_B64 if field == "image" else wav_b64()}


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
