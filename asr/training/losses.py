"""The training loss: icefall's warm-up weighting of the raw losses that :class:`asr.models.AsrModel` returns."""

from __future__ import annotations

import torch


def combine_losses(
    simple: torch.Tensor | None,
    pruned: torch.Tensor | None,
    ctc: torch.Tensor | None,
    aed: torch.Tensor | None = None,
    batch_idx_train: int | None = None,
    warm_step: int = 2000,
    simple_loss_scale: float = 0.5,
    ctc_loss_scale: float = 0.2,
    aed_loss_scale: float = 0.8,
) -> torch.Tensor:
    """Weighted training loss, icefall's ``compute_loss`` schedule; ``combine_losses(*model(...), ...)``.

    During warm-up (``batch_idx_train < warm_step``) the simple-loss weight falls linearly from 1 to
    ``simple_loss_scale`` and the pruned-loss weight rises linearly from 0.1 to 1; afterwards they stay
    at ``simple_loss_scale`` and 1. The CTC loss is weighted by ``ctc_loss_scale`` and the attention-decoder
    loss by ``aed_loss_scale`` throughout (icefall: CTC 0.2 and AED 0.8 beside the transducer, CTC 0.1 and
    AED 0.9 without it).
    ``batch_idx_train=None`` means warm-up is over. The weights are scalars, so the result has the
    shape of the losses (0-dim for sums over the batch).
    """
    if simple is None and ctc is None and aed is None:
        raise ValueError("combine_losses needs at least one of the transducer, CTC and attention-decoder losses")
    if (simple is None) != (pruned is None):
        raise ValueError("the simple and pruned transducer losses come together")
    total = 0.0
    if simple is not None:
        if batch_idx_train is None or batch_idx_train >= warm_step:
            simple_weight, pruned_weight = simple_loss_scale, 1.0
        else:
            progress = batch_idx_train / warm_step
            simple_weight = 1.0 - progress * (1.0 - simple_loss_scale)
            pruned_weight = 0.1 + 0.9 * progress
        total = simple_weight * simple + pruned_weight * pruned
    if ctc is not None:
        total = total + ctc_loss_scale * ctc
    if aed is not None:
        total = total + aed_loss_scale * aed
    return total
