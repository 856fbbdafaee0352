"""Checks that need a CUDA GPU, skipped without one (CI has none; run them on a GPU machine with
``pytest tests/test_gpu.py``):

* every Triton kernel case of ``helpers/triton_kernel_cases.py`` and ``triton_kernel_encoder_cases.py`` compiled
  for the GPU (the default run checks the same cases under the Triton interpreter), random sweeps included;
* the kernels in float16 / bfloat16 on utterance-length sequences against the float32 reference;
* the RNN-T losses on the GPU against the same losses on the CPU, values and gradients;
* a training step of a transducer + CTC model under autocast (bf16, fp16) against float32.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from helpers.kernels import TRITON_KERNEL_CASES, TRITON_KERNEL_ENCODER_CASES, rel_pos_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

KERNEL_CASE_FILES = [str(TRITON_KERNEL_CASES), str(TRITON_KERNEL_ENCODER_CASES)]
CUDA = torch.device("cuda")


def test_kernel_cases_compiled_on_gpu():
    pytest.importorskip("triton")
    env = dict(os.environ, ASR_TEST_DEVICE="cuda")
    env.pop("TRITON_INTERPRET", None)
    env.pop("ASR_ATTENTION_BACKEND", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *KERNEL_CASE_FILES, "-m", "slow or not slow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " skipped" not in result.stdout, result.stdout[-3000:]


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.detach().float() - want.detach()).abs().max() / want.detach().abs().max())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "length, head_dim, value_dim, pos_dim, chunk_size, left_chunks",
    [
        pytest.param(1500, 32, 12, 4, -1, -1, id="zipformer-T1500-full"),
        pytest.param(1500, 32, 12, 4, 32, 4, id="zipformer-T1500-chunk32-left4"),
        pytest.param(700, 90, 90, 90, -1, -1, id="efficient-conformer-T700-wide-pos"),
    ],
)
def test_kernels_low_precision_long_sequences(dtype, length, head_dim, value_dim, pos_dim, chunk_size, left_chunks):
    """Utterance-length inputs (30 s at 50 Hz) in half precision: output and every gradient within 1%
    (bf16: 3%) of the float32 reference, relative to the largest reference value."""
    from asr_kernels import rel_pos_attention as kernels
    from asr_kernels.reference import rel_pos_attention_reference

    names = ["q", "k", "v", "q_pos", "pos_table"]
    x = rel_pos_inputs(length, length, head_dim, value_dim, pos_dim, (length, length * 2 // 3), num_heads=4, seed=11)
    full = [x[name].detach().to(CUDA).requires_grad_() for name in names]
    half = [t.detach().to(dtype).requires_grad_() for t in full]
    key_bias = x["key_bias"].to(CUDA)
    scale = head_dim**-0.5
    out = kernels.rel_pos_attention(*half, key_bias, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale)
    assert out.dtype == dtype
    expected = rel_pos_attention_reference(*full, key_bias, chunk_size=chunk_size, left_chunks=left_chunks, scale=scale)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3)).to(CUDA)
    got_grads = torch.autograd.grad(out, half, grad.to(dtype))
    expected_grads = torch.autograd.grad(expected, full, grad)
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-2
    for name, got, want in zip(["out"] + names, [out, *got_grads], [expected, *expected_grads]):
        error = _relative_error(got, want)
        assert error < tolerance, f"{name}: relative error {error:.2e}"


def _rnnt_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    batch, frames, labels, classes = 3, 40, 12, 30
    logits = torch.randn(batch, frames, labels + 1, classes, generator=gen)
    symbols = torch.randint(1, classes, (batch, labels), generator=gen)
    boundary = torch.tensor([[0, 0, labels, frames], [0, 0, 7, 31], [0, 0, 12, 25]])
    am = torch.randn(batch, frames, classes, generator=gen)
    lm = torch.randn(batch, labels + 1, classes, generator=gen)
    return logits, symbols, boundary, am, lm


def test_full_rnnt_loss_on_gpu_matches_cpu():
    from asr.losses import rnnt_loss

    logits, symbols, boundary, _, _ = _rnnt_inputs()
    values, grads = {}, {}
    for device in ("cpu", CUDA.type):
        x = logits.to(device).requires_grad_()
        loss = rnnt_loss(x, symbols.to(device), 0, boundary.to(device), reduction="none")
        (grads[device],) = torch.autograd.grad(loss.sum(), x)
        values[device] = loss
    torch.testing.assert_close(values[CUDA.type].cpu(), values["cpu"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grads[CUDA.type].cpu(), grads["cpu"], atol=1e-5, rtol=1e-4)


def test_pruned_rnnt_path_on_gpu_matches_cpu():
    """Smoothed loss, its gradients, the prune ranges and the pruned loss: the same on both devices."""
    from asr.losses import do_rnnt_pruning, get_rnnt_prune_ranges, rnnt_loss_pruned, rnnt_loss_smoothed

    _, symbols, boundary, am, lm = _rnnt_inputs(seed=1)
    out = {}
    for device in ("cpu", CUDA.type):
        a, b = am.to(device).requires_grad_(), lm.to(device).requires_grad_()
        s, bd = symbols.to(device), boundary.to(device)
        simple, (px_grad, py_grad) = rnnt_loss_smoothed(b, a, s, 0, 0.25, 0.0, bd, reduction="none", return_grad=True)
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, bd, 5)
        am_pruned, lm_pruned = do_rnnt_pruning(a, b, ranges)
        pruned = rnnt_loss_pruned(am_pruned + lm_pruned, s, ranges, 0, bd, reduction="none")
        grad_a, grad_b = torch.autograd.grad((simple + pruned).sum(), [a, b])
        out[device] = [t.detach().cpu() for t in (simple, pruned, ranges, grad_a, grad_b)]
    for name, got, want in zip(["simple", "pruned", "ranges", "grad am", "grad lm"], out[CUDA.type], out["cpu"]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_step_under_autocast(dtype):
    """zipformer-xs transducer + CTC, 4 utterances of 3 s: the autocast losses are finite and within 2% of
    float32, and so is the gradient norm."""
    from asr.models.build import build_model
    from asr.training.losses import combine_losses

    torch.manual_seed(0)
    model = build_model("zipformer-xs", vocab_size=64).to(CUDA).train()
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(4, 300, 80, generator=gen).to(CUDA)
    feature_lens = torch.tensor([300, 280, 250, 200], device=CUDA)
    tokens = [torch.randint(1, 64, (n,), generator=gen).tolist() for n in (20, 15, 12, 9)]

    def step(autocast_dtype):
        model.zero_grad()
        # Same dropout, layer skipping and quantised-derivative draws in both runs.
        torch.manual_seed(1)
        with torch.autocast(CUDA.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            losses = model(features, feature_lens, tokens)
            total = combine_losses(*losses, batch_idx_train=100)
        total.backward()
        norm = torch.sqrt(sum(p.grad.float().pow(2).sum() for p in model.parameters() if p.grad is not None))
        return {**losses._asdict(), "total": total}, float(norm)

    reference, reference_norm = step(None)
    losses, norm = step(dtype)
    for name in ("simple", "pruned", "ctc", "total"):
        got, want = float(losses[name].detach()), float(reference[name].detach())
        assert torch.isfinite(torch.tensor(got)), name
        assert abs(got - want) < 0.02 * abs(want), f"{name}: {got} under autocast vs {want} in float32"
    assert abs(norm - reference_norm) < 0.02 * reference_norm, (norm, reference_norm)


def test_depthwise_conv1d_under_float16_autocast_stays_off_cudnn():
    """asr.nn.depthwise: under float16 autocast DepthwiseConv1d (forward and backward) launches no cuDNN
    kernel and gives float16 within rounding of float32, while a plain grouped nn.Conv1d of the same shape
    does go to cuDNN (whose per-shape plan building made float16 training 5x slower than bfloat16)."""
    from torch.profiler import ProfilerActivity, profile

    from asr.nn.depthwise import DepthwiseConv1d

    torch.manual_seed(0)
    # zipformer-xs's convolution module: 192 channels, kernel 31.
    ours = DepthwiseConv1d(192, 31, padding=15).to(CUDA)
    plain = torch.nn.Conv1d(192, 192, 31, padding=15, groups=192).to(CUDA)
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(4, 192, 301, device=CUDA)

    def cudnn_kernels(conv):
        inputs = x.clone().requires_grad_(True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            with torch.autocast("cuda", dtype=torch.float16):
                y = conv(inputs)
            y.float().square().sum().backward()
            torch.cuda.synchronize()
        return y, [e.name for e in prof.events() if "cudnn" in e.name.lower()]

    y, ours_cudnn = cudnn_kernels(ours)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), plain(x), atol=2e-3, rtol=2e-3)
    assert not ours_cudnn, sorted(set(ours_cudnn))
    _, plain_cudnn = cudnn_kernels(plain)
    assert plain_cudnn, "a float16 depthwise nn.Conv1d no longer goes to cuDNN here: the work-around may be obsolete"
