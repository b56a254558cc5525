"""A bad-input corpus for every endpoint and protocol, generated here with PIL, numpy and struct.

Each Case sends one request and states what a careful server answers: a 4xx (gRPC
INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE) whose message names the problem, or, for inputs that
are odd but usable (CMYK, palette, alpha, 16-bit and float images; WAVs at other rates, widths
and channel counts; silence), a normal answer checked against the answer to the plain version of
the same input, asked for separately.

NOTE: the V2 gRPC messages come from tritonclient.grpc, so this module must never share a process
with service.protocols.proto.gen.inference_pb2 (see service/protocols/proto/stubs.py).
"""

from __future__ import annotations

import base64
import io
import json
import math
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from PIL import Image
from tritonclient.grpc import service_pb2 as v2pb

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.core.datatypes import NUMPY_OF
from service.processing.speech import resample
from service.processing.vision import decode_image, digit_pixels
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.v2 import codecs
from service.store.specs import latest_specs

# --- talking to the server -------------------------------------------------------------------


@dataclass
class Client:
    url: str
    http: requests.Session
    channel: grpc.Channel


@dataclass
class Reply:
    status: int | str
    """HTTP status, or the gRPC status code's name ("OK", "INVALID_ARGUMENT", ...)."""
    message: str = ""
    """The error message ("" when the request succeeded)."""
    body: Any = None
    """The answer: REST JSON, a gRPC response as a dict, V2 outputs as {name: array}."""


Send = Callable[[Client], Reply]
Check = Callable[[Client, Reply], None]


def http_reply(response: requests.Response) -> Reply:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code < 400:
        return Reply(response.status_code, "", body)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # /v1: {"error": {"code", "message"}}
        return Reply(response.status_code, str(error.get("message", "")), body)
    if isinstance(error, str):  # /v2: {"error": "..."}
        return Reply(response.status_code, error, body)
    return Reply(response.status_code, response.text[:2000], body)


def rest(
    path: str,
    data: bytes | None = None,
    content_type: str | None = None,
    *,
    json_body: Any = None,
    files: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Send:
    """POST to the REST API (/v1 task endpoints or /v2 infer)."""
    all_headers = dict(headers or {})
    if content_type is not None:
        all_headers["Content-Type"] = content_type

    def send(client: Client) -> Reply:
        response = client.http.post(
            client.url + path,
            data=data,
            json=json_body,
            files=files,
            headers=all_headers,
            timeout=60,
        )
        reply = http_reply(response)
        if reply.status == 200 and path.startswith("/v2"):
            reply.body = v2_json_outputs(reply.body)
        return reply

    return send


def v2_json_outputs(body: dict[str, Any]) -> dict[str, np.ndarray]:
    outputs = {}
    for tensor in body["outputs"]:
        data = tensor["data"]
        dtype = object if tensor["datatype"] == "BYTES" else NUMPY_OF[tensor["datatype"]]
        outputs[tensor["name"]] = np.array(data, dtype=dtype).reshape(tensor["shape"])
    return outputs


TASK_SERVICE = "/deepserve.v1.Inference/"
V2_SERVICE = "/inference.GRPCInferenceService/"
RESPONSES: dict[str, type[Message]] = {
    "Classify": pb.ClassifyResponse,
    "Sentiment": pb.SentimentResponse,
    "Transcribe": pb.TranscribeResponse,
    "Caption": pb.CaptionResponse,
    "ListModels": pb.ListModelsResponse,
    "ModelInfer": v2pb.ModelInferResponse,
    "ModelMetadata": v2pb.ModelMetadataResponse,
}


def rpc(method: str, request: Message | bytes) -> Send:
    """One unary call on the raw method path: request bytes go out exactly as given."""
    path = (V2_SERVICE if method.startswith("Model") else TASK_SERVICE) + method
    data = request if isinstance(request, bytes) else request.SerializeToString()

    def send(client: Client) -> Reply:
        call = client.channel.unary_unary(path)  # no (de)serializers: bytes both ways
        try:
            raw = call(data, timeout=60)
        except grpc.RpcError as error:
            return Reply(error.code().name, error.details() or "")
        answer = RESPONSES[method].FromString(raw)
        if isinstance(answer, v2pb.ModelInferResponse):
            return Reply("OK", "", v2_grpc_outputs(answer))
        return Reply(
            "OK",
            "",
            MessageToDict(
                answer, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            ),
        )

    return send


def v2_grpc_outputs(answer: v2pb.ModelInferResponse) -> dict[str, np.ndarray]:
    return {
        tensor.name: codecs.from_raw(tensor.name, tensor.datatype, list(tensor.shape), raw)
        for tensor, raw in zip(answer.outputs, answer.raw_output_contents, strict=True)
    }


# --- V2 request bodies -----------------------------------------------------------------------


def v2_path(model: str, version: str | None = None) -> str:
    versioned = f"/versions/{version}" if version else ""
    return f"/v2/models/{model}{versioned}/infer"


def v2_json(model: str, inputs: list[dict[str, Any]], **fields: Any) -> Send:
    body = json.dumps({"inputs": inputs, **fields}).encode()
    return rest(v2_path(model), body, content_type=JSON_TYPE)


def tensor_json(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = "BYTES" if array.dtype == object else codecs.datatype_of(array)
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": codecs.to_json_data(array),
    }


def v2_binary(
    model: str,
    tensors: list[tuple[str, str, list[int], bytes]],
    *,
    version: str | None = None,
    extra_tail: bytes = b"",
    sizes: list[int] | None = None,
    header_length: int | None = None,
) -> Send:
    """A binary-data V2 request: (name, datatype, shape, raw) per input, as tritonclient sends."""
    inputs = [
        {
            "name": name,
            "datatype": datatype,
            "shape": shape,
            "parameters": {"binary_data_size": len(raw) if sizes is None else sizes[i]},
        }
        for i, (name, datatype, shape, raw) in enumerate(tensors)
    ]
    header = json.dumps({"inputs": inputs}).encode()
    body = header + b"".join(raw for *_, raw in tensors) + extra_tail
    length = len(header) if header_length is None else header_length
    return rest(
        v2_path(model, version),
        body,
        content_type=BINARY_TYPE,
        headers={"Inference-Header-Content-Length": str(length)},
    )


def infer_request(
    model: str,
    tensors: list[tuple[str, str, list[int], bytes]],
    *,
    version: str = "",
    raw: list[bytes] | None = None,
    outputs: dict[str, int] | None = None,
) -> v2pb.ModelInferRequest:
    """A V2 gRPC ModelInferRequest with raw_input_contents (as tritonclient.grpc sends it);
    `outputs` maps requested output names to a classification count (0: none)."""
    request = v2pb.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape, _ in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    request.raw_input_contents.extend([data for *_, data in tensors] if raw is None else raw)
    for name, classes in (outputs or {}).items():
        wanted = request.outputs.add(name=name)
        if classes:
            wanted.parameters["classification"].int64_param = classes
    return request


def gzip_of(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def classification_as_bool() -> v2pb.ModelInferRequest:
    request = infer_request("digits-cnn", [V2_DIGIT])
    request.outputs.add(name="probabilities").parameters["classification"].bool_param = True
    return request


def typed_tokens(count: int, shape: list[int] | None = None) -> v2pb.ModelInferRequest:
    """Token ids in the typed int64_contents field (no raw contents)."""
    request = v2pb.ModelInferRequest(model_name="sentiment-lstm")
    tensor = request.inputs.add(name="tokens", datatype="INT64", shape=shape or [1, count])
    tensor.contents.int64_contents.extend([1] * count)
    return request


def many_typed_tensors(tensors: int, each: int) -> v2pb.ModelInferRequest:
    """Several typed-contents tensors, each under the element limit, together over it."""
    request = v2pb.ModelInferRequest(model_name="sentiment-lstm")
    for i in range(tensors):
        tensor = request.inputs.add(name=f"t{i}", datatype="BOOL", shape=[1, each])
        tensor.contents.bool_contents.extend([True] * each)
    return request


def raw_tensor(name: str, array: np.ndarray) -> tuple[str, str, list[int], bytes]:
    datatype = "BYTES" if array.dtype == object else codecs.datatype_of(array)
    return name, datatype, list(array.shape), codecs.to_raw(array)


# --- media: images ---------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height 8-bit gray pixels (an image bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(encode(Image.new("L", (16, 16), 128), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_with_bad_crc() -> bytes:
    data = bytearray(encode(Image.fromarray(big_digit()), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR chunk's CRC
    return bytes(data)


def png16_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    height, width, _ = pixels.shape
    wide = pixels.astype(">u2") * 257
    rows = b"".join(b"\x00" + wide[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


@cache
def specs() -> dict[str, Any]:
    return latest_specs()


@cache
def digit_images() -> np.ndarray:
    return specs()["digits-cnn"].heldout()["image"][..., 0]


@cache
def big_digit(index: int = 0) -> np.ndarray:
    """A held-out digit (light on dark) at 112 x 112, stretched to use the full 0..255 range,
    so lossy formats (JPEG) and 16-bit scaling barely change what the model sees."""
    small = digit_images()[index].astype(np.float64)
    stretched = (small - small.min()) * 255.0 / max(1.0, small.max() - small.min())
    image = Image.fromarray(np.rint(stretched).astype(np.uint8)).resize((112, 112))
    return np.asarray(image, dtype=np.uint8)


def digit_png(index: int = 0) -> bytes:
    return encode(Image.fromarray(big_digit(index)), "PNG")


def digit_variant(kind: str) -> bytes:
    """The digit of digit_png() in another image mode or format."""
    gray = big_digit()
    image = Image.fromarray(gray)
    if kind == "cmyk-jpeg":
        return encode(image.convert("RGB").convert("CMYK"), "JPEG", quality=95)
    if kind == "palette-png":
        palette = Image.frombytes("P", image.size, gray.tobytes())
        palette.putpalette(bytes(np.repeat(np.arange(256, dtype=np.uint8), 3)))
        return encode(palette, "PNG")
    if kind == "alpha-png":  # white ink whose coverage is the alpha channel, over transparency
        white = Image.new("L", image.size, 255)
        return encode(Image.merge("LA", (white, image)), "PNG")
    if kind == "rgba-png":
        rgb = image.convert("RGB")
        return encode(Image.merge("RGBA", (*rgb.split(), Image.new("L", image.size, 255))), "PNG")
    if kind == "16bit-png":
        return encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")
    if kind == "16bit-rgb-png":
        return png16_rgb(np.repeat(gray[..., None], 3, axis=2))
    if kind == "float-tiff":
        return encode(Image.fromarray(gray.astype(np.float32) / 255.0), "TIFF")
    if kind == "bilevel-png":
        return encode(image.convert("1"), "PNG")
    if kind == "animated-gif":
        frames = [image.convert("P"), Image.new("P", image.size, 0)]
        return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    raise ValueError(kind)


def exif_rotated_png(pixels: np.ndarray) -> bytes:
    """The picture stored turned 90 degrees counter-clockwise with EXIF Orientation 6 (turn 90
    degrees clockwise to view), as a camera held upright writes it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels).rotate(90, expand=True), "PNG", exif=exif)


def extreme(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG with an extreme aspect ratio (10000x1 used to cost 2.6 GB)."""
    return encode(Image.new("RGB", (width, height), (180, 40, 40)), "PNG")


@cache
def photo_gray() -> np.ndarray:
    """An 8-bit grayscale photo using the full 0..255 range."""
    import skimage.data

    gray = np.asarray(Image.fromarray(skimage.data.chelsea()).convert("L"), dtype=np.float64)
    stretched = (gray - gray.min()) * 255.0 / (gray.max() - gray.min())
    return np.rint(stretched).astype(np.uint8)


@cache
def scene(index: int = 0) -> np.ndarray:
    return specs()["captioner"].heldout()["image"][index]


def truncated(data: bytes, keep: float) -> bytes:
    return data[: int(len(data) * keep)]


# --- media: audio ----------------------------------------------------------------------------


@cache
def speech_clip() -> np.ndarray:
    """A held-out utterance as 16-bit integers (what a 16 kHz PCM WAV holds)."""
    held = specs()["speech-ctc"].heldout()
    row = int(np.argmax(held["lengths"] > 16000))
    audio = held["waveform"][row, : held["lengths"][row]]
    return np.rint(np.clip(audio, -1, 1) * 32767).astype(np.int16)


def wav_file(
    pcm: bytes,
    *,
    rate: int = 16000,
    bits: int = 16,
    channels: int = 1,
    tag: int = 1,
    extensible: bool = False,
) -> bytes:
    """A RIFF/WAVE file around `pcm` with exactly the header fields given (no checks)."""
    block = channels * max(1, bits // 8)
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, channels, rate, 0, block, bits)
    fmt = fmt[:8] + struct.pack("<I", (rate * block) & 0xFFFFFFFF) + fmt[12:]
    if extensible:  # cbSize, valid bits, channel mask, then the sub-format GUID's leading tag
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt += struct.pack("<HHIH", 22, bits, 0, tag) + guid_tail
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(pcm)) + pcm + (b"\x00" if len(pcm) & 1 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


def speech_wav() -> bytes:
    return wav_file(speech_clip().astype("<i2").tobytes())


def speech_variant(kind: str) -> bytes:
    """The utterance of speech_wav() in another WAV layout (lossless unless the name says)."""
    clip = speech_clip()
    if kind == "24bit":
        wide = clip.astype("<i4") * 256
        return wav_file(wide.view(np.uint8).reshape(-1, 4)[:, :3].tobytes(), bits=24)
    if kind == "32bit":
        return wav_file((clip.astype("<i4") * 65536).tobytes(), bits=32)
    if kind == "float32":
        return wav_file((clip.astype("<f4") / 32768).tobytes(), bits=32, tag=3)
    if kind == "stereo":
        return wav_file(np.repeat(clip, 2).astype("<i2").tobytes(), channels=2)
    if kind == "6-channel":
        return wav_file(np.repeat(clip, 6).astype("<i2").tobytes(), channels=6)
    if kind == "extensible":
        return wav_file(clip.astype("<i2").tobytes(), extensible=True)
    if kind in ("48khz", "44.1khz", "8khz"):
        rate = {"48khz": 48000, "44.1khz": 44100, "8khz": 8000}[kind]
        audio = resample(clip.astype(np.float32) / 32768, 16000, rate)
        pcm = np.rint(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        return wav_file(pcm, rate=rate)
    if kind == "8bit":  # lossy: 8-bit unsigned
        return wav_file((clip // 256 + 128).astype(np.uint8).tobytes(), bits=8)
    raise ValueError(kind)


def silence_wav(seconds: float, rate: int = 16000) -> bytes:
    return wav_file(bytes(2 * int(seconds * rate)), rate=rate)


def float_wav(values: np.ndarray) -> bytes:
    return wav_file(values.astype("<f4").tobytes(), bits=32, tag=3)


# --- checks for the inputs that must be answered normally -------------------------------------


def reference_classification(client: Client, model: str, image: bytes) -> dict[str, Any]:
    response = client.http.post(
        f"{client.url}/v1/classify?model={model}&top_k=1",
        data=image,
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def classified_like(model: str, reference: Callable[[], bytes], exact: bool = False) -> Check:
    """The top class equals the plain reference image's (and its score too when `exact`)."""

    def check(client: Client, reply: Reply) -> None:
        want = reference_classification(client, model, reference())
        got = reply.body["predictions"][0]
        assert got["index"] == want["index"], (got, want)
        if exact:
            assert got["score"] == pytest.approx(want["score"], abs=2e-4), (got, want)

    return check


def well_formed_classification(model: str, k: int) -> Check:
    def check(client: Client, reply: Reply) -> None:
        labels = specs()[model].labels
        predictions = reply.body["predictions"]
        assert len(predictions) == k
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        assert all(labels[p["index"]] == p["label"] for p in predictions)

    return check


def reference_transcript(client: Client, wav: bytes) -> dict[str, Any]:
    response = client.http.post(
        f"{client.url}/v1/transcribe",
        data=wav,
        headers={"Content-Type": "audio/wav"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def transcribed_like(exact: bool) -> Check:
    """Same transcript as the plain 16 kHz 16-bit WAV (and the same confidence when `exact`)."""

    def check(client: Client, reply: Reply) -> None:
        want = reference_transcript(client, speech_wav())
        assert reply.body["text"] == want["text"]
        assert reply.body["duration_s"] == pytest.approx(want["duration_s"], abs=2e-3)
        if exact:
            assert reply.body["confidence"] == pytest.approx(want["confidence"], abs=1e-4)

    return check


def well_formed_transcript(seconds: float) -> Check:
    def check(client: Client, reply: Reply) -> None:
        assert isinstance(reply.body["text"], str)
        assert 0.0 <= reply.body["confidence"] <= 1.0
        assert reply.body["duration_s"] == pytest.approx(seconds, abs=2e-3)

    return check


def captioned_like(reference: Callable[[], bytes]) -> Check:
    def check(client: Client, reply: Reply) -> None:
        response = client.http.post(
            f"{client.url}/v1/caption",
            data=reference(),
            headers={"Content-Type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert reply.body["caption"] == response.json()["caption"]

    return check


def well_formed_grpc_classification(client: Client, reply: Reply) -> None:
    predictions = reply.body["predictions"]
    labels = specs()["imagenet-cnn"].labels
    assert len(predictions) == 5 and all(p["label"] in labels for p in predictions)


def well_formed_caption(client: Client, reply: Reply) -> None:
    assert isinstance(reply.body["caption"], str) and reply.body["caption"].strip()
    assert reply.body["beam"] == 1 and math.isfinite(reply.body["score"])


def well_formed_sentiment(client: Client, reply: Reply) -> None:
    labels = specs()["sentiment-lstm"].labels
    results = reply.body.get("results") or [reply.body]
    for result in results:
        assert result["label"] in labels
        assert 1 / len(labels) <= result["score"] <= 1


def v2_output_shapes(**shapes: tuple[int, ...]) -> Check:
    def check(client: Client, reply: Reply) -> None:
        assert {name: array.shape for name, array in reply.body.items()} == shapes

    return check


def v2_transcripts(count: int) -> Check:
    def check(client: Client, reply: Reply) -> None:
        transcripts, confidence = reply.body["transcript"], reply.body["confidence"]
        assert transcripts.shape == (count,) and confidence.shape == (count,)
        assert all(isinstance(t, bytes | str) for t in transcripts)
        assert np.all((confidence >= 0) & (confidence <= 1))

    return check


# --- the corpus ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    """<protocol>-<what>: protocol is rest (/v1), v2rest, grpc (deepserve.v1) or v2grpc."""
    send: Send
    status: int | str | tuple[int, ...]
    """Expected HTTP status (or statuses, any of which is right) or gRPC code name."""
    needle: str = ""
    """A word the error message must contain (case-insensitive): it names the problem."""
    check: Check | None = None
    """For inputs that must be answered normally: checks the answer."""
    remote: bool = False
    """Also run against the remote runner placement (a representative subset)."""


def bad(name: str, status: int | str | tuple[int, ...], needle: str, send: Send, **kw: Any) -> Case:
    """An input the server must refuse with `status` and a message containing `needle`."""
    return Case(name, send, status, needle, **kw)


def ok(name: str, send: Send, check: Check, **kw: Any) -> Case:
    """An odd but usable input: answered normally, the answer checked by `check`."""
    grpc_call = name.split("-")[0] in ("grpc", "v2grpc")
    return Case(name, send, "OK" if grpc_call else 200, check=check, **kw)


MB = 1024 * 1024
JSON_TYPE, BINARY_TYPE = "application/json", "application/octet-stream"
OVERSIZED = 21 * MB  # the default limit (DEEPSERVE_MAX_BODY_BYTES) is 20 MiB
DIGIT_TENSOR = np.zeros((1, 28, 28, 1), np.uint8)
V2_DIGIT = ("image", "UINT8", [1, 28, 28, 1], bytes(784))


def image_cases() -> list[Case]:
    digits = "/v1/classify?model=digits-cnn"
    png, jpeg = "image/png", "image/jpeg"
    photo_png = encode(Image.fromarray(photo_gray()), "PNG")
    return [
        # damaged files
        bad(
            "rest-classify-truncated-png",
            400,
            "truncated",
            rest(digits, truncated(digit_png(), 0.5), png),
            remote=True,
        ),
        bad(
            "rest-classify-truncated-jpeg",
            400,
            "truncated",
            rest(digits, truncated(digit_variant("cmyk-jpeg"), 0.4), jpeg),
        ),
        bad(
            "rest-classify-png-signature-only", 400, "PNG", rest(digits, b"\x89PNG\r\n\x1a\n", png)
        ),
        bad("rest-classify-jpeg-soi-only", 400, "JPEG", rest(digits, b"\xff\xd8", jpeg)),
        bad("rest-classify-png-bad-crc", 400, "corrupt", rest(digits, png_with_bad_crc(), png)),
        bad(
            "rest-caption-not-an-image",
            400,
            "not a decodable image",
            rest("/v1/caption", b"GIF? no, plain text", png),
        ),
        bad(
            "rest-classify-svg",
            400,
            "not a decodable image",
            rest(
                digits, b'<svg xmlns="http://www.w3.org/2000/svg"/>', content_type="image/svg+xml"
            ),
        ),
        # image bombs: a few hundred bytes declaring billions of pixels
        bad(
            "rest-classify-png-bomb",
            413,
            "pixels",
            rest(digits, png_declaring(100_000, 100_000), png),
            remote=True,
        ),
        bad(
            "rest-classify-jpeg-bomb",
            413,
            "pixels",
            rest("/v1/classify", jpeg_declaring(65_000, 65_000), jpeg),
        ),
        bad(
            "rest-caption-png-just-over-pixel-limit",
            413,
            "pixels",
            rest("/v1/caption", png_declaring(8000, 6000), png),
        ),
        # bodies and content types
        bad("rest-classify-zero-byte-body", 400, "empty", rest(digits, b"", png)),
        bad("rest-classify-oversized-body", 413, "limit", rest(digits, bytes(OVERSIZED), png)),
        bad(
            "rest-classify-text-plain", 415, "content type", rest(digits, digit_png(), "text/plain")
        ),
        bad("rest-classify-no-content-type", 415, "content type", rest(digits, digit_png(), "")),
        bad(
            "rest-caption-audio-content-type",
            415,
            "content type",
            rest("/v1/caption", digit_png(), "audio/wav"),
        ),
        bad(
            "rest-classify-multipart-without-boundary",
            400,
            "multipart",
            rest(digits, b"--x\r\n\r\n", "multipart/form-data"),
        ),
        bad(
            "rest-classify-multipart-wrong-field",
            400,
            '"image"',
            rest(digits, files={"picture": ("d.png", digit_png(), png)}),
        ),
        bad(
            "rest-classify-json-bad-base64",
            400,
            "base64",
            rest(digits, json_body={"image_b64": "not*base64!"}),
        ),
        bad(
            "rest-classify-json-missing-field",
            400,
            "image_b64",
            rest(digits, json_body={"image": base64.b64encode(digit_png()).decode()}),
        ),
        # parameters and models
        bad(
            "rest-classify-unknown-model",
            404,
            "unknown model",
            rest("/v1/classify?model=resnet-9000", digit_png(), png),
        ),
        bad(
            "rest-classify-model-of-another-task",
            404,
            "speech-recognition",
            rest("/v1/classify?model=speech-ctc", digit_png(), png),
        ),
        bad(
            "rest-classify-top-k-not-a-number",
            400,
            "top_k",
            rest(digits + "&top_k=five", digit_png(), png),
        ),
        bad(
            "rest-classify-top-k-over-label-count",
            400,
            "top_k",
            rest(digits + "&top_k=11", digit_png(), png),
        ),
        bad(
            "rest-caption-beam-zero",
            400,
            "beam",
            rest("/v1/caption?beam=0", encode(Image.fromarray(scene()), "PNG"), png),
        ),
        # odd but usable images: the same answer as the plain image
        ok(
            "rest-classify-cmyk-jpeg-ok",
            rest(digits, digit_variant("cmyk-jpeg"), jpeg),
            classified_like("digits-cnn", digit_png),
            remote=True,
        ),
        ok(
            "rest-classify-palette-png-ok",
            rest(digits, digit_variant("palette-png"), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-alpha-png-ok",
            rest(digits, digit_variant("alpha-png"), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-rgba-png-ok",
            rest(digits, digit_variant("rgba-png"), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-16bit-gray-png-ok",
            rest(digits, digit_variant("16bit-png"), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-16bit-rgb-png-ok",
            rest(digits, digit_variant("16bit-rgb-png"), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-float32-tiff-ok",
            rest(digits, digit_variant("float-tiff"), "image/tiff"),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-bilevel-png-ok",
            rest(digits, digit_variant("bilevel-png"), png),
            well_formed_classification("digits-cnn", 5),
        ),
        ok(
            "rest-classify-animated-gif-ok",
            rest(digits, digit_variant("animated-gif"), "image/gif"),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-classify-imagenet-16bit-gray-ok",
            rest(
                "/v1/classify?model=imagenet-cnn",
                encode(Image.fromarray(photo_gray().astype(np.uint16) * 257), "PNG"),
                content_type=png,
            ),
            classified_like("imagenet-cnn", lambda: photo_png, exact=True),
        ),
        ok(
            "rest-classify-one-pixel-ok",
            rest(
                "/v1/classify",
                encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
                content_type=png,
            ),
            well_formed_classification("imagenet-cnn", 5),
        ),
        ok(
            "rest-classify-extreme-aspect-10000x1-ok",
            rest("/v1/classify", extreme(10_000, 1), png),
            well_formed_classification("imagenet-cnn", 5),
        ),
        ok(
            "rest-classify-extreme-aspect-1x40000-ok",
            rest("/v1/classify", extreme(1, 40_000), png),
            well_formed_classification("imagenet-cnn", 5),
        ),
        ok(
            "rest-classify-digit-extreme-aspect-ok",
            rest(digits, extreme(20_000, 1), png),
            well_formed_classification("digits-cnn", 5),
        ),
        ok(
            "rest-caption-extreme-aspect-ok",
            rest("/v1/caption", extreme(1, 30_000), png),
            well_formed_caption,
        ),
        ok(
            "rest-classify-exif-rotated-ok",
            rest(digits, exif_rotated_png(big_digit()), png),
            classified_like("digits-cnn", digit_png, exact=True),
        ),
        ok(
            "rest-caption-exif-rotated-ok",
            rest("/v1/caption", exif_rotated_png(scene()), png),
            captioned_like(lambda: encode(Image.fromarray(scene()), "PNG")),
        ),
        ok(
            "rest-caption-rgba-ok",
            rest(
                "/v1/caption",
                encode(Image.fromarray(scene()).convert("RGBA"), "PNG"),
                content_type=png,
            ),
            captioned_like(lambda: encode(Image.fromarray(scene()), "PNG")),
        ),
        ok(
            "rest-caption-palette-ok",
            rest(
                "/v1/caption",
                encode(Image.fromarray(scene()).convert("P"), "PNG"),
                content_type=png,
            ),
            well_formed_caption,
        ),
    ]


def audio_cases() -> list[Case]:
    wav = "audio/wav"

    def transcribe(data: bytes, content_type: str = wav) -> Send:
        return rest("/v1/transcribe", data, content_type=content_type)

    clip = speech_clip().astype("<i2").tobytes()
    seconds = len(speech_clip()) / 16000
    bits_zero = bytearray(speech_wav())
    bits_zero[34:36] = struct.pack("<H", 0)
    return [
        bad(
            "rest-transcribe-mp3",
            400,
            "MP3",
            transcribe(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(400), "audio/mpeg"),
        ),
        bad("rest-transcribe-ogg", 400, "WAV", transcribe(b"OggS\x00\x02" + bytes(400))),
        bad(
            "rest-transcribe-riff-but-not-wave",
            400,
            "RIFF/WAVE",
            transcribe(b"RIFF" + struct.pack("<I", 100) + b"AVI " + bytes(100)),
        ),
        bad("rest-transcribe-zero-byte-body", 400, "WAV", transcribe(b""), remote=True),
        bad("rest-transcribe-truncated-header", 400, "truncated", transcribe(speech_wav()[:30])),
        bad("rest-transcribe-no-data-chunk", 400, "data chunk", transcribe(speech_wav()[:36])),
        bad("rest-transcribe-zero-bits", 400, "0 bits", transcribe(bytes(bits_zero))),
        bad("rest-transcribe-12-bit", 400, "12 bits", transcribe(wav_file(clip, bits=12))),
        bad("rest-transcribe-alaw", 400, "tag 6", transcribe(wav_file(clip[::2], bits=8, tag=6))),
        bad("rest-transcribe-rate-0", 400, "0 Hz", transcribe(wav_file(clip, rate=0))),
        bad(
            "rest-transcribe-rate-1hz", 400, "sample rate", transcribe(wav_file(clip[:200], rate=1))
        ),
        bad(
            "rest-transcribe-rate-4ghz",
            400,
            "sample rate",
            transcribe(wav_file(clip, rate=4_000_000_000)),
        ),
        bad(
            "rest-transcribe-zero-channels", 400, "channels", transcribe(wav_file(clip, channels=0))
        ),
        bad(
            "rest-transcribe-nan-samples", 400, "NaN", transcribe(float_wav(np.full(16000, np.nan)))
        ),
        # max_audio_seconds (600 s): 655 s and 35 minutes of 8 kHz 8-bit audio
        bad(
            "rest-transcribe-too-long",
            413,
            "max_audio_seconds",
            transcribe(wav_file(bytes(5 * MB), rate=8000, bits=8)),
            remote=True,
        ),
        bad(
            "rest-transcribe-hours-at-8khz",
            413,
            "limit",
            transcribe(wav_file(bytes(16 * MB), rate=8000, bits=8)),
        ),
        ok(
            "rest-transcribe-long-silence-ok",
            transcribe(silence_wav(30.0)),
            well_formed_transcript(30.0),
        ),
        bad("rest-transcribe-10ms", 400, "50 ms", transcribe(silence_wav(0.01))),
        bad(
            "rest-transcribe-image-content-type",
            415,
            "content type",
            transcribe(speech_wav(), "image/png"),
        ),
        # usable WAV layouts: the same transcript as the plain 16 kHz 16-bit mono file
        ok(
            "rest-transcribe-24bit-ok",
            transcribe(speech_variant("24bit")),
            transcribed_like(exact=True),
        ),
        ok(
            "rest-transcribe-32bit-ok",
            transcribe(speech_variant("32bit")),
            transcribed_like(exact=True),
        ),
        ok(
            "rest-transcribe-float32-ok",
            transcribe(speech_variant("float32")),
            transcribed_like(exact=True),
        ),
        ok(
            "rest-transcribe-stereo-ok",
            transcribe(speech_variant("stereo")),
            transcribed_like(exact=True),
            remote=True,
        ),
        ok(
            "rest-transcribe-6-channel-ok",
            transcribe(speech_variant("6-channel")),
            transcribed_like(exact=True),
        ),
        ok(
            "rest-transcribe-wave-format-extensible-ok",
            transcribe(speech_variant("extensible")),
            transcribed_like(exact=True),
        ),
        ok(
            "rest-transcribe-48khz-ok",
            transcribe(speech_variant("48khz")),
            transcribed_like(exact=False),
        ),
        ok(
            "rest-transcribe-44.1khz-ok",
            transcribe(speech_variant("44.1khz")),
            transcribed_like(exact=False),
        ),
        ok(
            "rest-transcribe-8khz-ok",
            transcribe(speech_variant("8khz")),
            well_formed_transcript(seconds),
        ),
        ok(
            "rest-transcribe-8bit-ok",
            transcribe(speech_variant("8bit")),
            well_formed_transcript(seconds),
        ),
        ok(
            "rest-transcribe-silence-ok",
            transcribe(silence_wav(2.0)),
            well_formed_transcript(2.0),
            remote=True,
        ),
    ]


def text_cases() -> list[Case]:
    def sentiment(
        body: Any = None, raw: bytes | None = None, content_type: str = JSON_TYPE
    ) -> Send:
        if raw is not None:
            return rest("/v1/sentiment", raw, content_type=content_type)
        return rest("/v1/sentiment", json_body=body)

    return [
        bad("rest-sentiment-empty", 400, "empty", sentiment({"text": ""})),
        bad("rest-sentiment-whitespace", 400, "empty", sentiment({"text": " \t\n "})),
        bad("rest-sentiment-huge", 400, "limit", sentiment({"text": "good " * 2000})),
        bad(
            "rest-sentiment-non-utf8",
            400,
            "utf-8",
            sentiment(raw=b'{"text": "caf\xe9 was \xff great"}'),
            remote=True,
        ),
        bad("rest-sentiment-punctuation-only", 400, "no words", sentiment({"text": "... ,, ;"})),
        bad("rest-sentiment-too-many-texts", 400, "limit", sentiment({"texts": ["ok"] * 65})),
        bad("rest-sentiment-text-not-a-string", 400, "string", sentiment({"texts": ["ok", None]})),
        bad("rest-sentiment-malformed-json", 400, "JSON", sentiment(raw=b'{"text": "ok"')),
        bad("rest-sentiment-zero-byte-body", 400, "JSON", sentiment(raw=b"")),
        bad("rest-sentiment-json-array", 400, "text", sentiment(["good"])),
        bad(
            "rest-sentiment-image-content-type",
            (400, 415),
            "JSON",
            sentiment(raw=digit_png(), content_type="image/png"),
        ),
        bad(
            "rest-sentiment-deeply-nested-json",
            400,
            "JSON",
            sentiment(raw=b'{"text": "ok", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ),
        bad(
            "rest-sentiment-5000-digit-number",
            400,
            "JSON",
            sentiment(raw=b'{"text": "ok", "x": ' + b"7" * 5000 + b"}"),
        ),
        bad(
            "rest-sentiment-unknown-model",
            404,
            "unknown model",
            rest("/v1/sentiment?model=gpt-17", json_body={"text": "fine"}),
        ),
        ok(
            "rest-sentiment-emoji-and-accents-ok",
            sentiment({"text": "Très bien, j'adore 👍🏽 — truly great acting"}),
            well_formed_sentiment,
        ),
        ok(
            "rest-sentiment-lone-surrogate-ok",
            sentiment(raw=b'{"text": "\\ud800 a great film"}'),
            well_formed_sentiment,
        ),
    ]


def v2_rest_cases() -> list[Case]:
    speech = speech_clip().astype(np.float32)[None] / 32768
    text = np.array([b"a fine film"], dtype=object)
    gzip_bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = gzip_bomb.compress(bytes(64 * MB)) + gzip_bomb.flush()
    json_headers = {"Content-Type": JSON_TYPE}
    text_json = json.dumps({"inputs": [tensor_json("text", text)]}).encode()
    return [
        bad(
            "v2rest-malformed-json",
            400,
            "JSON",
            rest(v2_path("digits-cnn"), b'{"inputs": [', JSON_TYPE),
        ),
        bad("v2rest-zero-byte-body", 400, "JSON", rest(v2_path("digits-cnn"), b"", JSON_TYPE)),
        bad(
            "v2rest-deeply-nested-json",
            400,
            "JSON",
            rest(
                v2_path("digits-cnn"),
                b"[" * 100_000 + b"]" * 100_000,
                content_type=JSON_TYPE,
            ),
        ),
        bad(
            "v2rest-5000-digit-number",
            400,
            "JSON",
            rest(
                v2_path("digits-cnn"),
                b'{"inputs": [], "id": ' + b"9" * 5000 + b"}",
                content_type=JSON_TYPE,
            ),
        ),
        bad("v2rest-no-inputs", 400, "inputs", v2_json("digits-cnn", [])),
        bad(
            "v2rest-top-level-not-object",
            400,
            "object",
            rest(v2_path("digits-cnn"), b"[1, 2]", JSON_TYPE),
        ),
        bad(
            "v2rest-wrong-shape",
            400,
            "shape",
            v2_json("digits-cnn", [tensor_json("image", np.zeros((1, 27, 28, 1), np.uint8))]),
            remote=True,
        ),
        bad(
            "v2rest-wrong-rank",
            400,
            "shape",
            v2_json("captioner", [tensor_json("image", np.zeros((64, 64, 3), np.uint8))]),
        ),
        bad(
            "v2rest-wrong-datatype",
            400,
            "datatype",
            v2_json("digits-cnn", [tensor_json("image", np.zeros((1, 28, 28, 1), np.float32))]),
        ),
        bad(
            "v2rest-unknown-datatype",
            400,
            "datatype",
            v2_json(
                "digits-cnn", [{"name": "image", "datatype": "UINT7", "shape": [1], "data": [0]}]
            ),
        ),
        bad(
            "v2rest-negative-dimension",
            400,
            "shape",
            v2_json(
                "digits-cnn",
                [{"name": "image", "datatype": "UINT8", "shape": [-1, 28], "data": [0]}],
            ),
        ),
        bad(
            "v2rest-data-count-mismatch",
            400,
            "elements",
            v2_json(
                "digits-cnn",
                [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 28, 28, 1],
                        "data": [0] * 700,
                    }
                ],
            ),
        ),
        bad(
            "v2rest-binary-byte-count-mismatch",
            400,
            "bytes",
            v2_binary("digits-cnn", [("image", "UINT8", [1, 28, 28, 1], bytes(700))]),
        ),
        bad(
            "v2rest-binary-size-past-body",
            400,
            "binary_data_size",
            v2_binary("digits-cnn", [V2_DIGIT], sizes=[5000]),
        ),
        bad(
            "v2rest-binary-trailing-bytes",
            400,
            "bytes after",
            v2_binary("digits-cnn", [V2_DIGIT], extra_tail=b"\x00" * 16),
        ),
        bad(
            "v2rest-header-length-past-body",
            400,
            "Inference-Header-Content-Length",
            v2_binary("digits-cnn", [V2_DIGIT], header_length=10**7),
        ),
        bad(
            "v2rest-missing-input",
            400,
            "needs input",
            v2_json("speech-ctc", [tensor_json("lengths", np.array([5], np.int64))]),
        ),
        bad(
            "v2rest-unknown-input",
            400,
            "no input",
            v2_json(
                "digits-cnn",
                [tensor_json("image", DIGIT_TENSOR), tensor_json("extra", np.zeros(1, np.uint8))],
            ),
        ),
        bad(
            "v2rest-unknown-output",
            400,
            "no output",
            v2_json(
                "digits-cnn", [tensor_json("image", DIGIT_TENSOR)], outputs=[{"name": "logits"}]
            ),
        ),
        bad(
            "v2rest-unknown-model",
            404,
            "unknown model",
            v2_json("no-such-model", [tensor_json("image", DIGIT_TENSOR)]),
        ),
        bad(
            "v2rest-unknown-version",
            404,
            "version",
            v2_binary("digits-cnn", [V2_DIGIT], version="v0-never"),
        ),
        bad(
            "v2rest-text-not-utf8",
            400,
            "UTF-8",
            v2_binary(
                "sentiment-lstm", [raw_tensor("text", np.array([b"\xff\xfe bad"], dtype=object))]
            ),
            remote=True,
        ),
        bad(
            "v2rest-text-empty",
            400,
            "empty",
            v2_json("sentiment-lstm", [tensor_json("text", np.array([b""], dtype=object))]),
        ),
        bad(
            "v2rest-token-ids-out-of-range",
            400,
            "token ids",
            v2_json("sentiment-lstm", [tensor_json("tokens", np.array([[5, 10**9]], np.int64))]),
        ),
        bad(
            "v2rest-nan-waveform",
            400,
            "NaN",
            v2_binary(
                "speech-ctc", [raw_tensor("waveform", np.full((1, 16000), np.nan, np.float32))]
            ),
        ),
        bad(
            "v2rest-batch-over-limit",
            400,
            "batch",
            v2_binary("digits-cnn", [raw_tensor("image", np.zeros((65, 28, 28, 1), np.uint8))]),
        ),
        bad(
            "v2rest-beam-not-an-integer",
            400,
            "beam",
            v2_json(
                "captioner",
                [tensor_json("image", scene()[None])],
                parameters={"beam": "wide"},
            ),
        ),
        bad(
            "v2rest-oversized-body",
            413,
            "limit",
            rest(v2_path("digits-cnn"), bytes(OVERSIZED), BINARY_TYPE),
        ),
        bad(
            "v2rest-gzip-bomb",
            413,
            "decompresses",
            rest(v2_path("digits-cnn"), bomb, headers={**json_headers, "Content-Encoding": "gzip"}),
        ),
        bad(
            "v2rest-gzip-garbage",
            400,
            "gzip",
            rest(
                v2_path("digits-cnn"),
                b"\x1f\x8b not gzip",
                headers={**json_headers, "Content-Encoding": "gzip"},
            ),
        ),
        bad(
            "v2rest-gzip-trailing-garbage",
            400,
            "after the end",
            rest(
                v2_path("sentiment-lstm"),
                gzip_of(text_json) + b"garbage",
                headers={**json_headers, "Content-Encoding": "gzip"},
            ),
        ),
        bad(
            "v2rest-gzip-second-member",
            400,
            "after the end",
            rest(
                v2_path("sentiment-lstm"),
                gzip_of(text_json) + gzip_of(b" "),
                headers={**json_headers, "Content-Encoding": "gzip"},
            ),
        ),
        ok(
            "v2rest-gzip-one-member-ok",
            rest(
                v2_path("sentiment-lstm"),
                gzip_of(text_json),
                headers={**json_headers, "Content-Encoding": "gzip"},
            ),
            v2_output_shapes(probabilities=(1, 2)),
        ),
        *(
            bad(
                f"v2rest-header-length-{label}",
                400,
                "Inference-Header-Content-Length",
                rest(
                    v2_path("digits-cnn"),
                    b"{}",
                    BINARY_TYPE,
                    headers={"Inference-Header-Content-Length": value},
                ),
            )
            for label, value in [
                ("superscript-two", "\u00b2"),
                ("superscript-twelve", "\u00b9\u00b2"),
                ("digits-then-superscript", "105\u00b2"),
                ("5003-digits", "9" * 5003),
                ("negative", "-1"),
            ]
        ),
        bad(
            "v2rest-classification-true",
            400,
            "classification",
            v2_json(
                "digits-cnn",
                [tensor_json("image", DIGIT_TENSOR)],
                outputs=[{"name": "probabilities", "parameters": {"classification": True}}],
            ),
        ),
        bad(
            "v2rest-binary-data-output-string",
            400,
            "binary_data_output",
            v2_json(
                "digits-cnn",
                [tensor_json("image", DIGIT_TENSOR)],
                parameters={"binary_data_output": "false"},
            ),
        ),
        bad(
            "v2rest-binary-data-string",
            400,
            "binary_data",
            v2_json(
                "digits-cnn",
                [tensor_json("image", DIGIT_TENSOR)],
                outputs=[{"name": "probabilities", "parameters": {"binary_data": "no"}}],
            ),
        ),
        bad(
            "v2rest-five-million-empty-bytes",
            413,
            "max_bytes_elements",
            v2_binary("sentiment-lstm", [("text", "BYTES", [5_000_000], bytes(20_000_000))]),
        ),
        bad(
            "v2rest-json-tokens-over-the-element-limit",
            413,
            "max_json_elements",
            rest(
                v2_path("sentiment-lstm"),
                b'{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 1500000], '
                b'"data": [' + b",".join([b"1"] * 1_500_000) + b"]}]}",
                JSON_TYPE,
            ),
        ),
        bad(
            "v2rest-json-over-the-json-limit",
            413,
            "max_json_bytes",
            rest(
                v2_path("sentiment-lstm"),
                b'{"inputs": [{"name": "tokens", "datatype": "INT64", "shape": [1, 10000000], '
                b'"data": [' + b",".join([b"0"] * 10_000_000) + b"]}]}",
                JSON_TYPE,
            ),
        ),
        bad("v2rest-unknown-route", 404, "no route", rest("/v2/models/digits-cnn/nope", b"{}")),
        bad("rest-unknown-route", 404, "no route", rest("/v1/nope", b"{}", JSON_TYPE)),
        bad(
            "v2rest-unsupported-encoding",
            415,
            "Content-Encoding",
            rest(v2_path("digits-cnn"), b"{}", headers={**json_headers, "Content-Encoding": "br"}),
        ),
        ok(
            "v2rest-silence-ok",
            v2_binary("speech-ctc", [raw_tensor("waveform", np.zeros((2, 16000), np.float32))]),
            v2_transcripts(2),
        ),
        ok(
            "v2rest-speech-without-lengths-ok",
            v2_binary("speech-ctc", [raw_tensor("waveform", speech)]),
            v2_transcripts(1),
        ),
        ok(
            "v2rest-json-text-ok",
            v2_json("sentiment-lstm", [tensor_json("text", text)]),
            v2_output_shapes(probabilities=(1, 2)),
        ),
    ]


def grpc_cases() -> list[Case]:
    garbage = b"\xff" * 12 + b"\x00\x01 definitely not protobuf"
    classify = pb.ClassifyRequest(image=digit_png(), model="digits-cnn", top_k=3)
    return [
        bad(
            "grpc-classify-truncated-png",
            "INVALID_ARGUMENT",
            "truncated",
            rpc(
                "Classify",
                pb.ClassifyRequest(image=truncated(digit_png(), 0.5), model="digits-cnn"),
            ),
        ),
        ok(
            "grpc-classify-extreme-aspect-ok",
            rpc("Classify", pb.ClassifyRequest(image=extreme(10_000, 1))),
            well_formed_grpc_classification,
        ),
        bad(
            "grpc-classify-png-bomb",
            "OUT_OF_RANGE",
            "pixels",
            rpc("Classify", pb.ClassifyRequest(image=png_declaring(100_000, 100_000))),
            remote=True,
        ),
        bad(
            "grpc-classify-empty-image",
            "INVALID_ARGUMENT",
            "empty",
            rpc("Classify", pb.ClassifyRequest()),
        ),
        bad(
            "grpc-classify-unknown-model",
            "NOT_FOUND",
            "unknown model",
            rpc("Classify", pb.ClassifyRequest(image=digit_png(), model="nope")),
        ),
        bad(
            "grpc-classify-top-k-over-label-count",
            "INVALID_ARGUMENT",
            "top_k",
            rpc("Classify", pb.ClassifyRequest(image=digit_png(), model="digits-cnn", top_k=11)),
        ),
        ok(
            "grpc-classify-cmyk-jpeg-ok",
            rpc(
                "Classify", pb.ClassifyRequest(image=digit_variant("cmyk-jpeg"), model="digits-cnn")
            ),
            classified_like("digits-cnn", digit_png),
        ),
        bad(
            "grpc-caption-beam-over-limit",
            "INVALID_ARGUMENT",
            "beam",
            rpc(
                "Caption", pb.CaptionRequest(image=encode(Image.fromarray(scene()), "PNG"), beam=99)
            ),
        ),
        ok(
            "grpc-caption-16bit-png-ok",
            rpc("Caption", pb.CaptionRequest(image=png16_rgb(scene()))),
            captioned_like(lambda: encode(Image.fromarray(scene()), "PNG")),
        ),
        bad(
            "grpc-sentiment-no-texts",
            "INVALID_ARGUMENT",
            "no texts",
            rpc("Sentiment", pb.SentimentRequest()),
        ),
        bad(
            "grpc-sentiment-whitespace",
            "INVALID_ARGUMENT",
            "texts[1] is empty",
            rpc("Sentiment", pb.SentimentRequest(texts=["fine", "   "])),
        ),
        bad(
            "grpc-sentiment-huge",
            "INVALID_ARGUMENT",
            "limit",
            rpc("Sentiment", pb.SentimentRequest(texts=["bad " * 2000])),
        ),
        bad(
            "grpc-sentiment-non-utf8",
            "INVALID_ARGUMENT",
            "UTF-8",
            rpc("Sentiment", b"\x0a\x0bcaf\xe9 is \xffok"),
            remote=True,
        ),
        bad(
            "grpc-transcribe-not-wav",
            "INVALID_ARGUMENT",
            "FLAC",
            rpc("Transcribe", pb.TranscribeRequest(audio=b"fLaC" + bytes(200))),
        ),
        bad(
            "grpc-transcribe-truncated-header",
            "INVALID_ARGUMENT",
            "truncated",
            rpc("Transcribe", pb.TranscribeRequest(audio=speech_wav()[:30])),
        ),
        bad(
            "grpc-transcribe-too-long",
            "OUT_OF_RANGE",
            "max_audio_seconds",
            rpc(
                "Transcribe", pb.TranscribeRequest(audio=wav_file(bytes(5 * MB), rate=8000, bits=8))
            ),
        ),
        ok(
            "grpc-transcribe-silence-ok",
            rpc("Transcribe", pb.TranscribeRequest(audio=silence_wav(1.5))),
            well_formed_transcript(1.5),
        ),
        bad(
            "grpc-malformed-protobuf",
            "INVALID_ARGUMENT",
            "malformed",
            rpc("Classify", garbage),
            remote=True,
        ),
        bad(
            "grpc-truncated-protobuf",
            "INVALID_ARGUMENT",
            "truncated",
            rpc("Classify", classify.SerializeToString()[:100]),
        ),
        bad(
            "grpc-wrong-wire-type", "INVALID_ARGUMENT", "wire type", rpc("Transcribe", b"\x0f\x01")
        ),
        bad(
            "grpc-list-models-malformed",
            "INVALID_ARGUMENT",
            "malformed",
            rpc("ListModels", b"\x08"),
        ),
        bad(
            "grpc-oversized-message",
            "RESOURCE_EXHAUSTED",
            "larger than max",
            rpc("Classify", pb.ClassifyRequest(image=bytes(OVERSIZED))),
        ),
    ]


def v2_grpc_cases() -> list[Case]:
    digit = raw_tensor("image", DIGIT_TENSOR)
    return [
        bad(
            "v2grpc-wrong-shape",
            "INVALID_ARGUMENT",
            "shape",
            rpc(
                "ModelInfer",
                infer_request(
                    "digits-cnn", [raw_tensor("image", np.zeros((1, 28, 28, 3), np.uint8))]
                ),
            ),
        ),
        bad(
            "v2grpc-wrong-datatype",
            "INVALID_ARGUMENT",
            "datatype",
            rpc(
                "ModelInfer",
                infer_request(
                    "digits-cnn", [raw_tensor("image", np.zeros((1, 28, 28, 1), np.int8))]
                ),
            ),
        ),
        bad(
            "v2grpc-byte-count-mismatch",
            "INVALID_ARGUMENT",
            "bytes",
            rpc("ModelInfer", infer_request("digits-cnn", [digit], raw=[bytes(783)])),
            remote=True,
        ),
        bad(
            "v2grpc-raw-contents-count-mismatch",
            "INVALID_ARGUMENT",
            "raw_input_contents",
            rpc("ModelInfer", infer_request("digits-cnn", [digit], raw=[digit[3], digit[3]])),
        ),
        bad(
            "v2grpc-missing-input",
            "INVALID_ARGUMENT",
            "needs input",
            rpc("ModelInfer", infer_request("captioner", [])),
        ),
        bad(
            "v2grpc-unknown-model",
            "NOT_FOUND",
            "unknown model",
            rpc("ModelInfer", infer_request("no-such-model", [digit])),
        ),
        bad(
            "v2grpc-unknown-version",
            "NOT_FOUND",
            "version",
            rpc("ModelInfer", infer_request("digits-cnn", [digit], version="v0-never")),
        ),
        bad(
            "v2grpc-unknown-model-metadata",
            "NOT_FOUND",
            "unknown model",
            rpc("ModelMetadata", v2pb.ModelMetadataRequest(name="no-such-model")),
        ),
        bad(
            "v2grpc-fp16-in-typed-contents",
            "INVALID_ARGUMENT",
            "raw_input_contents",
            rpc(
                "ModelInfer",
                v2pb.ModelInferRequest(
                    model_name="speech-ctc",
                    inputs=[
                        v2pb.ModelInferRequest.InferInputTensor(
                            name="waveform", datatype="FP16", shape=[1, 2]
                        )
                    ],
                ),
            ),
        ),
        bad(
            "v2grpc-typed-contents-count-mismatch",
            "INVALID_ARGUMENT",
            "elements",
            rpc(
                "ModelInfer",
                v2pb.ModelInferRequest(
                    model_name="sentiment-lstm",
                    inputs=[
                        v2pb.ModelInferRequest.InferInputTensor(
                            name="text",
                            datatype="BYTES",
                            shape=[2],
                            contents=v2pb.InferTensorContents(bytes_contents=[b"one"]),
                        )
                    ],
                ),
            ),
        ),
        bad(
            "v2grpc-text-not-utf8",
            "INVALID_ARGUMENT",
            "UTF-8",
            rpc(
                "ModelInfer",
                infer_request(
                    "sentiment-lstm", [raw_tensor("text", np.array([b"\xc3\x28"], dtype=object))]
                ),
            ),
        ),
        bad(
            "v2grpc-nan-waveform",
            "INVALID_ARGUMENT",
            "infinite",
            rpc(
                "ModelInfer",
                infer_request(
                    "speech-ctc", [raw_tensor("waveform", np.full((1, 8000), np.inf, np.float32))]
                ),
            ),
        ),
        bad(
            "v2grpc-classification-of-caption",
            "INVALID_ARGUMENT",
            "classification",
            rpc(
                "ModelInfer",
                infer_request(
                    "captioner", [raw_tensor("image", scene()[None])], outputs={"caption": 3}
                ),
            ),
        ),
        ok(
            "v2grpc-silence-ok",
            rpc(
                "ModelInfer",
                infer_request(
                    "speech-ctc", [raw_tensor("waveform", np.zeros((1, 8000), np.float32))]
                ),
            ),
            v2_transcripts(1),
        ),
        bad(
            "v2grpc-classification-bool",
            "INVALID_ARGUMENT",
            "classification",
            rpc("ModelInfer", classification_as_bool()),
        ),
        bad(
            "v2grpc-five-million-empty-bytes",
            "OUT_OF_RANGE",
            "max_bytes_elements",
            rpc(
                "ModelInfer",
                infer_request(
                    "sentiment-lstm", [("text", "BYTES", [5_000_000], bytes(20_000_000))]
                ),
            ),
        ),
        bad(
            "v2grpc-typed-contents-far-more-than-the-shape",
            "INVALID_ARGUMENT",
            "needs 4 elements, got 3000000",
            rpc("ModelInfer", typed_tokens(3_000_000, shape=[1, 4])),
        ),
        bad(
            "v2grpc-many-tensors-over-the-element-limit-together",
            "OUT_OF_RANGE",
            "in all",
            rpc("ModelInfer", many_typed_tensors(4, 400_000)),
        ),
        bad(
            "v2grpc-typed-contents-over-the-element-limit",
            "OUT_OF_RANGE",
            "max_json_elements",
            rpc("ModelInfer", typed_tokens(2_000_000)),
        ),
        bad(
            "v2grpc-malformed-protobuf",
            "INVALID_ARGUMENT",
            "malformed",
            rpc("ModelInfer", b"\x12\xff\xff\xff\xff\x0f garbage"),
            remote=True,
        ),
        bad(
            "v2grpc-model-name-not-utf8",
            "INVALID_ARGUMENT",
            "UTF-8",
            rpc("ModelInfer", b"\x0a\x02\xff\xfe"),
        ),
    ]


@cache
def corpus() -> tuple[Case, ...]:
    cases = (
        image_cases()
        + audio_cases()
        + text_cases()
        + v2_rest_cases()
        + grpc_cases()
        + v2_grpc_cases()
    )
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    return tuple(cases)


# --- valid requests for the neighbours test ---------------------------------------------------


def digit_pixels_of(data: bytes) -> np.ndarray:
    """What the server feeds the digits model for an encoded image (V2 sends it directly)."""
    return digit_pixels(decode_image(data, 10**8), 28)[None]
