"""Conformer and Efficient Conformer attention on the real Triton kernels: under the Triton interpreter on
CPU, or compiled on a CUDA GPU (``ASR_TEST_DEVICE=cuda``, no interpreter; ``tools/gpu_checks.sh`` runs them).

Not collected by the default test run (the name does not match ``test_*.py``): ``TRITON_INTERPRET=1`` must
be set before triton is imported and must not leak into other test files, so
``tests/test_kernel_encoders.py::test_kernel_encoders_under_triton_interpreter`` runs this file in a child
pytest with it set. Shapes are tiny: the interpreter runs every kernel program in Python.
"""

from __future__ import annotations

import os

import pytest
import torch

from asr.encoders import build_encoder
from asr.nn.attention import RelPositionMultiheadAttention
from asr.nn.masks import chunked_mask, padding_mask

DEVICE = torch.device(os.environ.get("ASR_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run these cases through tests/test_kernel_encoders.py (on CPU they need TRITON_INTERPRET=1)")


@pytest.fixture
def kernel_calls(monkeypatch) -> list[tuple]:
    """Records ``(function, chunk_size, left_chunks, head dim)`` of every call into the Triton kernels."""
    from asr_kernels import rel_pos_attention as kernels

    calls: list[tuple] = []

    def counted(name):
        real = getattr(kernels, name)

        def wrapper(*args, **kwargs):
            calls.append((name, kwargs["chunk_size"], kwargs["left_chunks"], args[0].shape[-1]))
            return real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, wrapper)

    counted("rel_pos_attention")
    counted("rel_pos_attention_weights")
    return calls


ENCODER_CASES = [
    # Stage 1 of the Efficient Conformer: group 3 over 30 features per head = head dim 90 (padded to 128
    # inside the kernel), positional dim 90; stages 2 and 3: head dims 32 and 36.
    pytest.param(
        "efficient-conformer-small",
        False,
        dict(stage_dims=(60, 64, 72), stage_layers=(1, 1, 1), num_heads=2, kernel_size=5, feedforward_ratio=2),
        (57, 41),
        [(-1, -1, 90), (-1, -1, 32), (-1, -1, 36)],
        id="efficient-conformer",
    ),
    pytest.param(
        "conformer-small",
        False,
        dict(encoder_dim=32, num_layers=2, num_heads=2, feedforward_dim=64, kernel_size=5),
        (81, 63),
        [(-1, -1, 16)] * 2,
        id="conformer",
    ),
    # Chunks of 4 frames, 8 frames (2 chunks) of left context.
    pytest.param(
        "conformer-small",
        True,
        dict(
            encoder_dim=32,
            num_layers=2,
            num_heads=2,
            feedforward_dim=64,
            kernel_size=5,
            chunk_size=4,
            left_context_frames=8,
        ),
        (81, 63),
        [(4, 2, 16)] * 2,
        id="conformer-causal-chunked",
    ),
]


@pytest.mark.parametrize("name, causal, kwargs, lengths, expected_calls", ENCODER_CASES)
def test_kernel_encoder_same_with_both_backends(kernel_calls, name, causal, kwargs, lengths, expected_calls):
    """Eval, padded batch of 2 with odd lengths: outputs and input gradients on valid frames agree between
    the "torch" and "triton" backends, and the "triton" run goes through the kernels once per layer."""
    torch.manual_seed(0)
    encoder = build_encoder(name, causal=causal, **kwargs).eval().to(DEVICE)
    features = torch.randn(len(lengths), max(lengths), 80).to(DEVICE)
    feature_lens = torch.tensor(lengths, device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        encoder.set_attention_backend(backend)
        x = features.clone().requires_grad_()
        y, y_lens = encoder(x, feature_lens)
        valid = (torch.arange(y.shape[1], device=DEVICE) < y_lens[:, None]).unsqueeze(-1)
        weight = torch.cos(torch.arange(y.shape[-1], device=DEVICE))
        (grad,) = torch.autograd.grad((y * valid * weight).sum(), x)
        results[backend] = (y * valid, grad)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-4, rtol=1e-4)
    assert [c[1:] for c in kernel_calls] == expected_calls
    assert {c[0] for c in kernel_calls} == {"rel_pos_attention"}


def test_kernel_grouped_attention_weights(kernel_calls):
    """need_weights goes through the weights kernel: group 3, head dim 90, chunk mask (group chunks of 2,
    one left chunk) and padding, 13 frames (not a multiple of 3)."""
    torch.manual_seed(1)
    att = RelPositionMultiheadAttention(60, 2, group_size=3).eval().to(DEVICE)
    x = torch.randn(2, 13, 60).to(DEVICE)
    kwargs = dict(
        attn_mask=chunked_mask(13, 6, 1).to(DEVICE),
        key_padding_mask=padding_mask(torch.tensor([13, 8]), 13).to(DEVICE),
        need_weights=True,
    )
    results = {}
    for backend in ("torch", "triton"):
        att.attention_backend = backend
        x_ = x.clone().requires_grad_()
        out = att(x_, **kwargs)
        (grad,) = torch.autograd.grad(out.output.sum() + (out.weights * out.weights).sum(), x_)
        results[backend] = (out.output, out.weights, grad)
    for e, g in zip(results["torch"], results["triton"]):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    assert kernel_calls == [("rel_pos_attention_weights", 2, 1, 90)]
