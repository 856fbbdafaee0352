"""Brute-force oracles for the attention decoder and CTC: explicit per-sequence scores, every CTC path."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from asr.models.aed import AttentionDecoder


def tiny_decoder(seed: int = 0, vocab_size: int = 5, encoder_dim: int = 8, sharpen: float = 4.0) -> AttentionDecoder:
    """A 2-layer AED in eval mode whose output layer is scaled by ``sharpen`` so that its distributions are
    far from uniform (distinct scores make the best sequence unique)."""
    torch.manual_seed(seed)
    decoder = AttentionDecoder(
        vocab_size, encoder_dim, dim=16, num_layers=2, num_heads=2, feedforward_dim=32, dropout=0.0
    ).double()
    with torch.no_grad():
        decoder.output.weight.mul_(sharpen)
    return decoder.eval()


def explicit_attention_score(decoder: AttentionDecoder, memory: torch.Tensor, tokens: Sequence[int]) -> float:
    """``Σ log p(y_i | y_<i, x)`` over ``tokens`` and the final ``<sos/eos>``: one unpadded forward of this
    sequence alone against ``memory`` ``(T, C)`` (all frames valid), log-softmax written out."""
    sos = decoder.sos_eos_id
    inputs = torch.tensor([[sos, *tokens]])
    with torch.no_grad():
        logits = decoder(inputs, torch.tensor([len(tokens) + 1]), memory.unsqueeze(0), torch.tensor([memory.size(0)]))
    logits = logits.logits[0].double()
    total = 0.0
    for position, target in enumerate([*tokens, sos]):
        row = logits[position].tolist()
        total += row[target] - math.log(sum(math.exp(v) for v in row))
    return total


def collapse(path: Sequence[int], blank: int = 0) -> tuple[int, ...]:
    out, previous = [], None
    for symbol in path:
        if symbol != blank and symbol != previous:
            out.append(symbol)
        previous = symbol
    return tuple(out)


def ctc_labelling_probs(log_probs: torch.Tensor, blank: int = 0) -> dict[tuple[int, ...], float]:
    """Probability of every labelling: the sum over all ``V^T`` paths of ``(T, V)`` log-probabilities."""
    T, V = log_probs.shape
    probs = log_probs.double().exp().tolist()
    labellings: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=T):
        p = 1.0
        for t, symbol in enumerate(path):
            p *= probs[t][symbol]
        key = collapse(path, blank)
        labellings[key] = labellings.get(key, 0.0) + p
    return labellings
