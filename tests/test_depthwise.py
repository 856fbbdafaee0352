"""asr.nn.depthwise: DepthwiseConv1d equals nn.Conv1d with groups == channels (same parameter names, so
checkpoints load either way); its float16-on-GPU path is checked in test_gpu.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asr.nn.depthwise import DepthwiseConv1d, runs_in_cuda_float16


@pytest.mark.parametrize("kernel_size,stride,padding,bias", [(31, 1, 15, True), (5, 2, 2, True), (16, 1, 0, False)])
def test_depthwise_conv1d_equals_grouped_conv1d(kernel_size, stride, padding, bias):
    torch.manual_seed(0)
    ours = DepthwiseConv1d(6, kernel_size, stride=stride, padding=padding, bias=bias)
    theirs = nn.Conv1d(6, 6, kernel_size, stride=stride, padding=padding, groups=6, bias=bias)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 6, 40, requires_grad=True)
    y = ours(x)
    expected = theirs(x)
    torch.testing.assert_close(y, expected)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad)


def test_float16_path_is_only_for_gpus():
    x = torch.randn(2, 3, 5)
    assert not runs_in_cuda_float16(x)
    assert not runs_in_cuda_float16(x.half())  # a CPU tensor never takes the GPU work-around


def test_other_padding_modes_are_refused():
    with pytest.raises(ValueError, match="padding_mode"):
        DepthwiseConv1d(4, 3, padding=1, padding_mode="reflect")
