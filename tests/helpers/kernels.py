"""Inputs of the relative-position attention kernels, and where the Triton case modules live.

Imports torch and the kernels' PyTorch references only, never triton: the Triton case modules import this
module after ``TRITON_INTERPRET`` has been set (or not) for their process.
"""

from __future__ import annotations

from pathlib import Path

import torch

from asr_kernels.reference import key_bias_from_padding_mask

_HERE = Path(__file__).parent
# Run in a child pytest (see their docstrings): not collected by the default run.
TRITON_KERNEL_CASES = _HERE / "triton_kernel_cases.py"
TRITON_KERNEL_ENCODER_CASES = _HERE / "triton_kernel_encoder_cases.py"


def rel_pos_inputs(
    num_queries: int,
    num_keys: int,
    head_dim: int,
    value_dim: int,
    pos_dim: int | None,
    padded_lengths: tuple[int, ...] = (),
    num_heads: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor | None]:
    """Random float32 CPU inputs of the kernels, batch of 2: ``q``, ``k`` (H, N, T_q | T_k, head_dim), ``v``
    (H, N, T_k, value_dim), ``q_pos`` (H, N, T_q, pos_dim) and ``pos_table`` (H, T_q + T_k - 1, pos_dim), all
    with ``requires_grad``; ``key_bias`` (N, T_k), 0 or -inf. Without ``pos_dim`` the positional inputs are
    None; without ``padded_lengths`` so is ``key_bias``, else utterance ``n`` has ``padded_lengths[n]`` valid
    keys. The same ``seed`` gives the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    batch_size = 2

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).requires_grad_()

    inputs = dict(
        q=rand(num_heads, batch_size, num_queries, head_dim, std=head_dim**-0.25),
        k=rand(num_heads, batch_size, num_keys, head_dim, std=head_dim**-0.25),
        v=rand(num_heads, batch_size, num_keys, value_dim),
        q_pos=None,
        pos_table=None,
        key_bias=None,
    )
    if pos_dim is not None:
        inputs["q_pos"] = rand(num_heads, batch_size, num_queries, pos_dim)
        inputs["pos_table"] = rand(num_heads, num_queries + num_keys - 1, pos_dim, std=0.5)
    if padded_lengths:
        padding = torch.zeros(batch_size, num_keys, dtype=torch.bool)
        for n, length in enumerate(padded_lengths):
            padding[n, length:] = True
        inputs["key_bias"] = key_bias_from_padding_mask(padding)
    return inputs
