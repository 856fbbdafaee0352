"""The one dispatch point for relative-position attention: Triton kernels or the PyTorch reference.

Both functions take head-first tensors (Zipformer's layout) and compute, per head ``h`` and utterance ``n``::

    s[i, j] = scale * q[i] . k[j] + q_pos[i] . pos_table[h, j - i + T_q - 1]   (+ key mask, chunk mask)
    weights = softmax_j(s)

``rel_pos_attention`` returns ``weights @ v`` without materialising the weights when it runs on Triton;
``rel_pos_attention_weights`` returns the weights ``(H, N, T_q, T_k)``. Semantics (table indexing, masks,
rows that see no key -> zeros) are documented in :mod:`asr_kernels.reference`; the kernels and the memory
trade-off in :mod:`asr_kernels.rel_pos_attention`.

For modules that share one set of scores (Zipformer's NonlinAttention and two SelfAttention modules),
:class:`RelPosAttentionInputs` holds what the scores are made of; :func:`attention_weights` and
:func:`apply_attention` accept either it or a materialised weights tensor, so a layer can hand either
one to its modules.

Backend choice (``backend`` argument): ``"torch"`` = the reference; ``"triton"`` = the kernels (CUDA
tensors, or CPU under ``TRITON_INTERPRET=1``; an error if Triton is missing); ``"auto"`` = the value of
the environment variable ``ASR_ATTENTION_BACKEND`` if set, else Triton for CUDA tensors when it imports,
else the reference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType

import torch
from torch import Tensor

from asr_kernels.reference import (
    chunk_mask,
    key_bias_from_padding_mask,
    rel_pos_attention_reference,
    rel_pos_attention_weights_reference,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ENV_VAR",
    "RelPosAttentionInputs",
    "apply_attention",
    "attention_weights",
    "chunk_params_from_mask",
    "rel_pos_attention",
    "rel_pos_attention_weights",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "triton")
BACKEND_ENV_VAR = "ASR_ATTENTION_BACKEND"


def _triton_kernels() -> ModuleType | None:
    """The kernel module, or None where Triton is not installed or does not load."""
    try:
        from asr_kernels import rel_pos_attention as kernels
    except (ImportError, OSError, RuntimeError):
        return None
    return kernels


def resolve_backend(backend: str, device: torch.device) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device`` (see the module docstring)."""
    if backend == "auto":
        backend = os.environ.get(BACKEND_ENV_VAR, "auto")
    if backend not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if _triton_kernels() is None:
            raise RuntimeError("attention backend 'triton' requested but triton is not installed or failed to load")
        return "triton"
    return "triton" if device.type == "cuda" and _triton_kernels() is not None else "torch"


def _key_bias(key_padding_mask: Tensor | None) -> Tensor | None:
    if key_padding_mask is None or key_padding_mask.is_floating_point():
        return key_padding_mask
    return key_bias_from_padding_mask(key_padding_mask)


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """Attention output ``(H, N, T_q, D_v)``.

    Args:
        q, k: ``(H, N, T_q, D)``, ``(H, N, T_k, D)``; v: ``(H, N, T_k, D_v)``.
        q_pos, pos_table: ``(H, N, T_q, P)`` and ``(H, T_q + T_k - 1, P)``, or both None.
        key_padding_mask: ``(N, T_k)``, bool (True = padding) or an additive float bias; no gradient.
        chunk_size, left_chunks: chunked limited-context mask; ``chunk_size <= 0`` = none,
            ``left_chunks < 0`` = unlimited left context.
        scale: multiplies ``q . k``.
        backend: ``"auto"``, ``"torch"`` or ``"triton"``.
    """
    key_bias = _key_bias(key_padding_mask)
    if resolve_backend(backend, q.device) == "triton":
        return _triton_kernels().rel_pos_attention(
            q, k, v, q_pos, pos_table, key_bias, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale
        )
    return rel_pos_attention_reference(q, k, v, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)


def rel_pos_attention_weights(
    q: Tensor,
    k: Tensor,
    q_pos: Tensor | None = None,
    pos_table: Tensor | None = None,
    key_padding_mask: Tensor | None = None,
    chunk_size: int = -1,
    left_chunks: int = -1,
    scale: float = 1.0,
    backend: str = "auto",
) -> Tensor:
    """Attention weights ``(H, N, T_q, T_k)`` in ``q``'s dtype; arguments as :func:`rel_pos_attention`."""
    key_bias = _key_bias(key_padding_mask)
    if resolve_backend(backend, q.device) == "triton":
        return _triton_kernels().rel_pos_attention_weights(
            q, k, q_pos, pos_table, key_bias, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale
        )
    return rel_pos_attention_weights_reference(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)


@dataclass
class RelPosAttentionInputs:
    """The inputs of one set of attention scores (shapes and masks as in :func:`rel_pos_attention`),
    passed instead of the weights to modules that share them, so each can recompute what it needs."""

    q: Tensor
    k: Tensor
    q_pos: Tensor | None = None
    pos_table: Tensor | None = None
    key_padding_mask: Tensor | None = None
    chunk_size: int = -1
    left_chunks: int = -1
    scale: float = 1.0
    backend: str = "auto"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(H, N, T_q, T_k)``: the shape of the weights these inputs stand for."""
        return (*self.q.shape[:3], self.k.shape[2])

    def weights(self, heads: slice = slice(None)) -> Tensor:
        """Weights ``(H', N, T_q, T_k)`` of the selected heads."""
        q_pos = None if self.q_pos is None else self.q_pos[heads]
        pos_table = None if self.pos_table is None else self.pos_table[heads]
        return rel_pos_attention_weights(
            self.q[heads],
            self.k[heads],
            q_pos,
            pos_table,
            self.key_padding_mask,
            self.chunk_size,
            self.left_chunks,
            self.scale,
            self.backend,
        )

    def attend(self, values: Tensor) -> Tensor:
        """``values`` ``(H, N, T_k, D_v)`` -> ``(H, N, T_q, D_v)``."""
        return rel_pos_attention(
            self.q,
            self.k,
            values,
            self.q_pos,
            self.pos_table,
            self.key_padding_mask,
            self.chunk_size,
            self.left_chunks,
            self.scale,
            self.backend,
        )


def attention_weights(attention: Tensor | RelPosAttentionInputs, heads: slice = slice(None)) -> Tensor:
    """Weights ``(H', N, T_q, T_k)`` of the selected heads, from weights or from their inputs."""
    if isinstance(attention, RelPosAttentionInputs):
        return attention.weights(heads)
    return attention[heads]


def apply_attention(attention: Tensor | RelPosAttentionInputs, values: Tensor) -> Tensor:
    """``values`` ``(H, N, T_k, D_v)`` -> ``(H, N, T_q, D_v)``, from weights or from their inputs."""
    if isinstance(attention, RelPosAttentionInputs):
        return attention.attend(values)
    return torch.matmul(attention, values)


def chunk_params_from_mask(attn_mask: Tensor) -> tuple[int, int] | None:
    """``(chunk_size, left_chunks)`` whose chunk mask (see :func:`asr_kernels.reference.chunk_mask`) is
    exactly the bool ``(T, T)`` ``attn_mask`` (True = masked), or None if no such pair exists."""
    num_frames = attn_mask.shape[0]
    if attn_mask.dim() != 2 or attn_mask.shape[1] != num_frames or attn_mask.dtype != torch.bool:
        return None
    visible = ~attn_mask
    # Frame 0 sees exactly its own chunk; every frame sees the start of its oldest visible chunk first.
    chunk_size = int(visible[0].sum())
    if chunk_size == 0:
        return None
    first_visible = visible.to(torch.uint8).argmax(dim=1)
    query_chunk = torch.arange(num_frames, device=attn_mask.device) // chunk_size
    left_chunks = int((query_chunk - first_visible // chunk_size).max())
    if not torch.equal(chunk_mask(num_frames, num_frames, chunk_size, left_chunks, attn_mask.device), attn_mask):
        return None
    return chunk_size, left_chunks
