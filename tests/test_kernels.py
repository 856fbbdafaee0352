"""Relative-position attention: the PyTorch references against a naive element-by-element computation and
against Zipformer's attention module, the dispatch, and the Triton kernels against the references.

The kernel cases live in ``helpers/triton_kernel_cases.py``: they need ``TRITON_INTERPRET=1`` set before triton
is imported, which must not leak into other test files of the same pytest process, so
``test_kernels_under_triton_interpreter`` runs that file in a child pytest with the variable set.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from asr.nn.fused_attention import (
    RelPosAttentionInputs,
    apply_attention,
    attention_weights,
    chunk_params_from_mask,
    rel_pos_attention,
    rel_pos_attention_weights,
    resolve_backend,
)
from asr_kernels.reference import (
    chunk_mask,
    rel_pos_attention_reference,
    rel_pos_attention_weights_reference,
    rel_pos_scores_reference,
)

from helpers import DATA
from helpers.kernels import TRITON_KERNEL_CASES, rel_pos_inputs


def _naive_scores(q, k, q_pos, pos_table, key_bias, chunk_size, left_chunks, scale) -> torch.Tensor:
    """Element by element, straight from the definition: query ``i`` sits at frame ``a = i + T_k - T_q``,
    the table row of offset ``j - a`` is ``T_k - 1 + (j - a)``."""
    num_heads, batch_size, num_queries, _ = q.shape
    num_keys = k.shape[2]
    out = torch.empty(num_heads, batch_size, num_queries, num_keys, dtype=torch.float64)
    for h in range(num_heads):
        for n in range(batch_size):
            for i in range(num_queries):
                a = i + num_keys - num_queries
                for j in range(num_keys):
                    s = scale * float(q[h, n, i].double() @ k[h, n, j].double())
                    if q_pos is not None:
                        s += float(q_pos[h, n, i].double() @ pos_table[h, num_keys - 1 + j - a].double())
                    if key_bias is not None:
                        s += float(key_bias[n, j])
                    if chunk_size > 0:
                        if j // chunk_size > a // chunk_size:
                            s = -math.inf
                        if left_chunks >= 0 and j // chunk_size < a // chunk_size - left_chunks:
                            s = -math.inf
                    out[h, n, i, j] = s
    return out


@pytest.mark.parametrize(
    "num_queries, num_keys, padded, chunk_size, left_chunks",
    [(19, 19, (), -1, -1), (23, 23, (23, 11), 4, 1), (9, 21, (21, 15), 5, -1)],
)
def test_reference_scores_equal_naive(num_queries, num_keys, padded, chunk_size, left_chunks):
    x = rel_pos_inputs(num_queries, num_keys, 8, 4, 3, padded)
    with torch.no_grad():
        args = (x["q"], x["k"], x["q_pos"], x["pos_table"], x["key_bias"], chunk_size, left_chunks, 0.7)
        expected = _naive_scores(*args)
        got = rel_pos_scores_reference(*args)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)
    # Softmax of the naive scores, times v; rows that see no key (all -inf: NaN) give zeros.
    expected_weights = torch.softmax(expected, dim=-1).nan_to_num(0.0)
    with torch.no_grad():
        out = rel_pos_attention_reference(
            x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"], chunk_size, left_chunks, 0.7
        )
    torch.testing.assert_close(out.double(), expected_weights @ x["v"].double(), atol=1e-5, rtol=1e-5)


def test_chunk_mask_by_enumeration():
    # chunk 3, one left chunk: frame 7 (chunk 2) sees frames 3..8 (chunks 1, 2).
    mask = chunk_mask(10, 10, 3, 1)
    assert (~mask[7]).nonzero().flatten().tolist() == [3, 4, 5, 6, 7, 8]
    # Streaming: 4 queries are the last frames 6..9 of 10 keys; unlimited left context.
    mask = chunk_mask(4, 10, 3, -1)
    assert (~mask[0]).nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8]  # frame 6, chunk 2
    assert (~mask[3]).nonzero().flatten().tolist() == list(range(10))  # frame 9, chunk 3
    assert chunk_mask(5, 5, -1, 2) is None


def test_reference_rows_without_keys_get_zero_weights_and_finite_grads():
    x = rel_pos_inputs(7, 7, 8, 4, 2, padded_lengths=(7, 0))
    weights = rel_pos_attention_weights_reference(x["q"], x["k"], x["q_pos"], x["pos_table"], x["key_bias"])
    assert torch.equal(weights[:, 1], torch.zeros_like(weights[:, 1]))
    torch.testing.assert_close(weights[:, 0].sum(-1), torch.ones(2, 7))
    weights.square().sum().backward()
    for name in ("q", "k", "q_pos", "pos_table"):
        assert torch.isfinite(x[name].grad).all(), name


def test_reference_equals_zipformer_attention_weights():
    """Our table convention is Zipformer's: its module, in eval, gives the reference's weights."""
    from asr.encoders.zipformer import RelPositionMultiheadAttentionWeights
    from asr.nn.positional import CompactRelPositionalEncoding

    torch.manual_seed(0)
    num_frames, batch_size, embed_dim, pos_dim, heads, head_dim, pos_head_dim = 13, 2, 32, 16, 2, 8, 4
    module = RelPositionMultiheadAttentionWeights(embed_dim, pos_dim, heads, head_dim, pos_head_dim).eval()
    encoding = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.0).eval()
    x = torch.randn(num_frames, batch_size, embed_dim)
    pos_emb = encoding(x)
    padding = torch.zeros(batch_size, num_frames, dtype=torch.bool)
    padding[1, 9:] = True
    attn_mask = chunk_mask(num_frames, num_frames, 4, 1)
    with torch.no_grad():
        expected = module(x, pos_emb, key_padding_mask=padding, attn_mask=attn_mask)
        proj = module.in_proj(x)
        q = proj[..., : heads * head_dim].reshape(num_frames, batch_size, heads, head_dim).permute(2, 1, 0, 3)
        k = proj[..., heads * head_dim : 2 * heads * head_dim]
        k = k.reshape(num_frames, batch_size, heads, head_dim).permute(2, 1, 0, 3)
        q_pos = proj[..., 2 * heads * head_dim :].reshape(num_frames, batch_size, heads, pos_head_dim)
        table = module.linear_pos(pos_emb)[0].reshape(2 * num_frames - 1, heads, pos_head_dim).permute(1, 0, 2)
        got = rel_pos_attention_weights(
            q, k, q_pos.permute(2, 1, 0, 3), table, padding, chunk_size=4, left_chunks=1, backend="torch"
        )
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_dispatch_backend_choice(monkeypatch):
    monkeypatch.delenv("ASR_ATTENTION_BACKEND", raising=False)
    cpu = torch.device("cpu")
    assert resolve_backend("auto", cpu) == "torch"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    monkeypatch.setenv("ASR_ATTENTION_BACKEND", "torch")
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    monkeypatch.setenv("ASR_ATTENTION_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="cudnn"):
        resolve_backend("auto", cpu)
    with pytest.raises(ValueError, match="flash"):
        resolve_backend("flash", cpu)


def test_dispatch_torch_path_is_the_reference():
    x = rel_pos_inputs(11, 11, 8, 4, 4, padded_lengths=(11, 6))
    padding = torch.isinf(x["key_bias"])
    out = rel_pos_attention(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], padding, 4, 0, backend="torch")
    expected = rel_pos_attention_reference(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"], 4, 0)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize("num_frames, chunk_size, left_chunks", [(20, 4, 1), (20, 4, -1), (17, 5, 0), (6, 8, 2)])
def test_chunk_params_recovered_from_mask(num_frames, chunk_size, left_chunks):
    mask = chunk_mask(num_frames, num_frames, chunk_size, left_chunks)
    params = chunk_params_from_mask(mask)
    assert params is not None
    assert torch.equal(chunk_mask(num_frames, num_frames, *params), mask)
    if num_frames >= chunk_size:
        assert params[0] == chunk_size


def test_chunk_params_none_for_other_masks():
    frames = torch.arange(12)
    band = (frames[None, :] - frames[:, None]).abs() > 2  # sliding window: no chunk structure
    assert chunk_params_from_mask(band) is None
    assert chunk_params_from_mask(torch.ones(5, 5, dtype=torch.bool)) is None


def test_shared_inputs_equal_materialised_weights():
    x = rel_pos_inputs(15, 15, 8, 4, 2, padded_lengths=(15, 9), num_heads=3)
    padding = torch.isinf(x["key_bias"])
    inputs = RelPosAttentionInputs(x["q"], x["k"], x["q_pos"], x["pos_table"], padding, 4, 1, backend="torch")
    weights = rel_pos_attention_weights_reference(x["q"], x["k"], x["q_pos"], x["pos_table"], x["key_bias"], 4, 1)
    assert inputs.shape == weights.shape
    torch.testing.assert_close(attention_weights(inputs, slice(0, 1)), weights[0:1], atol=0, rtol=0)
    assert torch.equal(attention_weights(weights, slice(1, 3)), weights[1:3])
    torch.testing.assert_close(apply_attention(inputs, x["v"]), apply_attention(weights, x["v"]), atol=1e-6, rtol=1e-5)


def test_zipformer_rejects_unknown_attention_backend():
    from asr.encoders.zipformer import build_zipformer

    config = torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)["config"]
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        build_zipformer("zipformer-small", attention_backend="cuda", **config)


def _run_kernel_tests_in_interpreter(marker: str) -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1", ASR_TEST_DEVICE="cpu")
    env.pop("ASR_ATTENTION_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TRITON_KERNEL_CASES), "-m", marker],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-3000:]


def test_kernels_under_triton_interpreter():
    _run_kernel_tests_in_interpreter("not slow")


@pytest.mark.slow
def test_kernel_sweep_under_triton_interpreter():
    _run_kernel_tests_in_interpreter("slow")


_COMPILE_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import asr_kernels.rel_pos_attention as m

pointers = {"Q", "K", "V", "QP", "TAB", "KB", "OUT", "LSE", "W", "DO", "DW", "DELTA", "DK", "DVAL", "DQ", "DQP", "DTAB"}
float32 = {"LSE", "KB", "DELTA", "DTAB"}
common = dict(D=32, P=4, D_PAD=32, P_PAD=4, HAS_POS=True, WIDE_POS=False, HAS_KB=True, HAS_CHUNK=True, IEEE=False)
wide = dict(D=90, P=90, D_PAD=128, P_PAD=128, HAS_POS=True, WIDE_POS=True, HAS_KB=True, HAS_CHUNK=True, IEEE=False)
fused, from_weights = dict(DV=12, DV_PAD=16, FROM_WEIGHTS=False), dict(DV=1, DV_PAD=16, FROM_WEIGHTS=True)
jobs = [
    (m._fwd_kernel, dict(common, DV=12, DV_PAD=16, HAS_V=True, BLOCK_M=64, BLOCK_N=32, DIAG=128)),
    (m._weights_kernel, dict(common, BLOCK_M=64, BLOCK_N=32, DIAG=128)),
    (m._bwd_dkdv_kernel, dict(common, **fused, BLOCK_M=32, BLOCK_N=32, DIAG=64)),
    (m._bwd_dq_kernel, dict(common, **from_weights, BLOCK_M=32, BLOCK_N=32, DIAG=64)),
    # The wide positional path (P >= 16), Efficient-Conformer dims.
    (m._fwd_kernel, dict(wide, DV=90, DV_PAD=128, HAS_V=True, BLOCK_M=16, BLOCK_N=32, DIAG=64)),
    (m._weights_kernel, dict(wide, BLOCK_M=16, BLOCK_N=32, DIAG=64)),
    (m._bwd_dkdv_kernel, dict(wide, DV=90, DV_PAD=128, FROM_WEIGHTS=False, BLOCK_M=16, BLOCK_N=32, DIAG=64)),
    (m._bwd_dq_kernel, dict(wide, DV=90, DV_PAD=128, FROM_WEIGHTS=False, BLOCK_M=16, BLOCK_N=32, DIAG=64)),
]
for fn, consts in jobs:
    sig = {n: "constexpr" if n in consts else ("*fp32" if n in float32 else "*fp16") if n in pointers
           else "fp32" if n == "scale" else "i32" for n in fn.arg_names}
    source = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    assert kernel.asm["cubin"], fn.__name__
print("compiled", len(jobs))
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter accepts code the GPU compiler rejects (e.g. non-constexpr globals): compile every
    kernel to an sm_90 cubin (no device needed) in a process without TRITON_INTERPRET."""
    pytest.importorskip("triton")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0 and "compiled 8" in result.stdout, result.stderr[-4000:]


def test_kernel_tiles_shrink_until_they_fit(monkeypatch):
    """A pass whose kernels need more shared memory than the GPU has is retried with the larger block
    halved (down to 16 x 16); the tiles that fit are remembered for the shape class; tiles the caller chose
    are never changed."""
    pytest.importorskip("triton")
    from triton.runtime.errors import OutOfResources

    from asr_kernels import rel_pos_attention as kernels

    monkeypatch.setattr(kernels, "_FITTING_BLOCKS", {})
    monkeypatch.setattr(kernels, "_interpreted", lambda: False)
    monkeypatch.setattr(kernels.torch.Tensor, "is_cuda", property(lambda self: True))
    x = rel_pos_inputs(40, 40, 32, 12, 4, (40, 30))
    tried = []

    def launch_fitting(limit):
        def launch(tiles):
            tried.append((tiles["BLOCK_M"], tiles["BLOCK_N"]))
            if tiles["BLOCK_M"] * tiles["BLOCK_N"] > limit:
                raise OutOfResources(2 * limit, limit, "shared memory")
            return tiles["BLOCK_M"], tiles["BLOCK_N"]

        return launch

    def problem(block_m=None, block_n=None):
        return kernels._Problem(
            x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"], 1.0, -1, -1, block_m, block_n
        )

    assert problem().blocks(backward=False) == (64, 32)
    assert kernels._run_with_fitting_blocks(problem(), "forward", False, launch_fitting(512)) == (16, 32)
    assert tried == [(64, 32), (32, 32), (16, 32)]
    tried.clear()
    assert kernels._run_with_fitting_blocks(problem(), "forward", False, launch_fitting(512)) == (16, 32)
    assert tried == [(16, 32)]  # remembered
    with pytest.raises(OutOfResources):
        kernels._run_with_fitting_blocks(problem(), "backward", True, launch_fitting(100))  # not even 16 x 16
    with pytest.raises(OutOfResources):
        kernels._run_with_fitting_blocks(problem(64, 32), "weights", False, launch_fitting(512))
