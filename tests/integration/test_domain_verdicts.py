"""Every transport carries the answer's confidence and, for a model with a domain verdict, whether
the input is of a kind the model knows; reject_out_of_domain turns an outside input into a 422 /
INVALID_ARGUMENT that says so. Real server (both placements), real clients."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
import requests
import skimage.data
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png

pytestmark = pytest.mark.models

CAT = png(skimage.data.chelsea())


@pytest.fixture(scope="module")
def inputs() -> dict[str, bytes]:
    specs = latest_specs()
    return {
        "digit": png(specs["digits-cnn"].heldout()["image"][0]),
        "scene": png(specs["captioner"].heldout()["image"][0]),
        "cat": CAT,
    }


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_target) as channel:
        yield deepserve_pb2_grpc.InferenceStub(channel)


def post(server, path: str, data: bytes, **params: Any) -> requests.Response:
    return requests.post(
        f"{server.url}{path}",
        params=params,
        data=data,
        headers={"content-type": "image/png"},
        timeout=30,
    )


@pytest.mark.parametrize(
    "path,model,inside,outside",
    [
        ("/v1/classify", "digits-cnn", "digit", "cat"),
        ("/v1/caption", "captioner", "scene", "cat"),
        ("/v1/caption", "captioner", "scene", "digit"),
    ],
)
def test_rest_answers_carry_the_verdict_and_can_refuse(
    server, inputs, path, model, inside, outside
) -> None:
    threshold = latest_specs()[model].extra["domain"]["threshold"]
    good = post(server, path, inputs[inside], model=model)
    assert good.status_code == 200, good.text
    body = good.json()
    assert body["in_domain"] is True and body["domain_score"] <= threshold
    assert 0.5 < body["confidence"] <= 1
    bad = post(server, path, inputs[outside], model=model)
    assert bad.status_code == 200, bad.text
    assert bad.json()["in_domain"] is False and bad.json()["domain_score"] > threshold
    refused = post(server, path, inputs[outside], model=model, reject_out_of_domain="true")
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["code"] == "out_of_domain"
    assert model in error["message"] and "threshold" in error["message"]
    kept = post(server, path, inputs[inside], model=model, reject_out_of_domain="true")
    assert kept.status_code == 200 and kept.json()["in_domain"] is True
    wrong = post(server, path, inputs[inside], model=model, reject_out_of_domain="maybe")
    assert wrong.status_code == 400 and "true or false" in wrong.json()["error"]["message"]


def test_models_without_a_verdict_report_confidence_only(server, inputs) -> None:
    photo = post(server, "/v1/classify", CAT, model="imagenet-cnn").json()
    assert photo["confidence"] == photo["predictions"][0]["score"]
    assert "in_domain" not in photo and "domain_score" not in photo
    # reject_out_of_domain has nothing to act on: the answer is the usual one
    assert post(server, "/v1/classify", CAT, reject_out_of_domain="true").status_code == 200
    text = requests.post(
        f"{server.url}/v1/sentiment", json={"text": "a gorgeous, moving film"}, timeout=30
    ).json()
    assert text["confidence"] == text["score"] and "in_domain" not in text


def test_grpc_task_messages_carry_the_verdict(stub, inputs) -> None:
    digit = stub.Classify(pb.ClassifyRequest(image=inputs["digit"], model="digits-cnn"), timeout=30)
    assert digit.HasField("in_domain") and digit.in_domain and digit.confidence > 0.5
    cat = stub.Classify(pb.ClassifyRequest(image=CAT, model="digits-cnn"), timeout=30)
    assert cat.HasField("in_domain") and not cat.in_domain
    photo = stub.Classify(pb.ClassifyRequest(image=CAT), timeout=30)
    assert not photo.HasField("in_domain") and photo.confidence == photo.predictions[0].score
    scene = stub.Caption(pb.CaptionRequest(image=inputs["scene"]), timeout=30)
    assert scene.in_domain and scene.domain_score > 0
    with pytest.raises(grpc.RpcError) as refused:
        stub.Caption(pb.CaptionRequest(image=CAT, reject_out_of_domain=True), timeout=30)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside what it knows" in refused.value.details()


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_v2_outputs_carry_the_verdict(server, transport) -> None:
    from PIL import Image

    from service.processing.vision import digit_pixels

    module: Any = httpclient if transport == "http" else grpcclient
    target = server.url.removeprefix("http://") if transport == "http" else server.grpc_target
    client = module.InferenceServerClient(target)
    try:
        metadata = client.get_model_metadata("digits-cnn")
        names = [o["name"] if isinstance(o, dict) else o.name for o in _outputs(metadata)]
        assert {"confidence", "in_domain", "domain_score"} <= set(names)
        held = latest_specs()["digits-cnn"].heldout()["image"][:2]
        cat = digit_pixels(Image.fromarray(skimage.data.chelsea()))[None]
        batch = np.concatenate([held, cat]).astype(np.uint8)

        def run(**parameters: Any) -> Any:
            tensor = module.InferInput("image", list(batch.shape), "UINT8")
            tensor.set_data_from_numpy(batch)
            wanted = [module.InferRequestedOutput(n) for n in ("in_domain", "confidence")]
            return client.infer("digits-cnn", [tensor], outputs=wanted, parameters=parameters)

        result = run()
        assert result.as_numpy("in_domain").tolist() == [True, True, False]
        assert np.all(result.as_numpy("confidence") > 0)
        with pytest.raises(InferenceServerException) as refused:
            run(reject_out_of_domain=True)
        assert "rows 2" in str(refused.value) and "outside what it knows" in str(refused.value)
    finally:
        client.close()


def _outputs(metadata: Any) -> list[Any]:
    return metadata["outputs"] if isinstance(metadata, dict) else list(metadata.outputs)


def spoken(text: str) -> bytes:
    """espeak-ng's default voice saying `text`, as a WAV file."""
    import subprocess

    return subprocess.run(
        ["espeak-ng", "--stdout", text], capture_output=True, check=True, timeout=30
    ).stdout


def test_speech_outside_the_vocabulary_is_flagged_on_every_transport(server, stub) -> None:
    threshold = latest_specs()["speech-ctc"].extra["domain"]["threshold"]

    def transcribe(wav: bytes, **params: Any) -> requests.Response:
        return requests.post(
            f"{server.url}/v1/transcribe",
            params=params,
            data=wav,
            headers={"content-type": "audio/wav"},
            timeout=30,
        )

    inside, outside = spoken("four two seven"), spoken("hello, how are you today")
    good = transcribe(inside).json()
    assert good["text"] == "four two seven" and good["in_domain"] is True
    assert good["segments"][0]["in_domain"] is True and good["domain_score"] <= threshold
    bad = transcribe(outside).json()
    assert bad["in_domain"] is False and bad["segments"][0]["in_domain"] is False
    assert bad["confidence"] < good["confidence"]  # calibrated: the nonsense is not trusted
    refused = transcribe(outside, reject_out_of_domain="true")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "out_of_domain"
    both = transcribe(inside, reject_out_of_domain="true", stream="true")
    assert both.status_code == 400 and "stream" in both.json()["error"]["message"]
    # gRPC task message
    answer = stub.Transcribe(pb.TranscribeRequest(audio=outside), timeout=30)
    assert answer.HasField("in_domain") and not answer.in_domain
    assert answer.segments[0].HasField("in_domain") and not answer.segments[0].in_domain
    with pytest.raises(grpc.RpcError) as rpc_refused:
        stub.Transcribe(pb.TranscribeRequest(audio=outside, reject_out_of_domain=True), timeout=30)
    assert rpc_refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # V2: one row in, one out
    from service.processing.speech import load_audio

    rows = [load_audio(inside), load_audio(outside)]
    width = max(len(r) for r in rows)
    waveform = np.zeros((2, width), np.float32)
    for i, row in enumerate(rows):
        waveform[i, : len(row)] = row
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        tensors = [
            grpcclient.InferInput("waveform", list(waveform.shape), "FP32"),
            grpcclient.InferInput("lengths", [2], "INT64"),
        ]
        tensors[0].set_data_from_numpy(waveform)
        tensors[1].set_data_from_numpy(np.array([len(r) for r in rows], np.int64))
        wanted = [grpcclient.InferRequestedOutput(n) for n in ("in_domain", "domain_score")]
        result = client.infer("speech-ctc", tensors, outputs=wanted)
        assert result.as_numpy("in_domain").tolist() == [True, False]
    finally:
        client.close()


def test_models_show_what_domain_score_is_measured_against(server) -> None:
    for name in ("digits-cnn", "captioner", "speech-ctc"):
        shown = requests.get(f"{server.url}/v1/models/{name}", timeout=10).json()
        spec = latest_specs()[name]
        assert shown["domain"]["threshold"] == spec.extra["domain"]["threshold"]
        assert shown["domain"]["outside"] == "above" and shown["domain"]["method"]
        assert shown["domain"]["measured"]["out_of_domain_flagged"] >= 0.9
    assert "domain" not in requests.get(f"{server.url}/v1/models/imagenet-cnn", timeout=10).json()
