"""Several gateway worker processes (DEEPSERVE_GATEWAY_WORKERS; the default on a machine with
more than one core): they share the HTTP and gRPC ports, each serves every model, and /metrics adds
up all of them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import psutil
import pytest
import requests

import service.protocols.proto.stubs  # noqa: F401  (generates service.protocols.proto.gen first)
from loadtests.server import running_server
from service.protocols.proto.gen import deepserve_pb2 as pb
from service.protocols.proto.gen import deepserve_pb2_grpc
from service.store.specs import latest_specs
from tests.integration.media import png

pytestmark = pytest.mark.models

REQUESTS = 120


def worker_processes(root: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(root).children(recursive=True):
        try:
            if any("_bentoml_impl.worker.service" in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def requests_counted(url: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("deepserve_requests_total{") and 'model="digits-cnn"' in line
    )


def listening_on(worker: psutil.Process, port: int) -> bool:
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == port
        for c in worker.net_connections(kind="tcp")
    )


def wait_until_both_listen(workers: list[psutil.Process], port: int) -> None:
    """A worker binds the gRPC port only once its models are loaded; the server is ready as soon
    as one worker is."""
    deadline = time.monotonic() + 120
    while not all(listening_on(w, port) for w in workers):
        assert time.monotonic() < deadline, "both workers bind the gRPC port once loaded"
        time.sleep(0.2)


def test_two_workers_share_the_ports_and_every_request_is_answered_and_counted(
    tmp_path,
) -> None:
    digit = png(latest_specs()["digits-cnn"].heldout()["image"][0])
    env = {"DEEPSERVE_GATEWAY_WORKERS": "2", "DEEPSERVE_MODELS": '["digits-cnn"]'}
    with running_server(tmp_path, env) as server:
        workers = worker_processes(server.process.pid)
        assert len(workers) == 2, [w.cmdline() for w in workers]
        wait_until_both_listen(workers, int(server.grpc_target.rsplit(":", 1)[1]))
        before = requests_counted(server.url)
        idle = [w.cpu_times().user + w.cpu_times().system for w in workers]

        def classify(_: int) -> int:
            with requests.Session() as session:  # a connection of its own: spread by the kernel
                answer = session.post(
                    f"{server.url}/v1/classify?model=digits-cnn",
                    data=digit,
                    headers={"content-type": "image/png"},
                    timeout=60,
                )
                return answer.status_code

        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(classify, range(REQUESTS)))
        assert codes == [200] * REQUESTS

        busy = [w.cpu_times().user + w.cpu_times().system - i for w, i in zip(workers, idle)]
        assert min(busy) > 0.05, f"both workers served: CPU seconds under load {busy}"
        assert requests_counted(server.url) - before == REQUESTS  # every worker's counts

        for _ in range(6):  # new channels: the kernel spreads them over both workers' sockets
            with grpc.insecure_channel(server.grpc_target) as channel:
                stub = deepserve_pb2_grpc.InferenceStub(channel)
                reply = stub.Classify(
                    pb.ClassifyRequest(image=digit, model="digits-cnn"), timeout=30
                )
                assert reply.model == "digits-cnn" and reply.predictions
