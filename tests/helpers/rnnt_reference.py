"""Transducer and CTC losses computed without ``asr.losses``: the full RNN-T lattice recursion (checked
against enumeration in tests/test_decoding.py) and torch's CTC loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from asr.models import AsrModel, pad_tokens


def full_lattice_logits(model: AsrModel, enc_out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Joiner output on the whole lattice: enc_out (N, T, C), targets (N, S) -> (N, T, S+1, V)."""
    dec_out = model.decoder(torch.cat([torch.zeros_like(targets[:, :1]), targets], dim=1))
    return model.joiner(enc_out.unsqueeze(2), dec_out.unsqueeze(1))


def reference_rnnt_log_prob(
    logits: torch.Tensor, targets: torch.Tensor, frame_lens: torch.Tensor, target_lens: torch.Tensor
) -> torch.Tensor:
    """logits (N, T, S+1, V), targets (N, S), frame_lens and target_lens (N,).

    log P(y | x) over all alignments of the regular RNN-T lattice:
    alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + emit[t, u-1]).
    Within a frame the u-recursion is a log-cumsum: alpha[t, u] = C[u] + logcumsumexp(A - C)[u], A the
    contribution of frame t-1, C[u] the summed emission log-probs before u. Returns (N,)."""
    log_probs = logits.log_softmax(dim=-1)
    blank = log_probs[..., 0]
    index = targets[:, None, :, None].expand(-1, logits.size(1), -1, 1)
    emit = log_probs[:, :, :-1, :].gather(3, index)[..., 0]
    cum_emit = F.pad(emit.cumsum(dim=2), (1, 0))
    n, num_frames, _ = blank.shape
    from_previous = torch.full_like(blank[:, 0], float("-inf"))
    from_previous[:, 0] = 0.0
    alphas = []
    for t in range(num_frames):
        alpha = cum_emit[:, t] + torch.logcumsumexp(from_previous - cum_emit[:, t], dim=1)
        alphas.append(alpha)
        from_previous = alpha + blank[:, t]
    alphas = torch.stack(alphas, dim=1)
    batch = torch.arange(n)
    return alphas[batch, frame_lens - 1, target_lens] + blank[batch, frame_lens - 1, target_lens]


def reference_losses(
    model: AsrModel, x: torch.Tensor, x_lens: torch.Tensor, tokens: list[list[int]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full RNN-T loss and CTC loss (both summed over the batch, scalars), computed without asr.losses;
    x (N, T, F), x_lens (N,), one token list per utterance."""
    enc_out, enc_lens = model.encode(x, x_lens)
    targets, target_lens = pad_tokens(tokens, model.vocab_size)
    logits = full_lattice_logits(model, enc_out, targets)
    rnnt = -reference_rnnt_log_prob(logits, targets, enc_lens, target_lens).sum()
    ctc_log_probs = model.ctc_log_probs(enc_out).transpose(0, 1)
    ctc = F.ctc_loss(ctc_log_probs, targets, enc_lens, target_lens, reduction="sum", zero_infinity=True)
    return rnnt, ctc
