"""The verification steps must catch what they claim to catch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.base import GraphExport, TensorDecl
from export.nn import MaskedBiLSTM
from export.onnx_tools import check_graph, check_parity, export_graph


class Tagger(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = torch.nn.Embedding(20, 8)
        self.lstm = MaskedBiLSTM(8, 6, num_layers=2)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embedding(tokens), lengths))


def cases() -> list[tuple[str, list[np.ndarray]]]:
    rng = np.random.default_rng(0)
    out = []
    for batch, steps in ((1, 5), (3, 9), (6, 17)):
        lengths = rng.integers(1, steps + 1, batch).astype(np.int64)
        lengths[0] = steps
        out.append(
            (f"{batch}x{steps}", [rng.integers(1, 20, (batch, steps)).astype(np.int64), lengths])
        )
    return out


def tagger_graph(**overrides) -> GraphExport:
    fields = dict(
        module=Tagger().eval(),
        inputs=[
            TensorDecl("tokens", "INT64", ["batch", "steps"]),
            TensorDecl("lengths", "INT64", ["batch"]),
        ],
        outputs=[TensorDecl("scores", "FP32", ["batch", "steps", 3])],
        parity_cases=cases(),
    )
    fields.update(overrides)
    return GraphExport(**fields)


def test_lstm_export_keeps_sequence_dims_symbolic_and_matches_torch(tmp_path: Path) -> None:
    graph = tagger_graph()
    path = export_graph(graph, tmp_path / "tagger.onnx")
    assert check_graph(graph, path)["opset"] == 17
    report = check_parity(graph, path, tmp_path)
    assert report["max_abs_diff"] < 1e-5
    assert len(report["cases"]) == 3


def test_frozen_dim_is_reported(tmp_path: Path) -> None:
    exported = tagger_graph()
    exported.inputs[0].shape = ["batch", 5]  # export with a fixed sequence length ...
    path = export_graph(exported, tmp_path / "frozen.onnx")
    with pytest.raises(AssertionError, match="froze"):
        check_graph(tagger_graph(), path)  # ... then check against the symbolic declaration


def test_parity_catches_a_graph_that_disagrees_with_torch(tmp_path: Path) -> None:
    graph = tagger_graph()
    path = export_graph(graph, tmp_path / "tagger.onnx")
    with torch.no_grad():
        graph.module.head.bias.add_(1e-3)  # torch now differs from the exported file
    with pytest.raises(AssertionError, match="max abs diff"):
        check_parity(graph, path, tmp_path)


def test_parity_needs_three_shapes(tmp_path: Path) -> None:
    graph = tagger_graph(parity_cases=cases()[:2])
    path = export_graph(graph, tmp_path / "tagger.onnx")
    with pytest.raises(AssertionError, match="3 distinct"):
        check_parity(graph, path, tmp_path)
