"""The closest check to `docker run` possible without a Docker engine: the runtime image's own
install and start steps, taken from the Dockerfile, run in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from loadtests.payloads import png
from loadtests.server import free_port, wait_ready
from service.store.specs import latest_specs

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def stage(name: str) -> list[str]:
    """The instructions of one Dockerfile stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines, current = [], None
    for line in text.splitlines():
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = match.group(1)
            continue
        if current == name and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def test_hadolint_clean_at_warning_level() -> None:
    binary = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [binary, "--config", str(ROOT / ".hadolint.yaml"), "--failure-threshold", "warning",
         str(DOCKERFILE)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_runtime_stages_install_with_the_shared_script_and_start_like_make_serve() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "$(VENV)/bin/deepserve serve" in makefile
    for name, flavour in (("runtime", "cpu"), ("gpu", "gpu")):
        instructions = stage(name)
        runs = [i for i in instructions if i.startswith("RUN")]
        assert any(f"sh deploy/docker/install.sh {flavour}" in r for r in runs), runs
        assert 'ENTRYPOINT ["deepserve", "serve"]' in instructions
        assert "USER 10001" in instructions
        assert any(i.startswith("HEALTHCHECK") and "/readyz" in i for i in instructions)
        assert any(i.startswith("EXPOSE") and "3000" in i and "50051" in i for i in instructions)
        assert not any("train" in r for r in runs), "runtime stages must not install torch"
    loadtest = stage("loadtest")
    assert any("locust" in i for i in loadtest if i.startswith("RUN"))
    assert "COPY loadtests/ loadtests/" in loadtest


@pytest.mark.models
def test_image_install_and_start_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    app = tmp_path / "app"  # the image's WORKDIR, filled as its COPY lines fill it
    copies = [i.split()[1:] for i in stage("runtime") if i.startswith("COPY") and "--from" not in i]
    for *sources, _ in copies:
        for source in sources:
            target = app / source.rstrip("/")
            if (ROOT / source).is_dir():
                shutil.copytree(
                    ROOT / source, target, ignore=shutil.ignore_patterns("gen", "__pycache__")
                )
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / source, target)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    install = subprocess.run(
        ["sh", "deploy/docker/install.sh", "cpu"], cwd=app, env=env, capture_output=True,
        text=True, timeout=900,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    freeze = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True
    ).stdout.lower()
    assert "onnxruntime==" in freeze and "torch" not in freeze  # serving deps only

    port, grpc_port = free_port(), free_port()
    store = str(ROOT / "model_store")
    env.update(
        BENTOML_HOME=store, DEEPSERVE_STORE=store, DEEPSERVE_HOST="127.0.0.1",
        DEEPSERVE_PORT=str(port), DEEPSERVE_GRPC_PORT=str(grpc_port),
        DEEPSERVE_MODELS=json.dumps(["digits-cnn"]), BENTOML_DO_NOT_TRACK="True",
    )  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(venv / "bin" / "deepserve"), "serve"], cwd=app, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process, log_path, 180)
        digit = png(latest_specs()["digits-cnn"].heldout()["image"][0])
        answer = requests.post(
            f"http://127.0.0.1:{port}/v1/classify?model=digits-cnn",
            data=digit, headers={"content-type": "image/png"}, timeout=30,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"]
    finally:
        os.killpg(process.pid, 15)
        process.wait(30)
