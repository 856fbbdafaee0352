"""CTC output head."""

from __future__ import annotations

from torch import nn


class CtcHead(nn.Sequential):
    """Dropout, Linear, LogSoftmax over ``(N, T, encoder_dim) -> (N, T, vocab_size)``.

    A ``Sequential`` so its parameters are named ``1.weight``/``1.bias`` like icefall's ``ctc_output``.
    """

    def __init__(self, encoder_dim: int, vocab_size: int, dropout: float = 0.1):
        super().__init__(nn.Dropout(dropout), nn.Linear(encoder_dim, vocab_size), nn.LogSoftmax(dim=-1))
