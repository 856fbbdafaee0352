"""Relative-position multi-head self-attention (Transformer-XL style, as in the Conformer), with
grouped attention (Efficient Conformer), strided queries and relaxed attention.

Masks follow :mod:`asr.nn.masks`: boolean, **True = masked**.

Scores for query ``i`` and key ``j`` are ``((q_i + u)·k_j + (q_i + v)·p(i - j)) / sqrt(d)`` where ``p(t)`` is
a projected sinusoidal encoding of the relative offset ``t = i - j`` (positive = key in the past) and
``u``/``v`` are the learned ``pos_bias_u``/``pos_bias_v``. Offsets come from explicit query/key positions, so
cached keys (streaming), strided queries and groups all share one code path.

Grouped attention (group ``G``) concatenates ``G`` neighbouring frames along the feature axis,
``(N, T, D) -> (N, H, T/G, G·D/H)`` (``T`` zero-padded to a multiple of ``G``), attends between groups and
splits the result back into frames: the cost falls from O(T²·D) to O(T²·D/G). As in the Efficient
Conformer reference, the positional encoding of a group offset ``k`` is the concatenation of the frame
encodings of the ``G`` offsets ``G·k + G//2, ..., G·k + G//2 - G + 1`` (centred on ``G·k`` for odd ``G``),
each projected by ``linear_pos``; ``u``/``v`` are tiled over the group; masks are read at the first frame
of each group. Padded frames have their query/key/value projections zeroed before grouping, so a group
holding the end of an utterance sees the same zeros whether the padding comes from batching or from
rounding ``T`` up to a multiple of ``G``.

Kernel path: with ``attention_backend`` resolving to ``"triton"`` (see :mod:`asr.nn.fused_attention`),
calls the fused kernels express go through :func:`asr.nn.fused_attention.rel_pos_attention` (or its
weights variant when ``need_weights``): no strided queries (``S = 1``), no key/value cache, relaxed
attention and attention dropout inactive (eval, or gamma / p = 0), and a group-level mask that is
absent, key padding only, or padding plus a chunk mask that
:func:`~asr.nn.fused_attention.chunk_params_from_mask` recognises (a ``(T, T)`` or ``(1, T, T)``
``attn_mask``). The groups are the kernel's frames: ``q = q + u``, ``k``, ``v`` per head ``(H, N, T/G, d)``,
``scale = 1/sqrt(d)``, positional queries ``(q + v)/sqrt(d)`` and a ``(H, 2T/G - 1, d)`` table whose row
``r`` encodes the group offset ``i - j = T/G - 1 - r``; the key padding is that of each group's first
frame. Every other call (streaming caches, strided MHSA, relaxed attention or dropout in training,
limited-context or per-utterance masks) takes the PyTorch code below, which is the ``"torch"`` backend.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.nn import fused_attention

__all__ = [
    "AttentionOutput",
    "RelPositionMultiheadAttention",
    "relative_sinusoidal_encoding",
    "relax_attention_weights",
    "set_attention_backend",
]


def relative_sinusoidal_encoding(offsets: Tensor, dim: int) -> Tensor:
    """Sinusoidal encoding of (relative) positions: ``(...,) -> (..., dim)`` float32 with channel ``2k`` =
    ``sin(t·w_k)`` and ``2k+1`` = ``cos(t·w_k)``, ``w_k = 10000^(-2k/dim)``."""
    if dim % 2:
        raise ValueError(f"relative_sinusoidal_encoding: dim must be even, got {dim}")
    freqs = torch.exp(torch.arange(0, dim, 2, device=offsets.device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    angles = offsets.to(torch.float32).unsqueeze(-1) * freqs
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


def masked_attention_weights(scores: Tensor, mask: Tensor | None, relax_gamma: float = 0.0) -> Tensor:
    """Softmax over keys of ``scores`` ``(N, H, Tq, Tk)`` with ``mask`` ``(N, Tq, Tk)`` (True = masked)
    applied per head; masked keys get weight 0 (so rows with no visible key, queries in padding, are zero
    rather than uniform). ``relax_gamma`` > 0 relaxes them (:func:`relax_attention_weights`; training only,
    the caller decides)."""
    if mask is not None:
        mask = mask.unsqueeze(1)  # heads
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        weights = weights.masked_fill(mask, 0.0)
    if relax_gamma > 0.0:
        weights = relax_attention_weights(weights, mask, relax_gamma)
    return weights


def relax_attention_weights(weights: Tensor, mask: Tensor | None, gamma: float) -> Tensor:
    """Relaxed attention: ``(1 - gamma)·A + gamma·U`` with ``U`` uniform over the keys each query may see
    (keys not masked; masked and padded keys get 0). ``weights``: ``(..., Tq, Tk)``; ``mask`` broadcastable
    to it, True = masked. Rows with no visible key stay as they are (all zero)."""
    if gamma == 0.0:
        return weights
    if mask is None:
        return (1.0 - gamma) * weights + gamma / weights.size(-1)
    visible = (~mask).to(weights.dtype)
    uniform = visible / visible.sum(dim=-1, keepdim=True).clamp(min=1.0)
    return (1.0 - gamma) * weights + gamma * uniform


class AttentionOutput(NamedTuple):
    """``output`` ``(N, Tq, D)``; ``keys``/``values`` ``(N, Tk, D)``: the projected keys and values of the
    cache followed by this input (the caller keeps the tail as the next cache); ``weights``
    ``(N, H, Tq', Tk')`` when requested (group-level for grouped attention), else None."""

    output: Tensor
    keys: Tensor
    values: Tensor
    weights: Tensor | None


class RelPositionMultiheadAttention(nn.Module):
    """Self-attention with Transformer-XL relative positions.

    Args:
        embed_dim: D.
        num_heads: H; D must be divisible by H.
        dropout: dropout on the attention weights.
        group_size: G >= 1, grouped attention (Efficient Conformer); 1 = ordinary attention.
        query_stride: S >= 1, strided attention: only queries ``0, S, 2S, ...`` are computed, so the
            output has ``ceil(T / S)`` frames (Efficient Conformer's strided MHSA).
        relaxed_attention_gamma: gamma of relaxed attention (training only; 0 = off).
        attention_backend: ``"torch"`` (this module's PyTorch code), ``"triton"`` (the fused kernels for
            the calls they express, see the module docstring) or ``"auto"``; an attribute, changeable
            later.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        group_size: int = 1,
        query_stride: int = 1,
        relaxed_attention_gamma: float = 0.0,
        attention_backend: str = "torch",
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if embed_dim % 2:
            raise ValueError(f"embed_dim must be even (sinusoidal encoding), got {embed_dim}")
        if group_size < 1 or query_stride < 1:
            raise ValueError(f"group_size and query_stride must be >= 1, got {group_size}, {query_stride}")
        if group_size > 1 and query_stride > 1:
            raise ValueError("grouped attention with strided queries is not supported")
        if not 0.0 <= relaxed_attention_gamma < 1.0:
            raise ValueError(f"relaxed_attention_gamma must be in [0, 1), got {relaxed_attention_gamma}")
        if attention_backend not in fused_attention.BACKENDS:
            raise ValueError(f"attention_backend must be one of {fused_attention.BACKENDS}, got {attention_backend!r}")
        self.attention_backend = attention_backend
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.group_size = group_size
        self.query_stride = query_stride
        self.relaxed_attention_gamma = relaxed_attention_gamma
        self.head_dim = group_size * embed_dim // num_heads  # d, per group
        self.linear_q = nn.Linear(embed_dim, embed_dim)
        self.linear_k = nn.Linear(embed_dim, embed_dim)
        self.linear_v = nn.Linear(embed_dim, embed_dim)
        self.linear_out = nn.Linear(embed_dim, embed_dim)
        self.linear_pos = nn.Linear(embed_dim, embed_dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, embed_dim // num_heads))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, embed_dim // num_heads))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def output_length(self, num_frames: int) -> int:
        """Output frames for ``num_frames`` input frames (``ceil(T / S)``)."""
        return (num_frames - 1) // self.query_stride + 1

    def _positional_keys(self, offsets: Tensor, dtype: torch.dtype) -> Tensor:
        """Projected encodings of group offsets ``(R,) -> (H, R, d)``."""
        G = self.group_size
        frame_offsets = G * offsets.unsqueeze(1) + G // 2 - torch.arange(G, device=offsets.device)
        pos = self.linear_pos(relative_sinusoidal_encoding(frame_offsets, self.embed_dim).to(dtype))
        return pos.reshape(offsets.numel(), self.num_heads, self.head_dim).transpose(0, 1)

    def _kernel_chunking(
        self, attn_mask: Tensor | None, cache: tuple[Tensor, Tensor] | None, device: torch.device
    ) -> tuple[int, int] | None:
        """``(chunk_size, left_chunks)`` over groups when this call takes the kernel path (``(-1, -1)``:
        no chunk mask), None when it takes the PyTorch path (see the module docstring)."""
        if self.attention_backend == "torch" or self.query_stride > 1 or cache is not None:
            return None
        if self.training and (self.relaxed_attention_gamma > 0.0 or self.dropout.p > 0.0):
            return None
        if fused_attention.resolve_backend(self.attention_backend, device) != "triton":
            return None
        if attn_mask is None:
            return -1, -1
        if attn_mask.ndim == 3 and attn_mask.size(0) == 1:
            attn_mask = attn_mask[0]
        if attn_mask.ndim != 2:
            return None
        G = self.group_size
        return fused_attention.chunk_params_from_mask(attn_mask[::G, ::G])

    def _torch_attention(
        self, q_u: Tensor, q_v: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, q_pos: Tensor, k_pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The PyTorch path: grouped ``(N, H, T', d)`` queries (``+ u``, ``+ v``), ``(N, H, T_k', d)`` keys and
        values, group positions ``q_pos`` ``(T',)`` / ``k_pos`` ``(T_k',)`` and ``mask`` broadcastable to
        ``(N, T', T_k')`` -> output ``(N, H, T', d)`` and weights ``(N, H, T', T_k')``."""
        N, H, num_q, _ = q_u.shape
        num_k = k.size(2)
        offsets = q_pos.unsqueeze(1) - k_pos.unsqueeze(0)  # (num_q, num_k), i - j
        lowest = int(offsets.min())
        distinct = torch.arange(lowest, int(offsets.max()) + 1, device=q_u.device)
        pos = self._positional_keys(distinct, q_u.dtype)  # (H, R, d)
        scores_pos = torch.matmul(q_v, pos.transpose(1, 2))  # (N, H, num_q, R)
        index = (offsets - lowest).expand(N, H, num_q, num_k)
        scores = torch.matmul(q_u, k.transpose(2, 3)) + torch.gather(scores_pos, 3, index)
        scores = scores / math.sqrt(self.head_dim)

        weights = masked_attention_weights(scores, mask, self.relaxed_attention_gamma if self.training else 0.0)
        return torch.matmul(self.dropout(weights), v), weights

    def _kernel_attention(
        self,
        q_u: Tensor,
        q_v: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding: Tensor | None,
        chunking: tuple[int, int],
        need_weights: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """Grouped ``(N, H, T', d)`` queries (``+ u``, ``+ v``), keys and values -> output ``(N, H, T', d)``
        and, if ``need_weights``, weights ``(N, H, T', T')``; ``key_padding`` ``(N, T')`` over groups."""
        num_groups = q_u.size(2)
        scale = 1.0 / math.sqrt(self.head_dim)
        # Row r of the kernel's table serves key j = i + r - (T' - 1), i.e. offset i - j = T' - 1 - r.
        offsets = torch.arange(num_groups - 1, -num_groups, -1, device=q_u.device)
        pos_table = self._positional_keys(offsets, q_u.dtype)  # (H, 2T' - 1, d)
        q, q_pos, k, v = (t.transpose(0, 1) for t in (q_u, q_v * scale, k, v))  # heads first
        if need_weights:
            weights = fused_attention.rel_pos_attention_weights(
                q, k, q_pos, pos_table, key_padding, *chunking, scale=scale, backend="triton"
            )
            return torch.matmul(weights, v).transpose(0, 1), weights.transpose(0, 1)
        out = fused_attention.rel_pos_attention(
            q, k, v, q_pos, pos_table, key_padding, *chunking, scale=scale, backend="triton"
        )
        return out.transpose(0, 1), None

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None = None,
        key_padding_mask: Tensor | None = None,
        cache: tuple[Tensor, Tensor] | None = None,
        need_weights: bool = False,
    ) -> AttentionOutput:
        """
        Args:
            x: ``(N, T, D)``.
            attn_mask: ``(Tq, Tk)`` or ``(N, Tq, Tk)`` over frames, True = masked; ``Tq = T`` (before
                striding), ``Tk = Lc + T`` with ``Lc`` cached frames.
            key_padding_mask: ``(N, Tk)``, True at padded keys (and empty cache slots).
            cache: projected ``(keys, values)``, each ``(N, Lc, D)``, of the frames just before ``x``
                (streaming); not with grouped attention.
            need_weights: also return the attention weights.
        Returns:
            :class:`AttentionOutput`; ``output`` is ``(N, ceil(T / S), D)``.
        """
        N, T, D = x.shape
        if D != self.embed_dim:
            raise ValueError(f"attention expects {self.embed_dim} features, got {D}")
        G, S, H = self.group_size, self.query_stride, self.num_heads
        q = self.linear_q(x[:, ::S])
        k, v = self.linear_k(x), self.linear_v(x)
        cached = 0
        if cache is not None:
            if G > 1:
                raise ValueError("grouped attention does not support a key/value cache")
            cached = cache[0].size(1)
            k, v = torch.cat([cache[0], k], dim=1), torch.cat([cache[1], v], dim=1)
        new_keys, new_values = k, v
        Tk = k.size(1)

        mask = attn_mask
        if mask is not None and mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if key_padding_mask is not None:
            if key_padding_mask.shape != (N, Tk):
                raise ValueError(f"key_padding_mask must be {(N, Tk)}, got {tuple(key_padding_mask.shape)}")
            pad_k = key_padding_mask.unsqueeze(-1)
            k, v = k.masked_fill(pad_k, 0.0), v.masked_fill(pad_k, 0.0)
            q = q.masked_fill(key_padding_mask[:, cached::S].unsqueeze(-1), 0.0)
            kp = key_padding_mask.unsqueeze(1)
            mask = kp if mask is None else (mask | kp)
        if mask is not None:
            mask = mask[:, ::S]
            if mask.size(-1) != Tk or mask.size(-2) not in (1, q.size(1)):
                raise ValueError(f"attention mask covers {tuple(mask.shape[-2:])} frames, expected {(T, Tk)}")

        Tq = q.size(1)
        chunking = self._kernel_chunking(attn_mask, cache, x.device)
        if G > 1:
            extra = (-T) % G
            q, k, v = (F.pad(t, (0, 0, 0, extra)) for t in (q, k, v))
            if mask is not None:
                mask = mask[:, ::G, ::G]
        num_q, num_k = q.size(1) // G, k.size(1) // G
        q_pos = cached // G + S * torch.arange(num_q, device=x.device)
        k_pos = torch.arange(num_k, device=x.device)

        def heads(t: Tensor) -> Tensor:  # (N, T, D) -> (N, H, T/G, d)
            return t.reshape(N, -1, H, self.head_dim).transpose(1, 2)

        q_u = heads(q + self.pos_bias_u.flatten())
        q_v = heads(q + self.pos_bias_v.flatten())
        k, v = heads(k), heads(v)

        if chunking is not None:
            key_padding = None if key_padding_mask is None else key_padding_mask[:, ::G]
            out, weights = self._kernel_attention(q_u, q_v, k, v, key_padding, chunking, need_weights)
        else:
            out, weights = self._torch_attention(q_u, q_v, k, v, mask, q_pos, k_pos)
        out = out.transpose(1, 2).reshape(N, num_q * G, D)[:, :Tq]
        return AttentionOutput(self.linear_out(out), new_keys, new_values, weights if need_weights else None)


def set_attention_backend(model: nn.Module, backend: str) -> None:
    """Set ``attention_backend`` (``"torch"``, ``"triton"`` or ``"auto"``) of every
    :class:`RelPositionMultiheadAttention` in ``model``."""
    if backend not in fused_attention.BACKENDS:
        raise ValueError(f"attention_backend must be one of {fused_attention.BACKENDS}, got {backend!r}")
    for module in model.modules():
        if isinstance(module, RelPositionMultiheadAttention):
            module.attention_backend = backend
