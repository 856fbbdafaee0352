"""The Triton kernels against the PyTorch references: under the Triton interpreter on CPU, or compiled on a
CUDA GPU.

Not collected by the default test run (the name does not match ``test_*.py``): ``TRITON_INTERPRET=1`` must
be set before triton is imported and must not leak into other test files, so
``tests/test_kernels.py::test_kernels_under_triton_interpreter`` runs this file in a child pytest with it set.
``tests/test_gpu.py`` runs the same cases compiled, with ``ASR_TEST_DEVICE=cuda`` and no interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch

from asr.nn.fused_attention import (
    rel_pos_attention,
    resolve_backend,
)
from asr_kernels.reference import (
    rel_pos_attention_reference,
    rel_pos_attention_weights_reference,
)

from helpers import DATA
from helpers.kernels import rel_pos_inputs

DEVICE = torch.device(os.environ.get("ASR_TEST_DEVICE", "cpu"))
if DEVICE.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError("run these cases through tests/test_kernels.py (on CPU they need TRITON_INTERPRET=1)")


def _inputs(*args, **kwargs) -> dict:
    """``helpers.kernels.rel_pos_inputs`` (drawn on CPU, so both devices see the same numbers) moved to
    ``DEVICE``."""
    return {
        name: None if t is None else t.detach().to(DEVICE).requires_grad_(t.requires_grad)
        for name, t in rel_pos_inputs(*args, **kwargs).items()
    }


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)


GRAD_NAMES = ("q", "k", "v", "q_pos", "pos_table")


def _compare(x: dict, chunk_size: int, left_chunks: int, scale: float, weights: bool, **blocks) -> None:
    from asr_kernels import rel_pos_attention as kernels

    args = (x["q"], x["k"]) + (() if weights else (x["v"],)) + (x["q_pos"], x["pos_table"], x["key_bias"])
    kernel_fn = kernels.rel_pos_attention_weights if weights else kernels.rel_pos_attention
    reference_fn = rel_pos_attention_weights_reference if weights else rel_pos_attention_reference
    got = kernel_fn(*args, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale, **blocks)
    expected = reference_fn(*args, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)
    grad = _randn(*got.shape, seed=1)
    names = [name for name in GRAD_NAMES if x[name] is not None and not (weights and name == "v")]
    got_grads = torch.autograd.grad(got, [x[name] for name in names], grad)
    expected_grads = torch.autograd.grad(expected, [x[name] for name in names], grad)
    for name, g, e in zip(names, got_grads, expected_grads):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"grad of {name}: {m}")


KERNEL_CASES = [
    # T_q, T_k, head dim, value dim, pos dim, valid keys per utterance, chunk, left chunks, scale
    pytest.param(37, 37, 32, 12, 4, (37, 30), -1, -1, 1.0, id="zipformer-dims-padding"),
    pytest.param(53, 53, 32, 12, 4, (53, 41), 8, 1, 1.0, id="chunk8-left1"),
    pytest.param(31, 47, 32, 12, 4, (47, 40), 8, 2, 1.0, id="streaming-tq<tk"),
    pytest.param(29, 29, 90, 12, 4, (), 5, -1, 90**-0.5, id="headdim90-chunk5-unlimited-left"),
    pytest.param(17, 17, 135, 135, None, (17, 9), -1, -1, 135**-0.5, id="headdim135-no-pos"),
]


@pytest.mark.parametrize("tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale", KERNEL_CASES)
def test_kernel_attention_matches_reference(tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale):
    _compare(_inputs(tq, tk, d, dv, p, padded), chunk_size, left_chunks, scale, weights=False)


@pytest.mark.parametrize("tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale", KERNEL_CASES[:3])
def test_kernel_weights_match_reference(tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale):
    _compare(_inputs(tq, tk, d, dv, p, padded, num_heads=1), chunk_size, left_chunks, scale, weights=True)


# The wide positional path (P >= 16: table window, tl.dot and a skew): the Conformers' full-width term.
WIDE_POS_CASES = [
    # T_q, T_k, head dim, value dim, pos dim, valid keys per utterance, chunk, left chunks, scale
    pytest.param(29, 29, 90, 90, 90, (29, 20), 5, 1, 90**-0.5, id="p90-padding-chunk5-left1"),
    pytest.param(37, 37, 90, 90, 90, (37, 30), 8, 2, 90**-0.5, id="p90-t37-padding-chunk8-left2"),
    pytest.param(23, 41, 135, 135, 135, (), 7, 1, 135**-0.5, id="p135-streaming-tq<tk"),
    pytest.param(19, 19, 135, 135, 135, (), -1, -1, 135**-0.5, id="p135-tq=tk"),
    pytest.param(45, 45, 32, 32, 32, (45, 38), 8, -1, 32**-0.5, id="p32-chunk8"),
]


def _wide_pos(x: dict) -> bool:
    """Whether the kernels take the wide positional path for these inputs."""
    from asr_kernels import rel_pos_attention as kernels

    problem = kernels._Problem(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], None, 1.0, -1, -1, None, None)
    return problem.wide_pos


@pytest.mark.parametrize("tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale", WIDE_POS_CASES)
def test_kernel_wide_pos_attention_matches_reference(tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale):
    x = _inputs(tq, tk, d, dv, p, padded, seed=5)
    assert _wide_pos(x)
    _compare(x, chunk_size, left_chunks, scale, weights=False)


@pytest.mark.parametrize("tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale", WIDE_POS_CASES)
def test_kernel_wide_pos_weights_match_reference(tq, tk, d, dv, p, padded, chunk_size, left_chunks, scale):
    _compare(_inputs(tq, tk, d, dv, p, padded, num_heads=1, seed=6), chunk_size, left_chunks, scale, weights=True)


@pytest.mark.parametrize("weights", [False, True])
def test_kernel_wide_pos_unequal_blocks(weights):
    """16 x 32 and 32 x 16 tiles: the window spans BLOCK_M + BLOCK_N - 1 = 47 rows, padded to 64."""
    x = _inputs(45, 45, 90, 90, 90, (45, 33), num_heads=1 if weights else 2, seed=7)
    _compare(x, 6, 2, 90**-0.5, weights=weights, block_m=16, block_n=32)
    _compare(x, -1, -1, 90**-0.5, weights=weights, block_m=32, block_n=16)


def test_kernel_both_positional_paths_agree_at_the_threshold(monkeypatch):
    """At P = 16 the wide path (window and tl.dot) and the narrow one (loop over P) compute the same
    output and gradients, and both match the reference."""
    from asr_kernels import rel_pos_attention as kernels

    x = _inputs(27, 33, 16, 16, 16, (33, 24), seed=8)
    args = (x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"])
    names = list(GRAD_NAMES)
    grad = _randn(2, 2, 27, 16, seed=2)
    results = {}
    for threshold in (16, 17):
        monkeypatch.setattr(kernels, "_WIDE_POS_MIN_DIM", threshold)
        assert _wide_pos(x) == (threshold == 16)
        out = kernels.rel_pos_attention(*args, chunk_size=4, left_chunks=3, scale=0.25)
        results[threshold] = (out, *torch.autograd.grad(out, [x[name] for name in names], grad))
    expected = rel_pos_attention_reference(*args, chunk_size=4, left_chunks=3, scale=0.25)
    expected = (expected, *torch.autograd.grad(expected, [x[name] for name in names], grad))
    for name, wide, narrow, want in zip(["out"] + names, results[16], results[17], expected):
        torch.testing.assert_close(wide, narrow, atol=2e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
        torch.testing.assert_close(wide, want, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("weights", [False, True])
def test_kernel_unequal_blocks(weights):
    """Block sizes 16 x 32 and 32 x 16 (the table gradient's diagonal bookkeeping depends on both)."""
    x = _inputs(45, 45, 32, 12, 4, (45, 33), seed=3)
    _compare(x, 6, 2, 1.0, weights=weights, block_m=16, block_n=32)
    _compare(x, -1, -1, 1.0, weights=weights, block_m=32, block_n=16)


def test_kernel_rows_without_keys_are_zero():
    from asr_kernels import rel_pos_attention as kernels

    x = _inputs(21, 21, 32, 12, 4, padded_lengths=(21, 0))
    out = kernels.rel_pos_attention(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"])
    weights = kernels.rel_pos_attention_weights(x["q"], x["k"], x["q_pos"], x["pos_table"], x["key_bias"])
    assert torch.equal(out[:, 1], torch.zeros_like(out[:, 1]))
    assert torch.equal(weights[:, 1], torch.zeros_like(weights[:, 1]))
    (out.sum() + weights.sum()).backward()
    for name in GRAD_NAMES:
        assert torch.isfinite(x[name].grad).all(), name


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")  # the query blocks that do see NaN keys
def test_kernel_skips_fully_masked_key_blocks():
    """NaN keys/values in blocks a query block cannot see must not reach its output: they are never read."""
    from asr_kernels import rel_pos_attention as kernels

    x = _inputs(64, 64, 32, 12, 4)
    with torch.no_grad():
        k, v = x["k"].clone(), x["v"].clone()
        # Chunk 16, no left context: query block 1 (rows 16..31) sees only key block 1.
        k[:, :, :16] = float("nan")
        v[:, :, 32:] = float("nan")
        out = kernels.rel_pos_attention(
            x["q"], k, v, x["q_pos"], x["pos_table"], chunk_size=16, left_chunks=0, block_m=16, block_n=16
        )
        expected = rel_pos_attention_reference(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], None, 16, 0)
    torch.testing.assert_close(out[:, :, 16:32], expected[:, :, 16:32], atol=2e-5, rtol=1e-4)


def test_kernel_dispatch_forced_by_env(monkeypatch):
    monkeypatch.setenv("ASR_ATTENTION_BACKEND", "triton")
    x = _inputs(19, 19, 32, 12, 4, (19, 12))
    padding = torch.isinf(x["key_bias"])
    assert resolve_backend("auto", DEVICE) == "triton"
    out = rel_pos_attention(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], padding, 4, 1)
    expected = rel_pos_attention_reference(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], x["key_bias"], 4, 1)
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-4)


def _check_float16(x: dict) -> None:
    """float16 kernels (tensor-core dots) within 5e-3 relative error of the float32 reference, chunk 8."""
    from asr_kernels import rel_pos_attention as kernels

    names = ["q", "k", "v", "q_pos", "pos_table"]
    half = [x[name].detach().half().requires_grad_() for name in names]
    out = kernels.rel_pos_attention(*half, x["key_bias"], chunk_size=8, left_chunks=1)
    assert out.dtype == torch.float16
    expected = rel_pos_attention_reference(*(x[name] for name in names), x["key_bias"], 8, 1)
    grad = _randn(*out.shape, seed=1)
    got_grads = torch.autograd.grad(out, half, grad.half())
    expected_grads = torch.autograd.grad(expected, [x[name] for name in names], grad)
    for name, got, want in zip(["out"] + names, [out, *got_grads], [expected, *expected_grads]):
        error = (got.float() - want).abs().max() / want.abs().max()
        assert error < 5e-3, f"{name}: relative error {error:.2e}"


def test_kernel_float16_close_to_float32_reference():
    _check_float16(_inputs(37, 37, 32, 12, 4, (37, 25)))


def test_kernel_wide_pos_float16_close_to_float32_reference():
    x = _inputs(37, 37, 90, 90, 90, (37, 25))
    assert _wide_pos(x)
    _check_float16(x)


def test_kernel_rejects_bad_inputs():
    from asr_kernels import rel_pos_attention as kernels

    x = _inputs(10, 10, 32, 12, 4)
    with pytest.raises(ValueError, match=r"pos_table must be \(H, T_q \+ T_k - 1, P\) = \(2, 19, 4\)"):
        kernels.rel_pos_attention(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"][:, :18])
    with pytest.raises(ValueError, match="chunk mask needs T_k >= T_q"):
        kernels.rel_pos_attention(x["q"], x["k"][:, :, :5], x["v"][:, :, :5], chunk_size=4)
    with pytest.raises(ValueError, match="key_bias is a mask"):
        key_bias = torch.zeros(2, 10, device=DEVICE, requires_grad=True)
        kernels.rel_pos_attention(x["q"], x["k"], x["v"], key_bias=key_bias)
    with pytest.raises(ValueError, match="share a dtype"):
        kernels.rel_pos_attention(x["q"], x["k"], x["v"].double())
    with pytest.raises(ValueError, match="block_m must be a power of two"):
        kernels.rel_pos_attention(x["q"], x["k"], x["v"], block_m=24)


@pytest.mark.parametrize("causal", [False, True])
def test_kernel_zipformer_encoder_same_with_both_backends(causal, monkeypatch):
    """The tiny Zipformer of tests/data (eval, padded batch, chunked attention when causal): outputs and
    input gradients on valid frames agree between the "torch" and "triton" attention backends, and the
    "triton" run really goes through the kernels (2 attention calls and 1 weights call per layer)."""
    from asr.encoders.zipformer import build_zipformer
    from asr_kernels import rel_pos_attention as kernels

    calls = []

    def counted(name):
        real = getattr(kernels, name)

        def wrapper(*args, **kwargs):
            calls.append((name, kwargs["chunk_size"], kwargs["left_chunks"]))
            return real(*args, **kwargs)

        monkeypatch.setattr(kernels, name, wrapper)

    counted("rel_pos_attention")
    counted("rel_pos_attention_weights")

    config = torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)["config"]
    torch.manual_seed(0)
    model = build_zipformer("zipformer-small", causal=causal, chunk_size=16, left_context_frames=16, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.eval().to(DEVICE)
    features = torch.randn(2, 100, 80).to(DEVICE)
    feature_lens = torch.tensor([100, 71], device=DEVICE)
    results = {}
    for backend in ("torch", "triton"):
        model.set_attention_backend(backend)
        # SwooshL/SwooshR store their derivative with random dithering whenever gradients are needed
        # (eval too): give both runs the same draws.
        torch.manual_seed(0)
        x = features.clone().requires_grad_()
        y, y_lens = model(x, feature_lens)
        valid = (torch.arange(y.shape[1], device=DEVICE) < y_lens[:, None]).unsqueeze(-1)
        weight = torch.cos(torch.arange(y.shape[-1], device=DEVICE))
        (grad,) = torch.autograd.grad((y * valid * weight).sum(), x)
        results[backend] = (y * valid, grad)
    torch.testing.assert_close(results["triton"][0], results["torch"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], atol=1e-4, rtol=1e-4)
    num_layers = sum(config["num_encoder_layers"])
    assert [c[0] for c in calls].count("rel_pos_attention") == 2 * num_layers
    assert [c[0] for c in calls].count("rel_pos_attention_weights") == num_layers
    # Chunk 16 at 50 Hz with 16 frames (one chunk) of left context: 16 // ds per stack, one left chunk.
    expected_chunks = {(16 // ds, 1) for ds in config["downsampling_factor"]} if causal else {(-1, -1)}
    assert {c[1:] for c in calls} == expected_chunks


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_kernel_random_sweep(seed):
    """Random shapes, dims, masks and block sizes."""
    gen = torch.Generator().manual_seed(100 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    tq = int(torch.randint(17, 71, (1,), generator=gen))
    tk = tq + pick([0, 0, 13])
    d, dv, p = pick([16, 32, 90]), pick([12, 24, 40]), pick([None, 1, 4, 6])
    padded = pick([(), (tk, max(1, tk - 9))])
    chunk_size, left_chunks = pick([(-1, -1), (4, 0), (7, 2), (16, -1)])
    blocks = dict(block_m=pick([16, 32]), block_n=pick([16, 32]))
    x = _inputs(tq, tk, d, dv, p, padded, seed=seed)
    _compare(x, chunk_size, left_chunks, d**-0.5, weights=False, **blocks)
    _compare(x, chunk_size, left_chunks, d**-0.5, weights=True, **blocks)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_kernel_wide_pos_random_sweep(seed):
    """Random shapes, masks and block sizes on the wide positional path (P >= 16, P = D or not)."""
    gen = torch.Generator().manual_seed(200 + seed)

    def pick(options):
        return options[int(torch.randint(len(options), (1,), generator=gen))]

    tq = int(torch.randint(17, 60, (1,), generator=gen))
    tk = tq + pick([0, 0, 11])
    p = pick([16, 32, 90, 135])
    d, dv = pick([p, 32]), pick([p, 12])
    padded = pick([(), (tk, max(1, tk - 9))])
    chunk_size, left_chunks = pick([(-1, -1), (4, 0), (7, 2), (16, -1)])
    blocks = dict(block_m=pick([16, 32]), block_n=pick([16, 32]))
    x = _inputs(tq, tk, d, dv, p, padded, seed=seed)
    assert _wide_pos(x)
    _compare(x, chunk_size, left_chunks, d**-0.5, weights=False, **blocks)
    _compare(x, chunk_size, left_chunks, d**-0.5, weights=True, **blocks)
