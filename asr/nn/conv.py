"""Convolution blocks of the Conformer family: the Conformer convolution module (optionally causal,
strided and widening) and plain Conv2d front ends.

Every block takes batch-first ``(N, T, C)`` and, where time padding could leak into valid frames,
a ``(N, T)`` padding mask (True = padded frame, see :mod:`asr.nn.masks`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from asr.nn.depthwise import DepthwiseConv1d

__all__ = ["ConformerConvModule", "Conv2dSubsampling2", "Conv2dSubsampling4"]


class ConformerConvModule(nn.Module):
    """LayerNorm -> pointwise conv (C_in -> 2·C_out) -> GLU -> depthwise conv (kernel K, stride s) ->
    BatchNorm -> Swish -> pointwise conv -> dropout: ``(N, T, C_in) -> (N, ceil(T / s), C_out)``.

    Non-causal: "same" padding (output ``t`` centred on input ``s·t``). Causal: ``K - 1`` frames of left
    padding, so output ``t`` depends on inputs ``<= t``; a stream keeps those ``K - 1`` depthwise inputs
    as its cache. Padded frames are zeroed before the depthwise conv so they do not leak into valid
    frames. ``C_out != C_in`` and ``s > 1`` are the Efficient Conformer's downsampling blocks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int = 31,
        stride: int = 1,
        causal: bool = False,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if kernel_size % 2 == 0:
            raise ValueError(f"ConformerConvModule: kernel_size must be odd, got {kernel_size}")
        if causal and stride != 1:
            raise ValueError("ConformerConvModule: a causal module cannot be strided")
        self.kernel_size = kernel_size
        self.stride = stride
        self.causal = causal
        self.out_channels = out_channels
        self.norm = nn.LayerNorm(in_channels)
        self.pointwise_conv1 = nn.Conv1d(in_channels, 2 * out_channels, kernel_size=1)
        self.depthwise_conv = DepthwiseConv1d(
            out_channels, kernel_size, stride=stride, padding=0 if causal else kernel_size // 2
        )
        self.batch_norm = nn.BatchNorm1d(out_channels)
        self.pointwise_conv2 = nn.Conv1d(out_channels, out_channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def _gated(self, x: Tensor) -> Tensor:
        """Norm, pointwise conv and GLU: ``(N, T, C_in) -> (N, C_out, T)``."""
        return F.glu(self.pointwise_conv1(self.norm(x).transpose(1, 2)), dim=1)

    def _finish(self, x: Tensor) -> Tensor:
        x = self.pointwise_conv2(F.silu(self.batch_norm(x)))
        return self.dropout(x.transpose(1, 2))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``x`` ``(N, T, C_in)``, ``padding_mask`` ``(N, T)``; returns ``(N, ceil(T / s), C_out)``."""
        x = self._gated(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(1), 0.0)
        if self.causal:
            x = F.pad(x, (self.kernel_size - 1, 0))
        return self._finish(self._depthwise(x))

    def _depthwise(self, x: Tensor) -> Tensor:
        """The depthwise conv, ``(N, C, T)`` in and out, run channels-last (the faster layout on CPU, the
        same one the Zipformer's convolution modules use)."""
        return self.depthwise_conv.forward_channels_last(x.transpose(1, 2)).transpose(1, 2)

    def init_cache(self, batch_size: int, device: torch.device | str = "cpu") -> Tensor:
        """Zero left context for a new stream: ``(N, C_out, K - 1)``."""
        return torch.zeros(batch_size, self.out_channels, self.kernel_size - 1, device=device)

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """Causal chunk: ``x`` ``(N, T, C_in)``, ``cache`` ``(N, C_out, K - 1)`` (the depthwise inputs
        before the chunk); returns ``(N, T, C_out)`` and the new cache."""
        if not self.causal:
            raise RuntimeError("streaming_forward needs a causal ConformerConvModule")
        x = torch.cat([cache, self._gated(x)], dim=2)
        new_cache = x[:, :, x.size(2) - (self.kernel_size - 1) :]
        return self._finish(self._depthwise(x)), new_cache


class Conv2dSubsampling4(nn.Module):
    """The Conformer's front end, 100 Hz -> 25 Hz: two 3x3 Conv2d with stride 2 (no padding) and ReLU,
    then a linear projection of the flattened ``channels x F'`` map.

    ``(N, T, F) -> (N, ((T - 1) // 2 - 1) // 2, out_dim)``; output frame ``t`` reads input frames
    ``4t .. 4t + 6`` only, so padding never reaches a valid output and a stream can be encoded from
    overlapping windows of ``4C + 3`` frames shifted by ``4C``.
    """

    lookahead = 3  # input frames beyond the last 4 frames of a window an output frame needs

    def __init__(self, in_features: int, out_dim: int, channels: int | None = None) -> None:
        super().__init__()
        if in_features < 7:
            raise ValueError(f"Conv2dSubsampling4 needs at least 7 input features, got {in_features}")
        channels = out_dim if channels is None else channels
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, stride=2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, stride=2),
            nn.ReLU(),
        )
        self.out = nn.Linear(channels * (((in_features - 1) // 2 - 1) // 2), out_dim)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """``((x_lens - 1) // 2 - 1) // 2``, at least 0."""
        return (((x_lens - 1) // 2 - 1) // 2).clamp(min=0)

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)`` with ``T >= 7``; returns ``(N, T', out_dim)`` and ``(N,)`` lengths."""
        if x.size(1) < 7:
            raise ValueError(f"Conv2dSubsampling4 needs at least 7 input frames, got {x.size(1)}")
        x = self.conv(x.unsqueeze(1))  # (N, C, T', F')
        n, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(n, t, c * f)), self.output_lengths(x_lens)


class Conv2dSubsampling2(nn.Module):
    """The Efficient Conformer's front end, 100 Hz -> 50 Hz: one 3x3 Conv2d with stride 2 and padding 1,
    BatchNorm2d, Swish, and a linear projection of the flattened ``channels x ceil(F / 2)`` map.

    ``(N, T, F) -> (N, (T - 1) // 2 + 1, out_dim)``. Input frames past each length are zeroed first:
    the padded conv reads one frame beyond the last valid one, which must be the same zero whether the
    utterance is alone or padded in a batch.
    """

    def __init__(self, in_features: int, out_dim: int, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, channels, kernel_size=3, stride=2, padding=1)
        self.batch_norm = nn.BatchNorm2d(channels)
        self.out = nn.Linear(channels * ((in_features - 1) // 2 + 1), out_dim)

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """``(x_lens - 1) // 2 + 1``."""
        return (x_lens - 1) // 2 + 1

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)``; returns ``(N, (T - 1) // 2 + 1, out_dim)`` and ``(N,)`` lengths."""
        past_end = torch.arange(x.size(1), device=x.device) >= x_lens.unsqueeze(-1)
        x = x.masked_fill(past_end.unsqueeze(-1), 0.0)
        x = F.silu(self.batch_norm(self.conv(x.unsqueeze(1))))
        n, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(n, t, c * f)), self.output_lengths(x_lens)
