"""ModelStreamInfer (Triton's bidirectional stream) on a real server, called with stock
tritonclient.grpc (start_stream / async_stream_infer / stop_stream) and with a raw channel.

Every model answers on a stream exactly what unary ModelInfer answers for the same inputs; a bad
request gets its error_message and the stream carries on; quiet streams end, cancelled ones are
let go of (deepserve_open_streams back at 0), keys are checked, and streams under load lose
nothing. No latency is asserted.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2 as pb  # NOTE: tritonclient's: ours would clash with it
from tritonclient.utils import InferenceServerException

from loadtests.server import Server, running_server
from service.store.specs import latest_specs

pytestmark = pytest.mark.models

TIMEOUT = 60.0  # generous: the machine is shared
METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
KEY = "v2-stream-key-5c0e27d1"  # test-only key
IDLE_S = 1.0
OPEN_STREAMS = re.compile(r'^deepserve_open_streams\{protocol="v2-grpc-stream"\} (\S+)$', re.M)
REQUEST_ID = re.compile(r"^\[request id: ([^\]]+)\] ")


# --- helpers ------------------------------------------------------------------------------------


def tensor(name: str, array: np.ndarray) -> grpcclient.InferInput:
    datatype = "BYTES" if array.dtype == object else grpcclient.np_to_triton_dtype(array.dtype)
    infer_input = grpcclient.InferInput(name, list(array.shape), datatype)
    infer_input.set_data_from_numpy(array)
    return infer_input


def inputs_of(tensors: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    return [tensor(name, array) for name, array in tensors.items()]


class Answers:
    """A stream's callback: keeps every (result, error) by request id (errors carry theirs at
    the start of their message, as Triton's do)."""

    def __init__(self) -> None:
        self.by_id: dict[str, list[tuple[Any, InferenceServerException | None]]] = {}
        self.finished: set[str] = set()
        self.stream_errors: list[InferenceServerException] = []
        self.changed = threading.Condition()

    def __call__(self, result: Any, error: InferenceServerException | None) -> None:
        with self.changed:
            if error is not None:
                found = REQUEST_ID.match(error.message() or "")
                if found is None:
                    self.stream_errors.append(error)  # the stream itself ended
                else:
                    self.by_id.setdefault(found.group(1), []).append((None, error))
                    self.finished.add(found.group(1))
            else:
                response = result.get_response()
                self.by_id.setdefault(response.id, []).append((result, None))
                if response.parameters["triton_final_response"].bool_param:
                    self.finished.add(response.id)
            self.changed.notify_all()

    def wait(self, ids: set[str], timeout: float = TIMEOUT) -> None:
        with self.changed:
            ended = self.changed.wait_for(
                lambda: ids <= self.finished or bool(self.stream_errors), timeout
            )
        assert not self.stream_errors, [str(e) for e in self.stream_errors]
        assert ended, f"unanswered after {timeout} s: {sorted(ids - self.finished)}"

    def final(self, request_id: str) -> Any:
        """The last result of a request that succeeded."""
        result, error = self.by_id[request_id][-1]
        assert error is None, f"{request_id}: {error}"
        return result


def stream_all(
    target: str,
    requests_: list[dict[str, Any]],
    headers: dict[str, str] | None = None,
) -> Answers:
    """Send every request on one stream (all in flight at once) and wait for all answers."""
    answers = Answers()
    client = grpcclient.InferenceServerClient(target)
    try:
        client.start_stream(answers, headers=headers)
        for request in requests_:
            client.async_stream_infer(**request)
        answers.wait({request["request_id"] for request in requests_})
        client.stop_stream()
    finally:
        client.close()
    return answers


def same_outputs(streamed: Any, unary: Any, names: list[str]) -> None:
    for name in names:
        got, want = streamed.as_numpy(name), unary.as_numpy(name)
        assert got.shape == want.shape and got.dtype == want.dtype, name
        if got.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def model_inputs() -> dict[str, tuple[dict[str, np.ndarray], list[str], dict[str, Any]]]:
    """model -> (inputs, outputs to compare, request parameters), small but real inputs."""
    specs = latest_specs()
    rng = np.random.default_rng(7)
    speech = specs["speech-ctc"].heldout()
    texts = [str(t).encode() for t in specs["sentiment-lstm"].heldout()["text"][:3]]
    return {
        "digits-cnn": (
            {"image": specs["digits-cnn"].heldout()["image"][:3]},
            ["probabilities"],
            {},
        ),
        "imagenet-cnn": (
            {"image": rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)},
            ["probabilities"],
            {},
        ),
        "sentiment-lstm": (
            {"text": np.array(texts, dtype=object)},
            ["probabilities"],
            {},
        ),
        "speech-ctc": (
            # one row: the `stream` parameter takes one recording (answered in parts)
            {"waveform": speech["waveform"][:1], "lengths": speech["lengths"][:1]},
            ["transcript", "confidence"],
            {},
        ),
        "captioner": (
            {"image": specs["captioner"].heldout()["image"][:2]},
            ["caption", "score"],
            {"beam": 2},
        ),
    }


def digit_request(model: str, request_id: str, image: np.ndarray) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    request.inputs.add(name="image", datatype="UINT8", shape=list(image.shape))
    request.raw_input_contents.append(image.tobytes())
    return request


def open_streams(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=30).text
    found = OPEN_STREAMS.search(text)
    assert found is not None, "no deepserve_open_streams for v2-grpc-stream"
    return float(found.group(1))


# --- every model, the shared servers ----------------------------------------------------------


def test_every_model_answers_on_a_stream_as_model_infer(server) -> None:
    cases = model_inputs()
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        unary = {
            model: client.infer(model, inputs_of(tensors), parameters=parameters or None)
            for model, (tensors, _, parameters) in cases.items()
        }
    finally:
        client.close()
    sent = []
    for model, (tensors, _, parameters) in cases.items():
        sent.append(
            {
                "model_name": model,
                "inputs": inputs_of(tensors),
                "request_id": model,
                "parameters": parameters or None,
            }
        )
        # the `stream` parameter: parts where the model streams, else one answer (both end
        # with triton_final_response true, on the whole answer)
        for empty_final in (False, True):
            sent.append(
                {
                    "model_name": model,
                    "inputs": inputs_of(tensors),
                    "request_id": f"{model}/parts/{empty_final}",
                    "parameters": {**parameters, "stream": True},
                    "enable_empty_final_response": empty_final,
                }
            )
    answers = stream_all(server.grpc_target, sent)
    for model, (_, outputs, _) in cases.items():
        same_outputs(answers.final(model), unary[model], outputs)
        assert len(answers.by_id[model]) == 1
        for empty_final in (False, True):
            got = answers.by_id[f"{model}/parts/{empty_final}"]
            assert all(error is None for _, error in got)
            flags = [
                r.get_response().parameters["triton_final_response"].bool_param for r, _ in got
            ]
            assert flags == [False] * (len(got) - 1) + [True]
            with_outputs = [r for r, _ in got if r.get_response().outputs]
            assert len(with_outputs) >= 1
            same_outputs(with_outputs[-1], unary[model], outputs)
            if len(with_outputs) == 1:  # one answer: no empty final response, as Triton
                assert len(got) == 1


def test_requests_in_flight_on_one_stream_keep_their_ids(server) -> None:
    images = latest_specs()["digits-cnn"].heldout()["image"][:24]
    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        unary = client.infer("digits-cnn", inputs_of({"image": images})).as_numpy("probabilities")
    finally:
        client.close()
    sent = [
        {
            "model_name": "digits-cnn",
            "inputs": inputs_of({"image": image[None]}),
            "request_id": f"d{n}",
        }
        for n, image in enumerate(images)
    ]
    answers = stream_all(server.grpc_target, sent)
    assert set(answers.by_id) == {f"d{n}" for n in range(len(images))}
    for n in range(len(images)):
        assert len(answers.by_id[f"d{n}"]) == 1
        row = answers.final(f"d{n}").as_numpy("probabilities")
        np.testing.assert_allclose(row[0], unary[n], rtol=1e-5, atol=1e-6)


def test_bad_requests_mid_stream_get_their_error_and_the_stream_carries_on(server) -> None:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    good = {"model_name": "digits-cnn", "inputs": inputs_of({"image": image})}
    sent = [
        {**good, "request_id": "before"},
        {
            "model_name": "digits-cnn",
            "inputs": inputs_of({"image": image.astype(np.float32)}),
            "request_id": "wrong-datatype",
        },
        {**good, "model_name": "no-such-model", "request_id": "unknown-model"},
        {
            **good,
            "model_name": "digits-cnn",
            "inputs": inputs_of({"image": image}),
            "request_id": "after",
        },
    ]
    answers = stream_all(server.grpc_target, sent)
    for request_id in ("before", "after"):
        assert answers.final(request_id).as_numpy("probabilities").shape == (1, 10)
    wrong = answers.by_id["wrong-datatype"][-1][1]
    assert wrong is not None and "must be UINT8" in wrong.message()
    unknown = answers.by_id["unknown-model"][-1][1]
    assert unknown is not None and "no-such-model" in unknown.message()


def test_a_malformed_message_mid_stream_gets_an_error_message(server) -> None:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    messages = [
        digit_request("digits-cnn", "first", image).SerializeToString(),
        b"\xff\xff\xff",  # a varint that runs past the end: not protobuf
        b"\x0a\x02\xc3\x28",  # model_name that is not UTF-8
        digit_request("digits-cnn", "last", image).SerializeToString(),
    ]
    with grpc.insecure_channel(server.grpc_target) as channel:
        call = channel.stream_stream(METHOD)  # no (de)serializers: bytes both ways
        replies = [
            pb.ModelStreamInferResponse.FromString(data)
            for data in call(iter(messages), timeout=TIMEOUT)
        ]
    assert len(replies) == 4
    errors = [r.error_message for r in replies if r.error_message]
    assert len(errors) == 2 and all("malformed inference.ModelInferRequest" in e for e in errors)
    assert any("not valid UTF-8" in e for e in errors)
    answered = {r.infer_response.id for r in replies if not r.error_message}
    assert answered == {"first", "last"}
    for reply in replies:
        if not reply.error_message:
            assert reply.infer_response.parameters["triton_final_response"].bool_param


def test_streams_under_load_lose_nothing(server) -> None:
    images = latest_specs()["digits-cnn"].heldout()["image"][:20]
    failures: list[str] = []

    def one_stream(n: int) -> None:
        try:
            sent = [
                {
                    "model_name": "digits-cnn",
                    "inputs": inputs_of({"image": image[None]}),
                    "request_id": f"s{n}-{row}",
                }
                for row, image in enumerate(images)
            ]
            answers = stream_all(server.grpc_target, sent)
            for row in range(len(images)):
                answers.final(f"s{n}-{row}")
        except Exception as error:  # collected: asserted in the test's thread
            failures.append(f"stream {n}: {error!r}")

    def unary_traffic() -> None:
        client = grpcclient.InferenceServerClient(server.grpc_target)
        try:
            for row in range(20):
                client.infer("digits-cnn", inputs_of({"image": images[row][None]}))
        except Exception as error:
            failures.append(f"unary: {error!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(4)]
    threads.append(threading.Thread(target=unary_traffic))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []


# --- limits, keys, cancellation: a server of its own ---------------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[Server]:
    with running_server(
        tmp_path_factory.mktemp("v2-stream"),
        {
            "DEEPSERVE_MODELS": '["digits-cnn"]',
            "DEEPSERVE_API_KEY": KEY,
            "DEEPSERVE_STREAM_IDLE_TIMEOUT_S": str(IDLE_S),
        },
    ) as running:
        yield running


AUTH = (("authorization", f"Bearer {KEY}"),)


def test_a_stream_needs_a_key(keyed) -> None:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    message = digit_request("digits-cnn", "k", image)
    with grpc.insecure_channel(keyed.grpc_target) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            list(call(iter([message]), timeout=TIMEOUT))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        replies = list(call(iter([message]), timeout=TIMEOUT, metadata=AUTH))
    assert [r.infer_response.id for r in replies] == ["k"] and not replies[0].error_message
    answers = stream_all(
        keyed.grpc_target,
        [{"model_name": "digits-cnn", "inputs": inputs_of({"image": image}), "request_id": "t"}],
        headers={"authorization": f"Bearer {KEY}"},
    )
    assert answers.final("t").as_numpy("probabilities").shape == (1, 10)


def test_a_quiet_stream_ends_and_a_busy_one_does_not(keyed) -> None:
    image = np.zeros((1, 28, 28, 1), np.uint8)
    answers: queue.Queue[Any] = queue.Queue()
    done = threading.Event()

    def requests_then_quiet(count: int, gap_s: float) -> Iterator[pb.ModelInferRequest]:
        for n in range(count):
            yield digit_request("digits-cnn", f"q{n}", image)
            time.sleep(gap_s)  # below the idle timeout: the stream stays open
        done.wait(TIMEOUT)  # then quiet, without closing: the server ends the stream

    with grpc.insecure_channel(keyed.grpc_target) as channel:
        call = channel.stream_stream(
            METHOD,
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelStreamInferResponse.FromString,
        )
        started = time.monotonic()
        responses = call(requests_then_quiet(5, IDLE_S / 2), timeout=TIMEOUT, metadata=AUTH)
        try:
            with pytest.raises(grpc.RpcError) as ended:
                for response in responses:
                    answers.put(response)
        finally:
            done.set()
        elapsed = time.monotonic() - started
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "stream_idle_timeout_s" in ended.value.details()
    assert answers.qsize() == 5  # answered while busy for longer than the idle timeout
    assert elapsed < TIMEOUT  # ended by the server's idle timeout, not the call's deadline


def test_a_cancelled_stream_leaves_the_server_healthy(keyed) -> None:
    images = latest_specs()["digits-cnn"].heldout()["image"][:32]
    for round_ in range(3):
        with grpc.insecure_channel(keyed.grpc_target) as channel:
            call = channel.stream_stream(
                METHOD,
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelStreamInferResponse.FromString,
            )
            endless = (
                digit_request("digits-cnn", f"c{round_}-{n}", images[n % len(images)][None])
                for n in range(10**6)
            )
            responses = call(endless, timeout=TIMEOUT, metadata=AUTH)
            first = next(responses)
            assert not first.error_message
            responses.cancel()
    deadline = time.monotonic() + TIMEOUT
    while open_streams(keyed) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert open_streams(keyed) == 0
    client = grpcclient.InferenceServerClient(keyed.grpc_target)
    try:
        out = client.infer(
            "digits-cnn",
            inputs_of({"image": images[:1]}),
            headers={"authorization": f"Bearer {KEY}"},
        )
        assert out.as_numpy("probabilities").shape == (1, 10)
    finally:
        client.close()
    assert "ModelStreamInfer request failed" not in keyed.log()


def test_a_long_recording_streams_segment_by_segment(server) -> None:
    """speech-ctc with the `stream` parameter: one response per segment as it is transcribed
    (its place in the parameters), then the whole transcript, which /v1/transcribe gives too."""
    from loadtests.payloads import wav
    from loadtests.recording import build_recording

    recording = build_recording(25.0, seed=11)
    waveform = recording.audio[None, :]
    answers = stream_all(
        server.grpc_target,
        [
            {
                "model_name": "speech-ctc",
                "inputs": inputs_of({"waveform": waveform}),
                "request_id": "long",
                "parameters": {"stream": True},
            }
        ],
    )
    got = [result for result, error in answers.by_id["long"] if error is None]
    assert len(got) == len(answers.by_id["long"]) >= 3
    parts = [r.get_response() for r in got]
    segments, final = parts[:-1], parts[-1]
    assert [p.parameters["segment_index"].int64_param for p in segments] == list(
        range(len(segments))
    )
    starts = [p.parameters["segment_start_s"].double_param for p in segments]
    ends = [p.parameters["segment_end_s"].double_param for p in segments]
    assert starts == sorted(starts) and all(a < b for a, b in zip(starts, ends, strict=True))
    assert final.parameters["segments"].int64_param == len(segments)
    assert final.parameters["triton_final_response"].bool_param
    texts = [r.as_numpy("transcript")[0].decode() for r in got]
    whole = requests.post(
        f"{server.url}/v1/transcribe",
        data=wav(recording.audio),
        headers={"Content-Type": "audio/wav"},
        timeout=TIMEOUT,
    ).json()
    assert texts[-1] == whole["text"] == " ".join(t for t in texts[:-1] if t)
