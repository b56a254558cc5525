"""The pieces every import shares (Job, Prepared, checks, parity) and two tasks' preparation:

- generic: any graph onnxruntime loads, stored as is;
- image-classification: the user's CNN is wrapped (service/store/importing/graph_wrap.py) to the
built-in
  contract, and the wrapped graph must equal the original on random images preprocessed with
  numpy (parity, atol 1e-4).

Text and speech contracts: service/store/importing/contracts.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from service.store.importing.graph_inspect import ImportRefused, max_abs_diff, session
from service.store.importing.graph_wrap import (
    FLOATS,
    ends_in_softmax,
    flag,
    plan_image,
    preprocess_numpy,
    softmax_numpy,
    wrap_image_classifier,
)
from service.store.specs import TensorSpec

PARITY_TOLERANCE = 1e-4


@dataclass
class Job:
    """One import: the parsed graph and what came with it."""

    task: str
    model: onnx.ModelProto
    source: Path
    """The validated bytes, written to the work folder (the original file may change)."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    options: dict[str, str]
    labels: list[str] | None
    vocabulary: list[str] | None
    workdir: Path


@dataclass
class Prepared:
    """The graph to store and the spec entries the task adds."""

    graph: Path
    preprocessing: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def unchanged(job: Job, **entries: Any) -> Prepared:
    parity = {
        "max_abs_diff": 0.0,
        "tolerance": PARITY_TOLERANCE,
        "cases": [],
        "note": "stored as is",
    }
    return Prepared(job.source, parity=parity, **entries)


def no_options(job: Job, known: Sequence[str] = ()) -> None:
    unknown = sorted(set(job.options) - set(known))
    if unknown:
        raise ImportRefused(
            f"unknown --preprocess key(s) {', '.join(unknown)} for {job.task}; "
            + (f"known: {', '.join(known)}" if known else "it takes none")
        )


def check_batch_dims(tensors: Sequence[TensorSpec], task: str) -> None:
    """Task kernels stack requests, so the batch dim must be symbolic (or fixed at 1)."""
    for t in tensors:
        if t.shape and isinstance(t.shape[0], int) and t.shape[0] != 1:
            raise ImportRefused(
                f"{t.name} has a fixed batch dim {t.shape[0]}; {task} needs a symbolic batch dim "
                "(or 1: one request at a time). Import it as --task generic to serve it as is"
            )


def parity_report(cases: list[tuple[str, list[list[int]], float]]) -> dict[str, Any]:
    worst = max(diff for _, _, diff in cases)
    if worst > PARITY_TOLERANCE:
        raise ImportRefused(
            f"the adapted graph differs from the original by {worst:.2e} (> {PARITY_TOLERANCE}); "
            "please report this graph as a deepserve bug"
        )
    return {
        "max_abs_diff": worst,
        "tolerance": PARITY_TOLERANCE,
        "cases": [{"label": c[0], "shapes": c[1], "max_abs_diff": c[2]} for c in cases],
    }


def is_probabilities(rows: np.ndarray) -> bool:
    return bool(rows.min() >= 0 and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))


def prepare_generic(job: Job) -> Prepared:
    no_options(job)
    session(job.source)  # onnxruntime must load it, not only onnx.checker
    if job.labels is not None:
        scores = [t for t in job.outputs if t.datatype == "FP32" and len(t.shape) == 2]
        if len(scores) != 1:
            raise ImportRefused(
                "--labels names the classes of a generic model's one FP32 [batch, classes] "
                f"output; this graph has {len(scores)} such outputs"
            )
        classes = scores[0].shape[1]
        if isinstance(classes, int) and classes != len(job.labels):
            raise ImportRefused(
                f"the labels file has {len(job.labels)} lines but output {scores[0].name} has "
                f"{classes} classes; give one line per class, in the output's order"
            )
    return unchanged(job)


def prepare_image(job: Job) -> Prepared:
    if len(job.inputs) != 1 or len(job.outputs) != 1:
        raise ImportRefused(
            "image-classification needs a graph with one image input and one output (logits or "
            f"probabilities [batch, classes]); this one has inputs {names(job.inputs)} and "
            f"outputs {names(job.outputs)}: export only the class scores, or use --task generic"
        )
    image, scores = job.inputs[0], job.outputs[0]
    if scores.datatype not in FLOATS or len(scores.shape) != 2:
        raise ImportRefused(
            f"image-classification needs a float [batch, classes] output; output {scores.name} "
            f"is {scores.datatype} {scores.shape}"
        )
    check_batch_dims([image, scores], job.task)
    plan = plan_image(image, job.options, softmax_default=True)
    original = session(job.source)
    rng = np.random.default_rng(0)
    shape = [plan.size, plan.size, plan.channels]
    sizes = [1, 3] if isinstance(image.shape[0], str) else [1, 1]
    cases = [rng.integers(0, 256, (n, *shape), dtype=np.uint8) for n in sizes]
    raw = [
        run(original, {image.name: preprocess_numpy(c, plan, image.datatype)}, job.task)[0]
        for c in cases
    ]
    raw = [r.astype(np.float32) for r in raw]
    already = ends_in_softmax(job.model) or all(is_probabilities(r) for r in raw)
    plan.softmax = flag(job.options, "softmax", not already)
    if not plan.softmax and not all(is_probabilities(r) for r in raw):
        raise ImportRefused(
            f"softmax=false, but output {scores.name} is not probabilities (rows do not sum to "
            "1); leave softmax on for logits"
        )
    expected = [softmax_numpy(r) if plan.softmax else r for r in raw]
    classes = int(expected[0].shape[1])
    check_classes(job.labels or [], classes, scores.name, "labels")
    wrapped = wrap_image_classifier(job.model, plan, image, scores, classes)
    path = save(wrapped, job.workdir)
    served = session(path)
    report = parity_report(
        [
            (
                f"random images batch {len(c)}",
                [list(c.shape)],
                max_abs_diff([e], run(served, {"image": c}, job.task)),
            )
            for c, e in zip(cases, expected)
        ]
    )
    report["reference"] = "original graph in onnxruntime on numpy-preprocessed images"
    return Prepared(
        path, plan.preprocessing(), report, {"wrapped": wrap_note(image, scores, plan.softmax)}
    )


def run(graph: ort.InferenceSession, feed: dict[str, np.ndarray], task: str) -> list[Any]:
    """All outputs of the graph on a test batch; ImportRefused when it fails to run."""
    try:
        return list(graph.run(None, feed))
    except Exception as error:  # NOTE: onnxruntime raises several pybind error types
        shapes = {k: list(v.shape) for k, v in feed.items()}
        raise ImportRefused(
            f"the graph fails on a {task} test batch {shapes}: {first_line(error)}"
        ) from None


def wrap_note(image: TensorSpec, scores: TensorSpec, softmax: bool) -> str:
    after = "a Softmax after" if softmax else "nothing after (already probabilities)"
    return (
        f"in-graph preprocessing before the original input {image.name!r} {image.shape}; "
        f"{after} its output {scores.name!r} {scores.shape}"
    )


def save(model: onnx.ModelProto, workdir: Path) -> Path:
    path = workdir / "model.onnx"
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # NOTE: the checker raises several types
        raise ImportRefused(
            f"the adapted graph fails onnx.checker ({first_line(error)}); please report this "
            "graph as a deepserve bug"
        ) from None
    return path


def first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def names(tensors: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.datatype} {t.shape}" for t in tensors) or "none"


def check_classes(labels: list[str], classes: int, output: str, what: str) -> None:
    if len(labels) != classes:
        raise ImportRefused(
            f"the {what} file has {len(labels)} lines but output {output} has {classes} "
            f"classes; give one line per class, in the output's order"
        )
