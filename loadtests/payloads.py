"""Real request payloads for load tests and benchmarks, from the model store's held-out samples.

Images, WAVs and sentences come from each model's `heldout.npz` (data the model never trained
on, written by the export pipeline); the ImageNet photos are scikit-image's sample photos (the
same ones the export pipeline checks the model on). Each payload is ready to send over every
protocol: the encoded file for /v1 and the task gRPC service, preprocessed tensors for V2.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from service.processing.speech import load_audio
from service.processing.text import encode, tokenize
from service.processing.vision import decode_image, digit_pixels, resize_center_crop, resize_exact
from service.store.specs import ModelSpec, latest_specs
from service.tasks.text_classification import word_index

MAX_PIXELS = 10**8


@dataclass
class Payload:
    """One request, in every form a client sends it."""

    model: str
    file: bytes = b""
    """Encoded input for /v1 and deepserve.v1 (JPEG/PNG/WAV); empty for text."""
    content_type: str = ""
    text: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    """V2 inputs (batch of 1), preprocessed as the server would."""


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze()).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def wav(audio: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def photos() -> list[np.ndarray]:
    """512 px colour photos shipped by scikit-image (train extra)."""
    import skimage.data

    return [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]


@cache
def payloads(model: str, count: int = 16) -> tuple[Payload, ...]:
    """Up to `count` distinct requests for `model`."""
    spec = latest_specs()[model]
    if model == "imagenet-cnn":
        out = []
        for photo in photos()[:count]:
            data = jpeg(photo)
            pixels = resize_center_crop(decode_image(data, MAX_PIXELS), 256, 224)
            out.append(Payload(model, data, "image/jpeg", tensors={"image": pixels[None]}))
        return tuple(out)
    held = spec.heldout()
    if spec.task == "image-classification":  # digits
        out = []
        for image in held["image"][:count]:
            data = png(image)
            pixels = digit_pixels(decode_image(data, MAX_PIXELS), 28)
            out.append(Payload(model, data, "image/png", tensors={"image": pixels[None]}))
        return tuple(out)
    if spec.task == "text-classification":
        return tuple(
            Payload(model, text=str(text), tensors={"text": np.array([str(text).encode()], object)})
            for text in held["text"][:count]
        )
    if spec.task == "speech-recognition":
        out = []
        for row in range(min(count, len(held["lengths"]))):
            data = wav(held["waveform"][row, : held["lengths"][row]])
            clip = load_audio(data)
            out.append(Payload(model, data, "audio/wav", tensors={"waveform": clip[None]}))
        return tuple(out)
    if spec.task == "image-captioning":
        out = []
        for image in held["image"][:count]:
            data = png(image)
            pixels = resize_exact(decode_image(data, MAX_PIXELS), 64)
            out.append(Payload(model, data, "image/png", tensors={"image": pixels[None]}))
        return tuple(out)
    raise ValueError(f"no payloads for task {spec.task}")


@cache
def _spec(model: str) -> ModelSpec:
    return latest_specs()[model]


def token_ids(model: str, text: str) -> list[int]:
    """What the server does to a text before it joins a batch (its vocabulary index)."""
    spec = _spec(model)
    return encode(tokenize(text), word_index(spec), int(spec.preprocessing["max_tokens"]))


# --- request encodings (shared by the bench and the locust users) -----------------------------

REST_PATHS = {
    "digits-cnn": "/v1/classify?model=digits-cnn",
    "imagenet-cnn": "/v1/classify?model=imagenet-cnn",
    "sentiment-lstm": "/v1/sentiment",
    "speech-ctc": "/v1/transcribe",
    "captioner": "/v1/caption",
}


def rest_request(payload: Payload) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) for the /v1 task API."""
    import json

    if payload.text:
        body = json.dumps({"text": payload.text}).encode()
        return REST_PATHS[payload.model], body, {"Content-Type": "application/json"}
    return REST_PATHS[payload.model], payload.file, {"Content-Type": payload.content_type}


def v2_rest_request(payload: Payload) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of a binary-data V2 infer request, as tritonclient.http sends it."""
    import json

    from service.protocols.v2 import codecs

    raws = [codecs.to_raw(array) for array in payload.tensors.values()]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": codecs.datatype_of(array),
                    "shape": list(array.shape),
                    "parameters": {"binary_data_size": len(raw)},
                }
                for (name, array), raw in zip(payload.tensors.items(), raws)
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return f"/v2/models/{payload.model}/infer", header + b"".join(raws), headers


TASK_METHODS = {
    "image-classification": "Classify",
    "text-classification": "Sentiment",
    "speech-recognition": "Transcribe",
    "image-captioning": "Caption",
}


def task_rpc(payload: Payload) -> tuple[str, bytes]:
    """(method path, serialized request) for deepserve.v1.Inference."""
    import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
    from service.protocols.proto.gen import deepserve_pb2 as pb

    method = TASK_METHODS[latest_specs()[payload.model].task]
    fields: dict[str, Any] = {"model": payload.model}
    if method == "Classify":
        fields["image"] = payload.file
    elif method == "Sentiment":
        fields["texts"] = [payload.text]
    elif method == "Transcribe":
        fields["audio"] = payload.file
    else:
        fields["image"] = payload.file
    message = getattr(pb, f"{method}Request")(**fields)
    return f"/deepserve.v1.Inference/{method}", message.SerializeToString()


def v2_grpc_request(payload: Payload) -> tuple[str, bytes]:
    """(method path, serialized ModelInferRequest) with raw_input_contents, as tritonclient sends.

    NOTE: uses deepserve's own inference_pb2: do not import tritonclient.grpc in the same process.
    """
    import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
    from service.protocols.proto.gen import inference_pb2 as pb
    from service.protocols.v2 import codecs

    message = pb.ModelInferRequest(model_name=payload.model)
    for name, array in payload.tensors.items():
        message.inputs.add(name=name, datatype=codecs.datatype_of(array), shape=list(array.shape))
        message.raw_input_contents.append(codecs.to_raw(array))
    return "/inference.GRPCInferenceService/ModelInfer", message.SerializeToString()


@cache
def mixed_lengths(model: str, count: int = 16) -> tuple[Payload, ...]:
    """Short and long inputs alternating, for the length-bucket experiment: held-out clips
    (0.7-2 s) and the same clips joined three at a time with 0.2 s pauses (3-5 s); held-out
    sentences cut to 6 words and joined into ~60-token reviews."""
    base = payloads(model, count)
    out = []
    for index, payload in enumerate(base):
        if index % 2 == 0:
            out.append(_shortened(payload))
            continue
        parts = [base[(index + k) % len(base)] for k in range(3)]
        if model == "speech-ctc":
            pause = np.zeros(3200, np.float32)
            clips = [load_audio(p.file) for p in parts]
            audio = np.concatenate([x for clip in clips for x in (clip, pause)])[: 5 * 16000]
            data = wav(audio)
            out.append(
                Payload(model, data, "audio/wav", tensors={"waveform": load_audio(data)[None]})
            )
        else:
            text = " ".join(p.text for p in parts)
            out.append(
                Payload(model, text=text, tensors={"text": np.array([text.encode()], object)})
            )
    return tuple(out)


def _shortened(payload: Payload) -> Payload:
    if payload.text:
        text = " ".join(payload.text.split()[:6])
        return Payload(
            payload.model, text=text, tensors={"text": np.array([text.encode()], object)}
        )
    return payload
