from __future__ import annotations

import torch

from export.nn import MaskedBiLSTM, length_mask, reverse_padded


def test_reverse_padded_reverses_within_each_length_only() -> None:
    x = torch.arange(8.0).reshape(2, 4, 1)
    out = reverse_padded(x, torch.tensor([4, 2]))
    assert out[..., 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


def test_length_mask() -> None:
    assert length_mask(torch.tensor([1, 3]), 3).tolist() == [[True, False, False], [True] * 3]


def test_bilstm_outputs_do_not_depend_on_padding() -> None:
    torch.manual_seed(0)
    lstm = MaskedBiLSTM(5, 7, num_layers=2).eval()
    item = torch.randn(1, 6, 5)
    padded = torch.cat([item, torch.randn(1, 4, 5)], dim=1)  # garbage after the valid steps
    longer = torch.randn(1, 10, 5)
    batch = torch.cat([padded, longer])
    with torch.no_grad():
        alone = lstm(item, torch.tensor([6]))
        batched = lstm(batch, torch.tensor([6, 10]))
    torch.testing.assert_close(batched[:1, :6], alone, rtol=0, atol=1e-6)


def test_plain_bidirectional_lstm_would_depend_on_padding() -> None:
    """Why MaskedBiLSTM exists: nn.LSTM(bidirectional) reads padding first going backwards."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 7, batch_first=True, bidirectional=True).eval()
    item = torch.randn(1, 6, 5)
    padded = torch.cat([item, torch.zeros(1, 4, 5)], dim=1)
    with torch.no_grad():
        diff = (lstm(item)[0] - lstm(padded)[0][:, :6]).abs().max()
    assert diff > 1e-3
