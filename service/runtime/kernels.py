"""Per-task compute kernels: collate a batch of validated items, run ONNX Runtime, split results.

A kernel is what a runner executes, whatever its placement: the local batcher calls `run` in a
worker thread, the remote runner service calls it from its batchable API. Items are already
decoded and checked (service/processing); `bucket` says which queue an item joins so that only
similar items share a batch (length buckets, decoding modes).

Length: one module for the Kernel contract and its five implementations, one per task, each
short; a result type (Classified, Caption, Transcript) travels with its kernel's wire format.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import threading
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from service.core import datatypes
from service.core.errors import InvalidInput
from service.processing import caption_steps, captioning
from service.processing.speech import SAMPLE_RATE, Transcript, ctc_greedy_transcripts, pad_batch
from service.processing.speech_domain import SpeechDomain
from service.processing.text import collate_padded
from service.runtime.sessions import CPU, LoadedGraph, load_graph
from service.store.specs import ModelSpec, TensorSpec

log = logging.getLogger("deepserve.kernels")


# NOTE: onnxruntime raises InvalidArgument for inputs a graph cannot take (shapes its nodes
# refuse, out-of-range indices); after the batcher retries a failed batch item by item, that is
# the one bad request's 400, not a 500
ORT_INVALID_ARGUMENT = (InvalidArgument,)


DOMAIN_OUTPUT = "domain_distance"
"""The optional graph output a domain verdict reads (spec.extra["domain"] names its threshold)."""


@dataclass
class Caption:
    text: str
    score: float
    domain_distance: float | None = None


@dataclass
class Classified:
    """One image's class probabilities, and its domain distance where the graph has one."""

    probabilities: np.ndarray
    domain_distance: float | None = None


def has_output(spec: ModelSpec, graph: str, name: str) -> bool:
    return any(t.name == name for t in spec.graphs[graph].outputs)


class _DomainRecorder:
    """An encoder session that also fetches domain_distance in the same run and keeps it, for
    decoding code that asks only for the encoder's usual outputs."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.distance: np.ndarray | None = None

    def run(self, output_names: list[str], feed: dict[str, np.ndarray]) -> list[Any]:
        *outputs, self.distance = self.session.run([*output_names, DOMAIN_OUTPUT], feed)
        return outputs


class Kernel:
    """Base: loads the model's graphs; subclasses define bucket / run / warm-up input.

    Solo runs: with `solo_threads` above `intra_op_threads` on CPU, every graph is loaded a
    second time with that many intra-op threads (spinning between a run's parallel sections),
    and `run_solo` runs a batch on those sessions. The batcher calls it when nothing else of the
    model is queued or computing, so one client at a time does not leave cores idle, and only
    while it measures it faster (service/batching/solo.py SoloChoice; warm-up's timing of
    one item both ways, solo_times, is its first estimate)."""

    SOLO_TRIALS = 7

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "auto",
        intra_op_threads: int = 1,
        solo_threads: int = 1,
        io_binding: str = "auto",
    ):
        self.spec = spec
        self._graphs: dict[str, LoadedGraph] = {
            name: load_graph(
                spec.graph_path(name), graph, device, intra_op_threads, io_binding=io_binding
            )
            for name, graph in spec.graphs.items()
        }
        self._solo_graphs: dict[str, LoadedGraph] | None = None
        self._local = threading.local()
        self.solo_threads = 1
        self.solo_times: tuple[Hashable, float, float] | None = None
        self.solo_speedup: float | None = None
        """Shared over solo time on one warm-up item (median of SOLO_TRIALS); None: not
        measured (solo off, or no warm-up yet)."""
        # NOTE: intra_op_threads 0 is ORT's own default, already every core
        if intra_op_threads >= 1 and solo_threads > intra_op_threads and self.provider == CPU:
            self.solo_threads = solo_threads
            self._solo_graphs = {
                name: load_graph(
                    spec.graph_path(name), graph, device, solo_threads, True, io_binding
                )
                for name, graph in spec.graphs.items()
            }

    @property
    def graphs(self) -> dict[str, LoadedGraph]:
        """The sessions this thread runs on: the solo ones inside run_solo, else the shared."""
        if self._solo_graphs is not None and getattr(self._local, "solo", False):
            return self._solo_graphs
        return self._graphs

    @property
    def provider(self) -> str:
        return next(iter(self._graphs.values())).provider

    @property
    def solo(self) -> bool:
        """Whether run_solo runs on sessions of its own (else it is run)."""
        return self._solo_graphs is not None

    def run_solo(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        """`run` on the solo sessions (all of solo_threads), when there are any."""
        if self._solo_graphs is None:
            return self.run(key, items)
        self._local.solo = True
        try:
            return self.run(key, items)
        finally:
            self._local.solo = False

    @classmethod
    def bucket(cls, item: Any) -> Hashable:
        """The queue an item joins; a class-level rule, so a gateway can bucket for a remote
        runner without loading the model."""
        return 0

    def run(self, key: Hashable, items: Sequence[Any]) -> list[Any]:
        raise NotImplementedError

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        raise NotImplementedError

    @staticmethod
    def to_wire(result: Any) -> Any:
        """A result as JSON-able data (remote runners answer in JSON)."""
        return np.asarray(result).tolist()

    @staticmethod
    def from_wire(data: Any) -> Any:
        return np.asarray(data, dtype=np.float32)

    def warmup(self) -> None:
        """Run every bucket once (first runs allocate; keep that out of request latency), on
        the solo sessions too, then time one item both ways (solo_times)."""
        batchable = self.spec.extra.get("batchable", True) is not False
        for key, items in self.warmup_items():
            for batch in [items] if batchable else [[item] for item in items]:
                self.run(key, batch)
                if self._solo_graphs is not None:
                    self.run_solo(key, batch)
        if self._solo_graphs is not None:
            self.solo_times = self.measure_solo()
            shared, solo = self.solo_times[1:]
            self.solo_speedup = shared / max(solo, 1e-9)
            log.info(
                "%s: one request alone on %d threads: %.2fx the shared sessions at warm-up",
                self.spec.tag,
                self.solo_threads,
                self.solo_speedup,
            )

    def measure_solo(self) -> tuple[Hashable, float, float]:
        """(queue key, shared-session seconds, solo seconds) for one warm-up item, runs
        interleaved (median of SOLO_TRIALS each), so that a busy machine slows both alike."""
        key, items = self.warmup_items()[0]
        batch = items[:1]
        shared: list[float] = []
        solo: list[float] = []
        for _ in range(self.SOLO_TRIALS):
            for run, times in ((self.run, shared), (self.run_solo, solo)):
                began = time.perf_counter()
                run(key, batch)
                times.append(time.perf_counter() - began)
        return key, statistics.median(shared), statistics.median(solo)


class ImageClassifier(Kernel):
    """uint8 HWC images of the model's size -> Classified (probabilities, domain distance)."""

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Classified]:
        batch = np.stack(items)
        if not has_output(self.spec, "model", DOMAIN_OUTPUT):
            (probabilities,) = self.graphs["model"].run(["probabilities"], {"image": batch})
            return [Classified(row) for row in probabilities]
        probabilities, distances = self.graphs["model"].run(
            ["probabilities", DOMAIN_OUTPUT], {"image": batch}
        )
        return [Classified(p, float(d)) for p, d in zip(probabilities, distances, strict=True)]

    @staticmethod
    def to_wire(result: Any) -> Any:
        return [np.asarray(result.probabilities).tolist(), result.domain_distance]

    @staticmethod
    def from_wire(data: Any) -> Any:
        if not data or not isinstance(data[0], list):  # a runner of the flat format before it
            return Classified(np.asarray(data, dtype=np.float32))
        distance = None if data[1] is None else float(data[1])
        return Classified(np.asarray(data[0], dtype=np.float32), distance)

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        shape = [int(d) for d in self.spec.graphs["model"].inputs[0].shape[1:]]
        return [(0, [np.zeros(shape, np.uint8)] * 2)]


class TextClassifier(Kernel):
    """Token id lists -> probability rows, bucketed by length so padding stays small."""

    BUCKETS = (8, 16, 32)

    @classmethod
    def bucket(cls, item: Sequence[int]) -> Hashable:
        return bisect.bisect_left(cls.BUCKETS, len(item))

    def run(self, key: Hashable, items: Sequence[Sequence[int]]) -> list[np.ndarray]:
        tokens, lengths = collate_padded(items)
        (probabilities,) = self.graphs["model"].run(
            ["probabilities"], {"tokens": tokens, "lengths": lengths}
        )
        return list(probabilities)

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        return [(self.bucket([1] * n), [[1] * n, [1]]) for n in (*self.BUCKETS, 64)]


class SpeechRecognizer(Kernel):
    """16 kHz float32 clips -> transcripts, bucketed by duration."""

    BUCKETS_S = (1.5, 3.0, 6.0)

    @classmethod
    def bucket(cls, item: np.ndarray) -> Hashable:
        return bisect.bisect_left(cls.BUCKETS_S, len(item) / SAMPLE_RATE)

    def __init__(self, spec: ModelSpec, *args: Any, **kwargs: Any) -> None:
        super().__init__(spec, *args, **kwargs)
        self.domain = SpeechDomain.from_spec(spec.vocabulary or [], spec.extra)
        """The out-of-vocabulary verdict and confidence calibration; None without one."""

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Any]:
        waveform, lengths = pad_batch(items)
        log_probs, frame_lengths = self.graphs["model"].run(
            ["log_probs", "frame_lengths"], {"waveform": waveform, "lengths": lengths}
        )
        greedy = ctc_greedy_transcripts(log_probs, frame_lengths, self.spec.vocabulary or [])
        if self.domain is None:
            return list(greedy)
        judged = []
        for row, frames, transcript in zip(log_probs, frame_lengths, greedy, strict=True):
            if int(frames) < 1:  # nothing heard: nothing to judge
                judged.append(transcript)
                continue
            try:
                assessment = self.domain.assess(row[: int(frames)], transcript.confidence)
            except ValueError:  # past the grammar check's frame limit: answered, not judged
                judged.append(transcript)
                continue
            judged.append(
                Transcript(transcript.text, float(assessment.confidence), float(assessment.score))
            )
        return judged

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        clip = np.zeros(SAMPLE_RATE, np.float32)
        return [(0, [clip, clip[: SAMPLE_RATE // 2]])]

    @staticmethod
    def to_wire(result: Any) -> Any:
        return [result.text, result.confidence, result.domain_score]

    @staticmethod
    def from_wire(data: Any) -> Any:
        score = data[2] if len(data) > 2 else None
        return Transcript(str(data[0]), float(data[1]), None if score is None else float(score))


class Captioner(Kernel):
    """64x64 uint8 images -> captions; the queue key is the beam width (1 = greedy)."""

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Caption]:
        beam = int(key)  # type: ignore[call-overload]
        images = np.stack(items)
        encoder: Any = self.graphs["encoder"]
        decoder = self.graphs["decoder"]
        recorder = _DomainRecorder(encoder) if self.judges else None
        encoder = recorder or encoder
        vocabulary, extra = self.spec.vocabulary or [], self.spec.extra
        if beam <= 1:
            scored = captioning.greedy_decode_scored(encoder, decoder, images, extra, vocabulary)
        else:
            scored = captioning.beam_search_decode_scored(
                encoder, decoder, images, extra, vocabulary, beam
            )
        distances: Sequence[Any] = [None] * len(scored)
        if recorder is not None and recorder.distance is not None:
            distances = list(recorder.distance)
        return [
            Caption(text, score, None if d is None else float(d))
            for (text, score), d in zip(scored, distances, strict=True)
        ]

    @property
    def judges(self) -> bool:
        """Whether the encoder computes a domain distance."""
        return has_output(self.spec, "encoder", DOMAIN_OUTPUT)

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        image = np.zeros((64, 64, 3), np.uint8)
        return [(1, [image, image]), (3, [image])]

    # --- step by step (service/batching/iteration.py StepModel) ------------------------------

    @staticmethod
    def rows(key: Hashable) -> int:
        """Decoder rows one item of this queue key (beam width) occupies per step."""
        return caption_steps.width_of(key)

    def running(self) -> CaptionSteps:
        """An empty running set: items join it, advance one decoder step at a time, leave."""
        encoder = self.graphs["encoder"]
        return CaptionSteps(
            _DomainRecorder(encoder) if self.judges else encoder,
            self.graphs["decoder"],
            self.spec.extra,
            self.spec.vocabulary or [],
        )

    @staticmethod
    def to_wire(result: Any) -> Any:
        return [result.text, result.score, result.domain_distance]

    @staticmethod
    def from_wire(data: Any) -> Any:
        distance = data[2] if len(data) > 2 else None
        return Caption(str(data[0]), float(data[1]), None if distance is None else float(distance))


class CaptionSteps(caption_steps.RunningCaptions):
    """Captioner's running set, answering Captions (with each image's domain distance, kept
    from when it joined, where the encoder computes one)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distances: dict[int, float] = {}

    def join(self, key: Hashable, ids: Sequence[int], images: Sequence[np.ndarray]) -> None:
        super().join(key, ids, images)
        recorded = getattr(self.encoder, "distance", None)
        if recorded is not None and images:
            self.distances.update(zip(ids, (float(d) for d in recorded), strict=True))

    def leave(self, ids: Sequence[int]) -> None:
        super().leave(ids)
        for i in ids:
            self.distances.pop(i, None)

    def step(self) -> list[tuple[int, Any]]:
        return [
            (i, Caption(text, score, self.distances.pop(i, None)))
            for i, (text, score) in super().step()
        ]


class GenericKernel(Kernel):
    """Any imported graph. Items are {input name: array}: one row each (batch dim removed) when
    the spec is batchable, else a whole request's tensors; results are {output name: array}."""

    def __init__(
        self,
        spec: ModelSpec,
        device: str = "auto",
        intra_op_threads: int = 1,
        solo_threads: int = 1,
        io_binding: str = "auto",
    ):
        super().__init__(spec, device, intra_op_threads, solo_threads, io_binding)
        graph = spec.graphs["model"]
        self.batchable = spec.extra.get("batchable") is True
        self.outputs = [t.name for t in graph.outputs]

    @classmethod
    def bucket(cls, item: dict[str, np.ndarray]) -> Hashable:
        """Only rows of the same shapes and dtypes can share a batch."""
        return tuple((name, array.shape, array.dtype.str) for name, array in sorted(item.items()))

    def run(self, key: Hashable, items: Sequence[dict[str, np.ndarray]]) -> list[Any]:
        try:
            return self._run(items)
        except ORT_INVALID_ARGUMENT as error:  # the graph refused these values: the caller's
            raise InvalidInput(f"model {self.spec.name} refused the input: {error}") from None

    def _run(self, items: Sequence[dict[str, np.ndarray]]) -> list[Any]:
        session = self.graphs["model"]
        if not self.batchable:
            return [dict(zip(self.outputs, session.run(self.outputs, item))) for item in items]
        groups: dict[Hashable, list[int]] = {}
        for index, item in enumerate(items):  # NOTE: one queue may mix shapes (no buckets)
            groups.setdefault(self.bucket(item), []).append(index)
        results: list[Any] = [None] * len(items)
        for rows in groups.values():
            feed = {name: np.stack([items[i][name] for i in rows]) for name in items[rows[0]]}
            outputs = session.run(self.outputs, feed)
            for name, array in zip(self.outputs, outputs):
                if len(array) != len(rows):
                    raise RuntimeError(
                        f"{self.spec.tag}: output {name} has {len(array)} rows for a batch of "
                        f"{len(rows)}; the graph is not batchable"
                    )
            for position, index in enumerate(rows):
                results[index] = {name: out[position] for name, out in zip(self.outputs, outputs)}
        return results

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        def zeros(tensor: TensorSpec, shape: list[int | str]) -> np.ndarray:
            dims = [d if isinstance(d, int) else 1 for d in shape]
            if tensor.datatype == "BYTES":
                return np.full(dims, "", dtype=object)
            return np.zeros(dims, datatypes.numpy_of(tensor.datatype))

        inputs = self.spec.graphs["model"].inputs
        if not self.batchable:
            return [(0, [{t.name: zeros(t, t.shape) for t in inputs}])]
        row = {t.name: zeros(t, t.shape[1:]) for t in inputs}
        return [(self.bucket(row), [row, row])]

    def warmup(self) -> None:
        try:
            super().warmup()
        except Exception as error:  # NOTE: zeros with symbolic dims at 1 may not fit the graph
            log.warning("%s: warm-up skipped (%s: %s)", self.spec.tag, type(error).__name__, error)

    @staticmethod
    def to_wire(result: Any) -> Any:
        return {
            name: {
                "datatype": datatypes.datatype_of(array.dtype),
                "shape": list(array.shape),
                "data": array.ravel().tolist(),
            }
            for name, array in result.items()
        }

    @staticmethod
    def from_wire(data: Any) -> Any:
        return {
            name: np.asarray(tensor["data"], dtype=datatypes.numpy_of(tensor["datatype"])).reshape(
                tensor["shape"]
            )
            for name, tensor in data.items()
        }
