"""The bad-input corpus (bad_inputs.py) against a real server, over every protocol.

Every refused input gets its 4xx (gRPC INVALID_ARGUMENT / NOT_FOUND / OUT_OF_RANGE) with a
message naming the problem; odd but usable inputs get the plain input's answer. The whole corpus
runs on the local placement and a representative subset on the remote one (decoding and
validation happen in the gateway for both). Afterwards the server is alive and ready and counted
no 5xx for any of it; and bad inputs sent in the same instant as valid ones to the same model
never change the valid ones' answers.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from service.protocols.proto.gen import deepserve_pb2 as pb
from tests.integration.bad_inputs import (
    Case,
    Client,
    Reply,
    corpus,
    digit_pixels_of,
    raw_tensor,
    rest,
    rpc,
    specs,
    v2_binary,
)
from tests.integration.media import png

pytestmark = pytest.mark.models

CASES = corpus()


def params(cases: list[Case] | tuple[Case, ...]) -> list[Any]:
    return [pytest.param(case, id=case.id) for case in cases]


@pytest.fixture(scope="module")
def client(server):
    http = requests.Session()
    http.mount("http://", requests.adapters.HTTPAdapter(pool_connections=32, pool_maxsize=32))
    channel = grpc.insecure_channel(server.grpc_target)
    yield Client(server.url, http, channel)
    channel.close()
    http.close()


def server_errors(url: str) -> float:
    """Requests answered 5xx so far, over every protocol and model (deepserve_requests_total)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "deepserve_requests_total" and sample.labels.get("status") == "5xx"
    )


@pytest.fixture(scope="module")
def errors_before(server) -> float:
    return server_errors(server.url)


def run_case(case: Case, client: Client) -> None:
    reply = case.send(client)
    if isinstance(reply.status, int) and reply.status >= 500:
        client.http.close()  # the server may drop a connection it answered 500 on: do not reuse
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert reply.status in expected, f"{case.id}: {reply.status} {reply.message[:500]}"
    if case.check is not None:
        case.check(client, reply)
        return
    assert case.needle.lower() in reply.message.lower(), f"{case.id}: {reply.message[:500]}"


@pytest.mark.parametrize("server", ["local"], indirect=True)
@pytest.mark.parametrize("case", params(CASES))
def test_corpus(server, client, errors_before, case: Case) -> None:
    run_case(case, client)


@pytest.mark.parametrize("server", ["remote"], indirect=True)
@pytest.mark.parametrize("case", params([case for case in CASES if case.remote]))
def test_corpus_on_remote_runners(server, client, errors_before, case: Case) -> None:
    run_case(case, client)


# --- bad inputs beside valid ones ------------------------------------------------------------

NEIGHBOUR_BAD = [
    "rest-classify-truncated-png",
    "rest-classify-png-bomb",
    "rest-classify-png-bad-crc",
    "rest-classify-zero-byte-body",
    "v2rest-wrong-shape",
    "v2rest-binary-byte-count-mismatch",
    "v2grpc-byte-count-mismatch",
    "grpc-classify-truncated-png",
    "grpc-malformed-protobuf",
    "rest-sentiment-empty",
    "rest-sentiment-non-utf8",
    "v2rest-text-not-utf8",
    "v2rest-token-ids-out-of-range",
    "grpc-sentiment-non-utf8",
    "grpc-sentiment-whitespace",
]


def digit_jobs(images: list[bytes]) -> list[tuple[str, int, Any]]:
    """(kind, item, send) for every digit over REST, gRPC and V2 REST."""
    jobs = []
    for item, data in enumerate(images):
        jobs.append(
            ("digit", item, rest("/v1/classify?model=digits-cnn&top_k=1", data, "image/png"))
        )
        request = pb.ClassifyRequest(image=data, model="digits-cnn", top_k=1)
        jobs.append(("digit", item, rpc("Classify", request)))
        jobs.append(
            ("digit", item, v2_binary("digits-cnn", [raw_tensor("image", digit_pixels_of(data))]))
        )
    return jobs


def text_jobs(texts: list[str]) -> list[tuple[str, int, Any]]:
    jobs = []
    for item, text in enumerate(texts):
        jobs.append(("text", item, rest("/v1/sentiment", json_body={"text": text})))
        jobs.append(("text", item, rpc("Sentiment", pb.SentimentRequest(texts=[text]))))
        tensor = raw_tensor("text", np.array([text.encode()], dtype=object))
        jobs.append(("text", item, v2_binary("sentiment-lstm", [tensor])))
    return jobs


def top_of(reply: Reply) -> tuple[int, float]:
    """(class index, score) from a classify or V2 answer."""
    if "predictions" in reply.body:
        best = reply.body["predictions"][0]
        return int(best["index"]), float(best["score"])
    row = reply.body["probabilities"][0]
    return int(row.argmax()), float(row.max())


def sentiment_of(reply: Reply) -> tuple[str, float]:
    labels = specs()["sentiment-lstm"].labels
    if "probabilities" in reply.body:
        row = reply.body["probabilities"][0]
        return labels[int(row.argmax())], float(row.max())
    result = reply.body["results"][0] if "results" in reply.body else reply.body
    return result["label"], float(result["score"])


def samples(client: Client, model: str) -> int:
    """Items the model has computed so far (summed over its batches)."""
    info = client.http.get(f"{client.url}/v1/models/{model}", timeout=30).json()
    return int(info["batching"]["samples"])


@pytest.mark.parametrize("server", ["local", "remote"], indirect=True)
def test_bad_inputs_never_fail_their_batch_neighbours(server, client, errors_before) -> None:
    """Valid and bad requests to the same models at once: every valid one gets exactly the answer
    it gets alone, every bad one its own 4xx."""
    held_digits = specs()["digits-cnn"].heldout()["image"][:6]
    images = [png(image) for image in held_digits]
    texts = [str(text) for text in specs()["sentiment-lstm"].heldout()["text"][:6]]
    alone_digits = [
        top_of(rest("/v1/classify?model=digits-cnn&top_k=1", d, "image/png")(client))
        for d in images
    ]
    alone_texts = [
        sentiment_of(rest("/v1/sentiment", json_body={"text": t})(client)) for t in texts
    ]

    by_id = {case.id: case for case in CASES}
    bad = [("bad", i, by_id[case_id]) for i, case_id in enumerate(NEIGHBOUR_BAD * 2)]
    jobs: list[tuple[str, int, Any]] = digit_jobs(images) + text_jobs(texts) + bad
    random.Random(7).shuffle(jobs)

    start = threading.Barrier(len(jobs))

    def call(job: tuple[str, int, Any]) -> Reply:
        kind, _, target = job
        start.wait(timeout=30)  # all at once
        return target.send(client) if kind == "bad" else target(client)

    computed = {model: samples(client, model) for model in ("digits-cnn", "sentiment-lstm")}
    with ThreadPoolExecutor(len(jobs)) as pool:
        replies = list(pool.map(call, jobs))

    for (kind, item, target), reply in zip(jobs, replies, strict=True):
        if kind == "bad":
            assert reply.status == target.status, f"{target.id}: {reply.status} {reply.message}"
            assert target.needle.lower() in reply.message.lower(), (target.id, reply.message)
            continue
        assert reply.status in (200, "OK"), f"{kind} {item}: {reply.status} {reply.message}"
        if kind == "digit":
            index, score = top_of(reply)
            assert index == alone_digits[item][0]
            assert score == pytest.approx(alone_digits[item][1], abs=1e-5)
        else:
            label, score = sentiment_of(reply)
            assert label == alone_texts[item][0]
            assert score == pytest.approx(alone_texts[item][1], abs=1e-5)
    for model in computed:  # every valid request reached the model, no bad one did
        valid = 3 * (len(images) if model == "digits-cnn" else len(texts))
        assert samples(client, model) - computed[model] == valid, model


# --- after the corpus ------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["local", "remote"], indirect=True)
def test_server_is_unharmed_and_counted_no_5xx(server, client, errors_before) -> None:
    """Runs last in this module: the process lives, is ready, serves, and its metrics count no
    5xx for the corpus traffic."""
    assert server.process.poll() is None, server.log()[-4000:]
    assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
    models = rpc("ListModels", pb.ListModelsRequest())(client)
    assert models.status == "OK" and all(m["ready"] for m in models.body["models"])
    assert server_errors(server.url) == errors_before, "5xx answers were counted for the corpus"
