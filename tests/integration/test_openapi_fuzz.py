"""The OpenAPI document (service/protocols/http/openapi/): valid, in step with the routes, and
true of the live service, which schemathesis fuzzes from its own GET /openapi.json."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.core.result import Err
from starlette.applications import Starlette
from starlette.routing import Route

from service.core.settings import Settings
from service.protocols.http import docs, openapi, rest
from service.protocols.http import metrics as http_metrics
from service.protocols.http import v2 as v2_rest
from tests.conftest import MODEL_NAMES

MODELS = [
    openapi.ServedModel("digits-cnn", "image-classification", "v1"),
    openapi.ServedModel("captioner", "image-captioning", "v2"),
]

# schemathesis.toml of the live run. Every operation gets the examples phase (the document's
# example requests), the coverage phase (deterministic edge and negative cases: missing or mistyped
# fields, undeclared methods and content types) and the fuzzing phase, which draws max-examples
# positive and negative cases per operation (Hypothesis deadline: none, schemathesis' default).
# Deterministic generation (Hypothesis' derandomize) and no example database make a run
# reproducible; it takes 20-35 s on 2 cores, after the server's start.
FUZZ_CONFIG = """
continue-on-failure = true

[generation]
max-examples = 75
deterministic = true
database = "none"

[phases.stateful]
enabled = false

[checks]
max_response_time = 10.0

# A schema cannot say "a decodable PNG" or "a tensor of the model's shape", so bodies that are
# valid by the schema rightly get 400. Every other default check stays on: not_a_server_error,
# status_code, content_type, response_schema and response_headers conformance,
# negative_data_rejection, missing_required_header, unsupported_method, ...
[checks.positive_data_acceptance]
enabled = false

# 504 is the documented answer to a deadline the client set too short (timeout_ms=1e-300)
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "504"]
"""


def routes(app: Starlette) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.include_in_schema  # not the docs page
        for method in route.methods or ()
        if method != "HEAD"  # Starlette adds HEAD to every GET route
    }


def documented(document: dict) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }


def test_document_is_valid_openapi() -> None:
    for settings in (Settings(), Settings(api_key="secret")):
        schema = schemathesis.openapi.from_dict(openapi.document(MODELS, settings))
        schema.validate()  # against the OpenAPI 3.1 meta-schema
        broken = [r.err() for r in schema.get_all_operations() if isinstance(r, Err)]
        assert not broken, broken
    broken_doc = openapi.document(MODELS, Settings())
    broken_doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"] = []
    with pytest.raises(Exception, match="content"):
        schemathesis.openapi.from_dict(broken_doc).validate()


def test_document_lists_every_route_and_nothing_else() -> None:
    document = openapi.document(MODELS, Settings())
    served = {(m, "/v1" + p) for m, p in routes(rest.build_app(lambda: None))}
    served |= routes(v2_rest.build_app(lambda: None))
    served |= routes(http_metrics.build_app())
    served |= routes(docs.build_app(dict))
    in_document = documented(document)
    assert served - in_document == set(), "routes missing from service/protocols/http/openapi/"
    probes = {("GET", "/livez"), ("GET", "/readyz")}  # BentoML's own
    assert in_document - served == probes


def test_document_names_served_models_and_limits() -> None:
    settings = Settings(max_beam=3)
    document = openapi.document(MODELS, settings)
    classify = document["paths"]["/v1/classify"]["post"]["parameters"]
    assert classify[0]["schema"]["enum"] == ["", "digits-cnn"]  # empty: the default model
    caption = {
        p["name"]: p["schema"] for p in document["paths"]["/v1/caption"]["post"]["parameters"]
    }
    assert caption["model"]["enum"] == ["", "captioner"] and caption["beam"]["maximum"] == 3
    versioned = document["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["post"]
    assert versioned["parameters"][1]["schema"]["enum"] == ["v1", "v2"]
    assert "security" not in versioned
    secured = openapi.document(MODELS, Settings(api_key="secret"))
    infer = secured["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["security"] and "401" in infer["responses"]
    assert "security" not in secured["paths"]["/v2/health/ready"]["get"]  # open health


# --- against the live service ---------------------------------------------------------------


# NOTE: local placement only: the document and the HTTP front ends are the same for both
# placements, and fuzzing the remote one too would double the run time for no new coverage.
@pytest.mark.models
@pytest.mark.parametrize("server", ["local"], indirect=True)
def test_live_service_keeps_its_openapi_contract(server, tmp_path) -> None:
    url = f"{server.url}/openapi.json"
    document = requests.get(url, timeout=10).json()
    enum = document["paths"]["/v1/models/{name}"]["get"]["parameters"][0]["schema"]["enum"]
    assert enum == sorted(MODEL_NAMES)  # fuzzing reaches every real model
    config = tmp_path / "schemathesis.toml"
    config.write_text(FUZZ_CONFIG)
    SchemathesisConfig.from_path(config)  # fails here, readably, on a config typo
    # NOTE: the CLI, not schemathesis' pytest plugin, which fails on pytest 9.2 (it reads the
    # removed Node._nodeid); its report names every failure with a curl line to reproduce it
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color"]
    run = subprocess.run(
        [*command, "run", url], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    report = run.stdout + run.stderr
    # every operation but GET /openapi.json, which schemathesis leaves out as the schema's own
    tested = len(documented(document)) - 1
    assert f"Selected: {tested}/{tested}\n  Tested: {tested}\n" in report, report[-3000:]
    assert run.returncode == 0, report[report.find("FAILURES") :]
