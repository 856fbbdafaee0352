"""Transformer-Transducer audio encoder (Zhang et al., 2020): Conv2d subsampling x4, then pre-LayerNorm
transformer layers with relative-position self-attention and a final LayerNorm.

Attention context is limited by masks from :mod:`asr.nn.masks`:

- limited context: frame ``i`` sees frames ``i - L .. i + R`` in every layer (``-1`` = unlimited);
  full attention is ``L = R = -1``, the paper's streaming setting ``L = 10, R = 2``;
- chunked (``chunk_size > 0``): chunks of ``C`` frames see themselves and ``L // C`` chunks before.

With ``causal=True`` (streaming) training draws the context per batch from ``train_left_contexts`` x
``train_right_contexts`` (or ``train_chunk_sizes``), and ``streaming_forward`` encodes ``C`` frames per
call with per-layer key/value caches. In limited-context mode the right context compounds over layers:
each call also feeds ``num_layers * R`` look-ahead frames, whose layer outputs are recomputed by the next
call (only frames with their full right context are committed), so the stream equals the masked full
forward exactly.

With ``attention_backend="triton"`` (or ``"auto"`` on CUDA) full and chunked attention run on the fused
kernels of :mod:`asr.nn.fused_attention` in eval (and in training when dropout is 0); limited-context
masks are not chunk masks and, like streaming (cached keys), use the PyTorch code. See
:mod:`asr.nn.attention`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from asr.encoders.base import StreamingEncoder
from asr.nn.attention import RelPositionMultiheadAttention, set_attention_backend
from asr.nn.conv import Conv2dSubsampling4
from asr.nn.masks import chunked_mask, limited_context_mask, padding_mask

__all__ = ["PRESETS", "TransformerConfig", "TransformerEncoder", "TransformerEncoderLayer", "build_transformer"]


@dataclass(frozen=True)
class TransformerConfig:
    """Architecture of a transformer audio encoder."""

    encoder_dim: int
    num_layers: int
    num_heads: int
    feedforward_dim: int
    feature_dim: int = 80
    dropout: float = 0.1
    relaxed_attention_gamma: float = 0.0


PRESETS: dict[str, TransformerConfig] = {
    # The paper's audio encoder: 18 layers, width 512, 8 heads, feedforward 2048.
    "transformer-transducer-large": TransformerConfig(
        encoder_dim=512, num_layers=18, num_heads=8, feedforward_dim=2048
    ),
    # A CPU-sized variant for the synthetic recipes and tests.
    "transformer-transducer-small": TransformerConfig(encoder_dim=256, num_layers=6, num_heads=4, feedforward_dim=1024),
}


class TransformerEncoderLayer(nn.Module):
    """Pre-LN layer: ``x + MHSA(LN(x))`` then ``x + FF(LN(x))`` (ReLU feedforward)."""

    def __init__(
        self, dim: int, num_heads: int, feedforward_dim: int, dropout: float = 0.1, relaxed_attention_gamma: float = 0.0
    ) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = RelPositionMultiheadAttention(
            dim, num_heads, dropout=dropout, relaxed_attention_gamma=relaxed_attention_gamma
        )
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, feedforward_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(feedforward_dim, dim),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        attn_mask: Tensor | None,
        key_padding: Tensor | None,
        cache: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` ``(N, T, D)``; ``attn_mask`` ``(T, Lc + T)``; ``key_padding`` ``(N, Lc + T)``; optional cached
        keys/values ``(N, Lc, D)``. Returns ``(N, T, D)`` and the keys/values of cache + ``x``."""
        att = self.attention(self.attention_norm(x), attn_mask, key_padding, cache=cache)
        x = x + self.dropout(att.output)
        x = x + self.dropout(self.feed_forward(x))
        return x, att.keys, att.values


class TransformerEncoder(StreamingEncoder):
    """Fbank ``(N, T, F)`` -> ``(N, ((T - 1) // 2 - 1) // 2, D)``.

    Contexts count 25 Hz output frames (40 ms). In the contract's terms (:meth:`set_streaming`,
    :meth:`streaming_context`) ``left_context_frames`` is ``left_context``, and a chunk size switches the
    encoder to its chunked-mask mode (``chunk_size`` and ``stream_chunk_size`` both the chunk); the
    limited-context mode (``chunk_size = 0``, right context ``R``) is set by its own attributes.

    Args:
        config: architecture (see ``PRESETS``).
        causal: streaming model (limited context by default ``L = 10, R = 2``, random in training).
        left_context / right_context: limited context in 25 Hz frames for eval and streaming (-1 = all);
            default full attention, or ``10 / 2`` when causal.
        chunk_size: > 0 switches to chunked masks (chunks of this many frames, ``left_context // chunk_size``
            left chunks).
        stream_chunk_size: frames per ``streaming_forward`` call in limited-context mode.
        train_left_contexts / train_right_contexts / train_chunk_sizes: drawn per batch in causal training.
        attention_backend: "torch" (PyTorch attention), "triton" (fused kernels where they apply) or
            "auto" (Triton on CUDA when available); see :mod:`asr.nn.fused_attention`.
    """

    chunk_frame_ms = 40
    context_attributes = ("chunk_size", "stream_chunk_size", "left_context", "right_context")

    def __init__(
        self,
        config: TransformerConfig,
        causal: bool = False,
        left_context: int | None = None,
        right_context: int | None = None,
        chunk_size: int = 0,
        stream_chunk_size: int = 8,
        train_left_contexts: tuple[int, ...] = (10, 20, 40),
        train_right_contexts: tuple[int, ...] = (0, 1, 2),
        train_chunk_sizes: tuple[int, ...] = (8, 16, 32),
        attention_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.left_context = (10 if causal else -1) if left_context is None else left_context
        self.right_context = (2 if causal else -1) if right_context is None else right_context
        self.chunk_size = chunk_size
        self.stream_chunk_size = chunk_size if chunk_size > 0 else stream_chunk_size
        self.train_left_contexts = tuple(train_left_contexts)
        self.train_right_contexts = tuple(train_right_contexts)
        self.train_chunk_sizes = tuple(train_chunk_sizes)
        self.output_dim = config.encoder_dim
        self.encoder_embed = Conv2dSubsampling4(config.feature_dim, config.encoder_dim)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(
                config.encoder_dim,
                config.num_heads,
                config.feedforward_dim,
                config.dropout,
                config.relaxed_attention_gamma,
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(config.encoder_dim)
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        """Compute the attention of every layer with ``backend`` ("torch", "triton" or "auto")."""
        set_attention_backend(self, backend)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Encoder frames for ``x_lens`` feature frames."""
        return Conv2dSubsampling4.output_lengths(x_lens)

    def attention_mask(self, num_frames: int, device: torch.device | str = "cpu") -> Tensor | None:
        """The ``(T, T)`` structural mask of this forward (random per batch in causal training)."""
        left, right, chunk = self.left_context, self.right_context, self.chunk_size
        if self.causal and self.training:
            left = random.choice(self.train_left_contexts)
            if chunk > 0:
                chunk = random.choice(self.train_chunk_sizes)
            else:
                right = random.choice(self.train_right_contexts)
        if chunk > 0:
            return chunked_mask(num_frames, chunk, left // chunk if left >= 0 else -1, device)
        if left < 0 and right < 0:
            return None
        return limited_context_mask(num_frames, left, right, device)

    def streaming_context(self) -> tuple[int, int]:
        """``(chunk_size, left_context)`` in 25 Hz frames; chunk -1 in the limited-context mode (no chunk
        mask; its right context is ``right_context``), left -1 = unlimited."""
        chunk_size = self.chunk_size if self.chunk_size > 0 else -1
        return chunk_size, self.left_context if self.left_context >= 0 else -1

    def _store_streaming(self, chunk_size: int, left_context_frames: int) -> None:
        # Chunked-mask mode: the right context is unused there (a chunk sees its own future frames).
        self.chunk_size = self.stream_chunk_size = chunk_size
        self.left_context = left_context_frames

    def _store_full_context(self) -> None:
        self.chunk_size, self.left_context, self.right_context = 0, -1, -1

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)``, ``x_lens`` ``(N,)``; returns ``(N, T', D)`` and ``(N,)``."""
        x, lens = self.encoder_embed(x, x_lens)
        x = self.embed_dropout(x)
        mask = self.attention_mask(x.size(1), x.device)
        frames = padding_mask(lens, x.size(1))
        for layer in self.layers:
            x, _, _ = layer(x, mask, frames)
        return self.final_norm(x), lens

    # -- streaming -----------------------------------------------------------------------------------
    @property
    def lookahead_frames(self) -> int:
        """Encoder frames each call needs beyond its chunk: ``num_layers * R`` (0 for chunked masks)."""
        return 0 if self.chunk_size > 0 else len(self.layers) * self.right_context

    @property
    def streaming_feature_frames(self) -> int:
        """Feature frames per call: ``4 * (C + lookahead_frames) + 3``."""
        return 4 * (self.stream_chunk_size + self.lookahead_frames) + Conv2dSubsampling4.lookahead

    @property
    def streaming_feature_shift(self) -> int:
        """Feature frames to advance between calls: ``4 * C``."""
        return 4 * self.stream_chunk_size

    def _check_streaming(self) -> None:
        if not self.causal:
            raise RuntimeError("streaming needs a transformer encoder built with causal=True")
        if self.left_context <= 0:
            raise ValueError(f"streaming needs a finite left context, got {self.left_context}")
        if self.chunk_size > 0:
            if self.left_context % self.chunk_size:
                raise ValueError(f"left_context {self.left_context} must be a multiple of chunk_size {self.chunk_size}")
        elif self.right_context < 0:
            raise ValueError("streaming needs a finite right context")

    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> list[Tensor]:
        """Zero states: per layer keys and values ``(N, L, D)``, then the processed frame count ``(N,)``."""
        self._check_streaming()
        shape = (batch_size, self.left_context, self.config.encoder_dim)
        states = [torch.zeros(shape, device=device) for _ in range(2 * len(self.layers))]
        return states + [torch.zeros(batch_size, dtype=torch.int64, device=device)]

    def state_batch_dims(self) -> list[int]:
        """The batch axis of each entry of ``init_states()``."""
        return [0] * (2 * len(self.layers) + 1)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode chunk ``k``: ``x`` ``(N, streaming_feature_frames, F)`` holds feature frames from ``4Ck``
        (pad past the end), ``x_lens`` their valid counts. Returns ``(N, C, D)`` (frames ``Ck .. Ck + C - 1``),
        valid lengths and the new states."""
        self._check_streaming()
        if x.size(1) != self.streaming_feature_frames:
            raise ValueError(
                f"streaming chunk has {x.size(1)} feature frames, expected {self.streaming_feature_frames}"
            )
        if len(states) != 2 * len(self.layers) + 1:
            raise ValueError(f"got {len(states)} state tensors, expected {2 * len(self.layers) + 1}")
        chunk, left = self.stream_chunk_size, self.left_context
        right = 0 if self.chunk_size > 0 else self.right_context
        x, lens = self.encoder_embed(x, x_lens)
        processed = states[-1]
        empty = (processed.unsqueeze(-1) <= torch.arange(left, device=x.device)).flip(-1)
        new_states: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            window = x.size(1)
            key_padding = torch.cat([empty, padding_mask(lens.clamp(max=window), window)], dim=1)
            mask = None
            if self.chunk_size <= 0:
                mask = limited_context_mask(left + window, left, right, x.device)[left:]
            x, keys, values = layer(x, mask, key_padding, cache=(states[2 * i], states[2 * i + 1]))
            # Frames past chunk + remaining look-ahead lack right context: drop them (recomputed next call).
            x = x[:, : window - right]
            new_states += [keys[:, chunk : chunk + left], values[:, chunk : chunk + left]]
        new_states.append(processed + lens.clamp(max=chunk))
        return self.final_norm(x[:, :chunk]), lens.clamp(max=chunk), new_states


def transformer_config(name: str, **overrides) -> TransformerConfig:
    """The preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown transformer preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


_ENCODER_ARGS = (
    "left_context",
    "right_context",
    "chunk_size",
    "stream_chunk_size",
    "train_left_contexts",
    "train_right_contexts",
    "train_chunk_sizes",
    "attention_backend",
)


def build_transformer(name: str, causal: bool = False, **overrides) -> TransformerEncoder:
    """A ``TransformerEncoder`` from a preset; overrides go to the config or to the encoder
    (``left_context``, ``right_context``, ``chunk_size``, ``stream_chunk_size``, ``train_*``,
    ``attention_backend``)."""
    encoder_args = {k: overrides.pop(k) for k in _ENCODER_ARGS if k in overrides}
    return TransformerEncoder(transformer_config(name, **overrides), causal=causal, **encoder_args)
