"""Start and stop a real deepserve server (`deepserve serve`, i.e. `bentoml serve`) on loopback.

Shared by the integration tests and the benchmarks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_target: str = ""
    """host:port of the gateway's gRPC server."""
    placement: str = "local"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_mb(self) -> float:
        """Resident memory of the server and every process it started (MiB)."""
        import psutil

        root = psutil.Process(self.process.pid)
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total / 2**20


def start_server(
    tmp: Path, env_overrides: dict[str, str], timeout: float = 180.0, args: Sequence[str] = ()
) -> Server:
    """`deepserve serve [args]` on free loopback ports, returned once /readyz answers 200."""
    port, grpc_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "DEEPSERVE_HOST": "127.0.0.1",
            "DEEPSERVE_PORT": str(port),
            "DEEPSERVE_GRPC_PORT": str(grpc_port),
            "BENTOML_DO_NOT_TRACK": "True",
            "DEEPSERVE_RUNTIME_DIR": str(tmp / f"runtime-{port}"),
            **env_overrides,
        }
    )
    # NOTE: each server keeps its BentoML runtime state (metrics files, tmp) in a home of its
    # own (service/store/runtime_home.py), so servers sharing a store never wipe each other's
    # /metrics; here under `tmp`, removed with it
    log_path = tmp / f"server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, f"127.0.0.1:{grpc_port}")
    try:
        wait_ready(f"{server.url}/readyz", process, log_path, timeout)
    except RuntimeError:
        stop_server(server)
        raise
    return server


@contextlib.contextmanager
def running_server(tmp: Path, env_overrides: dict[str, str]) -> Iterator[Server]:
    """start_server ... stop_server around a block (a test fixture's body)."""
    server = start_server(tmp, env_overrides)
    try:
        yield server
    finally:
        stop_server(server)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early, with the log's tail, if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{tail}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    tail = log_path.read_text(errors="replace")[-4000:]
    raise RuntimeError(f"{url} not ready in {timeout} s:\n{tail}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
