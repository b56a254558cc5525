"""The contract between a model recipe (export/models/*.py) and the build pipeline.

A recipe trains (or loads) a torch model and returns a `Built`: the graphs to export, the parity
cases to check them on, and everything the spec needs. The pipeline does the rest the same way for
every model: ONNX export, verification, registration in the BentoML model store.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class TensorDecl:
    """One graph input or output: name, V2 datatype and shape (str entries are symbolic dims)."""

    name: str
    datatype: str  # V2 protocol datatype: FP32, INT64, UINT8, BYTES, ...
    shape: list[int | str]
    description: str = ""


@dataclass
class GraphExport:
    """A torch module to export as one ONNX graph, with the cases to check it on."""

    module: torch.nn.Module
    inputs: list[TensorDecl]
    outputs: list[TensorDecl]
    # Each case: one array per input, in `inputs` order. At least three distinct shapes, real
    # samples as well as random ones; the pipeline compares torch with onnxruntime on each.
    parity_cases: list[tuple[str, list[np.ndarray]]]


@dataclass
class Built:
    """What a recipe hands back to the pipeline."""

    task: str
    graphs: dict[str, GraphExport]
    metrics: dict[str, float]
    """Held-out metrics (data the model never saw during training)."""
    data: dict[str, Any]
    """Training data description: source, size, splits, license."""
    labels: list[str] | None = None
    vocabulary: list[str] | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Model-specific spec entries (e.g. decoding parameters)."""
    heldout: dict[str, np.ndarray] = field(default_factory=dict)
    """A small held-out sample (no object arrays) stored with the graph for tests and loadtests."""
    training: dict[str, Any] = field(default_factory=dict)
    """Seed, epochs, wall time, final loss."""
    files: dict[str, Path] = field(default_factory=dict)
    """Extra files to store beside the graph (e.g. the training curve PNG)."""


@dataclass
class BuildContext:
    """Where a recipe writes its files, and how it is asked to behave."""

    workdir: Path
    seed: int = 0
    cache_dir: Path | None = None
    """Where generated data (e.g. synthesised speech) may be cached between builds."""

    def seed_everything(self) -> None:
        seed_everything(self.seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)


def set_threads() -> None:
    """Use every core for training (DEEPSERVE_TRAIN_THREADS: this many); deterministic CPU
    kernels. torch's CPU kernels still round differently with another thread count or
    processor, so builds differ a little between machines (README: "Reproducibility")."""
    threads = int(os.environ.get("DEEPSERVE_TRAIN_THREADS") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(max(1, threads))
    torch.use_deterministic_algorithms(True, warn_only=True)


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """A tqdm bar that stays readable in CI logs (no TTY: fewer refreshes)."""
    kwargs.setdefault("mininterval", 0.5 if os.isatty(2) else 10.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


def plot_curves(
    path: Path,
    title: str,
    curves: Mapping[str, Sequence[float]],
    xlabel: str = "epoch",
    secondary: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write a training-curve PNG: losses on the left axis, metrics on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    lines, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for label, values in secondary.items():
            ax2.plot(range(1, len(values) + 1), values, linestyle="--", label=label)
        ax2.set_ylabel("metric")
        more_lines, more_labels = ax2.get_legend_handles_labels()
        lines, labels = lines + more_lines, labels + more_labels
    ax.legend(lines, labels, loc="best")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


Recipe = Callable[[BuildContext], Built]
