"""Continuous batching of captions on a real server: concurrent greedy and beam requests over
HTTP get the answers the same images get one at a time."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from loadtests.server import Server, running_server
from service.store.specs import latest_specs
from tests.integration.media import png

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def step_server(tmp_path_factory) -> Iterator[Server]:
    env = {
        "DEEPSERVE_MODELS": '["captioner"]',
        "DEEPSERVE_PLACEMENT": "local",
        "DEEPSERVE_CAPTION_DECODING": "step",
    }
    with running_server(tmp_path_factory.mktemp("caption-steps"), env) as server:
        yield server


def caption(server: Server, image: bytes, beam: int) -> tuple[int, dict]:
    response = requests.post(
        f"{server.url}/v1/caption?beam={beam}",
        data=image,
        headers={"content-type": "image/png"},
        timeout=60,
    )
    return response.status_code, response.json()


def test_concurrent_mixed_beams_equal_one_at_a_time(step_server: Server) -> None:
    held = latest_specs()["captioner"].heldout()
    images = [png(held["image"][i]) for i in range(16)]
    jobs = [(i, beam) for i in range(len(images)) for beam in (1, 3)]
    alone = {job: caption(step_server, images[job[0]], job[1]) for job in jobs}
    assert all(status == 200 for status, _ in alone.values())

    np.random.default_rng(0).shuffle(jobs)
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = dict(
            zip(jobs, pool.map(lambda j: caption(step_server, images[j[0]], j[1]), jobs))
        )
    for job, (status, answer) in together.items():
        assert status == 200, answer
        want = alone[job][1]
        assert (answer["caption"], answer["beam"]) == (want["caption"], want["beam"]), job
        assert answer["score"] == pytest.approx(want["score"], abs=1e-4)

    models = requests.get(f"{step_server.url}/v1/models", timeout=10).json()["models"]
    (batching,) = [m["batching"] for m in models if m["name"] == "captioner"]
    assert batching["decoding"] == "step" and batching["steps"] > 0, batching
    assert batching["samples"] >= 2 * len(jobs) and batching["abandoned"] == 0
