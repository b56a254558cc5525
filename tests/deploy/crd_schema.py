"""A CustomResourceDefinition's schema as a JSON schema: what the API server checks of a custom
resource, so manifests are validated offline against the real CRDs in ../shared/reference/ (read
there, never copied into the project).

The conversion follows Kubernetes' structural-schema rules as `kubectl apply` meets them with
strict field validation (its default): a field the schema does not declare is an error, except
under `x-kubernetes-preserve-unknown-fields: true` or where `additionalProperties` makes a map;
`nullable` admits null; `metadata` is checked as the ObjectMeta fields manifests use. Not
evaluated: `x-kubernetes-validations` (CEL rules; returned for the caller to check by hand),
list-map key uniqueness and `format`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT.parent / "shared" / "reference"

STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "namespace": {"type": "string"},
        "labels": STRINGS,
        "annotations": STRINGS,
    },
    "required": ["name"],
    "additionalProperties": False,
}


@dataclass
class CustomResource:
    """One served version of a CRD: its validator and the CEL rules it does not evaluate."""

    kind: str
    api_version: str
    validator: jsonschema.protocols.Validator
    cel_rules: list[dict[str, str]]

    def errors(self, manifest: dict[str, Any]) -> list[str]:
        """Every schema violation, as `path: message` (empty when the manifest is valid)."""
        found = sorted(self.validator.iter_errors(manifest), key=lambda e: list(e.path))
        return [f"{'.'.join(str(p) for p in e.path) or '<root>'}: {e.message}" for e in found]


def load(crd_file: Path, version: str | None = None) -> CustomResource:
    """The CRD in `crd_file` (its storage version unless `version` names another)."""
    assert crd_file.is_file(), (
        f"{crd_file} not found: the CRDs are read from ../shared/reference/ next to the "
        "checkout (KServe's and KEDA's own, not copied into the project)"
    )
    crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = crd["spec"]
    served = [v for v in spec["versions"] if v.get("served")]
    chosen = next(v for v in served if (v["name"] == version if version else v.get("storage")))
    api_version = f"{spec['group']}/{chosen['name']}"
    cel: list[dict[str, str]] = []
    schema = convert(chosen["schema"]["openAPIV3Schema"], cel)
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    validator_class = jsonschema.validators.validator_for(schema, jsonschema.Draft7Validator)
    validator_class.check_schema(schema)
    return CustomResource(spec["names"]["kind"], api_version, validator_class(schema), cel)


def convert(node: dict[str, Any], cel: list[dict[str, str]]) -> dict[str, Any]:
    """One OpenAPI v3 structural-schema node as JSON schema (see the module docstring)."""
    node = {k: v for k, v in node.items() if k != "description"}
    cel.extend(node.pop("x-kubernetes-validations", []))
    if node.pop("nullable", False) and "type" in node:
        node["type"] = [node["type"], "null"]
    if "properties" in node:
        node["properties"] = {k: convert(v, cel) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        node["items"] = convert(node["items"], cel)
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = convert(node["additionalProperties"], cel)
    for combinator in ("allOf", "anyOf", "oneOf"):
        if combinator in node:
            node[combinator] = [convert(branch, cel) for branch in node[combinator]]
    open_object = node.get("x-kubernetes-preserve-unknown-fields")
    if node.get("type") == "object" and "additionalProperties" not in node and not open_object:
        node["additionalProperties"] = False  # strict field validation: unknown fields refused
    return node


def manifests(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
