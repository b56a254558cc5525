"""Per-model settings: one typed object per model, whose defaults are the global settings.

`PerModelFields` declares, once, every setting that may differ between models. `Settings`
inherits them as the global defaults (DEEPSERVE_MAX_BATCH_SIZE, ...); `ModelSettings` adds the
version policy and is what one model is served with (`Settings.for_model(name)`), so both are
validated by the same constraints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

Placement = Literal["local", "remote"]
Device = Literal["auto", "cpu", "gpu"]

FinitePositive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
"""A float setting above 0 (a duration, a size); "inf" and "nan" are refused."""

FiniteNonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
"""A float setting of 0 or more (0 usually turns something off); "inf" and "nan" are refused."""

# BentoML's rule for a tag's version (bentoml/_internal/tag.py): a pin that breaks it can never
# match a stored version, so it is refused when the settings load rather than when serving starts.
VERSION_PATTERN = re.compile(r"[a-z0-9]([-._a-z0-9]{0,61}[a-z0-9])?")
EXPECTED_POLICY = (
    'expected "latest", "latest:N" (N >= 1), "all", or pinned versions (a JSON list of '
    "stored versions, or one comma-separated string)"
)


class VersionPolicy(BaseModel):
    """Which stored versions of a model are served (Triton's version policy): the `latest` N,
    `all` of them, or the `pinned` ones. Exactly one of the three is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latest: int | None = Field(default=None, ge=1)
    all: bool = False
    pinned: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        if (self.latest is not None) + self.all + bool(self.pinned) != 1:
            raise ValueError("a version policy sets exactly one of latest, all, pinned")
        bad = _bad_pin(self.pinned)
        if bad:
            raise ValueError(bad)
        return self

    @classmethod
    def parse(cls, policy: str | Sequence[str]) -> VersionPolicy:
        """Read "latest", "latest:N", "all", "v1,v2" or ["v1", "v2"]; ValueError otherwise."""
        if isinstance(policy, str):
            text = policy.strip()
            if text == "all":
                return cls(all=True)
            if text == "latest":
                return cls(latest=1)
            count = re.fullmatch(r"latest:([0-9]+)", text)
            if count and int(count[1]) >= 1:
                return cls(latest=int(count[1]))
            if text.startswith("latest"):
                raise ValueError(f"version policy {policy!r}: {EXPECTED_POLICY}")
            pinned: list[Any] = [v.strip() for v in text.split(",") if v.strip()]
        else:
            pinned = list(policy)
        bad = _bad_pin(pinned)
        if bad or not pinned:
            detail = f"{bad}; " if bad else ""
            raise ValueError(f"version policy {policy!r}: {detail}{EXPECTED_POLICY}")
        return cls(pinned=tuple(pinned))

    def __str__(self) -> str:
        if self.all:
            return "all"
        if self.pinned:
            return ",".join(self.pinned)
        return "latest" if self.latest == 1 else f"latest:{self.latest}"


def _bad_pin(pinned: Sequence[Any]) -> str | None:
    """Why the first entry of `pinned` that cannot name a stored version cannot; None if all can."""
    for version in pinned:
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            return (
                f"{version!r} cannot be a stored version (1-63 lowercase letters, digits, '.', "
                "'_', '-', starting and ending with a letter or digit)"
            )
    return None


def _as_policy(value: Any) -> Any:
    """Version policies as written in the environment become VersionPolicy values."""
    if isinstance(value, str | list | tuple):
        return VersionPolicy.parse(value)
    return value


class PerModelFields(BaseModel):
    """Every setting that may differ per model (version policy aside, see ModelSettings). As
    fields of Settings they are the defaults of every model, from DEEPSERVE_<FIELD>."""

    batching: bool = True
    """Adaptive batching on (off = every request runs alone; for benchmarks)."""

    length_buckets: bool = True
    """Route variable-length inputs (tokens, audio) to per-length queues (off = one queue per
    model, every batch padded to its longest item; for benchmarks)."""

    max_batch_size: int = Field(default=16, ge=1)
    """Largest batch a runner forms on CPU before it stops waiting for more requests."""

    gpu_max_batch_size: int = Field(default=64, ge=1)
    """Largest batch on a GPU, where batches pay off far more than on CPU."""

    max_latency_ms: FiniteNonNegative = 5.0
    """Longest a request waits for batch-mates (only while waiting pays; see
    service/batching/batcher.py); 0 = never wait."""

    remote_max_latency_ms: FinitePositive = 1000.0
    """max_latency_ms for BentoML's remote batching; BentoML answers 503 for requests it predicts
    would exceed it, so it is a shedding bound there, not a wait."""

    workers_per_model: int = Field(default=2, ge=1)
    """Parallel inference slots per model and gateway worker (ORT runs concurrently on one
    shared session). Unset, the cores shared out among the gateway workers (Settings.
    model_defaults): 2 with one worker on this 2-core machine, 1 with two."""

    intra_op_threads: int = Field(default=1, ge=0)
    """ONNX Runtime intra-op threads per run (1 x several workers beat 2 threads here); 0 = ONNX
    Runtime's own default (one per physical core)."""

    solo_intra_op_threads: int = Field(default=0, ge=0)
    """Intra-op threads of a batch that runs while nothing else of the model is queued or
    computing (one client at a time): it runs on a second ONNX Runtime session with this many
    threads, so the other cores do not idle (ORT's run options carry no thread count). 0 = the
    cores this process may use (service/core/machine.py), not divided by the gateway workers:
    when several run alone at once their solo runs slow down, and each batcher measures that
    and goes back to the shared sessions; 1 = off.
    CPU only, local placement only; the batcher times both ways and takes the solo sessions only
    while they are faster (a small LSTM's are not). Costs a second copy of the model's sessions
    in memory."""

    adapt_batch_size: bool = True
    """Cap batches, per queue key, at the size whose per-item time is lowest, measured from the
    batches the model runs (service/batching/sizing.py; starts at, and never exceeds, the max
    batch size): on this 2-core machine imagenet-cnn's batches of 8-16 cost 12-21 % more per
    image than batches of 1-4. false = always up to the max batch size."""

    max_queue: int = Field(default=512, ge=1)
    """Requests in progress per model (decoding, queued or computing) beyond which new ones get
    503 + Retry-After at once (gRPC RESOURCE_EXHAUSTED); bounds memory
    (service/batching/admission.py). A request of several items (an explanation: grid² + 1)
    counts as that many, here and in max_queue_wait_ms."""

    max_queue_wait_ms: FiniteNonNegative = 1000.0
    """Admission bound per model: about how long an admitted request may wait. New requests get
    503 + Retry-After at once (gRPC RESOURCE_EXHAUSTED) while the model has more in progress than
    it answers in this time (Little's law on its recent answer rate, never fewer than
    workers_per_model x max_batch_size), or while its oldest request has waited longer. Bounds
    the latency of admitted requests under overload; 0 turns it off (then only max_queue)."""

    placement: Placement = "local"
    """Runner placement: "local" = in the gateway process with our adaptive batcher; "remote" =
    a BentoML runner service per model (its own process), reached with bentoml.depends and
    batched by BentoML's adaptive batching."""

    device: Device = "auto"
    """auto: CUDA execution provider when onnxruntime-gpu sees a GPU, else CPU."""

    io_binding: Literal["auto", "on", "off"] = "auto"
    """Run the graphs through ONNX Runtime IO binding (service/runtime/sessions.py: inputs
    copied to the device once, outputs into buffers preallocated per batch size); auto = on
    with the CUDA provider, off on CPU, where it gains nothing."""

    max_image_pixels: int = Field(default=40_000_000, ge=1)
    """Largest decoded image (width x height); bigger declared sizes are refused (image bombs)."""

    jpeg_draft_factor: FiniteNonNegative = 2.0
    """Image classifiers decode a JPEG at a reduced scale (libjpeg DCT scaling) while its
    shorter side stays at least this many times the model's resize side (imagenet-cnn: 256 px),
    then resize as always; 0 = always decode in full. At 2 the resize still has at least twice
    the pixels it keeps, and imagenet-cnn's top-5 on held-out photos is unchanged (README,
    loadtests/jpeg_draft.py); 1 is the fastest and changes near-tie top-1s."""

    max_audio_seconds: FinitePositive = 600.0
    """Longest recording accepted for transcription (413 beyond; checked before resampling).
    Audio longer than the model's utterance limit (its spec's preprocessing.max_seconds, else
    max_segment_seconds) is split at silences and transcribed segment by segment."""

    max_segment_seconds: FinitePositive = 5.0
    """Longest segment sent to a speech model as one item: speech running longer without a pause
    is cut at its quietest point within this length. The built-in speech-ctc was trained on
    utterances up to its spec's max_seconds (5 s), which caps this further."""

    max_segments: int = Field(default=512, ge=1)
    """Most speech segments in one transcription (400 beyond)."""

    segment_window: int = Field(default=16, ge=1)
    """Segments of one transcription in the model's queue at once: the others wait, so one long
    recording cannot fill the queue that other requests share."""

    max_text_chars: int = Field(default=5000, ge=1)
    """Longest text accepted by /v1/sentiment, per text."""

    max_batch_items: int = Field(default=64, ge=1)
    """Most items in one request (texts in {"texts": [...]})."""

    max_beam: int = Field(default=8, ge=1)
    """Largest beam width /v1/caption accepts."""

    max_explain_grid: int = Field(default=16, ge=2)
    """Largest occlusion grid /v1/explain accepts (400 beyond). A grid of G is G² + 1
    inferences, and admission counts each (service/batching/admission.py), so the largest grid
    is also capped by max_queue and by the model's input side."""

    caption_decoding: Literal["step", "batch"] = "batch"
    """How the local placement batches a model that decodes step by step (the captioner):
    "step" = continuous batching, requests join and leave a running set between decoder steps
    (service/batching/iteration.py; at most max_batch_size join at once, and a step runs at most
    max_batch_size x max_beam rows); "batch" = a batch is decoded until its every caption ends
    (service/batching/batcher.py). The remote placement always decodes batch at once (BentoML's
    batching). "batch" by default: step wins at 8-32 clients but sheds at 64 here
    (reports/caption_batching, loadtests/caption_batching.py)."""


class ModelSettings(PerModelFields):
    """What one model is served with: the global settings overridden by that model's entries
    (see Settings.for_model for the sources and their precedence). Immutable."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version_policy: Annotated[VersionPolicy, BeforeValidator(_as_policy)] = VersionPolicy(latest=1)
    """Versions served; written "latest", "latest:N", "all" or a list of versions."""

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown per-model setting(s) {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(cls.model_fields)}"
                )
        return data

    def batch_size_for(self, provider: str) -> int:
        """Largest batch on this execution provider (1 when batching is off)."""
        if not self.batching:
            return 1
        return self.gpu_max_batch_size if provider.startswith("CUDA") else self.max_batch_size

    def layered(self, *layers: Mapping[str, Any]) -> ModelSettings:
        """These settings with each layer's entries on top, later layers winning; validated."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        for layer in layers:
            values.update(layer)
        return type(self).model_validate(values)


NOT_IN_MODEL_FILES = ("placement", "version_policy")
"""Settings a model's own file cannot set: they decide which processes exist and which versions
are served before any version's file is read (deployment settings: the environment's)."""


def file_entry(entries: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A model version's own settings file (`where` names it in errors): validated like every
    other source; only the keys given are kept."""
    refused = sorted(set(entries) & set(NOT_IN_MODEL_FILES))
    if refused:
        raise ValueError(
            f"{where}: {', '.join(refused)} cannot be set per model version (set "
            "DEEPSERVE_PLACEMENTS / DEEPSERVE_VERSIONS or DEEPSERVE_MODEL_SETTINGS)"
        )
    try:
        return _checked_overrides(dict(entries))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _checked_overrides(entry: dict[str, Any]) -> dict[str, Any]:
    checked = ModelSettings.model_validate(entry)
    return {name: getattr(checked, name) for name in entry}


ModelOverrides = Annotated[dict[str, Any], AfterValidator(_checked_overrides)]
"""Some of one model's settings (any ModelSettings fields), validated like ModelSettings; only
the keys given are kept, so unset ones still follow the global settings."""


def read_tuned_file(path: Path) -> dict[str, Any]:
    """A tuned-settings file, every entry's settings validated like a model's own file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"DEEPSERVE_TUNED_FILE {path}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"DEEPSERVE_TUNED_FILE {path}: expected a JSON object")
    return {
        model: checked_tuned(entries, f"DEEPSERVE_TUNED_FILE {path}, model {model!r}")
        for model, entries in data.items()
    }


TUNABLE = (
    "max_batch_size",
    "gpu_max_batch_size",
    "max_latency_ms",
    "workers_per_model",
    "intra_op_threads",
)
"""The settings a tuned entry may hold (what `deepserve models tune` measures)."""


def checked_tuned(entries: Any, where: str) -> dict[str, Any]:
    """{device class: {"settings": {...}, ...}} with each entry's settings validated (only
    TUNABLE keys, with the constraints of every other source)."""
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: expected an object of device classes")
    out = {}
    for klass, entry in entries.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("settings"), dict):
            raise ValueError(f"{where}, {klass!r}: expected {{'settings': {{...}}, ...}}")
        other = sorted(set(entry["settings"]) - set(TUNABLE))
        if other:
            raise ValueError(
                f"{where}, {klass!r}: {', '.join(other)} cannot be tuned (only "
                f"{', '.join(TUNABLE)})"
            )
        out[klass] = {**entry, "settings": file_entry(entry["settings"], f"{where}, {klass!r}")}
    return out
