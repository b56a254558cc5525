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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(gate: Admission, clock: Clock, count: int, every_s: float) -> None:
    for _ in range(count):
        with gate.admit():
            clock.now += every_s


def test_littles_law_limit_follows_the_answer_rate() -> None:
    reasons: list[str] = []
    clock = Clock()
    gate = Admission("m", 1000, 0.5, reasons.append, floor=4, clock=clock)
    assert gate.limit(clock()) == 4  # idle: the floor
    answer(gate, clock, 400, 0.005)  # 400 answered in the 2 s window = 200/s -> 100 may wait 0.5 s
    assert gate.limit(clock()) == 100
    held = [gate.admit() for _ in range(100)]
    for place in held:
        place.__enter__()
    with pytest.raises(Overloaded, match=r"would wait over 0\.5 s"), gate.admit():
        pass
    assert reasons == ["queue_wait"]
    for place in held:
        place.__exit__(None, None, None)
    clock.now += 3
    assert gate.limit(clock()) == 4  # the rate is forgotten after the window
    with gate.admit():  # a new busy period starts from the rate the last one ended with:
        assert gate.limit(clock()) == 125  # 400 + the 100 held, in its last 2 s: 250/s


def test_a_burst_after_a_pause_is_judged_on_its_own_rate_not_a_half_idle_window() -> None:
    clock = Clock()
    gate = Admission("m", 1000, 1.0, floor=16, clock=clock)
    answer(gate, clock, 200, 0.01)  # busy at 100/s
    clock.now += 5.0  # a pause
    with gate.admit():  # the next burst starts from the rate the last period ended with
        assert gate.limit(clock()) == 100
    answer(gate, clock, 50, 0.02)  # now at 50/s, 1 s in: its own rate, 1 s long, not 2
    assert gate.limit(clock()) == 100  # the last period's, until this one is 2 s old
    clock.now += 0.1  # a gap shorter than IDLE_GAP_S: the same busy period
    answer(gate, clock, 50, 0.02)  # 2.1 s in: its own rate over the 2 s window
    assert 45 <= gate.limit(clock()) <= 50  # the window's edge cuts a few answers


def test_a_fresh_model_starts_at_the_floor_and_a_burst_counts_its_own_answers() -> None:
    clock = Clock()
    gate = Admission("m", 1000, 1.0, floor=16, clock=clock)
    with gate.admit():
        assert gate.limit(clock()) == 16
    clock.now += 1.0
    answer(gate, clock, 50, 0.01)  # 0.5 s of 100/s: a 2 s window would say 25/s, the floor
    assert gate.limit(clock()) == 100


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


def test_a_rate_is_carried_over_a_pause_only_while_recent_and_only_as_measured() -> None:
    clock = Clock()
    gate = Admission("m", 1000, 1.0, floor=16, clock=clock)
    answer(gate, clock, 200, 0.01)  # 100/s
    clock.now += 30.0
    with gate.admit():  # 30 s later: carried over
        assert gate.limit(clock()) == 100
    answer(gate, clock, 1, 0.01)  # a period too short to measure: it passes nothing on ...
    clock.now += 35.0  # ... so 65 s after the measurement it is forgotten
    with gate.admit():
        assert gate.limit(clock()) == 16


# --- requests of several items (an explanation's occluded copies) -------------------------------


def test_a_request_of_several_items_weighs_that_many_requests() -> None:
    reasons: list[str] = []
    gate = Admission("m", max_requests=10, max_wait_s=0, on_reject=reasons.append, floor=1)
    with gate.admit(items=6):
        assert gate.inside == 6
        with gate.admit(items=4):  # 10: exactly full
            assert gate.inside == 10
            with pytest.raises(Overloaded, match="10 requests in progress") as full, gate.admit():
                pass
            assert full.value.headers["Retry-After"] == "1"
        with pytest.raises(Overloaded, match="this request counts as 5"), gate.admit(items=5):
            pass
        with gate.admit(items=4):  # its places were given back
            assert gate.inside == 10
    assert reasons == ["queue_full", "queue_full"]
    assert gate.inside == 0 and gate.oldest_wait() == 0.0


def test_a_failed_request_of_several_items_gives_back_all_its_places() -> None:
    gate = Admission("m", max_requests=8, max_wait_s=0)
    with pytest.raises(ValueError, match="deadline"), gate.admit(items=8):
        raise ValueError("deadline")
    assert gate.inside == 0
    with pytest.raises(ValueError, match="at least one item"), gate.admit(items=0):
        pass


def test_littles_law_counts_items_inside_and_items_answered() -> None:
    reasons: list[str] = []
    clock = Clock()
    gate = Admission("m", 1000, 0.5, reasons.append, floor=4, clock=clock)
    for _ in range(40):  # 40 requests of 10 items each in 2 s: 200 items/s -> 100 may wait 0.5 s
        with gate.admit(items=10):
            clock.now += 0.05
    assert gate.rate(clock()) == pytest.approx(200) and gate.limit(clock()) == 100
    held = gate.admit(items=60)
    held.__enter__()
    with gate.admit(items=40):  # 100: at the limit, admitted
        with pytest.raises(Overloaded, match="this one, which counts as 2,"), gate.admit(items=2):
            pass
        # a one-item request sees each request of many items as at most half the limit (50):
        # 90 + 1, admitted: explanations slow other traffic down, never shut it out
        with gate.admit():
            assert gate.inside == 101
    with gate.admit(items=40):  # room again once those 40 left
        pass
    held.__exit__(None, None, None)
    assert reasons == ["queue_wait"]


def test_a_request_heavier_than_the_wait_limit_runs_alone_but_never_shuts_others_out() -> None:
    reasons: list[str] = []
    clock = Clock()
    gate = Admission("m", 1000, 1.0, reasons.append, floor=16, clock=clock)
    assert gate.limit(clock()) == 16
    with gate.admit(items=65):  # nothing inside: admitted, or it could never run
        assert gate.inside == 65
        # one-item requests see it as half the limit (8): 8 more fit, the 9th would wait
        held = [gate.admit() for _ in range(8)]
        for context in held:
            context.__enter__()
        assert gate.inside == 73
        with pytest.raises(Overloaded, match="would wait"), gate.admit():
            pass
        with pytest.raises(Overloaded, match="counts as 2"), gate.admit(items=2):
            pass  # a request of many items sees every item
        clock.now += 3.0  # the explanation is slow: no stall while the one-item ones are young
        assert gate.oldest_wait(clock()) == pytest.approx(3.0)
    clock.now += 5.0
    with pytest.raises(Overloaded, match="oldest request has waited"), gate.admit():
        pass  # the eight one-item requests, inside for 8 s: a stall
    for context in held:
        context.__exit__(None, None, None)
    assert gate.inside == 0
    over = pytest.raises(Overloaded, match="limit 1000; this request counts as 1001")
    with over, gate.admit(items=1001):  # over max_requests: never, even alone (memory)
        pass
    assert reasons == ["queue_wait", "queue_wait", "queue_wait", "queue_full"]


def test_a_long_request_of_many_items_is_no_stall() -> None:
    clock = Clock()
    gate = Admission("m", 1000, 1.0, floor=16, clock=clock)
    with gate.admit(items=65):
        clock.now += 5.0  # far past max_wait_s, as 65 items at a slow rate take
        assert gate.oldest_wait(clock()) == 0.0
        with gate.admit():  # not refused as stalled
            pass
