"""Conformer / Efficient Conformer / Transformer attention through the kernel dispatch (asr.nn.fused_attention).

Without a GPU the Triton kernels cannot run natively, so most tests here route backend "triton" to the
PyTorch references of the kernels (``asr_kernels.reference``, an independent definition of what the kernels
compute): that checks the mapping of RelPositionMultiheadAttention onto the kernel API (heads first, scale,
positional table, group-level padding and chunk masks) and which calls fall back. The real kernels run under
the Triton interpreter in a child pytest (tests/helpers/triton_kernel_encoder_cases.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

from asr.encoders import build_encoder
from asr.nn import fused_attention
from asr.nn.attention import RelPositionMultiheadAttention, set_attention_backend
from asr.nn.masks import chunked_mask, limited_context_mask, padding_mask
from asr_kernels.reference import rel_pos_attention_reference, rel_pos_attention_weights_reference

from helpers.attention import reference_attention
from helpers.kernels import TRITON_KERNEL_ENCODER_CASES

TINY_CONFORMER = dict(encoder_dim=32, num_layers=2, num_heads=4, feedforward_dim=64, kernel_size=7)
TINY_EFFICIENT = dict(stage_dims=(24, 36, 48), stage_layers=(2, 2, 1), num_heads=4, kernel_size=5)
TINY_TRANSFORMER = dict(encoder_dim=32, num_layers=2, num_heads=4, feedforward_dim=64)


@pytest.fixture
def kernel_calls(monkeypatch) -> list[tuple]:
    """Make backend "triton" resolve on CPU and run the kernels' PyTorch references; records
    ``(function, chunk_size, left_chunks, q.shape)`` per call."""
    calls: list[tuple] = []

    def attention(q, k, v, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale):
        calls.append(("rel_pos_attention", chunk_size, left_chunks, tuple(q.shape)))
        return rel_pos_attention_reference(q, k, v, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)

    def weights(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale):
        calls.append(("rel_pos_attention_weights", chunk_size, left_chunks, tuple(q.shape)))
        return rel_pos_attention_weights_reference(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale)

    fake = types.SimpleNamespace(rel_pos_attention=attention, rel_pos_attention_weights=weights)
    monkeypatch.setattr(fused_attention, "_triton_kernels", lambda: fake)
    monkeypatch.delenv(fused_attention.BACKEND_ENV_VAR, raising=False)
    return calls


def _attention(group_size: int = 1, seed: int = 0, **kwargs) -> RelPositionMultiheadAttention:
    torch.manual_seed(seed)
    att = RelPositionMultiheadAttention(24, 2, group_size=group_size, **kwargs).eval()
    with torch.no_grad():  # non-zero biases, so that the u / v terms matter
        for p in att.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return att


def _both_backends(att: RelPositionMultiheadAttention, x: torch.Tensor, **kwargs):
    """(output, weights, input gradient) with backends "torch" and "triton"."""
    results = {}
    for backend in ("torch", "triton"):
        att.attention_backend = backend
        x_ = x.clone().requires_grad_()
        out = att(x_, **kwargs)
        (grad,) = torch.autograd.grad(
            (out.output * torch.cos(torch.arange(out.output.numel())).reshape(out.output.shape)).sum(), x_
        )
        results[backend] = (out.output.detach(), None if out.weights is None else out.weights.detach(), grad)
    return results["torch"], results["triton"]


# T = 13 frames: odd and not a multiple of the group size 3. Frame chunks of 6 are group chunks of 2.
MAPPING_CASES = [
    # group size, frame-level attn_mask (T) -> mask, expected (chunk size, left chunks) over groups at the kernel
    pytest.param(1, lambda T: None, (-1, -1), id="G1-full"),
    pytest.param(3, lambda T: None, (-1, -1), id="G3-full"),
    pytest.param(1, lambda T: chunked_mask(T, 4, 1), (4, 1), id="G1-chunk4-left1"),
    pytest.param(1, lambda T: chunked_mask(T, 4, 0), (4, 0), id="G1-chunk4-left0-empty-rows"),
    # 3 chunks of 5: "unlimited" and "2 left chunks" are the same mask.
    pytest.param(1, lambda T: chunked_mask(T, 5, -1), (5, 2), id="G1-chunk5-unlimited-left"),
    pytest.param(3, lambda T: chunked_mask(T, 6, 1), (2, 1), id="G3-chunk6-left1"),
    pytest.param(3, lambda T: chunked_mask(T, 6, 0), (2, 0), id="G3-chunk6-left0-empty-rows"),
    # Read at each group's first frame, 4 frames of left context are exactly one group to the left.
    pytest.param(3, lambda T: limited_context_mask(T, 4, 0), (1, 1), id="G3-left4-is-a-group-chunk-mask"),
    pytest.param(1, lambda T: chunked_mask(T, 4, 1)[None], (4, 1), id="G1-chunk-mask-with-batch-dim-1"),
]


@pytest.mark.parametrize("group_size, make_mask, kernel_chunking", MAPPING_CASES)
@pytest.mark.parametrize("need_weights", [False, True], ids=["output", "weights"])
def test_kernel_path_matches_torch_path(kernel_calls, group_size, make_mask, kernel_chunking, need_weights):
    att = _attention(group_size)
    x = torch.randn(2, 13, 24)
    x[1, 9:] = 30.0 * torch.randn(4, 24)  # garbage in the padding
    pad = padding_mask(torch.tensor([13, 9]), 13)
    expected, got = _both_backends(att, x, attn_mask=make_mask(13), key_padding_mask=pad, need_weights=need_weights)
    function = "rel_pos_attention_weights" if need_weights else "rel_pos_attention"
    num_groups = -(-13 // group_size)
    # One call (the "triton" run), heads first (H, N, T', d).
    assert kernel_calls == [(function, *kernel_chunking, (2, 2, num_groups, group_size * 12))]
    for name, e, g in zip(("output", "weights", "input gradient"), expected, got):
        if e is None:
            assert g is None and not need_weights
            continue
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("group_size, chunk", [(1, 4), (3, 6)])
def test_kernel_path_matches_explicit_loops(kernel_calls, group_size, chunk):
    """Against the loop-by-loop float64 reference of tests/test_attention.py (independent of both paths)."""
    att = _attention(group_size, seed=1)
    att.attention_backend = "triton"
    x = torch.randn(2, 13, 24)
    lengths = torch.tensor([13, 9])
    mask = chunked_mask(13, chunk, 1)
    with torch.no_grad():
        got = att(x, attn_mask=mask, key_padding_mask=padding_mask(lengths, 13)).output
    assert len(kernel_calls) == 1
    for n, length in enumerate(lengths.tolist()):
        expected = reference_attention(att, x[n], length, visible=lambda i, j: not mask[i, j])
        torch.testing.assert_close(got[n, :length].double(), expected[:length], atol=1e-5, rtol=1e-5)


def test_kernel_path_in_training_without_dropout(kernel_calls):
    """Training mode alone does not force the fallback; attention dropout does."""
    att = _attention(3).train()
    x = torch.randn(2, 13, 24)
    pad = padding_mask(torch.tensor([13, 10]), 13)
    expected, got = _both_backends(att, x, key_padding_mask=pad)
    assert len(kernel_calls) == 1
    torch.testing.assert_close(got[0], expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[2], expected[2], atol=1e-5, rtol=1e-5)


FALLBACK_CASES = [
    # constructor kwargs, training, forward kwargs builder
    pytest.param(dict(query_stride=2), False, lambda T: {}, id="strided-queries"),
    pytest.param(dict(relaxed_attention_gamma=0.2), True, lambda T: {}, id="relaxed-in-training"),
    pytest.param(dict(dropout=0.3), True, lambda T: {}, id="dropout-in-training"),
    pytest.param({}, False, lambda T: {"attn_mask": limited_context_mask(T, 2, 1)}, id="limited-context"),
    pytest.param(
        dict(group_size=3), False, lambda T: {"attn_mask": limited_context_mask(T, 4, 3)}, id="G3-limited-context"
    ),
    pytest.param(
        dict(group_size=3), False, lambda T: {"attn_mask": chunked_mask(T, 4, 1)}, id="G3-chunk-not-multiple-of-group"
    ),
    pytest.param({}, False, lambda T: {"attn_mask": chunked_mask(T, 4, 1).expand(2, T, T)}, id="per-utterance-mask"),
    pytest.param(
        {},
        False,
        lambda T: {
            "cache": (torch.randn(2, 3, 24), torch.randn(2, 3, 24)),
            "key_padding_mask": padding_mask(torch.tensor([3 + T, 2 + T]), 3 + T),
        },
        id="cache",
    ),
]


@pytest.mark.parametrize("kwargs, training, forward_kwargs", FALLBACK_CASES)
def test_fallbacks_equal_torch_backend(kernel_calls, kwargs, training, forward_kwargs):
    att = _attention(**kwargs).train(training)
    torch.manual_seed(5)
    x = torch.randn(2, 13, 24)
    extra = forward_kwargs(13)
    outputs = {}
    for backend in ("torch", "triton"):
        att.attention_backend = backend
        torch.manual_seed(7)  # same dropout draws
        outputs[backend] = att(x, **extra).output
    assert kernel_calls == []
    assert torch.equal(outputs["triton"], outputs["torch"])


def test_auto_backend_on_cpu(kernel_calls, monkeypatch):
    """ "auto" means Triton only on CUDA (or where ASR_ATTENTION_BACKEND says so)."""
    att = _attention(attention_backend="auto")
    x = torch.randn(1, 7, 24)
    att(x)
    assert kernel_calls == []
    monkeypatch.setenv(fused_attention.BACKEND_ENV_VAR, "triton")
    att(x)
    assert len(kernel_calls) == 1


def _tiny_input(lengths=(61, 47), seed=0):
    torch.manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), 80)
    return x, torch.tensor(lengths)


ENCODER_CASES = [
    # name, build kwargs, expected kernel calls (chunk_size, left_chunks) per attention call
    pytest.param("conformer-small", dict(**TINY_CONFORMER), [(-1, -1)] * 2, id="conformer"),
    pytest.param(
        "conformer-small",
        dict(causal=True, chunk_size=4, left_context_frames=8, **TINY_CONFORMER),
        [(4, 2)] * 2,
        id="conformer-causal",
    ),
    pytest.param("efficient-conformer-small", dict(**TINY_EFFICIENT), [(-1, -1)] * 5, id="efficient"),
    # The two strided-MHSA blocks fall back.
    pytest.param(
        "efficient-conformer-small",
        dict(downsampling="attention", **TINY_EFFICIENT),
        [(-1, -1)] * 3,
        id="efficient-strided",
    ),
    pytest.param(
        "transformer-transducer-small",
        dict(chunk_size=4, left_context=8, **TINY_TRANSFORMER),
        [(4, 2)] * 2,
        id="transformer-chunked",
    ),
    pytest.param("transformer-transducer-small", dict(causal=True, **TINY_TRANSFORMER), [], id="transformer-limited"),
]


@pytest.mark.parametrize("name, kwargs, expected_calls", ENCODER_CASES)
def test_encoders_same_with_both_backends(kernel_calls, name, kwargs, expected_calls):
    kwargs = dict(kwargs)
    causal = kwargs.pop("causal", False)
    torch.manual_seed(0)
    encoder = build_encoder(name, causal=causal, attention_backend="triton", **kwargs).eval()
    assert all(
        m.attention_backend == "triton" for m in encoder.modules() if isinstance(m, RelPositionMultiheadAttention)
    )
    x, x_lens = _tiny_input()
    with torch.no_grad():
        y_triton, lens = encoder(x, x_lens)
        encoder.set_attention_backend("torch")
        y_torch, _ = encoder(x, x_lens)
    assert [c[1:3] for c in kernel_calls] == expected_calls
    valid = (torch.arange(y_torch.size(1)) < lens[:, None]).unsqueeze(-1)
    torch.testing.assert_close(y_triton * valid, y_torch * valid, atol=1e-5, rtol=1e-5)


def test_invalid_backend_is_rejected():
    with pytest.raises(ValueError, match="attention_backend"):
        RelPositionMultiheadAttention(8, 2, attention_backend="cuda")
    for name in ("conformer-small", "efficient-conformer-small", "transformer-transducer-small"):
        with pytest.raises(ValueError, match="attention_backend"):
            build_encoder(name, attention_backend="fast", num_heads=2)
    encoder = build_encoder("conformer-small", **TINY_CONFORMER)
    with pytest.raises(ValueError, match="attention_backend"):
        encoder.set_attention_backend("Triton")
    with pytest.raises(ValueError, match="attention_backend"):
        set_attention_backend(encoder, "")
    assert {m.attention_backend for m in encoder.modules() if isinstance(m, RelPositionMultiheadAttention)} == {"torch"}


def test_kernel_encoders_under_triton_interpreter():
    """The real kernels (Triton interpreter, CPU) inside tiny encoders; see helpers/triton_kernel_encoder_cases.py."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", ASR_TEST_DEVICE="cpu")
    env.pop(fused_attention.BACKEND_ENV_VAR, None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TRITON_KERNEL_ENCODER_CASES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-3000:]
