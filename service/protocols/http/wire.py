"""The REST task API's (/v1) JSON bodies and query parameters as typed models, one section per
task. Each task's answer models are declared by the task itself (service/tasks/<task>.py,
`Task.results`) and re-exported here. The handlers (service/protocols/http/rest.py) build every
answer through them, and the OpenAPI document is generated from them.

Enums and bounds that depend on what is served or on settings are `filled` when the document is
built: "models:<task>" / "versions:<task>" (the served models of a task, "" = the default),
"tasks", "error_codes", and settings by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, RootModel

from service.core.model_settings import Placement
from service.core.wire import Absent, Name, RequestModel, ResponseModel, absent, filled
from service.protocols.v2.wire import Datatype
from service.tasks import (
    explaining,
    image_captioning,
    image_classification,
    speech_recognition,
    text_classification,
)
from service.tasks.image_captioning import Beam, CaptionResult
from service.tasks.image_classification import ClassifyResult, ExplainResult, Grid, Prediction
from service.tasks.speech_recognition import TranscribeResult
from service.tasks.text_classification import Sentiment, SentimentBatchResult, SentimentResult

__all__ = [  # the tasks' own answers, re-exported beside the HTTP-only models
    "CaptionResult",
    "ClassifyResult",
    "ExplainResult",
    "Prediction",
    "Sentiment",
    "SentimentBatchResult",
    "SentimentResult",
    "TranscribeResult",
]


def model_param(task: str, default: str) -> Any:
    return Field(
        "", description=f"Which {task} model; absent or empty: {default}.", **enum_of(task)
    )


def version_param(task: str) -> Any:
    return Field(
        "",
        description="A served version; absent or empty: the newest.",
        **enum_of(task, "versions"),
    )


def enum_of(task: str, kind: str = "models") -> dict[str, Any]:
    return {"json_schema_extra": filled(enum=f"{kind}:{task}")}


# --- errors ------------------------------------------------------------------------------------


class ErrorDetail(ResponseModel):
    code: Annotated[str, Field(json_schema_extra=filled(enum="error_codes"))]
    """Stable and machine-readable."""
    message: str
    """For people; never echoes a key."""


class Error(ResponseModel):
    """Every /v1 error (and every error outside /v2)."""

    error: ErrorDetail


# --- media bodies: a file as multipart, JSON base64 or the raw body -----------------------------


class ImageUpload(RequestModel):
    image: bytes
    """The PNG, JPEG, BMP, GIF, WEBP or TIFF image file."""


class ImageBase64(RequestModel):
    image_b64: Annotated[str, Field(min_length=1, json_schema_extra={"format": "byte"})]
    """The image file, base64 (RFC 4648, padded)."""


class AudioUpload(RequestModel):
    audio: bytes
    """The PCM WAV file (8/16/24/32-bit integer or 32/64-bit float samples)."""


class AudioBase64(RequestModel):
    audio_b64: Annotated[str, Field(min_length=1, json_schema_extra={"format": "byte"})]
    """The WAV file, base64 (RFC 4648, padded)."""


# --- classify: image -> top-k labels -----------------------------------------------------------


class ClassifyQuery(RequestModel):
    model: str = model_param(image_classification.NAME, image_classification.DEFAULT_MODEL)
    top_k: Annotated[int, Field(ge=1, le=10_000)] = 5
    """How many predictions, at most the model's label count."""
    version: str = version_param(image_classification.NAME)
    reject_out_of_domain: bool = False
    """true: an input the model judges outside its domain (a model with a verdict: see
    GET /v1/models) is refused with 422 instead of answered with in_domain=false."""


# --- explain: image -> occlusion-sensitivity map of a class ---------------------------------------


class ExplainQuery(RequestModel):
    model: str = model_param(image_classification.NAME, image_classification.DEFAULT_MODEL)
    grid: Grid = explaining.DEFAULT_GRID
    """Cells per side: grid² + 1 inferences (at most the model's input side, and grid² + 1 at
    most its max_queue)."""
    target: Annotated[int, Field(ge=0)] | Absent = absent()
    """The class index to explain; absent: the image's top-1 class."""
    format: Literal["json", "png"] = "json"
    """json: the map as numbers; png: a heatmap over the model's input (red: occluding the cell
    lowers the class's score, blue: raises it). An Accept header naming image/png before
    application/json asks for png too."""
    size: Annotated[
        int,
        Field(ge=explaining.MIN_PNG_SIDE, json_schema_extra=filled(maximum="max_explain_png_px")),
    ] = explaining.DEFAULT_PNG_SIDE
    """The PNG's longer side in pixels."""
    version: str = version_param(image_classification.NAME)


# --- sentiment: texts -> label + score each ------------------------------------------------------

# NOTE: a text needs a letter, digit, "!" or "?" to make a token (service/processing/text.py)
Text = Annotated[
    str,
    Field(
        min_length=1, pattern="[A-Za-z0-9!?]", json_schema_extra=filled(maxLength="max_text_chars")
    ),
]


class SentimentQuery(RequestModel):
    model: str = model_param(text_classification.NAME, text_classification.DEFAULT_MODEL)
    version: str = version_param(text_classification.NAME)
    reject_out_of_domain: bool = False
    """true: an input the model judges outside its domain (a model with a verdict: see
    GET /v1/models) is refused with 422 instead of answered with in_domain=false."""


class OneText(RequestModel):
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["texts"]}})

    text: Text


class ManyTexts(RequestModel):
    model_config = ConfigDict(json_schema_extra={"not": {"required": ["text"]}})

    texts: Annotated[
        list[Text], Field(min_length=1, json_schema_extra=filled(maxItems="max_batch_items"))
    ]


class SentimentRequest(RootModel[OneText | ManyTexts]):
    """One text, or a batch of texts (never both)."""


class SentimentResponse(RootModel[SentimentResult | SentimentBatchResult]):
    """One answer for {"text"}, a list of them for {"texts"}."""


# --- transcribe: WAV audio -> transcript ---------------------------------------------------------


class TranscribeQuery(RequestModel):
    model: str = model_param(speech_recognition.NAME, speech_recognition.DEFAULT_MODEL)
    version: str = version_param(speech_recognition.NAME)
    stream: bool = False
    """true: answer text/event-stream (server-sent events): a `segment` event per stretch of
    speech as it is transcribed, then a `transcript` event with the whole answer; an `error`
    event if it fails midway. A raw WAV body is transcribed while it uploads."""
    reject_out_of_domain: bool = False
    """true: an input the model judges outside its domain (a model with a verdict: see
    GET /v1/models) is refused with 422 instead of answered with in_domain=false (not
    with stream=true: each segment carries its in_domain)."""


# --- caption: image -> caption -------------------------------------------------------------------


class CaptionQuery(RequestModel):
    model: str = model_param(image_captioning.NAME, image_captioning.DEFAULT_MODEL)
    beam: Beam = 1
    """Beam width; 1 is greedy decoding."""
    version: str = version_param(image_captioning.NAME)
    reject_out_of_domain: bool = False
    """true: an input the model judges outside its domain (a model with a verdict: see
    GET /v1/models) is refused with 422 instead of answered with in_domain=false."""


# --- models: the served models -------------------------------------------------------------------


class GraphTensor(ResponseModel):
    name: str
    datatype: Datatype
    shape: list[int | str]
    """Symbolic dims by name ("batch")."""
    description: str


class ModelInfo(ResponseModel):
    """A configured model version; one that cannot be served has only name, ready and error."""

    name: Name
    ready: bool
    error: str | None = absent()
    """Why it is not ready, if it failed."""
    version: Name | Absent = absent()
    default: bool | Absent = absent()
    """Whether requests that name no version get this one."""
    served_versions: list[Name] | Absent = absent()
    task: Annotated[str, Field(json_schema_extra=filled(enum="tasks"))] | Absent = absent()
    metrics: dict[str, float] | Absent = absent()
    """Held-out evaluation."""
    inputs: dict[str, list[GraphTensor]] | Absent = absent()
    """By graph."""
    outputs: dict[str, list[GraphTensor]] | Absent = absent()
    labels: Annotated[int, Field(ge=1)] | None = absent()
    """How many labels, if it has any."""
    preprocessing: dict[str, Any] | Absent = absent()
    data: dict[str, Any] | Absent = absent()
    """What it was trained on."""
    domain: dict[str, Any] | Absent = absent()
    """Only for a model with a domain verdict: `threshold`, `outside` ("above": scores above the
    threshold are outside what the model knows; "below" for a confidence threshold), `method`,
    and the build's `measured` rates; what an answer's domain_score is measured against."""
    understands: dict[str, Any] | Absent = absent()
    """What it was trained to recognise, where its task says (speech-ctc: `phrases` and
    `digit_words`); other inputs get answers it never learnt."""
    placement: Placement | Absent = absent()
    provider: str | Absent = absent()
    load_seconds: Annotated[float, Field(ge=0)] | Absent = absent()
    batching: dict[str, Any] | Absent = absent()
    """The runner's batching settings and counters."""


class ModelList(ResponseModel):
    models: list[ModelInfo]


class ShowModelQuery(RequestModel):
    version: str = Field("", description="A served version; absent or empty: the newest.")


# --- path parameters of /v1 and /v2 --------------------------------------------------------------


class ModelPath(RequestModel):
    name: str = Field(json_schema_extra=filled(enum="models"))
    """A served model."""


class VersionPath(ModelPath):
    version: str = Field(json_schema_extra=filled(enum="versions"))
    """A served version of it."""


class V2ModelPath(RequestModel):
    """V2 paths name their parameters as the KServe and Triton specifications do."""

    model_name: str = Field(json_schema_extra=filled(enum="models"))
    """A served model."""


class V2VersionPath(V2ModelPath):
    model_version: str = Field(json_schema_extra=filled(enum="versions"))
    """A served version of it."""
