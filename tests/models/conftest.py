"""Model tests run on the real store built by `make models`; a missing model is a failure."""

from __future__ import annotations

import pytest

from service.store.specs import ModelSpec, latest_specs

pytestmark = pytest.mark.models


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/models/" in str(item.fspath):
            item.add_marker(pytest.mark.models)


@pytest.fixture(scope="session")
def specs() -> dict[str, ModelSpec]:
    found = latest_specs()
    if not found:
        pytest.fail("the model store is empty: run `make models` (make test does it first)")
    return found


@pytest.fixture(scope="session")
def sessions(specs):
    import onnxruntime as ort

    cache: dict[tuple[str, str], ort.InferenceSession] = {}

    def get(name: str, graph: str = "model") -> ort.InferenceSession:
        key = (name, graph)
        if key not in cache:
            cache[key] = ort.InferenceSession(
                str(specs[name].graph_path(graph)), providers=["CPUExecutionProvider"]
            )
        return cache[key]

    return get
