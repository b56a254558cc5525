"""What a task is: one `Task` object per module of this package (service/tasks/<task>.py), holding
everything the layers need to serve that kind of model. The registry (registry.py) collects them;
every other table (kernels, V2 signatures, default models, import rules, built-in model names) is
derived from it, so a new task is one new module."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.core.errors import InvalidInput, OutOfDomain
from service.core.wire import ResponseModel
from service.runners.base import Runner
from service.runtime.kernels import Kernel
from service.store.importing.importer import ImportRule
from service.store.specs import ModelSpec
from service.tasks.tensors import InferRequest, Signature, Tensor


@dataclass(frozen=True)
class Task:
    name: str
    """The spec's `task` field (e.g. "image-classification")."""
    summary: str
    kernel: type[Kernel]
    """Collates, runs ONNX Runtime and splits a batch of this task's items (service/runtime)."""
    signature: Callable[[Runner], Signature]
    """A served model's tensor interface (V2 metadata, config and infer)."""
    results: tuple[type[ResponseModel], ...] = ()
    """The JSON answers of its /v1 endpoint (wire models; the OpenAPI document is generated from
    them and the REST handler answers through them)."""
    default_model: str | None = None
    """The model /v1 and the task gRPC service use when a request names none."""
    builtin_models: tuple[str, ...] = ()
    """Models of this task trained by this project (export/models/<name>.py builds each)."""
    importing: ImportRule | None = None
    """How `deepserve models import --task NAME` adapts a user's graph; None: not importable."""
    understands: Callable[[ModelSpec], dict[str, Any] | None] | None = None
    """What a model of this task was trained to recognise, for /v1/models (`understands`; e.g.
    speech-ctc's phrases and digit words): an input outside it gets an answer it never learnt."""
    position: int = 100
    """Order of the task in listings and of its built-in models in `deepserve models build`
    (cheap models first)."""


def check_range(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise InvalidInput(f"{name}={value} must be between {low} and {high}")
    return value


def domain_of(spec: ModelSpec) -> dict[str, Any] | None:
    """The model's domain verdict (spec.extra["domain"]: a score, its threshold, which side is
    outside), or None for a model without one."""
    domain = spec.extra.get("domain")
    if not isinstance(domain, dict) or not isinstance(domain.get("threshold"), int | float):
        return None
    return domain


def outside_by(spec: ModelSpec, score: float) -> float:
    """How far a domain score is past the model's threshold, on the outside's side (> 0:
    outside); 0 for a model without a verdict."""
    domain = domain_of(spec)
    if domain is None:
        return 0.0
    threshold = float(domain["threshold"])
    return threshold - score if domain.get("outside") == "below" else score - threshold


def judged(
    spec: ModelSpec,
    confidence: float,
    score: float | None,
    reject: bool = False,
    knows: str = "its training data",
) -> dict[str, Any]:
    """The answer's confidence and, where the model has a verdict, `in_domain` and
    `domain_score`. With `reject`, an input judged outside the domain raises OutOfDomain (422 /
    INVALID_ARGUMENT) saying so."""
    answer: dict[str, Any] = {"confidence": round(min(1.0, max(0.0, float(confidence))), 6)}
    domain = domain_of(spec)
    if domain is not None and domain.get("score") == "confidence":
        score = answer["confidence"]  # an import's --domain-threshold
    if domain is None or score is None:
        return answer
    threshold = float(domain["threshold"])
    below = domain.get("outside") == "below"
    inside = bool(score >= threshold) if below else bool(score <= threshold)
    answer |= {"in_domain": inside, "domain_score": round(float(score), 6)}
    if reject and not inside:
        side = "below" if below else "above"
        raise OutOfDomain(
            f"model {spec.name} judges this input outside what it knows ({knows}): domain "
            f"score {score:.4g} is {side} its threshold {threshold:.4g}; without "
            "reject_out_of_domain the answer comes with in_domain=false"
        )
    return answer


REJECT_PARAMETER = "reject_out_of_domain"
REJECT_HELP = (
    "true: an input the model judges outside its domain is refused (422 / INVALID_ARGUMENT) "
    "instead of answered with in_domain=false"
)


def verdict_tensors(spec: ModelSpec) -> list[Tensor]:
    """The V2 outputs of a model with a domain verdict (none for a model without one)."""
    if domain_of(spec) is None:
        return []
    return [
        Tensor("confidence", "FP32", [-1], description="calibrated confidence of the answer"),
        Tensor("in_domain", "BOOL", [-1], description="false: outside what the model knows"),
        Tensor("domain_score", "FP32", [-1], description="the verdict's score (GET /v1/models)"),
    ]


def reject_parameter(request: InferRequest) -> bool:
    """The V2 request parameter reject_out_of_domain (a JSON boolean; null or absent: false),
    read before anything runs."""
    value = request.parameters.get(REJECT_PARAMETER)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidInput(
            f"parameter {REJECT_PARAMETER} must be true or false (a JSON boolean), "
            f"got {value!r:.40}"
        )
    return value


def domain_outputs(
    spec: ModelSpec,
    confidences: Sequence[float],
    scores: Sequence[float | None],
    reject: bool,
    knows: str = "its training data",
) -> dict[str, np.ndarray]:
    """The V2 verdict outputs of a batch (`verdict_tensors`); with `reject` (the request's
    reject_out_of_domain), a batch with any row outside the domain is refused, naming the rows.
    A row with nothing to judge (no speech) is in the domain, domain_score 0."""
    if domain_of(spec) is None:
        return {}
    verdicts = [judged(spec, c, s) for c, s in zip(confidences, scores, strict=True)]
    outside = [i for i, v in enumerate(verdicts) if v.get("in_domain") is False]
    if reject and outside:
        rows = ", ".join(str(i) for i in outside[:20])
        more = f" and {len(outside) - 20} more" if len(outside) > 20 else ""
        raise OutOfDomain(
            f"model {spec.name} judges rows {rows}{more} of this batch outside what it knows "
            f"({knows}); without {REJECT_PARAMETER} they are answered with in_domain=false"
        )
    return {
        "confidence": np.array([v["confidence"] for v in verdicts], dtype=np.float32),
        "in_domain": np.array([v.get("in_domain", True) for v in verdicts], dtype=bool),
        "domain_score": np.array([v.get("domain_score", 0.0) for v in verdicts], dtype=np.float32),
    }
