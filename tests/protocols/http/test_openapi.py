"""The generated OpenAPI document, the wire models it comes from and the docs app that serves it:
no server and no model store needed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from pydantic import ValidationError
from starlette.testclient import TestClient

from service.core.errors import ServingError
from service.core.settings import Settings
from service.core.wire import FILL, ResponseModel
from service.protocols.auth import open_paths
from service.protocols.http import docs, openapi, wire
from service.protocols.http.errors import error_body
from service.protocols.http.openapi import paths as ops
from service.protocols.v2 import wire as v2
from service.tasks import registry

MODELS = [
    openapi.ServedModel("digits-cnn", "image-classification", "v1"),
    openapi.ServedModel("captioner", "image-captioning", "v2"),
    openapi.ServedModel("sentiment-lstm", "text-classification", "v3"),
    openapi.ServedModel("my-generic", "generic", "v4"),
]
SETTINGS = {
    "plain": Settings(),
    "api key": Settings(api_key="secret"),
    "api key, open docs": Settings(api_key="secret", open_docs=True),
}


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def parameters_of(document: dict[str, Any], path: str, method: str) -> dict[str, dict]:
    return {p["name"]: p for p in document["paths"][path][method]["parameters"]}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=list(SETTINGS))
def test_document_is_valid_openapi_3_1(settings: Settings) -> None:
    document = openapi.document(MODELS, settings)
    assert document["openapi"] == "3.1.0"
    validate(document, cls=OpenAPIV31SpecValidator)
    text = json.dumps(document)
    assert FILL not in text  # every `filled` keyword got its value
    refs = {part.split('"')[0] for part in text.split('"$ref": "#/components/schemas/')[1:]}
    assert refs <= set(document["components"]["schemas"]), "dangling $ref"


def test_a_broken_document_is_refused() -> None:
    document = openapi.document(MODELS, Settings())
    document["paths"]["/v1/models"]["get"]["responses"]["200"]["content"] = []
    with pytest.raises(Exception, match="content"):
        validate(document, cls=OpenAPIV31SpecValidator)


def test_task_enum_comes_from_the_task_registry_and_includes_generic() -> None:
    document = openapi.document(MODELS, Settings())
    task = schema_of(document, "ModelInfo")["properties"]["task"]
    assert task["enum"] == sorted(registry.TASKS) and "generic" in task["enum"]
    parameters = schema_of(document, "MetadataParameters")["properties"]["task"]
    assert parameters["enum"] == task["enum"]
    given = openapi.document(MODELS, Settings(), tasks=["b-task", "a-task"])
    assert schema_of(given, "ModelInfo")["properties"]["task"]["enum"] == ["a-task", "b-task"]


def test_served_models_and_settings_fill_enums_and_limits() -> None:
    document = openapi.document(MODELS, Settings(max_beam=3, max_text_chars=99, max_batch_items=7))
    classify = parameters_of(document, "/v1/classify", "post")
    assert next(iter(classify)) == "model" and classify["model"]["schema"]["enum"] == [
        "",
        "digits-cnn",
    ]
    assert classify["version"]["schema"]["enum"] == ["", "v1"]
    assert classify["top_k"]["schema"] == {
        "default": 5,
        "maximum": 10_000,
        "minimum": 1,
        "type": "integer",
    }
    assert {"X-Request-Timeout-Ms", "timeout_ms"} <= set(classify)
    caption = parameters_of(document, "/v1/caption", "post")
    assert caption["beam"]["schema"]["maximum"] == 3
    assert schema_of(document, "CaptionResult")["properties"]["beam"]["maximum"] == 3
    assert schema_of(document, "InferParameters")["properties"]["beam"]["maximum"] == 3
    many = schema_of(document, "ManyTexts")["properties"]["texts"]
    assert many["maxItems"] == 7 and many["items"]["maxLength"] == 99
    # a task without served models: a free string, not an enum of nothing
    transcribe = parameters_of(document, "/v1/transcribe", "post")
    assert "enum" not in transcribe["model"]["schema"]
    show = document["paths"]["/v1/models/{name}"]["get"]["parameters"]
    assert show[0]["in"] == "path" and show[0]["schema"]["enum"] == sorted(m.name for m in MODELS)
    versioned = document["paths"]["/v2/models/{model_name}/versions/{model_version}/infer"]["post"]
    assert versioned["parameters"][1]["schema"]["enum"] == ["v1", "v2", "v3", "v4"]
    assert versioned["parameters"][0]["example"] == "sentiment-lstm"  # the examples send a text


def test_explain_documents_its_limits_its_png_and_its_map() -> None:
    settings = Settings(max_explain_grid=12, max_explain_png_px=300)
    document = openapi.document(MODELS, settings)
    explain = document["paths"]["/v1/explain"]["post"]
    parameters = parameters_of(document, "/v1/explain", "post")
    assert parameters["model"]["schema"]["enum"] == ["", "digits-cnn"]  # image classifiers
    assert parameters["grid"]["schema"] == {
        "default": 8,
        "minimum": 2,
        "maximum": 12,
        "type": "integer",
    }
    assert parameters["size"]["schema"]["maximum"] == 300
    assert parameters["format"]["schema"]["enum"] == ["json", "png"]
    assert "default" not in parameters["target"]["schema"]  # absent: the top-1 class
    answers = explain["responses"]["200"]["content"]
    assert answers["image/png"]["schema"] == {"type": "string", "format": "binary"}
    assert answers["application/json"]["schema"]["$ref"].endswith("/ExplainResult")
    result = schema_of(document, "ExplainResult")
    assert result["additionalProperties"] is False
    assert result["properties"]["grid_size"]["maximum"] == 12
    assert {"target", "grid", "grid_size", "fill", "input_size"} <= set(result["required"])


def test_every_operation_documents_its_errors_and_examples() -> None:
    document = openapi.document(MODELS, Settings())
    for path in ("/v1/classify", "/v1/explain", "/v1/sentiment", "/v1/transcribe", "/v1/caption"):
        operation = document["paths"][path]["post"]
        assert {"200", "400", "404", "408", "413", "500", "503", "504"} <= set(
            operation["responses"]
        )
        assert operation["responses"]["503"]["headers"]["Retry-After"]
        body = operation["requestBody"]["content"]["application/json"]
        assert body.get("example") or body.get("examples")
    infer = document["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert (
        "415" in infer["responses"]
        and infer["requestBody"]["content"]["application/json"]["examples"]
    )
    for example in ops.INFER_EXAMPLES.values():
        v2.InferenceRequest.model_validate(example["value"])
    for example in ops.SENTIMENT_EXAMPLES.values():
        wire.SentimentRequest.model_validate(example["value"])


def test_api_keys_secure_every_operation_but_the_open_ones() -> None:
    plain = openapi.document(MODELS, Settings())
    assert "securitySchemes" not in plain["components"]
    assert all("security" not in op for ops_ in plain["paths"].values() for op in ops_.values())
    secured = openapi.document(MODELS, Settings(api_key="secret"))
    infer = secured["paths"]["/v2/models/{model_name}/infer"]["post"]
    assert infer["security"] and {"401", "429"} <= set(infer["responses"])
    assert infer["responses"]["401"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/V2Error"
    )
    assert "security" not in secured["paths"]["/v2/health/ready"]["get"]  # open health
    assert secured["paths"]["/openapi.json"]["get"]["security"]  # open_docs is off by default
    opened = openapi.document(MODELS, Settings(api_key="secret", open_docs=True))
    assert "security" not in opened["paths"]["/openapi.json"]["get"]


def test_open_docs_opens_every_docs_path() -> None:
    assert not set(docs.PATHS) & set(open_paths(Settings()))
    opened = open_paths(Settings(open_docs=True, open_health=False, open_metrics=False))
    assert opened == docs.PATHS and {"/", "/docs", "/openapi.json"} <= set(opened)


# --- the wire models ---------------------------------------------------------------------------


def every_serving_error() -> list[ServingError]:
    classes, pending = [], [ServingError]
    while pending:
        cls = pending.pop()
        classes.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls.__new__(cls) for cls in classes]


def test_error_bodies_of_every_error_class_match_their_models() -> None:
    codes = schema_of(openapi.document(MODELS, Settings()), "ErrorDetail")["properties"]["code"]
    for error in every_serving_error():
        error.message, error.headers = "why", {}
        assert error.code in codes["enum"]
        wire.Error.model_validate_json(error_body("/v1/classify", error))
        wire.Error.model_validate_json(error_body("/metrics", error))
        v2.V2Error.model_validate_json(error_body("/v2/models/x/infer", error))


def test_response_models_are_closed_and_strict() -> None:
    answer = {"model": "m", "version": "v", "label": "good", "score": 0.9, "confidence": 0.9}
    body = wire.SentimentResult.model_validate(answer).body()
    assert json.loads(body) == answer and b" " not in body  # compact, nothing added
    for broken in ({**answer, "extra": 1}, {**answer, "score": "0.9"}, {**answer, "score": 1.5}):
        with pytest.raises(ValidationError):
            wire.SentimentResult.model_validate(broken)
    classified = {
        "model": "m",
        "version": "v",
        "predictions": [{"label": "7", "index": 7, "score": 0.99}],
        "confidence": 0.99,
    }
    assert json.loads(wire.ClassifyResult.model_validate(classified).body()) == classified
    judged = {**classified, "in_domain": False, "domain_score": 12.5}
    assert json.loads(wire.ClassifyResult.model_validate(judged).body()) == judged
    for broken in ({**judged, "in_domain": "no"}, {**classified, "confidence": 1.2}):
        with pytest.raises(ValidationError):
            wire.ClassifyResult.model_validate(broken)
    failed = {"name": "m", "ready": False, "error": "no such file"}
    assert json.loads(wire.ModelInfo.model_validate(failed).body()) == failed  # nothing added
    document = openapi.document(MODELS, Settings())
    for name in ("ClassifyResult", "Prediction", "ModelInfo", "InferenceResponse", "V2Error"):
        assert schema_of(document, name)["additionalProperties"] is False
    for name in ("InferenceRequest", "OneText", "ImageBase64"):  # requests stay open
        assert schema_of(document, name).get("additionalProperties", True) is not False
    assert issubclass(v2.InferenceResponse, ResponseModel)


def test_infer_response_shapes_validate() -> None:
    json_out = {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.25, 1]}
    binary_out = {
        "name": "c",
        "datatype": "BYTES",
        "shape": [1],
        "parameters": {"binary_data_size": 9},
    }
    body = {"model_name": "m", "model_version": "1", "id": "7", "outputs": [json_out, binary_out]}
    v2.InferenceResponse.model_validate(body)
    with pytest.raises(ValidationError):
        v2.InferenceResponse.model_validate({**body, "outputs": [{**json_out, "datatype": "FP8"}]})


# --- the docs app ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = docs.build_app(lambda: openapi.document(MODELS, Settings()))
    return TestClient(app, base_url="http://127.0.0.1")


def test_swagger_ui_files_are_installed() -> None:
    for name in docs.SWAGGER_UI:
        assert (docs.swagger_ui_folder() / name).stat().st_size > 10_000, name


def test_docs_page_loads_only_local_files(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "http:" not in page.text and "https:" not in page.text and "//" not in page.text
    for name in (*docs.SWAGGER_UI, "init.js"):
        assert f'"docs/{name}"' in page.text
        asset = client.get(f"/docs/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith("text/")
    assert "validatorUrl: null" in client.get("/docs/init.js").text
    missing = client.get("/docs/../../etc/passwd")
    assert missing.status_code == 404
    unknown = client.get("/docs/secrets.txt")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_home_redirects_to_the_docs_and_the_document_is_served(client) -> None:
    home = client.get("/", follow_redirects=False)
    assert home.status_code == 307 and home.headers["location"] == "docs"
    assert client.get("/").url.path == "/docs"
    document = client.get("/openapi.json")
    assert document.status_code == 200 and document.json()["openapi"] == "3.1.0"
    refused = client.post("/docs")
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
