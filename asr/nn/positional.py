"""Relative positional encodings."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from asr.nn.scaling import Dropout2, FloatLike

__all__ = ["CompactRelPositionalEncoding"]


class CompactRelPositionalEncoding(nn.Module):
    """Zipformer's compact relative positional encoding.

    A relative offset ``t`` is first compressed logarithmically,
    ``t_c = L * sign(t) * (log(|t| + L) - log(L))`` with ``L = sqrt(embed_dim)``
    (slope 1 at the origin, so nearby offsets stay distinguishable), then mapped to a
    bounded angle ``a = atan(t_c / s)`` with ``s = length_factor * embed_dim / (2 pi)``.
    Channel ``2k`` holds ``cos((k+1) a)``, channel ``2k+1`` holds ``sin((k+1) a)``, and the
    last channel is the constant 1 (a bias term for the projection that follows).

    Args:
        embed_dim: D, must be even.
        dropout_rate: dropout applied to the returned encoding (float or schedule).
        max_len: length to precompute the table for; it grows on demand.
        length_factor: >= 1; larger values give less weight to small offsets.

    The table is a plain attribute, not a buffer, so it is not in the state_dict (as in
    icefall).
    """

    def __init__(
        self,
        embed_dim: int,
        dropout_rate: FloatLike,
        max_len: int = 1000,
        length_factor: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"CompactRelPositionalEncoding: embed_dim must be even, got {embed_dim}")
        if length_factor < 1.0:
            raise ValueError(f"CompactRelPositionalEncoding: length_factor must be >= 1, got {length_factor}")
        self.embed_dim = embed_dim
        self.dropout = Dropout2(dropout_rate)
        self.length_factor = length_factor
        self.pe: Tensor | None = None
        self.extend_pe(torch.tensor(0.0).expand(max_len))

    def extend_pe(self, x: Tensor, left_context_len: int = 0) -> None:
        """Make sure the table covers offsets ``-(T-1) .. T-1`` for ``T = x.size(0) +
        left_context_len``, and has ``x``'s dtype and device."""
        T = x.size(0) + left_context_len
        if self.pe is not None and self.pe.size(0) >= 2 * T - 1:
            self.pe = self.pe.to(dtype=x.dtype, device=x.device)
            return
        # Row i of the table encodes offset i - (T - 1).
        self.pe = self._encode(torch.arange(-(T - 1), T, device=x.device)).to(dtype=x.dtype)

    def _encode(self, offsets: Tensor) -> Tensor:
        """Integer offsets ``(K,)`` -> their encodings ``(K, D)``."""
        offsets = offsets.to(torch.float32).unsqueeze(1)
        freqs = 1 + torch.arange(self.embed_dim // 2, device=offsets.device)
        compression_length = self.embed_dim**0.5
        compressed = (
            compression_length
            * offsets.sign()
            * ((offsets.abs() + compression_length).log() - math.log(compression_length))
        )
        length_scale = self.length_factor * self.embed_dim / (2.0 * math.pi)
        angle = (compressed / length_scale).atan()
        angles = angle * freqs
        # Interleaved cos/sin, then the last channel set to 1 (it would hold the last sin).
        pe = torch.stack((angles.cos(), angles.sin()), dim=-1).reshape(offsets.shape[0], self.embed_dim)
        return torch.cat((pe[:, :-1], torch.ones_like(pe[:, -1:])), dim=-1)

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        """Encodings for a sequence of length ``T = x.size(0)`` (x is (T, N, *); only its
        length, dtype and device are used) with ``left_context_len`` cached frames.

        Returns (1, left_context_len + 2T - 1, D) where row ``j`` encodes the offset
        ``j - (left_context_len + T - 1)``, i.e. offsets ``-(left_context_len + T - 1)``
        up to ``T - 1``.
        """
        if torch.jit.is_tracing():
            # In an exported graph the length is dynamic: compute the rows it needs instead of slicing a
            # table whose size the trace would fix.
            offsets = torch.arange(-(x.size(0) + left_context_len - 1), x.size(0), device=x.device)
            return self.dropout(self._encode(offsets).to(dtype=x.dtype).unsqueeze(0))
        self.extend_pe(x, left_context_len)
        centre = self.pe.size(0) // 2  # row of offset 0
        pos_emb = self.pe[centre - (x.size(0) + left_context_len) + 1 : centre + x.size(0)]
        return self.dropout(pos_emb.unsqueeze(0))
