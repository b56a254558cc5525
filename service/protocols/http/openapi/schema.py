"""Building blocks of the OpenAPI 3.1 document: JSON schemas (2020-12) generated from the wire
models, parameters generated from query/path models, responses, and the `filled` values."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, models_json_schema
from pydantic_core import core_schema

from service.core.wire import FILL

Schema = dict[str, Any]
REF = "#/components/schemas/{model}"
TEXT_PLAIN: Schema = {"text/plain": {"schema": {"type": "string"}}}
BINARY: Schema = {"type": "string", "format": "binary"}


class WireSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema without a title per property (the property's name says it)."""

    def field_title_should_be_set(self, schema: core_schema.CoreSchemaType | Any) -> bool:
        return False


def ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def json_content(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def components(models: Iterable[type[BaseModel]]) -> dict[str, Schema]:
    """The JSON schemas of `models` and of every model they use, by model name."""
    pairs = [(model, "validation") for model in models]
    _, schemas = models_json_schema(pairs, ref_template=REF, schema_generator=WireSchema)  # type: ignore[arg-type]
    return dict(schemas.get("$defs", {}))


def parameters(model: type[BaseModel], where: str) -> list[Schema]:
    """One parameter (`where`: query, header or path) per field of `model`, in field order;
    the field's docstring is the parameter's description."""
    schema = model.model_json_schema(by_alias=True, schema_generator=WireSchema)
    required = set(schema.get("required", ()))
    result = []
    for name, field in schema["properties"].items():
        description = field.pop("description", None)
        parameter = {"name": name, "in": where, "required": where == "path" or name in required}
        if description:
            parameter["description"] = " ".join(description.split())
        result.append({**parameter, "schema": field})
    return result


def fill(node: Any, value_of: Callable[[str], Any]) -> Any:
    """A copy of `node` whose `filled` keywords have their values (a keyword whose value is None
    is left out)."""
    node = copy.deepcopy(node)
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            for keyword, name in item.pop(FILL, {}).items():
                value = value_of(name)
                if value is None:
                    item.pop(keyword, None)
                else:
                    item[keyword] = value
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return node
