"""Bring your own model: validate an ONNX file and store it as a new versioned model.

`deepserve models import PATH.onnx --name NAME [--task ...]` calls `import_model`: the file must
parse, pass onnx.checker (full check), use an opset the installed onnxruntime supports and have
inputs/outputs with V2 datatypes; the task's contract is made (image classifiers are wrapped) or
checked (service/store/importing/preparers.py, service/store/importing/contracts.py). Every import
creates a new
version in the store; what was validated is what is stored (one read of the file). Torch-free.

The spec (service/registry.ModelSpec) of an imported model:
- graphs["model"]: the stored graph's inputs/outputs (symbolic dims as strings, "?" when unnamed),
  its default-domain opset, SHA-256 and parity (wrapped or renamed graph vs the original);
- labels / vocabulary from --labels / --vocab; preprocessing: what the task's serving code reads;
- metrics {} and data {source, source_sha256, source_bytes, imported, importer, heldout,
  labels_file?, vocab_file?}; training {"trained_here": False};
- extra: batchable (bool), batching_reason (when not batchable), batching_check (generic: rows
  batched vs one by one), source_graph (the original I/O, opsets, IR version, producer), and
  task entries (wrapped; blank_index, decoder).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort
from onnx.external_data_helper import uses_external_data

from service.core.model_settings import file_entry
from service.store.importing.graph_inspect import (
    ImportRefused,
    batching,
    default_opset,
    graph_io,
    rows_independent,
    session,
    supported_opsets,
)
from service.store.importing.preparers import (
    Job,
    Prepared,
    first_line,
)
from service.store.importing.versions import adapt_ir, adapt_opset
from service.store.specs import SETTINGS_FILE, ModelSpec, file_sha256, list_specs

__all__ = ["ImportRefused", "ImportRule", "import_model"]

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
SPEC_VERSION = "1"
IMPORTER = "deepserve models import"


@dataclass(frozen=True)
class ImportRule:
    """How a task's models are imported: declared by each task (service/tasks/), given to
    `import_model` by the task registry."""

    task: str
    prepare: Callable[[Job], Prepared]
    """Adapts (wraps) or checks the graph against the task's serving contract."""
    needs_labels: bool = False
    needs_vocabulary: bool = False
    strip_vocabulary: bool = True
    """False: vocabulary entries are kept as written (speech: a space is a token)."""
    unique_vocabulary: bool = False
    check_rows_independent: bool = False
    """Run the graph batched and row by row before calling it batchable (a graph of unknown
    meaning may mix its rows; the task contracts' graphs are checked by their parity runs)."""


def check_name(name: str, task: str, reserved: Collection[str] = ()) -> None:
    if not NAME_PATTERN.fullmatch(name):
        raise ImportRefused(
            f"model name {name!r} is not allowed: it becomes a store tag, so use 1-63 lowercase "
            "letters, digits, '.', '_' or '-', starting with a letter or a digit"
        )
    if name in reserved:
        raise ImportRefused(
            f"model name {name!r} belongs to a built-in model (`deepserve models build`); "
            "choose another name"
        )
    stored = {spec.task for spec in list_specs() if spec.name == name}
    if stored and task not in stored:
        raise ImportRefused(
            f"model {name} is stored with task {', '.join(sorted(stored))}; a new version must "
            f"keep its task (got {task}): choose another name"
        )


def read_lines(path: str | os.PathLike[str], what: str, strip: bool) -> list[str]:
    """One entry per line (labels are stripped; vocabulary entries may be a space)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        why = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise ImportRefused(f"cannot read the {what} file {path}: {why}") from None
    lines = [line.strip() if strip else line for line in text.splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ImportRefused(f"the {what} file {path} is empty; expected one entry per line")
    empty = [number for number, line in enumerate(lines, 1) if not line]
    if empty:
        raise ImportRefused(f"the {what} file {path}: line {empty[0]} is empty")
    return lines


def find_model_file(place: str | os.PathLike[str]) -> Path:
    """The one ONNX file at `place`: the file itself, or the only *.onnx in that folder or below
    it (KServe's storage initializer puts a storageUri naming a file at /mnt/models/FILE, and a
    folder's files as they were)."""
    place = Path(place)
    if place.is_file():
        return place
    if not place.is_dir():
        raise ImportRefused(f"{place}: no such file or folder")
    found = sorted(path for path in place.rglob("*.onnx") if path.is_file())
    if len(found) != 1:
        listed = ", ".join(str(path.relative_to(place)) for path in found[:5])
        raise ImportRefused(
            f"{place} holds {len(found)} .onnx files{f' ({listed})' if found else ''}; "
            "expected exactly one"
        )
    return found[0]


def read_model(source: Path) -> tuple[bytes, onnx.ModelProto]:
    """Read and parse the file, refusing what is missing, unreadable, not ONNX or not
    self-contained."""
    if not source.is_file():
        what = "is not a file" if source.exists() else "does not exist"
        raise ImportRefused(f"{source} {what}; expected an ONNX model file (.onnx)")
    try:
        data = source.read_bytes()
    except OSError as error:
        raise ImportRefused(f"cannot read {source}: {error.strerror}") from None
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # NOTE: protobuf's DecodeError and friends
        model = None
    if model is None or not model.HasField("graph") or model.ir_version < 1:
        raise ImportRefused(
            f"{source} is not an ONNX model (it does not parse as an ONNX ModelProto with a "
            "graph); expected a .onnx file, e.g. from torch.onnx.export"
        )
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise ImportRefused(
            f"{source} keeps weights in external data files; import a self-contained model "
            "(onnx.save(model, path, save_as_external_data=False), under 2 GB)"
        )
    return data, model


def check_graph(model: onnx.ModelProto) -> None:
    """The opset onnxruntime supports, then onnx.checker's full check."""
    lowest, highest = supported_opsets()
    opset = default_opset(model)
    if opset is not None and not lowest <= opset <= highest:
        raise ImportRefused(
            f"the graph uses default-domain (ai.onnx) opset {opset}; onnxruntime "
            f"{ort.__version__} supports opsets {lowest} to {highest}: re-export it with an "
            "opset in that range"
        )
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # NOTE: ValidationError, InferenceError, ...
        raise ImportRefused(
            f"the graph fails onnx.checker (full check): {first_line(error)}"
        ) from None


def adapt(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A graph newer than onnxruntime reads, converted to its opsets and IR version where that
    keeps its meaning (service/store/importing/versions.py); what was changed."""
    source_ir = model.ir_version
    model, opset = adapt_opset(model)
    adapted = {**(opset or {}), **(adapt_ir(model) or {})}
    if model.ir_version != source_ir:
        adapted["ir_version"] = {"source": source_ir, "stored": model.ir_version}
    return model, adapted


def import_model(
    path: str | os.PathLike[str],
    name: str,
    rule: ImportRule,
    labels_file: str | os.PathLike[str] | None = None,
    vocab_file: str | os.PathLike[str] | None = None,
    preprocess: dict[str, str] | None = None,
    reserved: Collection[str] = (),
    settings: Mapping[str, Any] | None = None,
    domain_threshold: float | None = None,
) -> ModelSpec:
    """Validate an ONNX file, adapt it to the task's contract (`rule`) and store it as a new
    version; `reserved` names (the built-in models) are refused. With `domain_threshold`, the
    model's answers whose confidence is below it are judged outside its domain (in_domain)."""
    task = rule.task
    check_name(name, task, reserved)
    domain = domain_entry(task, domain_threshold)
    try:  # before anything is read or stored: a bad setting refuses the import
        own = file_entry(settings or {}, "--setting")
    except ValueError as error:
        raise ImportRefused(str(error)) from None
    origin = Path(os.path.abspath(path))
    original, model = read_model(origin)
    model, adapted = adapt(model)
    data = model.SerializeToString() if adapted else original
    check_graph(model)
    if rule.needs_labels and labels_file is None:
        raise ImportRefused(f"--labels FILE is required for {task}: one class label per line")
    if rule.needs_vocabulary and vocab_file is None:
        raise ImportRefused(f"--vocab FILE is required for {task}: one token per line")
    labels = read_lines(labels_file, "labels", strip=True) if labels_file else None
    vocabulary = None
    if vocab_file:
        vocabulary = read_lines(vocab_file, "vocabulary", strip=rule.strip_vocabulary)
        if rule.unique_vocabulary and len(set(vocabulary)) != len(vocabulary):
            raise ImportRefused(f"the vocabulary file {vocab_file} has duplicate tokens")
    inputs, outputs = graph_io(model)
    with tempfile.TemporaryDirectory(prefix="deepserve-import-") as tmp:
        source = Path(tmp) / "source.onnx"  # the validated bytes; the original may change
        source.write_bytes(data)
        options = dict(preprocess or {})
        job = Job(task, model, source, inputs, outputs, options, labels, vocabulary, Path(tmp))
        prepared = rule.prepare(job)
        stored = model if prepared.graph == source else onnx.load(str(prepared.graph))
        spec = build_spec(name, job, prepared, stored, rule)
        if domain is not None:
            spec["extra"]["domain"] = domain
        spec["data"] = {
            "source": str(origin),
            "source_sha256": hashlib.sha256(original).hexdigest(),
            "source_bytes": len(original),
            **spec["data"],
        }
        if adapted:
            spec["data"]["adapted"] = adapted
        for key, file in (("labels_file", labels_file), ("vocab_file", vocab_file)):
            if file is not None:
                spec["data"][key] = os.path.abspath(file)
        from service.store.register import register  # bentoml is heavy; only needed here

        files = {"model.onnx": prepared.graph}
        if own:
            files[SETTINGS_FILE] = Path(tmp) / SETTINGS_FILE
            files[SETTINGS_FILE].write_text(json.dumps(own, indent=2, sort_keys=True))
        return register(spec, files, heldout={})


JUDGED_TASKS = ("image-classification", "text-classification", "speech-recognition")
"""Tasks whose answers carry a confidence an import's --domain-threshold can judge."""


def domain_entry(task: str, threshold: float | None) -> dict[str, Any] | None:
    """spec.extra["domain"] for an import's --domain-threshold (None without one)."""
    if threshold is None:
        return None
    if task not in JUDGED_TASKS:
        raise ImportRefused(
            f"--domain-threshold needs an answer with a confidence: tasks {', '.join(JUDGED_TASKS)}"
        )
    if not 0.0 < threshold < 1.0:
        raise ImportRefused(f"--domain-threshold {threshold} must be between 0 and 1 (exclusive)")
    return {
        "score": "confidence",
        "outside": "below",
        "threshold": threshold,
        "method": "the answer's confidence, below the threshold given at import "
        "(--domain-threshold): not measured by deepserve",
    }


def build_spec(
    name: str, job: Job, prepared: Prepared, stored: onnx.ModelProto, rule: ImportRule
) -> dict[str, Any]:
    """The spec dict of the stored graph (the format is in this module's docstring)."""
    inputs, outputs = graph_io(stored)
    reason = batching(inputs, outputs)
    extra: dict[str, Any] = {"batchable": reason is None}
    if reason is None and rule.check_rows_independent:
        check = rows_independent(session(prepared.graph), inputs)
        extra["batching_check"] = check
        if check.get("independent") is False:
            reason = (
                "rows of one batch change each other's results (batched vs one by one: max "
                f"|diff| {check['max_abs_diff']:.2e}): requests run one at a time, no batching"
            )
            extra["batchable"] = False
    if reason is not None:
        extra["batching_reason"] = reason
    extra["source_graph"] = {
        "inputs": [t.model_dump() for t in job.inputs],
        "outputs": [t.model_dump() for t in job.outputs],
        "opsets": {e.domain or "ai.onnx": int(e.version) for e in job.model.opset_import},
        "ir_version": int(job.model.ir_version),
        "producer": f"{job.model.producer_name} {job.model.producer_version}".strip(),
    }
    extra.update(prepared.extra)
    data = {
        "imported": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "importer": IMPORTER,
        "heldout": "none: an imported model brings no held-out data, so its spec has no metrics",
    }
    return {
        "name": name,
        "task": job.task,
        "spec_version": SPEC_VERSION,
        "graphs": {
            "model": {
                "file": "model.onnx",
                "inputs": [t.model_dump() for t in inputs],
                "outputs": [t.model_dump() for t in outputs],
                "opset": default_opset(stored) or 0,
                "sha256": file_sha256(prepared.graph),
                "parity": prepared.parity,
            }
        },
        "labels": job.labels,
        "vocabulary": job.vocabulary,
        "preprocessing": prepared.preprocessing,
        "metrics": {},
        "data": data,
        "training": {"trained_here": False},
        "extra": extra,
    }
