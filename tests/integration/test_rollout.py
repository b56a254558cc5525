"""Zero-downtime rollout under load, on real servers: clients keep calling a model over REST and
gRPC (V2) while a new version is imported with the CLI (poll mode) or loaded with the repository
API (explicit mode), in both placements. No request may fail, every answer must come from exactly
one version (its output matches that version's graph), and the switch time is measured."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from loadtests.server import Server, stop_server
from service.protocols.v2.versions import number
from tests.integration.test_faults import runner_processes
from tests.integration.test_own_model import deepserve, generic_graph, stored_versions
from tests.integration.test_repository import BODY, serve

pytestmark = pytest.mark.models

CLIENTS_PER_TRANSPORT = 2
MAX_TEST_S = 90.0


@dataclass
class Answer:
    start: float
    end: float
    transport: str
    outcome: str  # "ok" or the error
    version: str = ""
    scale: float = 0.0


class Load:
    """CLIENTS_PER_TRANSPORT REST and gRPC clients calling `model` in closed loops until
    stopped (or MAX_TEST_S), recording every answer."""

    def __init__(self, server: Server, model: str):
        self.server, self.model = server, model
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.rest, daemon=True) for _ in range(CLIENTS_PER_TRANSPORT)
        ] + [threading.Thread(target=self.grpc, daemon=True) for _ in range(CLIENTS_PER_TRANSPORT)]

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() - self.started < MAX_TEST_S

    def record(self, answer: Answer) -> None:
        with self.lock:
            self.answers.append(answer)

    def rest(self) -> None:
        url = f"{self.server.url}/v2/models/{self.model}/infer"
        with requests.Session() as session:
            while self.running():
                start = time.monotonic()
                try:
                    reply = session.post(url, json=BODY, timeout=30)
                    if reply.status_code != 200:
                        outcome = f"{reply.status_code} {reply.text[:200]}"
                        self.record(Answer(start, time.monotonic(), "rest", outcome))
                        continue
                    body = reply.json()
                    scale = float(body["outputs"][0]["data"][0])
                    self.record(
                        Answer(start, time.monotonic(), "rest", "ok", body["model_version"], scale)
                    )
                except requests.RequestException as error:
                    self.record(Answer(start, time.monotonic(), "rest", repr(error)))

    def grpc(self) -> None:
        client = grpcclient.InferenceServerClient(self.server.grpc_target)
        inputs = []
        for name, value in (("a", 1.0), ("b", 0.0)):
            tensor = grpcclient.InferInput(name, [1, 4], "FP32")
            tensor.set_data_from_numpy(np.full((1, 4), value, np.float32))
            inputs.append(tensor)
        while self.running():
            start = time.monotonic()
            try:
                result = client.infer(self.model, inputs, client_timeout=30)
                version = result.get_response().model_version
                scale = float(result.as_numpy("total")[0, 0])
                self.record(Answer(start, time.monotonic(), "grpc", "ok", version, scale))
            except Exception as error:
                self.record(Answer(start, time.monotonic(), "grpc", str(error)[:200]))
        client.close()

    def answers_since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.start >= moment]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("rollout-graphs")
    return {"v1": generic_graph(tmp / "v1.onnx", 2.0), "v2": generic_graph(tmp / "v2.onnx", 3.0)}


def import_version(home: Path, graph: Path, name: str) -> str:
    """Import `graph` as a new version of `name`; its V2 version number (what answers carry)."""
    before = set(stored_versions(home, name)) if (home / "models" / name).exists() else set()
    done = deepserve(home, "models", "import", str(graph), "--name", name)
    assert done.returncode == 0, done.stdout + done.stderr
    (new,) = set(stored_versions(home, name)) - before
    return number(new)


def switched(load: Load, new: str, since: float) -> bool:
    """Every client has had a run of new-version answers started after `since`."""
    recent = load.answers_since(since)
    return {a.transport for a in recent if a.version == new} == {"rest", "grpc"} and all(
        a.version == new for a in recent[-4 * CLIENTS_PER_TRANSPORT :]
    )


def check(load: Load, scales: dict[str, float], new: str, changed_at: float) -> dict[str, object]:
    answers = sorted(load.answers, key=lambda a: a.start)
    outcomes = Counter(a.outcome if a.outcome == "ok" else "failed" for a in answers)
    failures = [a.outcome for a in answers if a.outcome != "ok"]
    first_new = min(a.end for a in answers if a.version == new)
    last_old_start = max((a.start for a in answers if a.version != new), default=changed_at)
    figures = {
        "requests": len(answers),
        "failed": outcomes.get("failed", 0),
        "by_version": dict(Counter(a.version for a in answers if a.outcome == "ok")),
        "switch_s": round(first_new - changed_at, 2),
        "old_last_started_after_s": round(last_old_start - changed_at, 2),
    }
    print(f"\n[rollout] {json.dumps(figures)}")
    assert not failures, (figures, failures[:5])
    assert outcomes["ok"] > 20, figures
    for answer in answers:  # each answer is exactly one version's computation
        assert answer.version in scales, answer
        assert answer.scale == pytest.approx(scales[answer.version]), answer
    # once the new version answered, nothing started later reaches the old one
    assert all(a.version == new for a in answers if a.start > first_new), figures
    return figures


@pytest.mark.parametrize("placement", ["local", "remote"])
def test_poll_mode_rollout_under_load_fails_nothing(tmp_path, graphs, placement):
    home = tmp_path / "home"
    home.mkdir()
    old = import_version(home, graphs["v1"], "gen-a")
    server = serve(
        tmp_path,
        home,
        DEEPSERVE_MODEL_CONTROL="poll",
        DEEPSERVE_POLL_INTERVAL_S="1",
        DEEPSERVE_PLACEMENT=placement,
    )
    try:
        with Load(server, "gen-a") as load:
            time.sleep(2)
            began = time.monotonic()
            new = import_version(home, graphs["v2"], "gen-a")
            imported = time.monotonic()
            while load.running() and not switched(load, new, imported):
                time.sleep(0.2)
            time.sleep(1)
        # NOTE: measured from the import command's start: the version is in the store before
        # the command (a Python process importing onnx) has exited
        figures = check(load, {old: 2.0, new: 3.0}, new, began)
        print(f"[rollout] the import command took {imported - began:.2f} s")
        assert figures["switch_s"] <= 30, figures
        # the old version is unloaded once drained
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        assert not client.is_model_ready("gen-a", old)
    finally:
        stop_server(server)


@pytest.mark.parametrize("placement", ["local", "remote"])
def test_explicit_mode_rollout_under_load_fails_nothing(tmp_path, graphs, placement):
    home = tmp_path / "home"
    home.mkdir()
    old = import_version(home, graphs["v1"], "gen-a")
    import_version(home, graphs["v1"], "gen-b")
    server = serve(
        tmp_path,
        home,
        DEEPSERVE_MODEL_CONTROL="explicit",
        DEEPSERVE_MODELS='["gen-a"]',
        DEEPSERVE_PLACEMENT=placement,
    )
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        with Load(server, "gen-a") as load:
            time.sleep(2)
            # another model loaded and unloaded beside the traffic
            client.load_model("gen-b")
            assert client.is_model_ready("gen-b")
            client.unload_model("gen-b")
            new = import_version(home, graphs["v2"], "gen-a")
            time.sleep(2)  # explicit mode: storing a version changes nothing
            assert {a.version for a in load.answers_since(time.monotonic() - 1.5)} == {old}
            asked = time.monotonic()
            client.load_model("gen-a")  # returns once the new version serves
            loaded = time.monotonic()
            while load.running() and not switched(load, new, loaded):
                time.sleep(0.2)
            time.sleep(1)
        figures = check(load, {old: 2.0, new: 3.0}, new, asked)
        print(f"[rollout] load_model took {loaded - asked:.2f} s")
        assert figures["switch_s"] <= 30, figures
        assert not client.is_model_ready("gen-a", old)
        assert not client.is_model_ready("gen-b")
    finally:
        stop_server(server)


def test_respawned_runner_finds_its_service_after_the_store_changed(tmp_path, graphs):
    """The set of runner services is fixed at start and handed to every process: a runner
    process respawned after the store changed (a new version, a new model) still starts."""
    home = tmp_path / "home"
    home.mkdir()
    old = import_version(home, graphs["v1"], "gen-a")
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="none", DEEPSERVE_PLACEMENT="remote")
    try:
        import_version(home, graphs["v2"], "gen-a")
        import_version(home, graphs["v1"], "gen-new")
        victims = runner_processes(server.process.pid, "gen-a")
        assert victims, "no runner service process found"
        for victim in victims:
            victim.kill()
        deadline = time.monotonic() + 90

        def answer() -> tuple[int, str]:
            try:
                reply = requests.post(f"{server.url}/v2/models/gen-a/infer", json=BODY, timeout=10)
            except requests.RequestException as error:
                return 0, repr(error)
            return reply.status_code, reply.text

        status, text = answer()
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.5)
            status, text = answer()
        assert status == 200, (text, server.log()[-3000:])
        assert json.loads(text)["model_version"] == old  # mode none: what was served at start
        assert runner_processes(server.process.pid, "gen-a"), "the runner was not respawned"
    finally:
        stop_server(server)


def test_unload_under_load_answers_every_request_cleanly(tmp_path, graphs):
    """Requests admitted before the unload finish (200); later ones get 404 "not loaded" (REST)
    / NOT_FOUND (gRPC) or 503; never a 5xx from a half-unloaded runner."""
    home = tmp_path / "home"
    home.mkdir()
    import_version(home, graphs["v1"], "gen-a")
    server = serve(tmp_path, home, DEEPSERVE_MODEL_CONTROL="explicit")
    try:
        client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        with Load(server, "gen-a") as load:
            time.sleep(2)
            unloaded = time.monotonic()
            client.unload_model("gen-a")
            time.sleep(2)
    finally:
        stop_server(server)
    before = [a for a in load.answers if a.end < unloaded]
    after = [a for a in load.answers if a.start > unloaded + 0.5]
    assert before and all(a.outcome == "ok" for a in before)
    assert after, "no request after the unload"
    clean = ("404", "503", "StatusCode.NOT_FOUND", "StatusCode.UNAVAILABLE")
    unclean = [a.outcome for a in load.answers if a.outcome != "ok" and a.outcome.split(" ")[0]
               .strip("[]") not in clean]  # fmt: skip
    assert not unclean, unclean[:5]
    assert all(a.outcome != "ok" for a in after)
