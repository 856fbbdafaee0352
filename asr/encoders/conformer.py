"""Conformer encoder (Gulati et al., 2020): Conv2d subsampling x4 then Conformer layers, each
``x + ½FF(x)``, ``+ MHSA`` (relative positions), ``+ Conv``, ``+ ½FF``, LayerNorm (macaron feedforwards).

Attention runs on the PyTorch code or, with ``attention_backend="triton"`` (or ``"auto"`` on CUDA), on
the fused kernels of :mod:`asr.nn.fused_attention` for full and chunked attention in eval (and in
training when dropout is 0); streaming (cached keys) always uses the PyTorch code. See
:mod:`asr.nn.attention` for exactly which calls take the kernel path.

The causal variant uses chunked attention masks (chunk ``C`` frames, a limited number of left chunks,
random per batch in training) and causal depthwise convolutions, so ``streaming_forward`` over chunks
gives the same output as the masked full forward.

Presets are sized so their parameter counts (subsampling + layers) match the Zipformer presets of the
same name within 3% (``zipformer-small`` 21,989,779; ``-medium`` 63,994,103; ``-large`` 146,625,594),
so the two families compare at equal size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from asr.encoders.base import StreamingEncoder
from asr.nn.attention import RelPositionMultiheadAttention, set_attention_backend
from asr.nn.conv import ConformerConvModule, Conv2dSubsampling4
from asr.nn.masks import chunked_mask, padding_mask

__all__ = ["PRESETS", "ConformerConfig", "ConformerEncoder", "ConformerLayer", "FeedForwardModule", "build_conformer"]


@dataclass(frozen=True)
class ConformerConfig:
    """Architecture of a Conformer encoder."""

    encoder_dim: int
    num_layers: int
    num_heads: int
    feedforward_dim: int
    kernel_size: int = 31
    feature_dim: int = 80
    dropout: float = 0.1
    relaxed_attention_gamma: float = 0.0


PRESETS: dict[str, ConformerConfig] = {
    # ~5.1M parameters: zipformer-xs's size, for the CPU recipe's encoder comparison.
    "conformer-xs": ConformerConfig(encoder_dim=144, num_layers=9, num_heads=4, feedforward_dim=576),
    "conformer-small": ConformerConfig(encoder_dim=256, num_layers=13, num_heads=4, feedforward_dim=1024),
    "conformer-medium": ConformerConfig(encoder_dim=384, num_layers=17, num_heads=6, feedforward_dim=1536),
    "conformer-large": ConformerConfig(encoder_dim=512, num_layers=22, num_heads=8, feedforward_dim=2048),
}


class FeedForwardModule(nn.Module):
    """LayerNorm -> Linear(D, F) -> Swish -> dropout -> Linear(F, D) -> dropout: ``(N, T, D) -> (N, T, D)``."""

    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, hidden_dim)
        self.linear2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.linear2(self.dropout(nn.functional.silu(self.linear1(self.norm(x))))))


class ConformerLayer(nn.Module):
    """One Conformer block. With ``out_dim != dim`` or ``conv_stride > 1`` (Efficient Conformer) the
    conv module widens/downsamples and its residual is projected (1x1 conv with stride) or decimated;
    ``attention_stride > 1`` decimates the queries of the attention and its residual.

    Args:
        dim: input width D.
        num_heads: attention heads.
        feedforward_dim: hidden width of the first feedforward; the second, at ``out_dim``, keeps the same
            ratio (``feedforward_dim * out_dim // dim``).
        kernel_size: depthwise conv kernel.
        out_dim: output width (default D).
        conv_stride / attention_stride / attention_group_size: Efficient Conformer options.
        causal: causal depthwise conv.
        dropout: dropout of every sub-module.
        relaxed_attention_gamma: relaxed attention in training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        feedforward_dim: int,
        kernel_size: int = 31,
        out_dim: int | None = None,
        conv_stride: int = 1,
        attention_stride: int = 1,
        attention_group_size: int = 1,
        causal: bool = False,
        dropout: float = 0.1,
        relaxed_attention_gamma: float = 0.0,
    ) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        self.conv_stride = conv_stride
        self.attention_stride = attention_stride
        self.stride = conv_stride * attention_stride
        self.feed_forward1 = FeedForwardModule(dim, feedforward_dim, dropout)
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = RelPositionMultiheadAttention(
            dim,
            num_heads,
            dropout=dropout,
            group_size=attention_group_size,
            query_stride=attention_stride,
            relaxed_attention_gamma=relaxed_attention_gamma,
        )
        self.attention_dropout = nn.Dropout(dropout)
        self.conv = ConformerConvModule(dim, out_dim, kernel_size, stride=conv_stride, causal=causal, dropout=dropout)
        if out_dim != dim:
            self.conv_residual: nn.Module | None = nn.Conv1d(dim, out_dim, kernel_size=1, stride=conv_stride)
        else:
            self.conv_residual = None
        self.feed_forward2 = FeedForwardModule(out_dim, feedforward_dim * out_dim // dim, dropout)
        self.norm = nn.LayerNorm(out_dim)

    def _conv_block(self, x: Tensor, frame_padding: Tensor | None) -> Tensor:
        if self.conv_residual is not None:
            residual = self.conv_residual(x.transpose(1, 2)).transpose(1, 2)
        else:
            residual = x[:, :: self.conv_stride]
        return residual + self.conv(x, frame_padding)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, frame_padding: Tensor | None = None) -> Tensor:
        """
        Args:
            x: ``(N, T, D)``.
            attn_mask: ``(T, T)`` or ``(N, T, T)``, True = masked (padding is added from ``frame_padding``).
            frame_padding: ``(N, T)``, True at padded frames.
        Returns:
            ``(N, T'', out_dim)`` with ``T'' = ceil(ceil(T / attention_stride) / conv_stride)``.
        """
        x = x + 0.5 * self.feed_forward1(x)
        attended = self.attention(self.attention_norm(x), attn_mask, frame_padding).output
        x = x[:, :: self.attention_stride] + self.attention_dropout(attended)
        if frame_padding is not None:
            frame_padding = frame_padding[:, :: self.attention_stride]
        x = self._conv_block(x, frame_padding)
        x = x + 0.5 * self.feed_forward2(x)
        return self.norm(x)

    def streaming_forward(
        self, x: Tensor, key_padding: Tensor, cache: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
        """One chunk of a causal layer.

        Args:
            x: ``(N, C, D)``.
            key_padding: ``(N, L + C)``, True at empty cache slots and padded chunk frames.
            cache: keys ``(N, L, D)``, values ``(N, L, D)``, conv cache ``(N, D, K - 1)``.
        Returns:
            ``(N, C, D)`` and the new cache (the last ``L`` keys/values).
        """
        keys, values, conv_cache = cache
        left = keys.size(1)
        x = x + 0.5 * self.feed_forward1(x)
        att = self.attention(self.attention_norm(x), None, key_padding, cache=(keys, values))
        x = x + self.attention_dropout(att.output)
        conv_out, conv_cache = self.conv.streaming_forward(x, conv_cache)
        x = x + conv_out
        x = x + 0.5 * self.feed_forward2(x)
        total = att.keys.size(1)
        return self.norm(x), (att.keys[:, total - left :], att.values[:, total - left :], conv_cache)


class ConformerEncoder(StreamingEncoder):
    """Conv2dSubsampling4 + Conformer layers: fbank ``(N, T, F)`` -> ``(N, ((T - 1) // 2 - 1) // 2, D)``.

    Chunk sizes and left contexts count 25 Hz output frames (40 ms); one call of ``streaming_forward``
    yields ``chunk_size`` frames.

    Args:
        config: architecture (see ``PRESETS``).
        causal: causal convolutions and chunked attention (streaming).
        chunk_size: chunk in 25 Hz frames for eval and streaming (causal only).
        left_context_frames: left context in frames for eval and streaming, a multiple of ``chunk_size``.
        train_chunk_sizes / train_left_context_frames: drawn per batch in causal training (-1 = full).
        attention_backend: "torch" (PyTorch attention), "triton" (fused kernels where they apply) or
            "auto" (Triton on CUDA when available); see :mod:`asr.nn.fused_attention`.
    """

    chunk_frame_ms = 40
    context_attributes = ("chunk_size", "left_context_frames")

    def __init__(
        self,
        config: ConformerConfig,
        causal: bool = False,
        chunk_size: int = 8,
        left_context_frames: int = 64,
        train_chunk_sizes: tuple[int, ...] = (8, 16, 32, -1),
        train_left_context_frames: tuple[int, ...] = (32, 64, 128, -1),
        attention_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.chunk_size = chunk_size if causal else -1
        self.left_context_frames = left_context_frames if causal else -1
        self.train_chunk_sizes = tuple(train_chunk_sizes)
        self.train_left_context_frames = tuple(train_left_context_frames)
        self.output_dim = config.encoder_dim
        self.encoder_embed = Conv2dSubsampling4(config.feature_dim, config.encoder_dim)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            ConformerLayer(
                config.encoder_dim,
                config.num_heads,
                config.feedforward_dim,
                config.kernel_size,
                causal=causal,
                dropout=config.dropout,
                relaxed_attention_gamma=config.relaxed_attention_gamma,
            )
            for _ in range(config.num_layers)
        )
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        """Compute the attention of every layer with ``backend`` ("torch", "triton" or "auto")."""
        set_attention_backend(self, backend)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Encoder frames for ``x_lens`` feature frames."""
        return Conv2dSubsampling4.output_lengths(x_lens)

    def _chunking(self) -> tuple[int, int]:
        """(chunk_size, left_chunks) for this forward; (-1, -1) = full attention."""
        if not self.causal:
            return -1, -1
        if self.training:
            chunk, left = random.choice(self.train_chunk_sizes), random.choice(self.train_left_context_frames)
        else:
            chunk, left = self.chunk_size, self.left_context_frames
        if chunk <= 0:
            return -1, -1
        return chunk, (max(left // chunk, 1) if left >= 0 else -1)

    def streaming_context(self) -> tuple[int, int]:
        """``(chunk_size, left_context_frames)`` in 25 Hz frames; -1 = no chunk mask / unlimited."""
        chunk_size = self.chunk_size if self.chunk_size > 0 else -1
        return chunk_size, self.left_context_frames if self.left_context_frames >= 0 else -1

    def _store_streaming(self, chunk_size: int, left_context_frames: int) -> None:
        self.chunk_size, self.left_context_frames = chunk_size, left_context_frames

    def _store_full_context(self) -> None:
        self.chunk_size, self.left_context_frames = -1, -1

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)``, ``x_lens`` ``(N,)``; returns ``(N, T', D)`` and ``(N,)``."""
        x, x_lens = self.encoder_embed(x, x_lens)
        x = self.embed_dropout(x)
        frames = padding_mask(x_lens, x.size(1))
        chunk, left_chunks = self._chunking()
        mask = chunked_mask(x.size(1), chunk, left_chunks, x.device) if chunk > 0 else None
        for layer in self.layers:
            x = layer(x, mask, frames)
        return x, x_lens

    # -- streaming -----------------------------------------------------------------------------------
    @property
    def streaming_feature_frames(self) -> int:
        """Feature frames per ``streaming_forward`` call: ``4 * chunk_size + 3``."""
        return 4 * self.chunk_size + Conv2dSubsampling4.lookahead

    @property
    def streaming_feature_shift(self) -> int:
        """Feature frames to advance between calls (windows overlap by 3 frames)."""
        return 4 * self.chunk_size

    def _check_streaming(self) -> None:
        if not self.causal:
            raise RuntimeError("streaming needs a Conformer built with causal=True")
        if self.chunk_size <= 0 or self.left_context_frames <= 0 or self.left_context_frames % self.chunk_size:
            raise ValueError(
                f"streaming needs chunk_size > 0 and left_context_frames a positive multiple of it, "
                f"got {self.chunk_size} and {self.left_context_frames}"
            )

    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> list[Tensor]:
        """Zero states: per layer (keys ``(N, L, D)``, values ``(N, L, D)``, conv ``(N, D, K - 1)``), then
        the processed frame count ``(N,)``."""
        self._check_streaming()
        d, left = self.config.encoder_dim, self.left_context_frames
        states: list[Tensor] = []
        for layer in self.layers:
            states += [
                torch.zeros(batch_size, left, d, device=device),
                torch.zeros(batch_size, left, d, device=device),
                layer.conv.init_cache(batch_size, device),
            ]
        states.append(torch.zeros(batch_size, dtype=torch.int64, device=device))
        return states

    def state_batch_dims(self) -> list[int]:
        """The batch axis of each entry of ``init_states()``."""
        return [0] * (3 * len(self.layers) + 1)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode chunk ``k``: ``x`` ``(N, 4C + 3, F)`` holds feature frames ``[4Ck, 4C(k + 1) + 3)`` (pad
        past the end), ``x_lens`` their valid counts. Returns ``(N, C, D)``, valid lengths, new states."""
        self._check_streaming()
        if x.size(1) != self.streaming_feature_frames:
            raise ValueError(
                f"streaming chunk has {x.size(1)} feature frames, expected {self.streaming_feature_frames}"
            )
        if len(states) != 3 * len(self.layers) + 1:
            raise ValueError(f"got {len(states)} state tensors, expected {3 * len(self.layers) + 1}")
        x, lens = self.encoder_embed(x, x_lens)
        processed = states[-1]
        left = self.left_context_frames
        # The cache is right-aligned: its last `processed` slots are filled.
        empty = (processed.unsqueeze(-1) <= torch.arange(left, device=x.device)).flip(-1)
        key_padding = torch.cat([empty, padding_mask(lens, x.size(1))], dim=1)
        new_states: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            x, cache = layer.streaming_forward(x, key_padding, tuple(states[3 * i : 3 * i + 3]))
            new_states += list(cache)
        new_states.append(processed + lens)
        return x, lens, new_states


def conformer_config(name: str, **overrides) -> ConformerConfig:
    """The preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown Conformer preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_conformer(name: str, causal: bool = False, **overrides) -> ConformerEncoder:
    """A ``ConformerEncoder`` from a preset; overrides go to the config or to the encoder
    (``chunk_size``, ``left_context_frames``, ``train_chunk_sizes``, ``train_left_context_frames``,
    ``attention_backend``)."""
    encoder_args = {
        k: overrides.pop(k)
        for k in (
            "chunk_size",
            "left_context_frames",
            "train_chunk_sizes",
            "train_left_context_frames",
            "attention_backend",
        )
        if k in overrides
    }
    return ConformerEncoder(conformer_config(name, **overrides), causal=causal, **encoder_args)
