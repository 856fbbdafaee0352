"""Attention masks: padding, limited context (frames i-L .. i+R) and chunked (streaming) masks.

Convention: every mask here is boolean with **True = masked** (the key may not be attended), as
PyTorch's ``attn_mask``/``key_padding_mask``. Shapes: padding masks ``(N, T)``; structural masks
``(T, T)`` indexed ``[query, key]``; combined masks ``(N, T, T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "chunked_mask",
    "combine_with_padding",
    "limited_context_mask",
    "padding_mask",
]


def padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """``(N, T)`` mask, True at frames ``t >= lengths[n]``; ``T = max_len`` or ``max(lengths)``."""
    if lengths.ndim != 1:
        raise ValueError(f"padding_mask: lengths must be 1-D (N,), got shape {tuple(lengths.shape)}")
    if max_len is not None and torch.compiler.is_compiling():
        # Checking max_len against the lengths reads a value from the tensor, which under torch.compile
        # breaks the graph: a compiled caller's max_len is taken as it is.
        T = max_len
    else:
        longest = int(lengths.max()) if lengths.numel() else 0
        T = longest if max_len is None else max_len
        if T < longest:
            raise ValueError(f"padding_mask: max_len {T} is shorter than the longest length {longest}")
    return torch.arange(T, device=lengths.device) >= lengths.unsqueeze(-1)


def limited_context_mask(num_frames: int, left: int, right: int, device: torch.device | str = "cpu") -> Tensor:
    """``(T, T)`` mask letting query ``i`` see keys ``i - left .. i + right``; ``-1`` = unlimited on
    that side (``left=-1, right=0`` is the causal mask)."""
    if left < -1 or right < -1:
        raise ValueError(f"limited_context_mask: left/right must be >= -1, got {left}, {right}")
    pos = torch.arange(num_frames, device=device)
    offset = pos.unsqueeze(0) - pos.unsqueeze(1)  # key - query
    masked = torch.zeros(num_frames, num_frames, dtype=torch.bool, device=device)
    if left >= 0:
        masked |= offset < -left
    if right >= 0:
        masked |= offset > right
    return masked


def chunked_mask(num_frames: int, chunk_size: int, left_chunks: int = -1, device: torch.device | str = "cpu") -> Tensor:
    """``(T, T)`` mask for chunk-wise streaming: frames are cut into chunks of ``chunk_size``; a query
    sees every frame of its own chunk and of the ``left_chunks`` chunks before it (``-1`` = all of them),
    nothing later. ``chunk_size <= 0`` means one chunk (full attention)."""
    if chunk_size <= 0:
        return torch.zeros(num_frames, num_frames, dtype=torch.bool, device=device)
    if left_chunks < -1:
        raise ValueError(f"chunked_mask: left_chunks must be >= -1, got {left_chunks}")
    chunk = torch.arange(num_frames, device=device) // chunk_size
    query_chunk, key_chunk = chunk.unsqueeze(1), chunk.unsqueeze(0)
    masked = key_chunk > query_chunk
    if left_chunks >= 0:
        masked |= key_chunk < query_chunk - left_chunks
    return masked


def combine_with_padding(mask: Tensor | None, key_padding: Tensor | None) -> Tensor | None:
    """Combine a ``(T, T)`` structural mask with a ``(N, T)`` key padding mask into ``(N, T, T)``
    (padded keys are masked for every query). Either may be None."""
    if key_padding is None:
        return None if mask is None else mask.unsqueeze(0)
    combined = key_padding.unsqueeze(1)
    if mask is None:
        return combined.expand(-1, key_padding.size(1), -1)
    if mask.size(-1) != key_padding.size(1):
        raise ValueError(
            f"combine_with_padding: mask has {mask.size(-1)} key frames, padding mask {key_padding.size(1)}"
        )
    return combined | mask.unsqueeze(0)
