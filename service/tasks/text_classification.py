"""Text classification: texts -> one label + score each (the sentiment LSTM, imported text
classifiers that take token ids)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from service.core.errors import InvalidInput
from service.core.metrics import observe_preprocess
from service.core.wire import Judged, Probability, TaskAnswer
from service.processing.text import encode, tokenize
from service.runners.base import Runner
from service.runners.repository import ServingState
from service.runtime.kernels import TextClassifier
from service.store.importing.contracts import prepare_text
from service.store.importing.importer import ImportRule
from service.store.specs import ModelSpec
from service.tasks.base import (
    REJECT_HELP,
    REJECT_PARAMETER,
    Task,
    domain_outputs,
    judged,
    reject_parameter,
    verdict_tensors,
)
from service.tasks.tensors import InferRequest, Signature, Tensor, batch_of, check_rows

NAME = "text-classification"
DEFAULT_MODEL = "sentiment-lstm"

_word_indexes: dict[str, dict[str, int]] = {}  # model tag -> word -> id, built once per model


def word_index(spec: ModelSpec) -> dict[str, int]:
    if spec.tag not in _word_indexes:
        _word_indexes[spec.tag] = {word: i for i, word in enumerate(spec.vocabulary or [])}
    return _word_indexes[spec.tag]


def encode_texts(runner: Runner, texts: list[Any], single: bool):
    """Validate texts and turn them into token id lists (the model's vocabulary), within the
    limits in force for the runner's model version."""
    spec, settings = runner.spec, runner.config
    if not texts:
        raise InvalidInput("no texts: send at least one")
    if len(texts) > settings.max_batch_items:
        raise InvalidInput(
            f"{len(texts)} texts in one request; the limit is {settings.max_batch_items}"
        )
    index = word_index(spec)
    max_tokens = int(spec.preprocessing["max_tokens"])
    items = []
    for position, text in enumerate(texts):
        where = "text" if single else f"texts[{position}]"
        if not isinstance(text, str):
            raise InvalidInput(f"{where} must be a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInput(f"{where} is empty; send some words")
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"{where} has {len(text)} characters; the limit is {settings.max_text_chars}"
            )
        tokens = tokenize(text)
        if not tokens:
            raise InvalidInput(f"{where} has no words (letters or digits)")
        items.append(encode(tokens, index, max_tokens))
    return items


async def sentiment(
    serving: ServingState,
    texts: list[Any],
    model: str | None = None,
    single: bool = False,
    deadline: float | None = None,
    version: str | None = None,
    reject_out_of_domain: bool = False,
) -> tuple[ModelSpec, list[dict[str, Any]]]:
    """Texts -> one {"label", "score", "confidence"} per text, in order (the confidence is the
    label's probability, as the score is; every task's answer names it `confidence`)."""
    name = model or DEFAULT_MODEL
    runner = serving.runner(name, NAME, version)
    spec = runner.spec
    started = time.perf_counter()
    items = encode_texts(runner, texts, single)
    observe_preprocess(time.perf_counter() - started)
    with runner.admission.admit():
        rows = await asyncio.gather(
            *(runner.submit(ids, runner.bucket(ids), deadline) for ids in items)
        )
    labels = spec.labels or []
    answers = []
    for row in rows:
        score = round(float(np.max(row)), 6)
        verdict = judged(spec, score, None, reject_out_of_domain, KNOWS)
        answers.append({"label": labels[int(np.argmax(row))], "score": score, **verdict})
    return spec, answers


KNOWS = "texts like the ones it was trained on"


def signature(runner: Runner) -> Signature:
    spec = runner.spec
    vocabulary_size = len(spec.vocabulary or [])
    max_tokens = int(spec.preprocessing["max_tokens"])
    pad = int(spec.preprocessing.get("pad_index", 0))

    async def infer(serving: ServingState, runner: Runner, request: InferRequest):
        reject = reject_parameter(request)  # before anything runs
        if ("text" in request.inputs) == ("tokens" in request.inputs):
            raise InvalidInput(
                f"model {spec.name} takes either input 'text' (BYTES [batch]) or input 'tokens' "
                "(INT64 [batch, tokens], with optional 'lengths' INT64 [batch])"
            )
        if "text" in request.inputs:
            texts = batch_of(request, "text", "BYTES", 1)
            check_rows(request, runner, texts)
            decoded = []
            for i, raw in enumerate(texts):
                try:
                    decoded.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    raise InvalidInput(f"input text[{i}] is not UTF-8") from None
            items = encode_texts(runner, decoded, single=False)
        else:
            tokens = batch_of(request, "tokens", "INT64", 2)
            count = check_rows(request, runner, tokens)
            width = tokens.shape[1]
            if not 1 <= width <= max_tokens:
                raise InvalidInput(f"input tokens has {width} columns; send 1 to {max_tokens}")
            if tokens.min() < 0 or tokens.max() >= vocabulary_size:
                raise InvalidInput(f"token ids must be in [0, {vocabulary_size - 1}]")
            if "lengths" in request.inputs:
                lengths = batch_of(request, "lengths", "INT64", 1)
                check_rows(request, runner, tokens, lengths)
            else:  # up to the last non-pad token
                nonpad = tokens != pad
                lengths = np.where(nonpad.any(1), width - np.argmax(nonpad[:, ::-1], 1), 0)
            if lengths.min() < 1 or lengths.max() > width:
                raise InvalidInput(f"lengths must be between 1 and {width} (the tokens' width)")
            items = [tokens[i, : int(lengths[i])].tolist() for i in range(count)]
        rows = await asyncio.gather(
            *(runner.submit(ids, runner.bucket(ids), request.deadline) for ids in items)
        )
        probabilities = np.stack(rows).astype(np.float32, copy=False)
        confidences = probabilities.max(axis=1).tolist()
        verdicts = domain_outputs(spec, confidences, [None] * len(rows), reject, KNOWS)
        return {"probabilities": probabilities, **verdicts}

    return Signature(
        inputs=[
            Tensor("text", "BYTES", [-1], optional=True, description="UTF-8 texts"),
            Tensor("tokens", "INT64", [-1, -1], optional=True, description="token ids, 0 = pad"),
            Tensor("lengths", "INT64", [-1], optional=True, description="valid tokens per row"),
        ],
        outputs=[
            Tensor("probabilities", "FP32", [-1, len(spec.labels or [])]),
            *verdict_tensors(spec),
        ],
        infer=infer,
        labels=spec.labels,
        parameters={REJECT_PARAMETER: REJECT_HELP} if verdict_tensors(spec) else {},
    )


# --- the JSON answer (/v1) ---------------------------------------------------------------


class Sentiment(Judged):
    label: str
    score: Probability
    """The label's probability (also `confidence`, the name every task's answer gives it)."""


class SentimentResult(TaskAnswer, Judged):
    """The answer to one text."""

    label: str
    score: Probability
    """The label's probability (also `confidence`, the name every task's answer gives it)."""


class SentimentBatchResult(TaskAnswer):
    """The answers to a batch, in order."""

    results: Annotated[list[Sentiment], Field(min_length=1)]


TASK = Task(
    name=NAME,
    position=20,
    summary="texts -> label + score each",
    kernel=TextClassifier,
    signature=signature,
    default_model=DEFAULT_MODEL,
    results=(
        SentimentBatchResult,
        SentimentResult,
    ),
    builtin_models=("sentiment-lstm",),
    importing=ImportRule(
        NAME, prepare_text, needs_labels=True, needs_vocabulary=True, unique_vocabulary=True
    ),
)
