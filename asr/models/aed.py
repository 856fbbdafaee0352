"""Attention-decoder (AED) head: a pre-LayerNorm transformer decoder over the encoder output.

The decoder reads ``<sos/eos>`` followed by the labels and predicts the labels followed by ``<sos/eos>``;
one id serves as both (id 1, the tokenizers' ``<sos/eos>``: ``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2, the
layout of icefall's BPE models). Each layer is ``x + SelfAttn(LN(x))`` (causal), ``x + CrossAttn(LN(x),
memory)``, ``x + FF(LN(x))``; a final LayerNorm and a linear layer give the logits. Token embeddings are
scaled by ``sqrt(dim)`` and summed with sinusoidal positions. The loss is cross-entropy with label
smoothing ``ε``: each label's target distribution is ``(1 - ε)`` on the label plus ``ε / V`` on every id
(icefall's and PyTorch's ``label_smoothing``), summed over the non-padded positions.

Relaxed cross-attention (``relax_cross`` = γ, training only): each row of cross-attention weights becomes
``(1 - γ)·A + γ·m/Σm`` with ``m`` the valid encoder frames (:func:`asr.nn.attention.relax_attention_weights`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.nn.attention import masked_attention_weights, relative_sinusoidal_encoding

__all__ = ["AED_PRESETS", "AttentionDecoder", "DecoderOutput", "SOS_EOS_ID", "causal_mask"]

# The tokenizers' <sos/eos> id (asr.data.tokenizer: <blk> 0, <sos/eos> 1, <unk> 2).
SOS_EOS_ID = 1

# Decoder sizes: icefall's default (6 layers, dim 512, 8 heads, ff 2048) and a small one for the -xs
# encoders (four layers, so a policy reading the cross-attention of layer index 3 still finds one).
AED_PRESETS: dict[str, dict[str, int]] = {
    "default": {"aed_dim": 512, "aed_layers": 6, "aed_heads": 8, "aed_feedforward_dim": 2048},
    "xs": {"aed_dim": 192, "aed_layers": 4, "aed_heads": 4, "aed_feedforward_dim": 768},
}


def causal_mask(num_tokens: int, device: torch.device | str = "cpu") -> Tensor:
    """``(U, U)`` boolean, True = masked: position ``i`` sees positions ``0..i``."""
    return torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device).triu(1)


class DecoderOutput(NamedTuple):
    """``logits`` ``(N, U, V)``; ``cross_weights``: per layer ``(N, H, U, T)`` cross-attention weights (after
    relaxation in training) when requested, else None."""

    logits: Tensor
    cross_weights: list[Tensor] | None


class _MultiheadAttention(nn.Module):
    """Scaled dot-product attention returning its per-head weights; masked keys get weight 0."""

    def __init__(self, dim: int, num_heads: int, dropout: float, relax: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.relax = relax
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: Tensor, key: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """``query`` ``(N, Tq, D)``, ``key`` ``(N, Tk, D)`` (also the values), ``mask`` broadcastable to
        ``(N, Tq, Tk)``, True = masked -> output ``(N, Tq, D)``, weights ``(N, H, Tq, Tk)``."""
        N, Tq, _ = query.shape
        H, d = self.num_heads, self.head_dim
        q = self.q_proj(query).view(N, Tq, H, d).transpose(1, 2)
        k = self.k_proj(key).view(N, -1, H, d).transpose(1, 2)
        v = self.v_proj(key).view(N, -1, H, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(d)
        weights = masked_attention_weights(scores, mask, self.relax if self.training else 0.0)
        out = torch.matmul(self.dropout(weights), v).transpose(1, 2).reshape(N, Tq, H * d)
        return self.out_proj(out), weights


class _DecoderLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int, feedforward_dim: int, dropout: float, relax_cross: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = _MultiheadAttention(dim, num_heads, dropout)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = _MultiheadAttention(dim, num_heads, dropout, relax=relax_cross)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(dim, feedforward_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(feedforward_dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, self_mask: Tensor, memory: Tensor, memory_mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.norm_self(x)
        x = x + self.dropout(self.self_attn(h, h, self_mask)[0])
        attended, cross_weights = self.cross_attn(self.norm_cross(x), memory, memory_mask)
        x = x + self.dropout(attended)
        x = x + self.dropout(self.feed_forward(self.norm_ff(x)))
        return x, cross_weights


class AttentionDecoder(nn.Module):
    """Transformer decoder over encoder frames.

    Args:
        vocab_size: output ids, blank and ``<sos/eos>`` included.
        encoder_dim: width ``C`` of the encoder output (projected to ``dim``).
        dim / num_layers / num_heads / feedforward_dim / dropout: the transformer.
        sos_eos_id: the id that starts and ends every sequence.
        label_smoothing: ε of the loss.
        relax_cross: γ of relaxed cross-attention (training only; 0 = off).
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        dim: int = 512,
        num_layers: int = 6,
        num_heads: int = 8,
        feedforward_dim: int = 2048,
        dropout: float = 0.1,
        sos_eos_id: int = SOS_EOS_ID,
        label_smoothing: float = 0.1,
        relax_cross: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 <= sos_eos_id < vocab_size:
            raise ValueError(f"sos_eos_id {sos_eos_id} is outside [0, {vocab_size})")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 <= relax_cross < 1.0:
            raise ValueError(f"relax_cross must be in [0, 1), got {relax_cross}")
        if dim % 2:
            raise ValueError(f"aed dim must be even (sinusoidal positions), got {dim}")
        self.vocab_size = vocab_size
        self.dim = dim
        self.num_layers = num_layers
        self.sos_eos_id = sos_eos_id
        self.label_smoothing = label_smoothing
        self.embedding = nn.Embedding(vocab_size, dim)
        self.memory_proj = nn.Linear(encoder_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            [_DecoderLayer(dim, num_heads, feedforward_dim, dropout, relax_cross) for _ in range(num_layers)]
        )
        self.final_norm = nn.LayerNorm(dim)
        self.output = nn.Linear(dim, vocab_size)

    def forward(
        self,
        tokens: Tensor,
        token_lens: Tensor,
        memory: Tensor,
        memory_lens: Tensor,
        need_weights: bool = False,
    ) -> DecoderOutput:
        """Logits of the next id at every position (teacher forcing).

        Args:
            tokens: ``(N, U)`` decoder input ids (``<sos/eos>`` then labels), padded past ``token_lens``.
            token_lens: ``(N,)``.
            memory: ``(N, T, C)`` encoder output; memory_lens: ``(N,)`` valid frames.
            need_weights: also return every layer's cross-attention weights ``(N, H, U, T)``.
        """
        N, U = tokens.shape
        positions = relative_sinusoidal_encoding(torch.arange(U, device=tokens.device), self.dim)
        x = self.embedding(tokens) * math.sqrt(self.dim) + positions.to(self.embedding.weight.dtype)
        x = self.dropout(x)
        token_pad = torch.arange(U, device=tokens.device) >= token_lens.unsqueeze(1)  # (N, U)
        self_mask = causal_mask(U, tokens.device).unsqueeze(0) | token_pad.unsqueeze(1)  # (N, U, U)
        T = memory.size(1)
        memory_mask = (torch.arange(T, device=memory.device) >= memory_lens.unsqueeze(1)).unsqueeze(1)  # (N, 1, T)
        memory = self.memory_proj(memory)
        cross_weights = []
        for layer in self.layers:
            x, weights = layer(x, self_mask, memory, memory_mask)
            cross_weights.append(weights)
        logits = self.output(self.final_norm(x))
        return DecoderOutput(logits, cross_weights if need_weights else None)

    def add_sos_eos(self, targets: Tensor, target_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Zero-padded labels ``(N, S)`` -> decoder input ``(N, S + 1)`` (``<sos/eos>`` first), its lengths
        ``(N,)`` and the expected output ``(N, S + 1)`` (labels, ``<sos/eos>``, then -1 as padding)."""
        N, S = targets.shape
        positions = torch.arange(S + 1, device=targets.device)
        labels = positions[:S] < target_lens.unsqueeze(1)
        if bool((targets.eq(self.sos_eos_id) & labels).any()):
            raise ValueError(f"labels contain the <sos/eos> id {self.sos_eos_id}")
        sos = targets.new_full((N, 1), self.sos_eos_id)
        inputs = torch.cat([sos, targets], dim=1)
        expected = torch.cat([targets, targets.new_full((N, 1), -1)], dim=1)
        expected[torch.arange(N, device=targets.device), target_lens] = self.sos_eos_id
        expected = expected.masked_fill(positions > target_lens.unsqueeze(1), -1)
        return inputs, target_lens + 1, expected

    def loss(self, memory: Tensor, memory_lens: Tensor, targets: Tensor, target_lens: Tensor) -> Tensor:
        """Label-smoothed cross-entropy summed over the labels and ``<sos/eos>`` of the batch (0-dim).

        Args:
            memory: ``(N, T, C)`` encoder output; memory_lens: ``(N,)``.
            targets: ``(N, S)`` zero-padded labels; target_lens: ``(N,)``.
        """
        inputs, input_lens, expected = self.add_sos_eos(targets, target_lens)
        logits = self(inputs, input_lens, memory, memory_lens).logits
        if logits.dtype in (torch.float16, torch.bfloat16):  # autocast: the loss in float32
            logits = logits.float()
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(
                logits.flatten(0, 1),
                expected.flatten(),
                ignore_index=-1,
                label_smoothing=self.label_smoothing,
                reduction="sum",
            )

    def next_log_probs(
        self, prefixes: Tensor, memory: Tensor, memory_lens: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, list[Tensor] | None]:
        """Log-probabilities ``(M, V)`` of the next id after each of ``M`` equal-length prefixes ``(M, U)``
        (each starting with ``<sos/eos>``), against memory ``(M, T, C)`` with lengths ``(M,)``; with
        ``need_weights`` also each layer's cross-attention weights ``(M, H, U, T)``."""
        lens = torch.full((prefixes.size(0),), prefixes.size(1), dtype=torch.int64, device=prefixes.device)
        logits, weights = self(prefixes, lens, memory, memory_lens, need_weights=need_weights)
        last = logits[:, -1]
        if last.dtype in (torch.float16, torch.bfloat16):
            last = last.float()
        return last.log_softmax(dim=-1), weights
