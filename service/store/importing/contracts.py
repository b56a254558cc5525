"""Text and speech contracts for imported graphs: no wrapping, only checks and renames.

The graph must already take and give what TextClassifier / SpeechRecognizer
(service/runtime/kernels.py)
feed and read; inputs and outputs that match the contract by dtype and rank are renamed to the
contract's names through Identity bridges (service/graph_wrap.bridge_io). A contract-shaped test
batch must run and give well-formed results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.processing.speech import SAMPLE_RATE
from service.processing.text import TOKEN_PATTERN, UNK
from service.store.importing.graph_inspect import ImportRefused, max_abs_diff, session
from service.store.importing.graph_wrap import bridge_io, integer
from service.store.importing.preparers import (
    Job,
    Prepared,
    check_batch_dims,
    check_classes,
    is_probabilities,
    names,
    no_options,
    parity_report,
    run,
    save,
    unchanged,
)
from service.store.specs import TensorSpec

TEXT_MAX_TOKENS = 64
"""Default max_tokens for imported text classifiers (the built-in sentiment model's)."""
TEXT_CONTRACT = (
    "inputs tokens INT64 [batch, tokens] (token ids, 0 = padding; the tokens dim symbolic) and "
    "lengths INT64 [batch] (valid tokens per row); output probabilities FP32 [batch, classes] "
    "(rows summing to 1, classes in the labels' order)"
)
SPEECH_CONTRACT = (
    f"inputs waveform FP32 [batch, samples] ({SAMPLE_RATE} Hz mono in [-1, 1], zero padded; the "
    "samples dim symbolic) and lengths INT64 [batch] (valid samples per row); outputs log_probs "
    "FP32 [batch, frames, vocabulary] (CTC log-probabilities, blank = vocabulary line 1) and "
    "frame_lengths INT64 [batch] (valid frames per row)"
)
Wanted = Sequence[tuple[str, str, int]]  # contract name, V2 datatype, rank


def match(
    tensors: Sequence[TensorSpec], wanted: Wanted, role: str, task: str, contract: str
) -> dict[str, str]:
    """Original name -> contract name for the tensors that match the contract by dtype and rank."""
    mapping: dict[str, str] = {}
    for name, datatype, rank in wanted:
        fits = [
            t
            for t in tensors
            if t.datatype == datatype and len(t.shape) == rank and t.name not in mapping
        ]
        chosen = [t for t in fits if t.name == name] or fits
        if len(chosen) != 1:
            why = (
                f"several {role}s could be {name}: name the right one {name}"
                if chosen
                else f"no {datatype} rank-{rank} {role} for {name}"
            )
            raise ImportRefused(
                f"{task} contract: {contract}. This graph's {role}s: {names(tensors)} ({why})"
            )
        mapping[chosen[0].name] = name
    if role == "input" and len(tensors) != len(wanted):
        extra = [t.name for t in tensors if t.name not in mapping]
        raise ImportRefused(f"{task} contract: {contract}. Extra inputs: {', '.join(extra)}")
    final = [mapping.get(t.name, t.name) for t in tensors]
    if len(set(final)) != len(final):
        raise ImportRefused(f"{role} names clash after renaming them to the contract's: {final}")
    return mapping


@dataclass
class Conformed:
    """The graph to store, with the contract's names, and how the original names map to them."""

    path: Path
    inputs: dict[str, str]
    outputs: dict[str, str]
    batch: int
    """Rows of the contract-shaped test batch: 1 when the graph has a fixed batch dim of 1."""

    @property
    def renamed(self) -> bool:
        return any(old != new for old, new in (self.inputs | self.outputs).items())


def conform(job: Job, wanted_in: Wanted, wanted_out: Wanted, contract: str) -> Conformed:
    """Match the contract; rename through Identity bridges when the names differ."""
    inputs = match(job.inputs, wanted_in, "input", job.task, contract)
    outputs = match(job.outputs, wanted_out, "output", job.task, contract)
    check_batch_dims(job.inputs + job.outputs, job.task)
    variable = next(t for t in job.inputs if inputs[t.name] == wanted_in[0][0])
    if isinstance(variable.shape[1], int):
        raise ImportRefused(
            f"{job.task} contract: {contract}. Input {variable.name} {variable.shape} has a fixed "
            "length; requests are padded to their batch's longest, so it must be symbolic"
        )
    fixed = any(t.shape and isinstance(t.shape[0], int) for t in job.inputs + job.outputs)
    conformed = Conformed(job.source, inputs, outputs, 1 if fixed else 2)
    if conformed.renamed:
        conformed.path = save(bridge_io(job.model, inputs, outputs), job.workdir)
    return conformed


def contract_run(
    job: Job, conformed: Conformed, feed: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run a contract-shaped batch on the graph to store: its outputs by name, and parity with
    the original graph when it was renamed."""
    graph = session(conformed.path)
    shapes = [list(a.shape) for a in feed.values()]
    outputs = run(graph, feed, job.task)
    named = {o.name: array for o, array in zip(graph.get_outputs(), outputs)}
    if not conformed.renamed:
        return named, unchanged(job).parity
    back = {new: old for old, new in conformed.inputs.items()}
    original = session(job.source).run(None, {back[k]: v for k, v in feed.items()})
    report = parity_report([("renamed graph vs original", shapes, max_abs_diff(original, outputs))])
    return named, report


def prepare_text(job: Job) -> Prepared:
    no_options(job, ["max_tokens"])
    vocabulary, labels = job.vocabulary or [], job.labels or []
    if UNK not in vocabulary:
        raise ImportRefused(
            f"the vocabulary has no {UNK} line; text-classification maps unknown words to it "
            "(and pads with id 0, the first line)"
        )
    max_tokens = integer(job.options, "max_tokens", 1, 100_000) or TEXT_MAX_TOKENS
    conformed = conform(
        job,
        [("tokens", "INT64", 2), ("lengths", "INT64", 1)],
        [("probabilities", "FP32", 2)],
        TEXT_CONTRACT,
    )
    rng = np.random.default_rng(0)
    lengths = np.array([5, 3][: conformed.batch], np.int64)
    tokens = rng.integers(1, max(2, len(vocabulary)), (conformed.batch, 5), dtype=np.int64)
    tokens[np.arange(5)[None, :] >= lengths[:, None]] = 0
    outputs, parity = contract_run(job, conformed, {"tokens": tokens, "lengths": lengths})
    probabilities = outputs["probabilities"]
    check_classes(labels, int(probabilities.shape[1]), "probabilities", "labels")
    if probabilities.shape[0] != conformed.batch or not is_probabilities(probabilities):
        raise ImportRefused(
            f"text-classification contract: {TEXT_CONTRACT}. On a batch of {conformed.batch} "
            f"rows the graph's probabilities are {probabilities.shape} with row sums "
            f"{np.round(probabilities.sum(axis=-1), 3).tolist()}: end the graph with a Softmax"
        )
    preprocessing = {
        "tokenizer": "service.processing.text.tokenize",
        "lowercase": True,
        "strip_accents": True,
        "token_pattern": TOKEN_PATTERN,
        "max_tokens": max_tokens,
        "pad_index": 0,
        "unk_index": vocabulary.index(UNK),
    }
    return Prepared(conformed.path, preprocessing, parity)


def prepare_speech(job: Job) -> Prepared:
    no_options(job)
    conformed = conform(
        job,
        [("waveform", "FP32", 2), ("lengths", "INT64", 1)],
        [("log_probs", "FP32", 3), ("frame_lengths", "INT64", 1)],
        SPEECH_CONTRACT,
    )
    rng = np.random.default_rng(0)
    lengths = np.array([SAMPLE_RATE, SAMPLE_RATE * 3 // 4][: conformed.batch], np.int64)
    waveform = (rng.standard_normal((conformed.batch, SAMPLE_RATE)) * 0.1).astype(np.float32)
    waveform[np.arange(SAMPLE_RATE)[None, :] >= lengths[:, None]] = 0
    outputs, parity = contract_run(job, conformed, {"waveform": waveform, "lengths": lengths})
    log_probs, frames = outputs["log_probs"], outputs["frame_lengths"]
    check_classes(job.vocabulary or [], int(log_probs.shape[2]), "log_probs", "vocabulary")
    if (
        log_probs.shape[0] != conformed.batch
        or frames.shape != (conformed.batch,)
        or not 0 <= frames.min() <= frames.max() <= log_probs.shape[1]
    ):
        raise ImportRefused(
            f"speech-recognition contract: {SPEECH_CONTRACT}. On a batch of {conformed.batch} "
            f"clips the graph gives log_probs {list(log_probs.shape)} and frame_lengths "
            f"{frames.tolist()}"
        )
    preprocessing = {
        "sample_rate": SAMPLE_RATE,
        "channels": 1,
        "input_range": [-1.0, 1.0],
        "padding": "zeros; lengths gives valid samples",
    }
    extra = {"blank_index": 0, "decoder": "ctc-greedy"}
    return Prepared(conformed.path, preprocessing, parity, extra)
