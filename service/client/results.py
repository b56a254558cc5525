"""The /v1 answers as typed objects, mirroring the JSON the server documents (GET /openapi.json;
service/protocols/http/wire.py). Each keeps the whole JSON object in `raw`, so keys a newer
server adds are still there. `in_domain` and `domain_score` are None for a model without a
domain verdict (GET /v1/models: `domain`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Json = dict[str, Any]


@dataclass(frozen=True)
class Prediction:
    label: str
    index: int
    score: float

    @classmethod
    def of(cls, data: Json) -> Prediction:
        return cls(str(data["label"]), int(data["index"]), float(data["score"]))


@dataclass(frozen=True)
class Judged:
    """What every task's answer says about itself: which model version answered, how sure it
    is, and (for a model with a domain verdict) whether the input is of a kind it knows."""

    model: str
    version: str
    confidence: float
    in_domain: bool | None
    domain_score: float | None
    raw: Json = field(repr=False, compare=False)


def judged(data: Json, answer: Json | None = None) -> dict[str, Any]:
    """Judged's fields from `data`; model and version from `answer` (a batch's own)."""
    answer = data if answer is None else answer
    score = data.get("domain_score")
    return {
        "model": str(answer["model"]),
        "version": str(answer["version"]),
        "confidence": float(data["confidence"]),
        "in_domain": data.get("in_domain"),
        "domain_score": None if score is None else float(score),
        "raw": data,
    }


@dataclass(frozen=True)
class Classification(Judged):
    predictions: list[Prediction]
    """Best first."""

    @property
    def label(self) -> str:
        """The top prediction's label."""
        return self.predictions[0].label

    @classmethod
    def of(cls, data: Json) -> Classification:
        return cls(**judged(data), predictions=[Prediction.of(p) for p in data["predictions"]])


@dataclass(frozen=True)
class Sentiment(Judged):
    label: str
    score: float

    @classmethod
    def of(cls, data: Json, answer: Json | None = None) -> Sentiment:
        return cls(**judged(data, answer), label=str(data["label"]), score=float(data["score"]))

    @classmethod
    def each(cls, answer: Json) -> list[Sentiment]:
        """The answers of a batch ({"results": [...]}), in order; `raw` is each one's object."""
        return [cls.of(item, answer) for item in answer["results"]]


@dataclass(frozen=True)
class Segment:
    """One stretch of speech between silences (the whole clip when it is one utterance)."""

    index: int
    start_s: float
    end_s: float
    text: str
    confidence: float
    error: str | None
    """Why this segment has no transcript (the others are unaffected)."""
    in_domain: bool | None
    domain_score: float | None
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: Json) -> Segment:
        score = data.get("domain_score")
        return cls(
            index=int(data["index"]),
            start_s=float(data["start_s"]),
            end_s=float(data["end_s"]),
            text=str(data["text"]),
            confidence=float(data["confidence"]),
            error=data.get("error"),
            in_domain=data.get("in_domain"),
            domain_score=None if score is None else float(score),
            raw=data,
        )


@dataclass(frozen=True)
class Transcript(Judged):
    text: str
    duration_s: float
    segments: list[Segment]

    @classmethod
    def of(cls, data: Json) -> Transcript:
        return cls(
            **judged(data),
            text=str(data["text"]),
            duration_s=float(data["duration_s"]),
            segments=[Segment.of(s) for s in data["segments"]],
        )


@dataclass(frozen=True)
class Caption(Judged):
    caption: str
    score: float
    """The caption's log-probability."""
    beam: int

    @classmethod
    def of(cls, data: Json) -> Caption:
        return cls(
            **judged(data),
            caption=str(data["caption"]),
            score=float(data["score"]),
            beam=int(data["beam"]),
        )


@dataclass(frozen=True)
class Explanation:
    """An occlusion-sensitivity map (README "Explanations: /v1/explain")."""

    model: str
    version: str
    target: Prediction
    """The class explained and its score on the whole image."""
    grid: list[list[float]]
    """grid_size rows (top to bottom) of cells (left to right): the target's score minus its
    score with that cell occluded."""
    grid_size: int
    input_size: tuple[int, int]
    """[height, width] of the model's input that the grid cuts into cells."""
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: Json) -> Explanation:
        height, width = data["input_size"]
        return cls(
            model=str(data["model"]),
            version=str(data["version"]),
            target=Prediction.of(data["target"]),
            grid=[[float(cell) for cell in row] for row in data["grid"]],
            grid_size=int(data["grid_size"]),
            input_size=(int(height), int(width)),
            raw=data,
        )


@dataclass(frozen=True)
class ModelInfo:
    """A configured model version (GET /v1/models); one that cannot be served has only name,
    ready and error. Specs, metrics, batching counters and more are in `raw`."""

    name: str
    ready: bool
    error: str | None
    version: str | None
    task: str | None
    default: bool | None
    """Whether requests that name no version get this one."""
    served_versions: list[str]
    metrics: dict[str, float]
    """Held-out evaluation."""
    raw: Json = field(repr=False, compare=False)

    @classmethod
    def of(cls, data: Json) -> ModelInfo:
        return cls(
            name=str(data["name"]),
            ready=bool(data["ready"]),
            error=data.get("error"),
            version=data.get("version"),
            task=data.get("task"),
            default=data.get("default"),
            served_versions=list(data.get("served_versions") or []),
            metrics=dict(data.get("metrics") or {}),
            raw=data,
        )

    @classmethod
    def each(cls, answer: Json) -> list[ModelInfo]:
        return [cls.of(item) for item in answer["models"]]
