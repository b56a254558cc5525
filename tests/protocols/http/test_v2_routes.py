"""The /v2 REST routes of the statistics extension on a fake model (no server, no model store)."""

from __future__ import annotations

from starlette.testclient import TestClient

from service.protocols.http import v2
from tests.protocols.v2.test_dataplane import FakeRunner, image_spec, serving


def test_statistics_routes_answer_tritons_shape_and_v2_errors() -> None:
    runner = FakeRunner(image_spec())
    runner.statistics.batch_done(3, 1, 2, 3)
    client = TestClient(v2.build_app(lambda: serving(runner)), base_url="http://127.0.0.1")
    every = client.get("/v2/models/stats")  # not the metadata of a model named "stats"
    assert every.status_code == 200
    (stats,) = every.json()["model_stats"]
    # the version by its number (tag "v1": 1), as Triton's tools parse it
    assert (stats["name"], stats["version"], stats["inference_count"]) == ("tiny", "1", 3)
    assert set(stats["inference_stats"]) >= {"success", "fail", "queue", "compute_infer"}
    assert client.get("/v2/models/tiny/stats").json() == every.json()
    assert client.get("/v2/models/tiny/versions/v1/stats").json() == every.json()
    assert client.get("/v2/models/tiny/versions/1/stats").json() == every.json()
    unknown = client.get("/v2/models/nope/stats")
    assert unknown.status_code == 404 and "unknown model 'nope'" in unknown.json()["error"]
    assert client.get("/v2/models/tiny/versions/v9/stats").status_code == 404
    assert client.post("/v2/models/stats").status_code == 405
