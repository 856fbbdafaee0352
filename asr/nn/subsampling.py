"""Zipformer's convolutional front end: 100 Hz fbank frames to 50 Hz embeddings.

``Conv2dSubsampling`` maps ``(N, T, F)`` features to ``(N, (T - 7) // 2, C)``: three 3x3 convolutions
(1 -> 8 -> 32 -> 128 channels; time stride 2 once, frequency stride 2 twice), one ConvNeXt block (optional:
``convnext=False`` drops it, for small CPU models where it costs more than the encoder), a linear
projection of the flattened ``128 x F'`` map, and BiasNorm. Submodule and parameter names follow
icefall's ``zipformer/subsampling.py`` so its ``encoder_embed.*`` checkpoint entries load unchanged.

One deliberate difference: conv-stack frames past each utterance's valid length are zeroed before the
ConvNeXt block, whose 7-frame time kernel would otherwise let padding leak into the last three valid
frames. Unpadded inputs are unaffected (nothing is past the valid length), so outputs equal icefall's
there; on padded batches every utterance gets exactly the output it would get alone.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from asr.nn.scaling import (
    Balancer,
    BiasNorm,
    Dropout3,
    FloatLike,
    ScaledConv2d,
    ScaleGrad,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
)


class ConvNeXt(nn.Module):
    """One ConvNeXt block on ``(N, C, T, F)`` maps: depthwise 7x7, pointwise up (x3), SwooshL, pointwise
    down, residual. In training the whole block is skipped per utterance with ``layerdrop_rate``."""

    def __init__(
        self,
        channels: int,
        hidden_ratio: int = 3,
        kernel_size: tuple[int, int] = (7, 7),
        layerdrop_rate: FloatLike | None = None,
    ) -> None:
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden_channels = channels * hidden_ratio
        self.layerdrop_rate = ScheduledFloat((0.0, 0.2), (20000.0, 0.015)) if layerdrop_rate is None else layerdrop_rate
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size=kernel_size, groups=channels, padding=self.padding
        )
        self.pointwise_conv1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.hidden_balancer = Balancer(
            hidden_channels, channel_dim=1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden_channels, channels, kernel_size=1, initial_scale=0.01)
        self.out_balancer = Balancer(
            channels, channel_dim=1, min_positive=0.4, max_positive=0.6, min_abs=1.0, max_abs=6.0
        )
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def _residual(self, x: Tensor) -> Tensor:
        x = self.depthwise_conv(x)
        x = self.pointwise_conv1(x)
        x = self.hidden_balancer(x)
        x = self.activation(x)
        return self.pointwise_conv2(x)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, T, F)``; returns the same shape."""
        residual = self._residual(x)
        rate = float(self.layerdrop_rate) if self.training else 0.0
        if rate != 0.0:
            keep = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device) > rate
            x = torch.addcmul(x, residual, keep.to(x.dtype))  # x + residual * keep in one pass
        else:
            x = x + residual
        x = self.out_balancer(x)
        # Whiten wants channels last.
        return self.out_whiten(x.transpose(1, 3)).transpose(1, 3)

    def streaming_forward(self, x: Tensor, cached_left_pad: Tensor) -> tuple[Tensor, Tensor]:
        """Chunk-wise forward.

        Args:
            x: ``(N, C, T + pad, F)``: the chunk followed by ``pad = self.padding[0]`` look-ahead frames.
            cached_left_pad: ``(N, C, pad, F)``, the ``pad`` frames before the chunk (zeros at the start).
        Returns:
            ``(N, C, T, F)`` and the new cache (the last ``pad`` frames of the chunk).
        """
        pad = self.padding[0]
        if cached_left_pad.size(2) != pad:
            raise ValueError(f"ConvNeXt cache has {cached_left_pad.size(2)} frames, expected {pad}")
        num_frames = x.size(2) - pad
        bypass = x[:, :, :num_frames]
        x = torch.cat([cached_left_pad, x], dim=2)
        new_cache = x[:, :, num_frames : num_frames + pad]
        conv = self.depthwise_conv
        x = nn.functional.conv2d(x, conv.weight, conv.bias, padding=(0, self.padding[1]), groups=conv.groups)
        x = self.pointwise_conv1(x)
        x = self.hidden_balancer(x)
        x = self.activation(x)
        x = self.pointwise_conv2(x)
        return bypass + x, new_cache


class Conv2dSubsampling(nn.Module):
    """``(N, T, in_channels)`` -> ``(N, (T - 7) // 2, out_channels)``; needs ``T >= 9`` and ``in_channels >= 7``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        layer1_channels: int = 8,
        layer2_channels: int = 32,
        layer3_channels: int = 128,
        dropout: FloatLike = 0.1,
        convnext: bool = True,
    ) -> None:
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling needs at least 7 input channels, got {in_channels}")
        # Indices inside this Sequential are part of the checkpoint names (conv.0, conv.4, conv.7).
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            # Keeps the first conv's gradients inside fp16 range under mixed precision.
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7)) if convnext else None
        # 50 Hz frames the ConvNeXt looks ahead (its time kernel's half width).
        self.convnext_lookahead = self.convnext.padding[0] if convnext else 0
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(
            num_groups=1,
            whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25),
            grad_scale=0.02,
        )
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Valid output frames for ``x_lens`` input frames: ``(x_lens - 7) // 2`` (0 for very short input)."""
        return ((x_lens - 7) // 2).clamp(min=0)

    def _flatten_and_project(self, x: Tensor) -> Tensor:
        n, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(n, t, c * f))

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: ``(N, T, F)``, ``x_lens``: ``(N,)``; returns ``(N, (T - 7) // 2, C)`` and output lengths."""
        if x.size(1) < 9:
            raise ValueError(f"Conv2dSubsampling needs at least 9 input frames, got {x.size(1)}")
        out_lens = self.output_lengths(x_lens)
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        past_end = torch.arange(x.size(2), device=x.device) >= out_lens.unsqueeze(-1)
        x = x.masked_fill_(past_end[:, None, :, None], 0.0)  # in place: the activation's fresh output
        if self.convnext is not None:
            x = self.convnext(x)
        x = self._flatten_and_project(x)
        x = self.out_whiten(x)
        x = self.out_norm(x)
        x = self.dropout(x)
        return x, out_lens

    @property
    def streaming_lookahead(self) -> int:
        """Feature frames a streaming chunk needs beyond its ``2 * chunk``: 7 for the conv stack plus twice
        the ConvNeXt look-ahead (13 with the ConvNeXt, 7 without)."""
        return 7 + 2 * self.convnext_lookahead

    def streaming_forward(self, x: Tensor, x_lens: Tensor, cached_left_pad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One chunk of a stream.

        Args:
            x: ``(N, 2 * chunk + streaming_lookahead, F)``: features of the chunk plus the 13 frames the
               conv stack (7) and the ConvNeXt look-ahead (3 output frames = 6 input frames) need.
            x_lens: ``(N,)`` valid frames of ``x``.
            cached_left_pad: ``(N, 128, 3, F')`` from ``init_states`` or the previous chunk
               (``(N, 128, 0, F')`` without a ConvNeXt).
        Returns:
            ``(N, chunk, C)``, valid output lengths ``(x_lens - 7) // 2 - 3`` and the new cache.
        """
        x = self.conv(x.unsqueeze(1))
        if self.convnext is not None:
            x, new_cache = self.convnext.streaming_forward(x, cached_left_pad)
        else:
            new_cache = cached_left_pad
        x = self._flatten_and_project(x)
        x = self.out_norm(x)
        out_lens = ((x_lens - 7) // 2 - self.convnext_lookahead).clamp(min=0)
        return x, out_lens, new_cache

    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> Tensor:
        """Zero ConvNeXt left context, ``(N, layer3_channels, 3, F')`` (3 -> 0 without a ConvNeXt)."""
        return torch.zeros(batch_size, self.layer3_channels, self.convnext_lookahead, self.out_width, device=device)
