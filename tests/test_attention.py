"""RelPositionMultiheadAttention against an explicit loop-by-loop reference, padding invariance, caches,
strided queries and relaxed attention."""

import pytest
import torch

from asr.nn.attention import RelPositionMultiheadAttention, relax_attention_weights
from asr.nn.masks import limited_context_mask, padding_mask

from helpers.attention import reference_attention


@pytest.mark.parametrize("group_size,stride", [(3, 1), (1, 1), (1, 2), (2, 1)])
def test_matches_explicit_reference(group_size, stride):
    torch.manual_seed(0)
    att = RelPositionMultiheadAttention(12, 2, group_size=group_size, query_stride=stride).eval()
    x = torch.randn(2, 7, 12)
    lengths = torch.tensor([7, 5])
    got = att(x, key_padding_mask=padding_mask(lengths)).output
    for n in range(2):
        expected = reference_attention(att, x[n], int(lengths[n]))
        valid = -(-int(lengths[n]) // stride)
        torch.testing.assert_close(got[n, :valid].double(), expected[:valid], atol=1e-5, rtol=1e-5)


def test_limited_context_mask_matches_reference():
    torch.manual_seed(1)
    att = RelPositionMultiheadAttention(8, 2).eval()
    x = torch.randn(1, 6, 8)
    mask = limited_context_mask(6, left=2, right=1)
    got = att(x, attn_mask=mask).output[0]
    expected = reference_attention(att, x[0], 6, visible=lambda i, j: not mask[i, j])
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group_size", [1, 3])
def test_padding_invariance(group_size):
    torch.manual_seed(2)
    att = RelPositionMultiheadAttention(16, 4, group_size=group_size).eval()
    short = torch.randn(1, 8, 16)
    padded = torch.cat([short, 50 * torch.randn(1, 5, 16)], dim=1)  # garbage in the padding
    alone = att(short).output
    batched = att(padded, key_padding_mask=padding_mask(torch.tensor([8]), 13)).output
    torch.testing.assert_close(batched[:, :8], alone, atol=1e-5, rtol=1e-5)


def test_cache_equals_full_sequence():
    torch.manual_seed(3)
    att = RelPositionMultiheadAttention(16, 4).eval()
    x = torch.randn(2, 10, 16)
    causal = limited_context_mask(10, left=-1, right=0)
    full = att(x, attn_mask=causal).output
    first = att(x[:, :6], attn_mask=causal[:6, :6])
    second = att(x[:, 6:], attn_mask=causal[6:], cache=(first.keys, first.values)).output
    torch.testing.assert_close(torch.cat([first.output, second], dim=1), full, atol=1e-5, rtol=1e-5)


def test_relaxed_attention_rows_padding_and_eval():
    torch.manual_seed(4)
    gamma = 0.25
    relaxed = RelPositionMultiheadAttention(16, 4, relaxed_attention_gamma=gamma)
    plain = RelPositionMultiheadAttention(16, 4)
    plain.load_state_dict(relaxed.state_dict())
    x = torch.randn(2, 6, 16)
    pad = padding_mask(torch.tensor([6, 4]))
    mask = limited_context_mask(6, left=-1, right=1)

    relaxed.train()  # dropout is 0, so training mode only switches relaxation on
    plain.train()
    w = relaxed(x, mask, pad, need_weights=True).weights  # (N, H, T, T)
    w0 = plain(x, mask, pad, need_weights=True).weights
    visible = ~(mask.unsqueeze(0) | pad.unsqueeze(1)).unsqueeze(1)  # (N, 1, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)))
    assert (w[~visible.expand_as(w)] == 0).all()
    assert (w[1, :, :, 4:] == 0).all()  # padded keys of utterance 2
    # closed form: (1 - gamma) A + gamma / (number of visible keys)
    counts = visible.sum(-1, keepdim=True).double()
    torch.testing.assert_close(w.double(), (1 - gamma) * w0.double() + gamma * visible / counts)

    relaxed.eval()
    plain.eval()
    assert torch.equal(relaxed(x, mask, pad, need_weights=True).weights, plain(x, mask, pad, need_weights=True).weights)


def test_relax_function_keeps_empty_rows_empty():
    w = torch.tensor([[0.0, 0.0], [0.3, 0.7]])
    mask = torch.tensor([[True, True], [False, False]])
    out = relax_attention_weights(w, mask, 0.5)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0], [0.4, 0.6]]))


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        RelPositionMultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="grouped attention with strided"):
        RelPositionMultiheadAttention(12, 2, group_size=3, query_stride=2)
    att = RelPositionMultiheadAttention(8, 2, group_size=2)
    with pytest.raises(ValueError, match="cache"):
        att(torch.randn(1, 4, 8), cache=(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))
