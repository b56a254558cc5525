"""What each call sends (path, query, body, headers) and how its answer becomes a typed result."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from service.client import Caption, Classification, ModelInfo, Sentiment, Transcript
from tests.client.conftest import Server, error, reply

PNG = b"\x89PNG\r\n\x1a\n" + bytes(32)
JPEG = b"\xff\xd8\xff\xe0" + bytes(32)
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(32)
VERSION = {"model": "m", "version": "v1-1"}
CLASSIFIED = {
    **VERSION,
    "predictions": [
        {"label": "7", "index": 7, "score": 0.9},
        {"label": "1", "index": 1, "score": 0.05},
    ],
    "confidence": 0.9,
    "in_domain": True,
    "domain_score": 0.2,
}


def test_classify_sends_the_image_raw_and_reads_every_field(client, tmp_path: Path) -> None:
    server = Server(reply(200, {**CLASSIFIED, "added_later": {"x": 1}}))
    path = tmp_path / "digit.png"
    path.write_bytes(PNG)
    with client(server, api_key="k3y") as deepserve:
        result = deepserve.classify(path, model="digits-cnn", top_k=2)
    (request,) = server.requests
    assert request.method == "POST" and request.url.path == "/v1/classify"
    assert dict(request.url.params) == {"model": "digits-cnn", "top_k": "2"}
    assert request.content == PNG and request.headers["content-type"] == "image/png"
    assert request.headers["authorization"] == "Bearer k3y"
    assert "x-request-timeout-ms" not in request.headers  # no deadline: none sent
    assert isinstance(result, Classification)
    assert result.label == "7" and result.predictions[1].score == 0.05
    assert (result.model, result.version, result.confidence) == ("m", "v1-1", 0.9)
    assert result.in_domain is True and result.domain_score == 0.2
    assert result.raw["added_later"] == {"x": 1}  # what a newer server adds stays readable


def test_inputs_may_be_bytes_a_path_string_or_an_open_file(client, tmp_path: Path) -> None:
    server = Server(reply(200, CLASSIFIED))
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    with client(server) as deepserve, path.open("rb") as file:
        for image in (JPEG, str(path), file):
            deepserve.classify(image)
    assert [r.content for r in server.requests] == [JPEG] * 3
    assert {r.headers["content-type"] for r in server.requests} == {"image/jpeg"}
    assert all(dict(r.url.params) == {} for r in server.requests)  # server defaults


def test_reject_out_of_domain_per_client_and_per_call(client) -> None:
    server = Server(reply(200, CLASSIFIED))
    with client(server, reject_out_of_domain=True) as deepserve:
        deepserve.classify(PNG)
        deepserve.classify(PNG, reject_out_of_domain=False)
    first, second = server.requests
    assert first.url.params["reject_out_of_domain"] == "true"
    assert "reject_out_of_domain" not in second.url.params


def test_sentiment_of_one_text_and_of_a_list(client) -> None:
    one = {**VERSION, "label": "positive", "score": 0.99, "confidence": 0.99}
    many = {
        **VERSION,
        "results": [
            {"label": "negative", "score": 0.8, "confidence": 0.8},
            {"label": "positive", "score": 0.7, "confidence": 0.7, "in_domain": False},
        ],
    }
    server = Server(reply(200, one), reply(200, many))
    with client(server) as deepserve:
        single = deepserve.sentiment("a gorgeous film", model="sentiment-lstm")
        batch = deepserve.sentiment(["dull", "a delight"])
    assert json.loads(server.requests[0].content) == {"text": "a gorgeous film"}
    assert server.requests[0].headers["content-type"] == "application/json"
    assert json.loads(server.requests[1].content) == {"texts": ["dull", "a delight"]}
    assert single == Sentiment("m", "v1-1", 0.99, None, None, one, "positive", 0.99)
    assert [s.label for s in batch] == ["negative", "positive"]
    assert batch[1].in_domain is False and batch[1].model == "m" and batch[1].version == "v1-1"


def test_transcribe_and_caption(client) -> None:
    segment = {"index": 0, "start_s": 0.0, "end_s": 0.8, "text": "volume up", "confidence": 0.97}
    transcript = {
        **VERSION,
        "text": "volume up",
        "confidence": 0.97,
        "duration_s": 0.81,
        "segments": [{**segment, "in_domain": True, "domain_score": 0.04}],
        "in_domain": True,
        "domain_score": 0.04,
    }
    caption = {**VERSION, "caption": "a red circle", "score": -0.01, "beam": 3, "confidence": 0.9}
    server = Server(reply(200, transcript), reply(200, caption))
    with client(server) as deepserve:
        heard = deepserve.transcribe(WAV)
        said = deepserve.caption(PNG, beam=3)
    assert server.requests[0].headers["content-type"] == "audio/wav"
    assert server.requests[0].url.path == "/v1/transcribe"
    assert dict(server.requests[1].url.params) == {"beam": "3"}
    assert isinstance(heard, Transcript) and heard.text == "volume up"
    assert heard.segments[0].end_s == 0.8 and heard.segments[0].error is None
    assert heard.segments[0].in_domain is True and heard.domain_score == 0.04
    assert isinstance(said, Caption) and (said.caption, said.beam, said.score) == (
        "a red circle",
        3,
        -0.01,
    )


def test_explain_as_a_map_and_as_a_png(client) -> None:
    answer = {
        **VERSION,
        "target": {"label": "7", "index": 7, "score": 0.9},
        "grid_size": 2,
        "grid": [[0.1, -0.2], [0.0, 0.3]],
        "fill": "mean",
        "fill_value": [12],
        "input_size": [28, 28],
    }
    server = Server(reply(200, answer), reply(200, PNG, **{"content-type": "image/png"}))
    with client(server) as deepserve:
        explained = deepserve.explain(PNG, "digits-cnn", grid=2, target=7)
        picture = deepserve.explain_png(PNG, "digits-cnn", grid=2, size=64)
    assert dict(server.requests[0].url.params) == {
        "model": "digits-cnn",
        "grid": "2",
        "target": "7",
        "format": "json",
    }
    assert explained.target.label == "7" and explained.grid[0][1] == -0.2
    assert explained.input_size == (28, 28) and explained.raw["fill"] == "mean"
    assert server.requests[1].url.params["format"] == "png"
    assert server.requests[1].url.params["size"] == "64" and picture == PNG


def test_models_model_and_probes(client) -> None:
    info = {"name": "a b", "ready": True, "version": "v1", "task": "t", "metrics": {"acc": 0.9}}
    broken = {"name": "c", "ready": False, "error": "unreadable spec.json"}
    server = Server(
        reply(200, {"models": [info, broken]}),
        reply(200, info),
        reply(200, {"status": "ok"}),
        error(503, "not_ready", "loading", **{"Retry-After": "1"}),
    )
    with client(server) as deepserve:
        listed = deepserve.models()
        one = deepserve.model("a b", version="v1")
        assert deepserve.live() is True
        assert deepserve.ready() is False  # a probe is not retried
    assert listed[1] == ModelInfo(
        "c", False, "unreadable spec.json", None, None, None, [], {}, broken
    )
    assert listed[0].metrics == {"acc": 0.9} and one.name == "a b"
    assert server.requests[1].url.raw_path == b"/v1/models/a%20b?version=v1"
    assert [r.url.path for r in server.requests[2:]] == ["/livez", "/readyz"]


def test_an_answer_the_client_cannot_read_is_a_deepserve_error(client) -> None:
    from service.client import DeepserveError

    server = Server(reply(200, b"<html>a proxy's page</html>"), reply(200, {"model": "m"}))
    with client(server) as deepserve:
        for _ in range(2):
            with pytest.raises(DeepserveError) as raised:
                deepserve.classify(PNG)
            assert raised.value.code == "unexpected_answer" and raised.value.status == 200


def test_the_async_client_sends_the_same_calls(async_client) -> None:
    one = {**VERSION, "label": "positive", "score": 0.99, "confidence": 0.99}
    server = Server(reply(200, CLASSIFIED), reply(200, one), reply(200, {"models": []}))

    async def run() -> None:
        async with async_client(server, api_key="k", deadline=5) as deepserve:
            assert (await deepserve.classify(PNG, "digits-cnn")).label == "7"
            assert (await deepserve.sentiment("fine")).label == "positive"
            assert await deepserve.models() == []

    asyncio.run(run())
    assert [r.url.path for r in server.requests] == ["/v1/classify", "/v1/sentiment", "/v1/models"]
    assert {r.headers["authorization"] for r in server.requests} == {"Bearer k"}
    assert {r.headers["x-request-timeout-ms"] for r in server.requests} == {"5000"}
