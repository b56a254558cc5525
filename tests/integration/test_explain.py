"""POST /v1/explain on a real `bentoml serve`, over HTTP: occlusion maps equal to the same steps
run in process with onnxruntime, the heatmap PNG and its bounds, every parameter's 400, and the
occluded copies going through the model's batcher."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image

from service.core.model_settings import ModelSettings
from service.store.specs import ModelSpec, latest_specs
from service.tasks.explaining import Occlusion
from service.tasks.image_classification import ExplainResult, image_pixels
from tests.integration.media import png

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return latest_specs()


def in_process(spec: ModelSpec, data: bytes, grid: int) -> dict:
    """The answer the server should give, from the same steps with onnxruntime's answers."""
    session = ort.InferenceSession(str(spec.graph_path()), providers=["CPUExecutionProvider"])
    occlusion = Occlusion.of(image_pixels(spec, ModelSettings(), data), grid)
    (probabilities,) = session.run(["probabilities"], {"image": occlusion.copies})
    return occlusion.explained(spec, probabilities)[0]


def coffee_jpeg() -> bytes:
    import skimage.data

    buffer = io.BytesIO()
    Image.fromarray(skimage.data.coffee()).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def samples(server, model: str) -> int:
    described = requests.get(f"{server.url}/v1/models/{model}", timeout=10).json()
    return int(described["batching"]["samples"])


def test_digit_map_equals_in_process_and_every_copy_goes_through_the_batcher(server, specs) -> None:
    spec = specs["digits-cnn"]
    data = png(spec.heldout()["image"][3])
    before = samples(server, "digits-cnn")
    response = requests.post(
        f"{server.url}/v1/explain?model=digits-cnn&grid=7",
        files={"image": ("digit.png", data, "image/png")},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    ExplainResult.model_validate(body)
    want = in_process(spec, data, 7)
    assert body["target"]["index"] == want["target"]["index"]
    assert body["target"]["score"] == pytest.approx(want["target"]["score"], abs=1e-5)
    np.testing.assert_allclose(body["grid"], want["grid"], atol=1e-5)
    assert len(body["grid"]) == 7 and all(len(row) == 7 for row in body["grid"])
    assert (body["fill"], body["fill_value"], body["input_size"]) == (
        "mean",
        want["fill_value"],
        [28, 28],
    )
    if server.placement == "local":  # the remote runner service counts in its own process
        assert samples(server, "digits-cnn") - before == 7 * 7 + 1


def test_photo_map_as_json_base64_and_as_png_heatmaps(server, specs) -> None:
    data = coffee_jpeg()
    as_json = requests.post(
        f"{server.url}/v1/explain", json={"image_b64": base64.b64encode(data).decode()}, timeout=60
    )
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert (body["model"], body["target"]["label"], body["grid_size"]) == (
        "imagenet-cnn",
        "espresso",
        8,
    )
    np.testing.assert_allclose(
        body["grid"], in_process(specs["imagenet-cnn"], data, 8)["grid"], atol=1e-4
    )
    asked = [
        ("?format=png&size=300&grid=4", {"content-type": "image/jpeg"}, 300),
        ("", {"content-type": "image/jpeg", "accept": "image/png"}, 256),  # the default size
        ("?size=512", {"content-type": "image/jpeg", "accept": "image/png, application/json"}, 512),
    ]
    for query, headers, side in asked:
        response = requests.post(
            f"{server.url}/v1/explain{query}", data=data, headers=headers, timeout=60
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        image = Image.open(io.BytesIO(response.content))
        assert image.format == "PNG" and image.size == (side, side)  # the model's input is square
    preferred_json = requests.post(
        f"{server.url}/v1/explain?grid=2",
        data=data,
        headers={"content-type": "image/jpeg", "accept": "application/json, image/png"},
        timeout=60,
    )
    assert preferred_json.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("?grid=1", 400, "grid=1 must be between 2 and 16"),
        (
            "?grid=17",
            400,
            "grid=17 must be between 2 and 16 for imagenet-cnn (set by max_explain_grid)",
        ),
        ("?grid=99999999999999999999", 400, "grid=99999999999999999999 must be between 2 and 16"),
        ("?grid=eight", 400, "grid='eight' is not an integer"),
        ("?model=digits-cnn&target=10", 400, "target=10 must be between 0 and 9"),
        ("?target=-1", 400, "target=-1 must be between 0 and"),
        ("?format=gif", 400, "format='gif' must be json or png"),
        ("?format=png&size=513", 400, "size=513 must be between 16 and 512"),
        ("?size=8", 400, "size=8 must be between 16 and 512"),
        ("?model=nope", 404, "unknown model 'nope'"),
        ("?model=sentiment-lstm", 404, "is a text-classification model, not image-classification"),
    ],
)
def test_bad_parameters_are_refused_with_what_is_expected(server, query, status, words) -> None:
    response = requests.post(
        f"{server.url}/v1/explain{query}",
        data=png(np.zeros((28, 28), np.uint8)),
        headers={"content-type": "image/png"},
        timeout=30,
    )
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"]


def test_bad_bodies_are_refused(server) -> None:
    not_an_image = requests.post(
        f"{server.url}/v1/explain",
        data=b"GIF89a nope",
        headers={"content-type": "image/gif"},
        timeout=30,
    )
    assert not_an_image.status_code == 400 and "corrupt" in not_an_image.json()["error"]["message"]
    wrong_type = requests.post(
        f"{server.url}/v1/explain", data=b"x", headers={"content-type": "text/plain"}, timeout=30
    )
    assert wrong_type.status_code == 415


def test_explanations_beside_classifications_each_get_their_own_answer(server, specs) -> None:
    bodies = [png(image) for image in specs["digits-cnn"].heldout()["image"][:12]]

    def classify(data: bytes) -> int:
        response = requests.post(
            f"{server.url}/v1/classify?model=digits-cnn&top_k=1",
            data=data,
            headers={"content-type": "image/png"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0]["index"]

    def explain(images: list[bytes]) -> list[int]:
        answers = []
        for data in images:
            response = requests.post(
                f"{server.url}/v1/explain?model=digits-cnn&grid=3",
                data=data,
                headers={"content-type": "image/png"},
                timeout=60,
            )
            assert response.status_code == 200, response.text
            answers.append(response.json()["target"]["index"])
        return answers

    alone = [classify(data) for data in bodies]
    # NOTE: 10 items of one explanation and 6 classifications in flight at most: within the
    # admission floor (workers x max batch size), so none is shed however slow the machine
    with ThreadPoolExecutor(7) as pool:
        explaining = pool.submit(explain, bodies[:4])
        classified = list(pool.map(classify, bodies))
        explained = explaining.result()
    assert classified == alone and explained == alone[:4]
