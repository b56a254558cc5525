"""Base classes of the typed wire models: every JSON body a protocol reads or writes is described
once, as a pydantic model (service/protocols/v2/wire.py, service/protocols/http/wire.py), and the
OpenAPI document is generated from them (service/protocols/http/openapi/).

Response models are closed and strict: a handler that builds its answer through one cannot send a
key or a type the document does not declare. Request models are open, as the handlers are (extra
keys are ignored); they describe the bodies, the handlers still validate them with their own
messages.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import CoreSchema, core_schema

Absent = SkipJsonSchema[None]
"""`T | Absent`: a key a body may leave out; the schema says T, not null."""

FILL = "x-deepserve-fill"
"""Schema keyword whose keywords get their values when the document is built (`filled`)."""


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def absent(**constraints: Any) -> Any:
    """A field a body may leave out (it is never null unless its type says so)."""
    return Field(default=None, json_schema_extra=_no_default, **constraints)


def filled(**keywords: str) -> dict[str, Any]:
    """json_schema_extra: schema keywords whose values the document supplies when it is built,
    each named by a setting (`maximum="max_beam"`) or a list the builder knows (`enum="tasks"`)."""
    return {FILL: keywords}


class OneOf:
    """`Annotated[str, OneOf(values)]`: one of these strings (checked; the schema's enum)."""

    def __init__(self, values: Iterable[str]) -> None:
        self.values = list(values)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        return core_schema.literal_schema(self.values)


class RequestModel(BaseModel):
    """A JSON request body: the keys the service reads; others are allowed and ignored."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)


class ResponseModel(BaseModel):
    """A JSON response body: exactly these keys with exactly these types."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    def body(self) -> bytes:
        """The JSON body (compact, UTF-8); optional keys that were not given are left out."""
        return self.model_dump_json(exclude_unset=True).encode()


Name = Annotated[str, Field(min_length=1)]
Probability = Annotated[float, Field(ge=0, le=1)]


class TaskAnswer(ResponseModel):
    """The model version that answered."""

    model: Name
    version: Name


class Judged(BaseModel):
    """Fields of an answer that says how sure the model is and whether the input is of a kind
    it knows (mixed into the task answers)."""

    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)

    confidence: Probability
    """How sure the model is of this answer: calibrated where the model's spec says so (GET
    /v1/models), else its own probability for it."""
    in_domain: bool | Absent = absent()
    """Only for a model with a domain verdict: false when the input is outside what the model
    knows (its answer is then a guess); ?reject_out_of_domain=true turns that into a 422."""
    domain_score: float | Absent = absent()
    """Only with in_domain: the verdict's score, against the threshold GET /v1/models shows."""
