"""Per-task compute kernels: collate a batch of validated items, run ONNX Runtime, split results.

A kernel is what a runner executes, whatever its placement: the local batcher calls `run` in a
worker thread, the remote runner service calls it from its batchable API. Items are already
decoded and checked (service/processing); `bucket` says which queue an item joins so that only
similar items share a batch (length buckets, decoding modes).
"""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.processing import captioning
from service.processing.speech import SAMPLE_RATE, Transcript, ctc_greedy_transcripts, pad_batch
from service.processing.text import collate_padded
from service.registry import ModelSpec
from service.runtime import LoadedGraph, load_graph


@dataclass
class Caption:
    text: str
    score: float


class Kernel:
    """Base: loads the model's graphs; subclasses define bucket / run / warm-up input."""

    def __init__(self, spec: ModelSpec, device: str = "auto", intra_op_threads: int = 1):
        self.spec = spec
        self.graphs: dict[str, LoadedGraph] = {
            name: load_graph(spec.graph_path(name), graph, device, intra_op_threads)
            for name, graph in spec.graphs.items()
        }

    @property
    def provider(self) -> str:
        return next(iter(self.graphs.values())).provider

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
        """Run every bucket once (first runs allocate; keep that out of request latency)."""
        for key, items in self.warmup_items():
            self.run(key, items)


class ImageClassifier(Kernel):
    """uint8 HWC images of the model's size -> probability rows."""

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[np.ndarray]:
        batch = np.stack(items)
        (probabilities,) = self.graphs["model"].session.run(["probabilities"], {"image": batch})
        return list(probabilities)

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
        (probabilities,) = self.graphs["model"].session.run(
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

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Any]:
        waveform, lengths = pad_batch(items)
        log_probs, frame_lengths = self.graphs["model"].session.run(
            ["log_probs", "frame_lengths"], {"waveform": waveform, "lengths": lengths}
        )
        return list(ctc_greedy_transcripts(log_probs, frame_lengths, self.spec.vocabulary or []))

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        clip = np.zeros(SAMPLE_RATE, np.float32)
        return [(0, [clip, clip[: SAMPLE_RATE // 2]])]

    @staticmethod
    def to_wire(result: Any) -> Any:
        return [result.text, result.confidence]

    @staticmethod
    def from_wire(data: Any) -> Any:
        return Transcript(str(data[0]), float(data[1]))


class Captioner(Kernel):
    """64x64 uint8 images -> captions; the queue key is the beam width (1 = greedy)."""

    def run(self, key: Hashable, items: Sequence[np.ndarray]) -> list[Caption]:
        beam = int(key)  # type: ignore[call-overload]
        images = np.stack(items)
        encoder, decoder = self.graphs["encoder"].session, self.graphs["decoder"].session
        vocabulary, extra = self.spec.vocabulary or [], self.spec.extra
        if beam <= 1:
            scored = captioning.greedy_decode_scored(encoder, decoder, images, extra, vocabulary)
        else:
            scored = captioning.beam_search_decode_scored(
                encoder, decoder, images, extra, vocabulary, beam
            )
        return [Caption(text, score) for text, score in scored]

    def warmup_items(self) -> list[tuple[Hashable, list[Any]]]:
        image = np.zeros((64, 64, 3), np.uint8)
        return [(1, [image, image]), (3, [image])]

    @staticmethod
    def to_wire(result: Any) -> Any:
        return [result.text, result.score]

    @staticmethod
    def from_wire(data: Any) -> Any:
        return Caption(str(data[0]), float(data[1]))


KERNELS: dict[str, type[Kernel]] = {
    "image-classification": ImageClassifier,
    "text-classification": TextClassifier,
    "speech-recognition": SpeechRecognizer,
    "image-captioning": Captioner,
}


def make_kernel(spec: ModelSpec, device: str = "auto", intra_op_threads: int = 1) -> Kernel:
    try:
        kernel_class = KERNELS[spec.task]
    except KeyError:
        raise ValueError(f"{spec.tag}: no kernel for task {spec.task!r}") from None
    return kernel_class(spec, device, intra_op_threads)
