"""The Open Inference Protocol's (KServe V2) JSON bodies as typed models, transport-neutral.

The REST front end (service/protocols/http/v2.py) builds its small answers through these models;
an inference response is built by `render_infer` (its data can hold a million elements, too many
to validate per request) and checked against InferenceResponse by the tests instead.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool

from service.core.datatypes import DATATYPES
from service.core.model_settings import Placement
from service.core.wire import Absent, OneOf, RequestModel, ResponseModel, absent, filled

Name = Annotated[str, Field(min_length=1)]
Datatype = Annotated[str, OneOf(DATATYPES)]
"""One of the V2 datatypes deepserve serves (service/core/datatypes.py)."""
Shape = list[Annotated[int, Field(ge=0)]]
Scalar = float | str | bool  # NOTE: float first: a strict int is a valid float, a bool is not


class V2Error(ResponseModel):
    """Every V2 error: the message alone (the HTTP status says what kind)."""

    error: str


# --- health and metadata ---------------------------------------------------------------------


class ServerMetadata(ResponseModel):
    name: Name
    version: str
    extensions: list[str]
    """Protocol extensions served: binary_tensor_data, classification, ..."""


class ServerLive(ResponseModel):
    live: bool


class ServerReady(ResponseModel):
    ready: bool
    """True once every model is loaded and warmed up."""


class ModelReady(ResponseModel):
    name: str
    ready: bool


class MetadataTensor(ResponseModel):
    name: Name
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=-1)]]
    """-1: any size (the first dim of a batchable model is the batch)."""


class MetadataParameters(ResponseModel):
    """deepserve's additions to a model's metadata."""

    task: Annotated[str, Field(json_schema_extra=filled(enum="tasks"))]
    placement: Placement
    provider: str
    """The ONNX Runtime execution provider ("none" until loaded)."""
    inputs: dict[str, str]
    """What each input holds."""
    optional_inputs: list[str]
    request_parameters: dict[str, str]
    """Request parameters the model understands, with what they do."""
    batching: str
    """How its requests are batched, or why they are not."""
    version_tags: dict[str, str]
    """The store tag of each version number in `versions`."""


class ModelMetadata(ResponseModel):
    name: str
    versions: list[Name]
    """Every served version, newest first, by its number (the tag: parameters.version_tags)."""
    platform: Name
    inputs: list[MetadataTensor]
    outputs: list[MetadataTensor]
    parameters: MetadataParameters | Absent = absent()


ConfigDatatype = Annotated[str, OneOf(f"TYPE_{'STRING' if d == 'BYTES' else d}" for d in DATATYPES)]
"""Triton's name of a datatype."""


class ConfigInput(ResponseModel):
    name: Name
    data_type: ConfigDatatype
    dims: list[Annotated[int, Field(ge=-1)]]
    """Without the batch dim when the model batches; -1: any size."""
    optional: bool


class ConfigOutput(ResponseModel):
    name: Name
    data_type: ConfigDatatype
    dims: list[Annotated[int, Field(ge=-1)]]


class DynamicBatching(ResponseModel):
    preferred_batch_size: list[Annotated[int, Field(ge=1)]]
    max_queue_delay_microseconds: Annotated[int, Field(ge=0)]


class ModelConfig(ResponseModel):
    """Triton's model configuration (JSON form)."""

    name: str
    platform: Name
    backend: Name
    max_batch_size: Annotated[int, Field(ge=0)]
    """0: the model takes no batch dim (its requests run one at a time)."""
    input: list[ConfigInput]
    output: list[ConfigOutput]
    dynamic_batching: DynamicBatching | Absent = absent()


# --- statistics (Triton's extension) --------------------------------------------------------

Count = Annotated[int, Field(ge=0)]


class StatisticDuration(ResponseModel):
    count: Count
    ns: Count
    """Cumulative nanoseconds."""


class InferStatistics(ResponseModel):
    """Per request (one protocol request, however many rows) that reached the model."""

    success: StatisticDuration
    """Succeeded requests, from reaching the model until answered."""
    fail: StatisticDuration
    """Failed requests (inference error, deadline, overload, cancelled), likewise timed."""
    queue: StatisticDuration
    """Succeeded requests' wait in the batcher's queue (remote placement: 0, unseen)."""
    compute_input: StatisticDuration
    """Hand-off of their batch to a worker thread (remote placement: 0)."""
    compute_infer: StatisticDuration
    """Their batch's model run: collate, ONNX Runtime, split (remote placement: the whole
    call to the runner service)."""
    compute_output: StatisticDuration
    """Handing results back to the requests (remote placement: decoding the answer)."""
    cache_hit: StatisticDuration
    """Always zero: no response cache."""
    cache_miss: StatisticDuration
    """Always zero: no response cache."""


class InferBatchStatistics(ResponseModel):
    """Executed batches of one size (counts: batches; ns: their total time in the phase)."""

    batch_size: Annotated[int, Field(ge=1)]
    compute_input: StatisticDuration
    compute_infer: StatisticDuration
    compute_output: StatisticDuration


class ModelStatistics(ResponseModel):
    name: Name
    version: Name
    last_inference: Count
    """When the last request that reached the model ended (ms since the epoch; 0: never)."""
    inference_count: Count
    """Rows computed (the sum of executed batch sizes)."""
    execution_count: Count
    """Batches executed."""
    inference_stats: InferStatistics
    batch_stats: list[InferBatchStatistics]
    """By executed batch size (empty for a remote model: its runner service batches)."""


class ModelStatisticsResponse(ResponseModel):
    """Triton's statistics extension: one entry per served model version asked for."""

    model_stats: list[ModelStatistics]


# --- inference -------------------------------------------------------------------------------


class InputParameters(RequestModel):
    binary_data_size: Annotated[int, Field(ge=0)] | Absent = absent()
    """Binary data extension: this input's bytes follow the JSON header."""


class InferenceInput(RequestModel):
    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["data"]},
                {
                    "required": ["parameters"],
                    "properties": {"parameters": {"required": ["binary_data_size"]}},
                },
            ]
        }
    )

    name: Name
    shape: Shape
    datatype: Datatype
    parameters: InputParameters | Absent = absent()
    data: list[Any] | float | str | bool | Absent = absent()
    """Row-major tensor data, flat or nested; BYTES elements are strings."""


class OutputRequestParameters(RequestModel):
    classification: Annotated[int, Field(ge=0)] | None = absent()
    """Top-k classes as BYTES "score:index:label" (Triton's classification extension)."""
    binary_data: bool | None = absent()
    """Send this output as binary data (default: the request's binary_data_output)."""


class InferenceOutputRequest(RequestModel):
    name: Name
    parameters: OutputRequestParameters | Absent = absent()


class InferParameters(RequestModel):
    binary_data_output: bool | None = absent()
    """Send every output as binary data (the binary tensor data extension)."""
    beam: Annotated[int, Field(ge=1, json_schema_extra=filled(maximum="max_beam"))] | Absent = (
        absent()
    )
    """Beam width of a captioning model (default 1: greedy)."""


class InferenceRequest(RequestModel):
    id: str | Absent = absent()
    """Echoed in the response."""
    parameters: InferParameters | Absent = absent()
    inputs: Annotated[list[InferenceInput], Field(min_length=1)]
    outputs: list[InferenceOutputRequest] | Absent = absent()
    """The outputs to send (default: all of them)."""


class OutputParameters(ResponseModel):
    binary_data_size: Annotated[int, Field(ge=0)]
    """This output's bytes follow the JSON header, in output order."""


class InferenceOutput(ResponseModel):
    name: Name
    datatype: Datatype
    shape: Shape
    data: list[Scalar] | Absent = absent()
    """Flat, row-major; BYTES elements as strings."""
    parameters: OutputParameters | Absent = absent()


class InferenceResponse(ResponseModel):
    model_name: Name
    model_version: Name
    id: str | Absent = absent()
    outputs: Annotated[list[InferenceOutput], Field(min_length=1)]


# --- model repository extension ----------------------------------------------------------------


class RepositoryIndexRequest(RequestModel):
    ready: StrictBool = False
    """Only versions that are READY."""


class RepositoryModel(ResponseModel):
    """One model version in the store (or served), in the repository index."""

    name: Name
    version: str
    state: Annotated[str, OneOf(["READY", "LOADING", "UNAVAILABLE"])]
    reason: str
    """Why it is not READY (empty when it is)."""


class RepositoryLoadRequest(RequestModel):
    parameters: dict[str, Any] = Field(default_factory=dict)
    """`config` (JSON: {"task": ..., "settings": {...}}) and `file:<path>` uploads (base64):
    one .onnx graph, optionally labels.txt / vocab.txt. Uploads need an admin key."""


class RepositoryUnloadRequest(RequestModel):
    parameters: dict[str, Any] = Field(default_factory=dict)
    """`unload_dependents` (accepted; deepserve models have no dependents)."""
