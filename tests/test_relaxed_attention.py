"""Relaxed attention ``(1 - γ)·A + γ·m/Σm``: the function against an explicit loop, and in use in the
self-attention of every encoder family and the attention decoder's cross-attention: rows sum to 1, padded
keys get 0, valid keys at least γ/len, active in training only, and γ = 0 changes nothing."""

from __future__ import annotations

import random

import pytest
import torch

import asr.encoders.zipformer as zipformer_module
import asr.nn.attention as attention_module
from asr.encoders import build_encoder
from asr.nn.attention import relax_attention_weights

from helpers.aed_reference import tiny_decoder
from helpers.tiny_models import TINY_CONFORMER, TINY_TRANSFORMER, TINY_ZIPFORMER

# One small configuration per encoder family.
TINY = {
    "zipformer-xs": TINY_ZIPFORMER,
    "conformer-small": TINY_CONFORMER,
    "efficient-conformer-small": dict(stage_dims=(24, 36, 48), stage_layers=(2, 2, 1), num_heads=4, kernel_size=5),
    "transformer-transducer-small": TINY_TRANSFORMER,
}
GAMMA = 0.3


def test_relax_function_equals_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    weights = torch.rand(2, 3, 5, generator=g)
    weights = weights / weights.sum(-1, keepdim=True)
    mask = torch.rand(2, 3, 5, generator=g) < 0.4
    mask[0, 0] = True  # a row with no visible key stays as it is
    got = relax_attention_weights(weights.masked_fill(mask, 0.0), mask, GAMMA)
    for n in range(2):
        for i in range(3):
            visible = [j for j in range(5) if not mask[n, i, j]]
            for j in range(5):
                plain = 0.0 if mask[n, i, j] else float(weights[n, i, j])
                expected = (1 - GAMMA) * plain + (GAMMA / len(visible) if j in visible else 0.0)
                assert float(got[n, i, j]) == pytest.approx(expected, abs=1e-7)
    assert relax_attention_weights(weights, mask, 0.0) is weights


def check_relaxed_rows(weights: torch.Tensor, mask: torch.Tensor | None, gamma: float) -> None:
    """Rows with a visible key sum to 1; masked keys are 0; visible keys get at least γ / (visible keys)."""
    masked = torch.zeros_like(weights, dtype=torch.bool) if mask is None else mask.expand_as(weights)
    visible = (~masked).sum(-1, keepdim=True)
    rows = visible.squeeze(-1) > 0
    torch.testing.assert_close(weights.sum(-1)[rows], torch.ones_like(weights.sum(-1)[rows]))
    assert torch.all(weights[masked] == 0)
    floor = (gamma / visible.clamp(min=1)).expand_as(weights)
    assert torch.all(weights[~masked & rows.unsqueeze(-1)] >= floor[~masked & rows.unsqueeze(-1)] - 1e-6)


def encoder_pair(name: str, gamma: float):
    torch.manual_seed(0)
    plain = build_encoder(name, **TINY[name])
    relaxed = build_encoder(name, relaxed_attention_gamma=gamma, **TINY[name])
    relaxed.load_state_dict(plain.state_dict())
    return plain, relaxed


def train_forward(encoder, x, x_lens):
    """A training-mode forward with every random draw (dropout, layer skipping) seeded alike."""
    encoder.train()
    torch.manual_seed(1)
    random.seed(1)
    with torch.no_grad():
        return encoder(x, x_lens)[0]


@pytest.fixture
def spy(monkeypatch):
    """Records the output and mask of every call of the relaxation in the attention modules."""
    calls = []

    def recording(weights, mask, gamma):
        out = relax_attention_weights(weights, mask, gamma)
        calls.append((out, mask, gamma))
        return out

    monkeypatch.setattr(attention_module, "relax_attention_weights", recording)
    monkeypatch.setattr(zipformer_module, "relax_attention_weights", recording)
    return calls


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_self_attention_is_relaxed_in_training_only(name, spy):
    plain, relaxed = encoder_pair(name, GAMMA)
    x, x_lens = torch.randn(2, 64, 80), torch.tensor([64, 41])
    # Eval first: a training forward moves batch-norm statistics, differently in the two models.
    plain.eval(), relaxed.eval()
    with torch.no_grad():
        assert torch.equal(plain(x, x_lens)[0], relaxed(x, x_lens)[0])
    assert not spy
    plain_out = train_forward(plain, x, x_lens)
    assert not spy
    relaxed_out = train_forward(relaxed, x, x_lens)
    assert spy, "relaxation was never applied in training"
    for weights, mask, gamma in spy:
        assert gamma == GAMMA and mask is not None
        check_relaxed_rows(weights, mask, GAMMA)
        # Masks are (N, 1, Tq, Tk) (heads second) or (N, Tq or 1, Tk) (the Zipformer's, heads first): the
        # short utterance's padded keys are masked in every row, the full one's none.
        per_utt = mask[:, 0] if mask.ndim == 4 else mask
        assert per_utt[-1].any(-1).all() and not per_utt[0].any()
    assert not torch.allclose(plain_out, relaxed_out, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY))
def test_encoder_with_gamma_zero_equals_plain_in_training(name):
    plain, relaxed = encoder_pair(name, 0.0)
    x, x_lens = torch.randn(2, 64, 80), torch.tensor([64, 41])
    assert torch.equal(train_forward(plain, x, x_lens), train_forward(relaxed, x, x_lens))


def test_zipformer_rejects_a_gamma_outside_0_1():
    with pytest.raises(ValueError, match="relaxed_attention_gamma"):
        build_encoder("zipformer-xs", relaxed_attention_gamma=1.0, **TINY["zipformer-xs"])


def test_decoder_cross_attention_is_relaxed_in_training_only():
    plain = tiny_decoder(seed=4)
    relaxed = tiny_decoder(seed=4)
    for layer in relaxed.layers:
        layer.cross_attn.relax = GAMMA
    memory, lens = torch.randn(2, 7, 8, dtype=torch.float64), torch.tensor([7, 4])
    tokens, token_lens = torch.tensor([[1, 2, 3], [1, 4, 0]]), torch.tensor([3, 2])
    for decoder in (plain, relaxed):
        decoder.train()  # dropout is 0: training mode only switches relaxation on
    out = relaxed(tokens, token_lens, memory, lens, need_weights=True)
    reference = plain(tokens, token_lens, memory, lens, need_weights=True)
    padding = (torch.arange(7) >= lens.unsqueeze(1))[:, None, None, :]  # (N, 1, 1, T)
    for weights in out.cross_weights:
        check_relaxed_rows(weights, padding, GAMMA)
        assert torch.all(weights[0] >= GAMMA / 7 - 1e-12) and torch.all(weights[1, ..., :4] >= GAMMA / 4 - 1e-12)
    # The first layer sees the same queries, so its weights are exactly the relaxed plain ones.
    expected = (1 - GAMMA) * reference.cross_weights[0] + GAMMA * (~padding) / lens[:, None, None, None]
    torch.testing.assert_close(out.cross_weights[0], expected.masked_fill(padding, 0.0))
    assert not torch.allclose(out.logits, reference.logits)
    plain.eval(), relaxed.eval()
    with torch.no_grad():
        assert torch.equal(
            plain(tokens, token_lens, memory, lens).logits, relaxed(tokens, token_lens, memory, lens).logits
        )
    zero = tiny_decoder(seed=4)
    for layer in zero.layers:
        layer.cross_attn.relax = 0.0
    zero.train()
    assert torch.equal(zero(tokens, token_lens, memory, lens).logits, reference.logits)
