"""Locust users for deepserve, one class per protocol plus a weighted mix.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 RestUser GrpcTaskUser
    make loadtest        # headless, bounded, with the SLO gate (loadtests/loadtest.py)

- RestUser: the /v1 task API (FastHttpUser): every model, real held-out inputs.
- V2RestUser: Open Inference Protocol over HTTP, binary tensors (as tritonclient.http sends them).
- GrpcTaskUser: deepserve.v1.Inference over gRPC.
- V2GrpcUser: inference.GRPCInferenceService/ModelInfer with raw_input_contents.
- MixedUser: all four, weighted as production traffic might be (mostly REST and images).

gRPC users follow locust's documented pattern: gevent-patched grpc, every call reported to
locust's statistics through `events.request`. The gRPC target is DEEPSERVE_GRPC_TARGET (default:
the --host's address on port 50051). Models: DEEPSERVE_LOAD_MODELS (comma-separated, default all
five). Load shape: DEEPSERVE_LOAD_SHAPE=step|spike (loadtests/shapes.py); unset = constant users.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import grpc  # noqa: E402
from locust import FastHttpUser, User, constant  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtests.payloads import (  # noqa: E402
    payloads,
    rest_request,
    task_rpc,
    v2_grpc_request,
    v2_rest_request,
)
from service.core.settings import get_settings  # noqa: E402
from service.tasks.registry import builtin_models  # noqa: E402

MODEL_NAMES = builtin_models()

get_settings().apply_store()

MODELS = [m for m in os.environ.get("DEEPSERVE_LOAD_MODELS", ",".join(MODEL_NAMES)).split(",") if m]
WEIGHTS = {"imagenet-cnn": 3, "digits-cnn": 3, "sentiment-lstm": 3, "speech-ctc": 1, "captioner": 1}
EXPECTED_KEY = {  # a field every successful /v1 answer of the model carries
    "imagenet-cnn": "predictions",
    "digits-cnn": "predictions",
    "sentiment-lstm": "label",
    "speech-ctc": "text",
    "captioner": "caption",
}

shape = os.environ.get("DEEPSERVE_LOAD_SHAPE", "")
if shape == "step":
    from loadtests.shapes import StepLoadShape  # noqa: F401  (locust picks it up)
elif shape == "spike":
    from loadtests.shapes import SpikeLoadShape  # noqa: F401
elif shape:
    raise SystemExit(f"DEEPSERVE_LOAD_SHAPE={shape!r}: use step, spike or leave it unset")


def grpc_target(host: str | None) -> str:
    explicit = os.environ.get("DEEPSERVE_GRPC_TARGET")
    if explicit:
        return explicit
    return f"{urlparse(host or 'http://127.0.0.1:3000').hostname}:50051"


# --- tasks: one per model and protocol ---------------------------------------------------------


def rest_task(model: str) -> Callable[[FastHttpUser], None]:
    def run(user: FastHttpUser) -> None:
        path, body, headers = rest_request(random.choice(payloads(model)))
        with user.client.post(
            path, data=body, headers=headers, name=f"rest {model}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif EXPECTED_KEY[model] not in json.loads(response.text):
                response.failure(f"answer without {EXPECTED_KEY[model]!r}")

    run.__name__ = f"rest_{model}"
    return run


def v2_rest_task(model: str) -> Callable[[FastHttpUser], None]:
    def run(user: FastHttpUser) -> None:
        path, body, headers = v2_rest_request(random.choice(payloads(model)))
        with user.client.post(
            path, data=body, headers=headers, name=f"v2-rest {model}", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            elif "Inference-Header-Content-Length" not in response.headers:
                response.failure("no binary output")

    run.__name__ = f"v2_rest_{model}"
    return run


def grpc_task(model: str, protocol: str) -> Callable[[User], None]:
    encode = task_rpc if protocol == "grpc" else v2_grpc_request

    def run(user: User) -> None:
        method, body = encode(random.choice(payloads(model)))
        user.grpc_call(f"{protocol} {model}", method, body)  # type: ignore[attr-defined]

    run.__name__ = f"{protocol.replace('-', '_')}_{model}"
    return run


class GrpcClientMixin:
    """A gRPC channel per user; every call is reported to locust (its documented pattern)."""

    environment: object
    host: str | None

    def open_channel(self) -> None:
        self.channel = grpc.insecure_channel(
            grpc_target(self.host), options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.calls: dict[str, Callable[..., bytes]] = {}

    def grpc_call(self, name: str, method: str, body: bytes) -> None:
        call = self.calls.get(method)
        if call is None:
            call = self.channel.unary_unary(
                method, request_serializer=None, response_deserializer=None
            )
            self.calls[method] = call
        started = time.perf_counter()
        reply, error = b"", None
        try:
            reply = call(body, timeout=60)
        except grpc.RpcError as rpc_error:
            error = rpc_error
        self.environment.events.request.fire(  # type: ignore[attr-defined]
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=len(reply),
            response=reply,
            context={},
            exception=error,
        )

    def close_channel(self) -> None:
        self.channel.close()


# --- users -------------------------------------------------------------------------------------


class RestUser(FastHttpUser):
    wait_time = constant(0)
    tasks = {rest_task(m): WEIGHTS.get(m, 1) for m in MODELS}


class V2RestUser(FastHttpUser):
    wait_time = constant(0)
    tasks = {v2_rest_task(m): WEIGHTS.get(m, 1) for m in MODELS}


class GrpcTaskUser(GrpcClientMixin, User):
    wait_time = constant(0)
    tasks = {grpc_task(m, "grpc"): WEIGHTS.get(m, 1) for m in MODELS}

    def on_start(self) -> None:
        self.open_channel()

    def on_stop(self) -> None:
        self.close_channel()


class V2GrpcUser(GrpcClientMixin, User):
    wait_time = constant(0)
    tasks = {grpc_task(m, "v2-grpc"): WEIGHTS.get(m, 1) for m in MODELS}

    def on_start(self) -> None:
        self.open_channel()

    def on_stop(self) -> None:
        self.close_channel()


class MixedUser(GrpcClientMixin, FastHttpUser):
    """Production-like mix: REST 60 %, gRPC task 20 %, V2 REST 10 %, V2 gRPC 10 % of calls."""

    wait_time = constant(0)
    tasks = {
        **{rest_task(m): 6 * WEIGHTS.get(m, 1) for m in MODELS},
        **{grpc_task(m, "grpc"): 2 * WEIGHTS.get(m, 1) for m in MODELS},
        **{v2_rest_task(m): WEIGHTS.get(m, 1) for m in MODELS},
        **{grpc_task(m, "v2-grpc"): WEIGHTS.get(m, 1) for m in MODELS},
    }

    def on_start(self) -> None:
        self.open_channel()

    def on_stop(self) -> None:
        self.close_channel()
