"""Live answers of every route, checked against their wire models (strict, closed).

/v1 and the small /v2 answers are built through the models by their handlers; a V2 inference
response is built by `render_infer` (its data can be large), so this test is what keeps it in
step with InferenceResponse, for every served model, as JSON and as binary data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import requests

from service.protocols.http import wire
from service.protocols.v2 import wire as v2
from tests.integration.media import png, wav

pytestmark = pytest.mark.models


def example_inputs(metadata: dict) -> list[dict]:
    """One valid row for each input a model needs, as V2 JSON tensors."""
    optional = set(metadata["parameters"]["optional_inputs"])
    inputs = []
    for tensor in metadata["inputs"]:
        if tensor["name"] in optional and tensor["name"] != "text":
            continue
        # a variable batch dim: 1 row; other variable dims (samples, tokens): 4000
        shape = [(4000 if i else 1) if d == -1 else d for i, d in enumerate(tensor["shape"])]
        count = math.prod(shape)
        data = ["a great and moving film"] * count if tensor["datatype"] == "BYTES" else [0] * count
        inputs.append({**tensor, "shape": shape, "data": data})
    return inputs


def infer(url: str, body: dict) -> v2.InferenceResponse:
    response = requests.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    length = response.headers.get("Inference-Header-Content-Length")
    header = response.content[: int(length)] if length else response.content
    answer = v2.InferenceResponse.model_validate_json(header)
    assert json.loads(header) == json.loads(answer.body())  # nothing dropped, nothing added
    sizes = [o.parameters.binary_data_size for o in answer.outputs if o.parameters]
    assert len(response.content) - len(header) == sum(sizes)
    return answer


@pytest.mark.parametrize("server", ["local"], indirect=True)
def test_every_v2_route_answers_what_its_model_says(server) -> None:
    base = server.url + "/v2"
    v2.ServerMetadata.model_validate_json(requests.get(base, timeout=10).content)
    v2.ServerLive.model_validate_json(requests.get(f"{base}/health/live", timeout=10).content)
    v2.ServerReady.model_validate_json(requests.get(f"{base}/health/ready", timeout=10).content)
    models = wire.ModelList.model_validate_json(requests.get(server.url + "/v1/models").content)
    served = [m for m in models.models if m.ready and m.default]
    assert len(served) >= 5
    for model in served:
        for prefix in (
            f"{base}/models/{model.name}",
            f"{base}/models/{model.name}/versions/{model.version}",
        ):
            metadata = requests.get(prefix, timeout=10)
            v2.ModelMetadata.model_validate_json(metadata.content)
            v2.ModelReady.model_validate_json(requests.get(f"{prefix}/ready", timeout=10).content)
            v2.ModelConfig.model_validate_json(requests.get(f"{prefix}/config", timeout=10).content)
        inputs = example_inputs(metadata.json())
        url = f"{prefix}/infer"
        as_json = infer(url, {"id": "7", "inputs": inputs})
        assert as_json.id == "7" and all(o.data is not None for o in as_json.outputs)
        as_binary = infer(url, {"inputs": inputs, "parameters": {"binary_data_output": True}})
        assert all(o.parameters is not None and o.data is None for o in as_binary.outputs)
        if model.labels:  # Triton's classification extension
            wanted = [{"name": as_json.outputs[0].name, "parameters": {"classification": 2}}]
            top = infer(url, {"inputs": inputs, "outputs": wanted})
            assert top.outputs[0].datatype == "BYTES"
    missing = requests.get(f"{base}/models/no-such-model", timeout=10)
    assert missing.status_code == 404
    v2.V2Error.model_validate_json(missing.content)
    refused = requests.post(
        f"{base}/models/{served[0].name}/infer", json={"inputs": []}, timeout=10
    )
    assert refused.status_code == 400
    v2.V2Error.model_validate_json(refused.content)


@pytest.mark.parametrize("server", ["local"], indirect=True)
def test_every_v1_route_answers_what_its_model_says(server) -> None:
    base = server.url + "/v1"
    image = {"files": {"image": ("x.png", png(np.zeros((32, 32), np.uint8)), "image/png")}}
    answers = [
        (
            wire.ClassifyResult,
            requests.post(f"{base}/classify?model=digits-cnn", **image, timeout=60),
        ),
        (wire.CaptionResult, requests.post(f"{base}/caption?beam=2", **image, timeout=60)),
        (
            wire.SentimentResult,
            requests.post(f"{base}/sentiment", json={"text": "fine"}, timeout=60),
        ),
        (
            wire.SentimentBatchResult,
            requests.post(f"{base}/sentiment", json={"texts": ["fine", "dull"]}, timeout=60),
        ),
        (wire.ModelList, requests.get(f"{base}/models", timeout=60)),
        (wire.ModelInfo, requests.get(f"{base}/models/speech-ctc", timeout=60)),
    ]
    audio = wav(np.zeros(8000, np.float32))
    answers.append(
        (
            wire.TranscribeResult,
            requests.post(
                f"{base}/transcribe", data=audio, headers={"Content-Type": "audio/wav"}, timeout=60
            ),
        )
    )
    for model, response in answers:
        assert response.status_code == 200, response.text
        parsed = model.model_validate_json(response.content)
        assert json.loads(response.content) == json.loads(parsed.body())
    for response in (
        requests.get(f"{base}/models/no-such-model", timeout=10),
        requests.get(f"{base}/no-such-route", timeout=10),
        requests.delete(f"{base}/models", timeout=10),
        requests.post(f"{base}/sentiment", json={"text": ""}, timeout=10),
        requests.post(
            f"{base}/classify", data=b"x", headers={"Content-Type": "text/x"}, timeout=10
        ),
    ):
        assert 400 <= response.status_code < 500
        wire.Error.model_validate_json(response.content)
