"""Admission control: count bound, head-of-line wait bound, release on every exit path."""

from __future__ import annotations

import time

import pytest

from service.batching.admission import Admission
from service.core.errors import Overloaded
from service.core.statistics import ModelStatistics


def test_count_bound_refuses_beyond_max_and_frees_places() -> None:
    reasons: list[str] = []
    gate = Admission("m", max_requests=2, max_wait_s=0, on_reject=reasons.append, floor=1)
    full = pytest.raises(Overloaded, match="2 requests in progress")
    with gate.admit(), gate.admit(), full, gate.admit():
        pass
    assert reasons == ["queue_full"]
    assert gate.inside == 0
    with gate.admit():  # places were given back
        assert gate.inside == 1


def test_wait_bound_sheds_while_the_oldest_request_is_too_old() -> None:
    reasons: list[str] = []
    gate = Admission("m", max_requests=100, max_wait_s=0.05, on_reject=reasons.append, floor=10)
    with gate.admit():
        with gate.admit():  # young: admitted
            pass
        time.sleep(0.08)
        with pytest.raises(Overloaded, match="oldest request has waited") as refused, gate.admit():
            pass
        assert refused.value.headers["Retry-After"] == "1"
    assert reasons == ["queue_wait"]
    with gate.admit():  # the old one left: admitted again
        pass


def test_place_is_released_when_the_request_fails() -> None:
    gate = Admission("m", max_requests=1, max_wait_s=0)
    with pytest.raises(ValueError), gate.admit():
        raise ValueError("bad input")
    assert gate.inside == 0


def test_oldest_is_the_earliest_still_inside() -> None:
    gate = Admission("m", max_requests=10, max_wait_s=0)
    first, second = gate.admit(), gate.admit()
    first.__enter__()
    time.sleep(0.02)
    second.__enter__()
    assert gate.oldest_wait() >= 0.02
    first.__exit__(None, None, None)
    assert gate.oldest_wait() < 0.02
    second.__exit__(None, None, None)
    assert gate.oldest_wait() == 0.0


def test_littles_law_limit_follows_the_answer_rate() -> None:
    reasons: list[str] = []
    gate = Admission("m", max_requests=1000, max_wait_s=0.5, on_reject=reasons.append, floor=4)
    now = time.monotonic()
    assert gate.limit(now) == 4  # idle: the floor
    for _ in range(400):  # 400 answered in the 2 s window = 200/s -> 100 may wait 0.5 s
        with gate.admit():
            pass
    assert gate.limit(time.monotonic()) == 100
    held = [gate.admit() for _ in range(100)]
    for place in held:
        place.__enter__()
    with pytest.raises(Overloaded, match=r"would wait over 0\.5 s"), gate.admit():
        pass
    assert reasons == ["queue_wait"]
    for place in held:
        place.__exit__(None, None, None)
    assert gate.limit(time.monotonic() + 3) == 4  # the rate is forgotten after the window


def test_each_admitted_request_and_only_it_is_scoped_for_the_statistics() -> None:
    stats = ModelStatistics()
    gate = Admission("m", max_requests=1, max_wait_s=0, request_scope=stats.request)
    with gate.admit():
        assert stats.reached() is not None  # what the runner's submit sees
        with pytest.raises(Overloaded), gate.admit():
            pass  # refused: never scoped, never counted
    with pytest.raises(ValueError), gate.admit():
        stats.reached()
        raise ValueError("inference failed")
    counts = stats.snapshot("m", "1")["inference_stats"]
    assert counts["success"]["count"] == 1 and counts["fail"]["count"] == 1
    assert stats.reached() is None  # the scope ended with the request
