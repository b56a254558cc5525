"""Building blocks shared by the recipes, written so the TorchScript ONNX exporter keeps every
sequence dimension symbolic and padded batches give the same answer as single items."""

from __future__ import annotations

import torch
from torch import nn


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each sequence of x [B, T, F] within its own length; padding stays at the end."""
    steps = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # [1, T]
    last = (lengths.unsqueeze(1) - 1).to(steps.dtype)  # [B, 1]
    index = torch.where(steps <= last, last - steps, steps)  # [B, T]
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


def length_mask(lengths: torch.Tensor, steps: int | torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True where t < length."""
    positions = torch.arange(steps, device=lengths.device).unsqueeze(0)
    return positions < lengths.unsqueeze(1)


class MaskedBiLSTM(nn.Module):
    """Bidirectional LSTM whose outputs at valid steps do not depend on padding.

    `nn.LSTM(bidirectional=True)` would read the padding first in its backward direction, and
    packed sequences do not export. Instead each layer runs a forward LSTM on x and a second one on
    x reversed within each item's length (padding stays behind the data, so neither direction ever
    sees it before a valid step), then flips that output back.
    """

    def __init__(
        self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ):
        super().__init__()
        self.forward_layers = nn.ModuleList()
        self.backward_layers = nn.ModuleList()
        for layer in range(num_layers):
            size = input_size if layer == 0 else 2 * hidden_size
            self.forward_layers.append(nn.LSTM(size, hidden_size, batch_first=True))
            self.backward_layers.append(nn.LSTM(size, hidden_size, batch_first=True))
        self.dropout = nn.Dropout(dropout)
        self.output_size = 2 * hidden_size

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for index, (fwd, bwd) in enumerate(zip(self.forward_layers, self.backward_layers)):
            if index > 0:
                x = self.dropout(x)
            out_f, _ = fwd(x)
            out_b, _ = bwd(reverse_padded(x, lengths))
            x = torch.cat([out_f, reverse_padded(out_b, lengths)], dim=-1)
        return x
