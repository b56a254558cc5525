"""The domain verdict every task answers with (service/tasks/base.py) and how a transcript joins
its segments' verdicts (service/tasks/transcription.py): no model, no server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.core.errors import InvalidInput, OutOfDomain
from service.processing.speech import Transcript
from service.tasks.base import (
    domain_outputs,
    judged,
    outside_by,
    reject_parameter,
    verdict_tensors,
)
from service.tasks.tensors import InferRequest
from service.tasks.transcription import joined, segment_of


def spec(domain: dict[str, Any] | None) -> Any:
    return SimpleNamespace(name="m", extra={} if domain is None else {"domain": domain})


DISTANCE = spec({"threshold": 1.0})  # a built-in verdict: scores above it are outside
CONFIDENCE = spec({"threshold": 0.6, "score": "confidence", "outside": "below"})  # an import's


def test_a_model_without_a_verdict_answers_confidence_only() -> None:
    assert judged(spec(None), 0.3, 5.0, reject=True) == {"confidence": 0.3}
    assert judged(spec({"threshold": "high"}), 0.3, 5.0) == {"confidence": 0.3}  # malformed
    assert verdict_tensors(spec(None)) == []
    assert domain_outputs(spec(None), [0.3], [5.0], True) == {}


def test_a_distance_verdict_flags_scores_above_its_threshold() -> None:
    assert judged(DISTANCE, 0.9, 0.5) == {"confidence": 0.9, "in_domain": True, "domain_score": 0.5}
    assert judged(DISTANCE, 0.9, 1.0)["in_domain"] is True  # the threshold itself is inside
    assert judged(DISTANCE, 0.9, 1.5)["in_domain"] is False
    assert judged(DISTANCE, 0.9, None) == {"confidence": 0.9}  # nothing was judged
    with pytest.raises(OutOfDomain, match=r"m judges .* 1\.5 is above its threshold 1"):
        judged(DISTANCE, 0.9, 1.5, reject=True, knows="scenes")
    assert outside_by(DISTANCE, 1.5) == pytest.approx(0.5)
    assert judged(DISTANCE, 1.7, 0.1)["confidence"] == 1.0  # clipped into [0, 1]


def test_a_confidence_verdict_flags_answers_below_its_threshold() -> None:
    assert judged(CONFIDENCE, 0.9, None)["in_domain"] is True  # the score is the confidence
    low = judged(CONFIDENCE, 0.3, 123.0)  # any other score is ignored
    assert low["in_domain"] is False and low["domain_score"] == 0.3
    assert outside_by(CONFIDENCE, 0.3) == pytest.approx(0.3)
    with pytest.raises(OutOfDomain, match="below its threshold"):
        judged(CONFIDENCE, 0.3, None, reject=True)


def test_v2_outputs_name_the_refused_rows_and_the_parameter_is_checked_first() -> None:
    out = domain_outputs(DISTANCE, [0.9, 0.8, 0.7], [0.2, 3.0, None], False)
    assert out["in_domain"].tolist() == [True, False, True]  # a row with nothing to judge: in
    np.testing.assert_allclose(out["domain_score"], [0.2, 3.0, 0.0])
    assert [t.name for t in verdict_tensors(DISTANCE)] == [
        "confidence",
        "in_domain",
        "domain_score",
    ]
    with pytest.raises(OutOfDomain, match="rows 1 of this batch"):
        domain_outputs(DISTANCE, [0.9, 0.8], [0.2, 3.0], True)
    assert reject_parameter(InferRequest("m")) is False
    assert reject_parameter(InferRequest("m", parameters={"reject_out_of_domain": None})) is False
    assert reject_parameter(InferRequest("m", parameters={"reject_out_of_domain": True})) is True
    with pytest.raises(InvalidInput, match="true or false"):
        reject_parameter(InferRequest("m", parameters={"reject_out_of_domain": "yes"}))


@pytest.mark.parametrize("model", [DISTANCE, CONFIDENCE])
def test_a_transcript_is_outside_when_any_segment_is_and_names_the_worst(model: Any) -> None:
    # distance: scores 0.2 (in), 1.4 and 2.0 (out); confidence: 0.9 (in), 0.5 and 0.2 (out)
    far = model is DISTANCE
    scores = [0.2, 1.4, 2.0] if far else [None] * 3
    confidences = [0.95, 0.9, 0.9] if far else [0.9, 0.5, 0.2]
    segments = [
        segment_of(model, i, float(i), float(i) + (4.0 if i == 0 else 1.0), Transcript(t, c, s))
        for i, (t, c, s) in enumerate(zip(["one", "two", ""], confidences, scores, strict=True))
    ]
    answer = joined(segments, 7.0)
    assert [s.get("in_domain") for s in answer["segments"]] == [True, False, False]
    assert answer["in_domain"] is False  # the empty transcript's segment counts too
    assert answer["domain_score"] == (2.0 if far else 0.2)  # the worst, by the model's side
    assert "outside_by" not in answer["segments"][0]
    inside = joined(segments[:1], 4.0)
    assert inside["in_domain"] is True


def test_segments_of_a_model_without_a_verdict_join_without_one() -> None:
    answer = joined([segment_of(spec(None), 0, 0.0, 1.0, Transcript("one", 0.9))], 1.0)
    assert "in_domain" not in answer and "in_domain" not in answer["segments"][0]
