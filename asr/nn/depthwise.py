"""A depthwise 1-d convolution (``groups == channels``) that keeps float16 away from cuDNN.

PyTorch sends a float16 depthwise ``conv1d`` on a CUDA GPU to cuDNN (bfloat16 and float32 go to its own
depthwise kernels), and cuDNN builds an execution plan for every new input shape: on an H100 (torch 2.11,
cuDNN 9) that cost ~60 ms of CPU per call, forward and backward alike, so a training step of zipformer-xs
on 200 s batches, whose (N, T) changes every batch, took 2.2 s in float16 against 0.44 s in bfloat16
(``tools/bench/amp_step.py``; 0.28 s when the shapes repeat). :class:`DepthwiseConv1d` runs the
convolution in float32 when it would run in float16 on a GPU (autocast float16, or a float16 model) and
hands back float16: the arithmetic of float16 autocast up to rounding, on PyTorch's shape-agnostic kernels.
The parameters and their names are those of ``nn.Conv1d``, so checkpoints are unchanged. (The 7 x 7
depthwise ``conv2d`` of the Zipformer front end's ConvNeXt does not go to cuDNN in float16 and stays an
``nn.Conv2d``.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def runs_in_cuda_float16(x: Tensor) -> bool:
    """Whether a convolution of ``x`` would compute in float16 on a GPU (autocast float16 or float16 data)."""
    if not x.is_cuda:
        return False
    if x.dtype == torch.float16:
        return True
    return torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.float16


class DepthwiseConv1d(nn.Conv1d):
    """``nn.Conv1d(channels, channels, kernel_size, groups=channels, ...)``; ``(N, C, T) -> (N, C, T')``."""

    def __init__(self, channels: int, kernel_size: int, **kwargs) -> None:
        if kwargs.get("padding_mode", "zeros") != "zeros":  # the float16 path's F.conv1d pads with zeros only
            raise ValueError(f"DepthwiseConv1d pads with zeros, got padding_mode={kwargs['padding_mode']!r}")
        super().__init__(channels, channels, kernel_size, groups=channels, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if runs_in_cuda_float16(x):
            bias = None if self.bias is None else self.bias.float()
            with torch.autocast("cuda", enabled=False):
                y = F.conv1d(
                    x.float(), self.weight.float(), bias, self.stride, self.padding, self.dilation, self.groups
                )
            return y.to(torch.float16)
        return super().forward(x)

    def forward_channels_last(self, x: Tensor) -> Tensor:
        """The same convolution on ``(N, T, C)`` input, returning ``(N, T', C)``. On CPU it runs as a 2-d
        convolution of the channels-last view ``(N, C, 1, T)``, the layout oneDNN's depthwise kernels are
        fast in (5-7x faster than ``(N, C, T)`` at 15-31 taps; bitwise the same result); elsewhere it is
        ``forward`` on the transposed view."""
        if x.device.type != "cpu":
            return self(x.transpose(1, 2)).transpose(1, 2)
        padding = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        x = x.contiguous().transpose(1, 2).unsqueeze(2)
        y = F.conv2d(
            x, self.weight.unsqueeze(2), self.bias, (1, self.stride[0]), padding, (1, self.dilation[0]), self.groups
        )
        return y.squeeze(2).transpose(1, 2)
