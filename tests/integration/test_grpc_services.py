"""The typed task service (deepserve.v1.Inference), health and reflection over real gRPC."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png, wav

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(server.grpc_target) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel):
    return deepserve_pb2_grpc.InferenceStub(channel)


def test_task_rpcs_match_rest(server, stub) -> None:
    specs = latest_specs()
    digit = png(specs["digits-cnn"].heldout()["image"][0])
    reply = stub.Classify(pb.ClassifyRequest(image=digit, model="digits-cnn", top_k=3), timeout=30)
    rest = requests.post(
        f"{server.url}/v1/classify?model=digits-cnn&top_k=3",
        data=digit,
        headers={"content-type": "image/png"},
        timeout=30,
    ).json()
    assert reply.model == "digits-cnn" and reply.version == rest["version"]
    assert [(p.label, p.index) for p in reply.predictions] == [
        (p["label"], p["index"]) for p in rest["predictions"]
    ]
    assert reply.predictions[0].score == pytest.approx(rest["predictions"][0]["score"], abs=1e-6)

    texts = [str(t) for t in specs["sentiment-lstm"].heldout()["text"][:4]]
    sentiment = stub.Sentiment(pb.SentimentRequest(texts=texts), timeout=30)
    rest = requests.post(f"{server.url}/v1/sentiment", json={"texts": texts}, timeout=30).json()
    assert [r.label for r in sentiment.results] == [r["label"] for r in rest["results"]]

    held = specs["speech-ctc"].heldout()
    audio = wav(held["waveform"][0, : held["lengths"][0]])
    spoken = stub.Transcribe(pb.TranscribeRequest(audio=audio), timeout=30)
    rest = requests.post(
        f"{server.url}/v1/transcribe", data=audio, headers={"content-type": "audio/wav"}, timeout=30
    ).json()
    assert spoken.text == rest["text"] and spoken.duration_s == pytest.approx(rest["duration_s"])

    scene = png(specs["captioner"].heldout()["image"][0])
    captioned = stub.Caption(pb.CaptionRequest(image=scene, beam=3), timeout=30)
    rest = requests.post(
        f"{server.url}/v1/caption?beam=3",
        data=scene,
        headers={"content-type": "image/png"},
        timeout=30,
    ).json()
    assert captioned.caption == rest["caption"] and captioned.beam == 3

    models = stub.ListModels(pb.ListModelsRequest(), timeout=30).models
    assert {m.name for m in models} == set(specs) and all(m.ready for m in models)
    assert {m.placement for m in models} == {server.placement}


@pytest.mark.parametrize(
    "call,request_message,code,needle",
    [
        ("Classify", pb.ClassifyRequest(image=b"not an image"), "INVALID_ARGUMENT", "image"),
        ("Classify", pb.ClassifyRequest(image=b"x", model="nope"), "NOT_FOUND", "unknown model"),
        ("Sentiment", pb.SentimentRequest(texts=[""]), "INVALID_ARGUMENT", "empty"),
        ("Transcribe", pb.TranscribeRequest(audio=b"RIFF...."), "INVALID_ARGUMENT", "WAV"),
        ("Caption", pb.CaptionRequest(image=b"\x89PNG", beam=99), "INVALID_ARGUMENT", "beam"),
    ],
)
def test_task_errors_map_to_status_codes(stub, call, request_message, code, needle) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        getattr(stub, call)(request_message, timeout=30)
    assert failure.value.code() == getattr(grpc.StatusCode, code)
    assert needle in failure.value.details()


def test_passed_deadline_is_not_computed(server, stub) -> None:
    """A request whose gRPC deadline passes before it reaches the model is never run. (Expiry
    while queued is covered by tests/batching/test_batcher.py.)"""
    # a 12-megapixel JPEG takes far longer than 30 ms to decode: the deadline passes meanwhile
    y, x = np.mgrid[0:3000, 0:4000]
    photo = np.stack([x % 256, y % 256, (x + y) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)

    def samples() -> int:
        info = requests.get(f"{server.url}/v1/models/captioner", timeout=30).json()
        return int(info["batching"]["samples"])

    before = samples()
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as failure:
            stub.Caption(pb.CaptionRequest(image=buffer.getvalue(), beam=2), timeout=0.03)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.0)  # anything wrongly queued would have run by now
    assert samples() == before
    # the same request with time to spare is computed
    assert stub.Caption(pb.CaptionRequest(image=buffer.getvalue(), beam=2), timeout=30).caption
    assert samples() == before + 1


def test_health_per_service_and_reflection(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "inference.GRPCInferenceService", "deepserve.v1.Inference"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {
        "inference.GRPCInferenceService",
        "deepserve.v1.Inference",
        "grpc.health.v1.Health",
    } <= services
