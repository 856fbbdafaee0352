"""CTC loss: ``torch.nn.functional.ctc_loss`` in float32 with blank 0, batch-first log-probs, and a
counted warning when utterances have no valid alignment (their loss and gradient are zeroed)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ctc_loss"]

logger = logging.getLogger(__name__)

_REDUCTIONS = ("none", "mean", "sum")


def ctc_loss(
    log_probs: Tensor,
    targets: Tensor,
    input_lengths: Tensor,
    target_lengths: Tensor,
    reduction: str = "sum",
) -> Tensor:
    """CTC loss with blank id 0.

    Args:
      log_probs: ``(N, T, C)`` log-softmax outputs (any float dtype; computed in float32).
      targets: ``(N, S)`` padded or ``(sum(target_lengths),)`` concatenated label ids (no blank).
      input_lengths: ``(N,)`` int64 valid frames per utterance.
      target_lengths: ``(N,)`` int64 labels per utterance.
      reduction: ``"sum"`` (icefall's default) | ``"mean"`` (torch's: each loss divided by its target
        length, then averaged) | ``"none"`` -> ``(N,)``.

    Returns:
      the loss. Utterances whose loss is infinite (e.g. fewer frames than the labels need) count as 0
      with zero gradient (``zero_infinity``); a warning says how many there were in the batch.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction should be one of {_REDUCTIONS}, got {reduction!r}")
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (N, T, C), got {tuple(log_probs.shape)}")
    time_major = log_probs.float().transpose(0, 1)  # (T, N, C), as torch expects
    args = (time_major, targets, input_lengths, target_lengths)
    losses = F.ctc_loss(*args, blank=0, reduction="none", zero_infinity=False)
    num_infinite = int(torch.isinf(losses).sum())
    if num_infinite:
        logger.warning(
            "ctc_loss: %d of %d utterances have an infinite loss (no valid alignment, e.g. input "
            "shorter than its labels need); their loss and gradient are set to zero",
            num_infinite,
            losses.numel(),
        )
        # Recompute so that the gradient of the infinite utterances is zero rather than NaN.
        losses = F.ctc_loss(*args, blank=0, reduction="none", zero_infinity=True)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return (losses / target_lengths.to(losses).clamp(min=1)).mean()
