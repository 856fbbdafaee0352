"""Transformer-Transducer label encoder: a small transformer over the last ``context_size`` labels, used as
the transducer prediction network in place of the stateless :class:`asr.models.transducer.Decoder`.

The output at label position ``u`` depends on labels ``u - context_size + 1 .. u`` only (limited label
context, as in the T-T paper's label-context-2 setting). Each window of ``context_size`` labels is encoded
independently (token embedding + learned position-in-window embedding, ``num_layers`` pre-LN transformer
layers, final LayerNorm) and its last position is the output, so search can recompute it from the
``context_size`` most recent tokens exactly as training saw it. The interface matches the stateless
decoder (``vocab_size``, ``decoder_dim``, ``blank_id``, ``context_size``,
``forward(tokens, need_pad=True)``), so training and search work unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LabelEncoder"]


class LabelEncoder(nn.Module):
    """
    Args:
        vocab_size: output symbols including blank.
        decoder_dim: model and output width.
        blank_id: blank, also the start-of-sequence symbol.
        context_size: labels each output depends on (>= 1).
        num_layers / num_heads / feedforward_dim / dropout: the transformer.
    Negative token ids mean "no token" (left of the sequence start) and get their own learned embedding.
    """

    def __init__(
        self,
        vocab_size: int,
        decoder_dim: int,
        blank_id: int = 0,
        context_size: int = 2,
        num_layers: int = 2,
        num_heads: int = 4,
        feedforward_dim: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size + 1, decoder_dim)  # row vocab_size = "no token"
        self.position_embedding = nn.Parameter(torch.zeros(context_size, decoder_dim))
        nn.init.normal_(self.position_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(
            decoder_dim, num_heads, feedforward_dim or 4 * decoder_dim, dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.final_norm = nn.LayerNorm(decoder_dim)

    def _encode_windows(self, windows: Tensor) -> Tensor:
        """``(M, context_size)`` token ids -> ``(M, decoder_dim)``, the output at each window's last label."""
        ids = torch.where(windows < 0, torch.full_like(windows, self.vocab_size), windows)
        h = self.embedding(ids) + self.position_embedding
        return self.final_norm(self.layers(h)[:, -1])

    def forward(self, tokens: Tensor, need_pad: bool = True) -> Tensor:
        """
        Args:
            tokens: ``(N, U)`` label ids (negative = no token).
            need_pad: True (training): left-pad with ``context_size - 1`` "no token" ids and return one
                vector per position. False (search): ``U == context_size``, return the last position's.
        Returns:
            ``(N, U, decoder_dim)`` when ``need_pad``, else ``(N, 1, decoder_dim)``.
        """
        tokens = tokens.to(torch.int64)
        c = self.context_size
        if not need_pad:
            if tokens.size(1) != c:
                raise ValueError(
                    f"without padding the label encoder needs exactly context_size={c} tokens, got {tokens.size(1)}"
                )
            return self._encode_windows(tokens).unsqueeze(1)
        n, u = tokens.shape
        padded = F.pad(tokens, (c - 1, 0), value=-1)
        windows = padded.unfold(1, c, 1)  # (N, U, c)
        return self._encode_windows(windows.reshape(n * u, c)).reshape(n, u, self.decoder_dim)
