"""Pure-PyTorch references for the relative-position attention kernels (torch only, no triton).

They define the semantics the Triton kernels in :mod:`asr_kernels.rel_pos_attention` implement, serve as
the fallback where Triton cannot run, and are what the kernel tests compare against. They materialise the
``(H, N, T_q, T_k)`` scores.

Layout is head-first, as in Zipformer: ``q`` / ``k`` ``(H, N, T, D)``, ``v`` ``(H, N, T_k, D_v)``,
``q_pos`` ``(H, N, T_q, P)``, ``pos_table`` ``(H, T_q + T_k - 1, P)`` (shared by the batch).

Scores::

    s[h, n, i, j] = scale * q[h, n, i] . k[h, n, j]
                    + q_pos[h, n, i] . pos_table[h, j - i + T_q - 1]
                    + key_bias[n, j]

Queries are the last ``T_q`` frames of the key time line: query ``i`` sits at frame ``a = i + T_k - T_q``,
so ``pos_table`` row ``r`` belongs to the relative offset ``j - a = r - (T_k - 1)``; with ``T_q == T_k == T``
that is a table of ``2T - 1`` rows, row ``T - 1`` for offset 0 (Zipformer's ``linear_pos(pos_emb)`` layout).
``key_bias`` ``(N, T_k)`` is additive (0 = keep, ``-inf`` = padding); a boolean ``key_padding_mask`` is
turned into one by :func:`key_bias_from_padding_mask`. With ``chunk_size > 0`` query frame ``a`` sees key
``j`` only if ``chunk(j) <= chunk(a)`` and, for ``left_chunks >= 0``, ``chunk(j) >= chunk(a) - left_chunks``,
where ``chunk(t) = t // chunk_size``. Rows that see no key get all-zero weights (and a zero output).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "chunk_mask",
    "key_bias_from_padding_mask",
    "rel_pos_attention_reference",
    "rel_pos_attention_weights_reference",
    "rel_pos_scores_reference",
]


def chunk_mask(
    num_queries: int, num_keys: int, chunk_size: int, left_chunks: int, device: torch.device | None = None
) -> Tensor | None:
    """``(T_q, T_k)`` bool, True where query ``i`` (frame ``i + T_k - T_q``) may not see key ``j``;
    None when ``chunk_size <= 0`` (no chunking)."""
    if chunk_size <= 0:
        return None
    if num_keys < num_queries:
        raise ValueError(f"a chunk mask needs T_k >= T_q, got T_q={num_queries}, T_k={num_keys}")
    key_chunk = torch.arange(num_keys, device=device) // chunk_size
    query_chunk = (torch.arange(num_queries, device=device) + num_keys - num_queries) // chunk_size
    masked = key_chunk[None, :] > query_chunk[:, None]
    if left_chunks >= 0:
        masked |= key_chunk[None, :] < query_chunk[:, None] - left_chunks
    return masked


def key_bias_from_padding_mask(key_padding_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bool ``(N, T_k)`` (True = padding) -> additive ``(N, T_k)`` bias (0 or ``-inf``)."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
    bias = torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device)
    return bias.masked_fill(key_padding_mask, float("-inf"))


def rel_pos_scores_reference(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_bias: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
) -> Tensor:
    """Scores ``(H, N, T_q, T_k)`` in float32, ``-inf`` where masked (see the module docstring)."""
    num_heads, batch_size, num_queries, _ = q.shape
    num_keys = k.shape[2]
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if q_pos is not None:
        if pos_table is None:
            raise ValueError("q_pos needs pos_table")
        # Scores against every table row, then pick row j - i + T_q - 1 for each (i, j).
        pos_scores = torch.matmul(q_pos.float(), pos_table.float().transpose(-1, -2).unsqueeze(1))
        rows = torch.arange(num_keys, device=q.device)[None, :] - torch.arange(num_queries, device=q.device)[:, None]
        rows = (rows + num_queries - 1).expand(num_heads, batch_size, num_queries, num_keys)
        scores = scores + torch.gather(pos_scores, -1, rows)
    if key_bias is not None:
        scores = scores + key_bias.float()[None, :, None, :]
    masked = chunk_mask(num_queries, num_keys, chunk_size, left_chunks, q.device)
    if masked is not None:
        scores = scores.masked_fill(masked, float("-inf"))
    return scores


def rel_pos_attention_weights_reference(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_bias: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
) -> Tensor:
    """Attention weights ``(H, N, T_q, T_k)`` (softmax over keys) in ``q``'s dtype."""
    scores = rel_pos_scores_reference(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)
    # Rows with no visible key: softmax of all -inf is NaN (and so is its gradient); give them zeros.
    empty = torch.isneginf(scores).all(dim=-1, keepdim=True)
    weights = torch.softmax(scores.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    return weights.to(q.dtype)


def rel_pos_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_bias: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
) -> Tensor:
    """Attention output ``(H, N, T_q, D_v)``: the weights times ``v``."""
    weights = rel_pos_attention_weights_reference(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)
    return torch.matmul(weights.to(v.dtype), v)
