"""deploy/bentoml/bentofile.yaml: `bentoml build` from the repository makes a Bento holding the
service, the store's newest built-in models and serving's requirements, and `bentoml serve` of
that Bento answers a real inference request.

The build and the server use a BentoML home of their own under pytest's tmp dir, never the
shared store: its models/ holds one real folder per model with a symlink to each of the store's
version folders (the store's `latest` file copied). The models are only read (their tags and
creation times at build, their files when served), so links spare copying ~90 MB, and anything
BentoML wrote beside them (a `latest` file, a model) would land in the temporary home.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import pytest
import requests
import yaml

from loadtests.server import Server, free_port, stop_server, wait_ready
from service.store.specs import latest_specs
from service.tasks.registry import builtin_models
from tests.deploy.test_image_steps import stage

pytestmark = pytest.mark.models

ROOT = Path(__file__).resolve().parents[2]
BENTOFILE = "deploy/bentoml/bentofile.yaml"  # as the README builds it: from the root, `-f`
SECRETS = {"DEEPSERVE_API_KEY": "canary-api-key-4f1c", "DEEPSERVE_ADMIN_KEY": "canary-admin-9d2e"}
"""Set while building: a Bento must carry no key the build environment held."""


@dataclass
class Built:
    tag: str
    path: Path
    """The Bento's folder in the temporary home's bento store."""
    info: dict[str, Any]
    """bento.yaml."""
    user_home: Path
    """$HOME for `bentoml serve`; its bentoml/ is the temporary BentoML home."""


def link_models(home: Path, tags: dict[str, list[str]], latest: dict[str, str]) -> None:
    """Fill `home`/models with links to the store's model versions `tags` (see the module doc)."""
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    shutil.rmtree(home / "models", ignore_errors=True)
    for name, versions in tags.items():
        folder = home / "models" / name
        folder.mkdir(parents=True)
        for version in versions:
            (folder / version).symlink_to((store / name / version).resolve(), True)
        (folder / "latest").write_text(latest[name])


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    user_home = tmp_path_factory.mktemp("bento-user")
    home = user_home / "bentoml"
    store = Path(os.environ["BENTOML_HOME"]) / "models"
    names = builtin_models()
    link_models(
        home,
        {n: [p.name for p in (store / n).iterdir() if p.is_dir()] for n in names},
        {n: (store / n / "latest").read_text().strip() for n in names},
    )
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True", **SECRETS}
    result = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", BENTOFILE, ".", "--output", "tag"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    match = re.search(r"__tag__:(\S+)", result.stdout)
    assert match, result.stdout[-3000:]
    tag = match.group(1)
    name, version = tag.split(":")
    path = home / "bentos" / name / version
    info = yaml.safe_load((path / "bento.yaml").read_text())
    return Built(tag, path, info, user_home)


def bento_models(built: Built) -> dict[str, str]:
    return dict(model["tag"].split(":") for model in built.info["models"])


def test_bento_serves_the_gateway_with_the_stores_newest_builtin_models(built: Built) -> None:
    assert built.info["service"] == "service.gateway:Gateway"
    assert built.info["entry_service"] == built.info["name"] == "deepserve"
    newest = latest_specs()
    assert bento_models(built) == {name: newest[name].version for name in builtin_models()}
    bentofile = yaml.safe_load((ROOT / BENTOFILE).read_text())
    assert sorted(bentofile["models"]) == sorted(builtin_models())


def test_bento_requirements_are_pyprojects_without_torch(built: Built) -> None:
    lines = (built.path / "env" / "python" / "requirements.txt").read_text().splitlines()
    requirements = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # bentoml is added by BentoML itself (the version building it: the pinned one)
    assert requirements == set(pyproject["project"]["dependencies"]), (
        "deploy/bentoml/bentofile.yaml python.packages must list pyproject.toml's dependencies"
    )
    assert "onnxruntime==1.31.1" in requirements
    assert not [r for r in requirements if re.match(r"torch\b", r)]


def test_bento_source_is_the_service_alone(built: Built) -> None:
    src = built.path / "src"
    assert sorted(p.name for p in src.iterdir()) == ["bentofile.yaml", "pyproject.toml", "service"]
    files = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
    assert "service/gateway.py" in files
    # the generated gRPC stubs come along, so a served Bento never writes into itself
    assert "service/protocols/proto/gen/inference_pb2.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    for top in ("tests", "model_store", "export", "loadtests", "examples", ".venv", ".git"):
        assert not (src / top).exists(), top


def test_bento_carries_no_secret_and_describes_itself(built: Built) -> None:
    for path in built.path.rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            for value in SECRETS.values():
                assert value.encode() not in text, path
    env_names = {env["name"] for env in built.info["envs"]}
    assert not {n for n in env_names if re.search("KEY|TOKEN|SECRET|PASSWORD", n)}
    readme = (built.path / "README.md").read_text()
    assert readme == (ROOT / "deploy" / "bentoml" / "README.md").read_text()
    assert "bentoml serve deepserve:latest" in readme


def test_bento_container_settings_are_the_runtime_images(built: Built) -> None:
    runtime_env: dict[str, str] = {}
    for instruction in stage("runtime"):
        if instruction.startswith("ENV "):
            runtime_env.update(re.findall(r"(\w+)=(\S+)", instruction))
    bento_env = {env["name"]: env["value"] for env in built.info["envs"]}
    # BENTOML_HOME and DEEPSERVE_STORE are left out: in the Bento's image, BentoML's home is
    # its own and the models are the Bento's
    names = ["PYTHONUNBUFFERED", "BENTOML_DO_NOT_TRACK", "DEEPSERVE_HOST", "DEEPSERVE_PORT"]
    names.append("DEEPSERVE_GRPC_PORT")
    assert bento_env == {name: runtime_env[name] for name in names}
    dockerfile = (built.path / "env" / "docker" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.MULTILINE)
    assert "ENV DEEPSERVE_HOST=$DEEPSERVE_HOST" in dockerfile


def test_containerize_hands_docker_the_bento_with_its_models(built: Built) -> None:
    """What `bentoml containerize` builds from (Docker itself does not run here): the Bento's
    folder with its models copied in from the store, and the Dockerfile that installs it."""
    from bentoml._internal.bento.bento import Bento
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.container import construct_containerfile
    from bentoml._internal.models.model import ModelStore

    store = ModelStore(str(built.user_home / "bentoml" / "models"))
    bento = Bento.from_path(str(built.path))
    with (
        BentoMLContainer.model_store.patch(store),
        construct_containerfile(bento) as (context, dockerfile),
    ):
        for name, version in bento_models(built).items():
            folder = Path(context) / "models" / name / version
            assert (folder / "spec.json").is_file() and list(folder.glob("*.onnx")), folder
        assert (Path(context) / "src" / "service" / "gateway.py").is_file()
        text = Path(dockerfile).read_text()
        assert "requirements.txt" in text and "ENV DEEPSERVE_HOST=$DEEPSERVE_HOST" in text


@pytest.fixture(scope="module")
def served(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`bentoml serve <tag>` as a user runs it: BENTOML_HOME unset (BentoML's default home,
    ~/bentoml, here the temporary one), started outside the checkout, and the home's models/
    holding only the Bento's models, as the Bento's own image does."""
    home = built.user_home / "bentoml"
    models = bento_models(built)
    link_models(home, {n: [v] for n, v in models.items()}, models)
    tmp = tmp_path_factory.mktemp("bento-serve")
    port, grpc_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BENTOML_HOME", "DEEPSERVE_STORE")}
    env.update(
        {
            "HOME": str(built.user_home),
            "BENTOML_DO_NOT_TRACK": "True",
            "DEEPSERVE_HOST": "127.0.0.1",
            "DEEPSERVE_PORT": str(port),
            "DEEPSERVE_GRPC_PORT": str(grpc_port),
            "DEEPSERVE_RUNTIME_DIR": str(tmp / "runtime"),
        }
    )
    log_path = tmp / "serve.log"
    command = [sys.executable, "-m", "bentoml", "serve", built.tag, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--timeout-graceful-shutdown", "5"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", process, log_path, f"127.0.0.1:{grpc_port}")
    try:
        wait_ready(f"{server.url}/readyz", process, log_path, timeout=180)
        yield server
    finally:
        stop_server(server)


def test_served_bento_answers_with_its_own_models(built: Built, served: Server) -> None:
    listed = requests.get(f"{served.url}/v1/models", timeout=30).json()["models"]
    assert {m["name"]: m.get("version") for m in listed} == bento_models(built)
    response = requests.post(
        f"{served.url}/v1/sentiment", json={"text": "a warm, funny and moving film"}, timeout=60
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["model"] == "sentiment-lstm"
    assert answer["version"] == bento_models(built)["sentiment-lstm"]
    assert answer["label"] in ("positive", "negative")


def test_bentoml_client_sees_no_endpoints_as_documented(served: Server) -> None:
    """The README's answer: deepserve's routes are ASGI apps, not @bentoml.api methods, so
    BentoML's client (built from /schema.json's routes) has nothing to call."""
    assert json.loads(requests.get(f"{served.url}/schema.json", timeout=30).text)["routes"] == []
    with bentoml.SyncHTTPClient(served.url, server_ready_timeout=0) as client:
        assert client.endpoints == {}
