"""Pruned RNN-T training (k2's ``rnnt_loss_simple/smoothed``, ``get_rnnt_prune_ranges``,
``do_rnnt_pruning``, ``rnnt_loss_pruned``), without k2. Same names, argument order and semantics, so
icefall code ports by changing the import.

The recipe (Kuang et al., 2022):
  1. a "simple" loss whose joiner is just ``am[t] + lm[s]`` (``am (B, T, C)``, ``lm (B, S+1, C)``);
     its normalisers are one batched matmul, so the whole lattice costs ``O(B * T * S)``;
  2. the occupation probabilities of that lattice (``return_grad=True``) choose, for each frame, a
     window of ``s_range`` consecutive label positions (``get_rnnt_prune_ranges``);
  3. the real joiner runs only on ``(B, T, s_range)`` (``do_rnnt_pruning``);
  4. the exact RNN-T loss restricted to that band (``rnnt_loss_pruned``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr.losses.mutual_information import mutual_information_recursion
from asr.losses.rnnt import (
    apply_delay_penalty,
    check_boundary,
    check_reduction,
    check_rnnt_type,
    finish_px,
    log_softmax_gather,
    reduce_loss,
)

__all__ = [
    "do_rnnt_pruning",
    "get_rnnt_logprobs",
    "get_rnnt_logprobs_pruned",
    "get_rnnt_logprobs_smoothed",
    "get_rnnt_prune_ranges",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_loss_smoothed",
]


def _check_simple_inputs(lm: Tensor, am: Tensor, symbols: Tensor, boundary: Tensor | None) -> None:
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(f"lm must be (B, S+1, C) and am (B, T, C), got {tuple(lm.shape)} and {tuple(am.shape)}")
    batch, num_frames, _ = am.shape
    num_symbols = lm.shape[1] - 1
    if symbols.shape != (batch, num_symbols):
        raise ValueError(f"symbols must be ({batch}, {num_symbols}), got {tuple(symbols.shape)}")
    check_boundary(boundary, batch, num_symbols, num_frames)


class _SimpleLattice:
    """The pieces of the additive-joiner lattice shared by the simple and smoothed losses.

    ``log_norm (B, S+1, T)`` = ``logsumexp_c(lm[b, s, c] + am[b, t, c])`` via one matmul of
    max-shifted exponentials; ``px_am (B, S, T)`` / ``px_lm (B, S, 1)`` are the am/lm logits of the
    next label; ``py_am (B, 1, T)`` / ``py_lm (B, S+1, 1)`` those of blank.
    """

    def __init__(self, lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int):
        batch, num_frames, _ = am.shape
        num_symbols = lm.shape[1] - 1
        symbols = symbols.to(torch.int64)
        # The shifts cancel exactly in log_norm, so they need no gradient.
        self.lm_max = lm.detach().amax(dim=2, keepdim=True)  # (B, S+1, 1)
        self.am_max = am.detach().amax(dim=2, keepdim=True)  # (B, T, 1)
        self.lm_probs = (lm - self.lm_max).exp()
        self.am_probs = (am - self.am_max).exp()
        tiny = torch.finfo(am.dtype).tiny  # keeps log() finite if every product underflows
        self.log_norm = (
            (torch.matmul(self.lm_probs, self.am_probs.transpose(1, 2)) + tiny).log()
            + self.lm_max
            + self.am_max.transpose(1, 2)
        )
        self.px_am = am.gather(2, symbols.unsqueeze(1).expand(batch, num_frames, num_symbols)).transpose(1, 2)
        self.px_lm = lm[:, :num_symbols].gather(2, symbols.unsqueeze(-1))
        self.py_am = am[:, :, termination_symbol].unsqueeze(1)
        self.py_lm = lm[:, :, termination_symbol].unsqueeze(2)
        self.symbols = symbols
        self.num_symbols = num_symbols

    def joint(self) -> tuple[Tensor, Tensor]:
        """``px (B, S, T)`` and ``py (B, S+1, T)`` of the additive joiner."""
        px = self.px_am + self.px_lm - self.log_norm[:, : self.num_symbols]
        py = self.py_am + self.py_lm - self.log_norm
        return px, py


def get_rnnt_logprobs(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """``(px, py)`` of the simple lattice whose joiner is ``lm[b, s] + am[b, t]``, for
    :func:`mutual_information_recursion`.

    Args:
      lm: ``(B, S+1, C)`` label-side unnormalised logits (``lm[b, s]`` given ``s`` labels).
      am: ``(B, T, C)`` acoustic-side unnormalised logits.
      symbols: ``(B, S)`` int64 labels; termination_symbol: blank id.
      boundary: optional ``(B, 4)`` int64 ``[0, 0, S_b, T_b]``.
      rnnt_type: ``"regular"`` | ``"modified"`` | ``"constrained"``.

    Returns:
      ``px (B, S, T+1)`` (regular) or ``(B, S, T)``, and ``py (B, S+1, T)``, log-probabilities.
    """
    check_rnnt_type(rnnt_type)
    _check_simple_inputs(lm, am, symbols, boundary)
    px, py = _SimpleLattice(lm, am, symbols, termination_symbol).joint()
    return finish_px(px, py, boundary, rnnt_type), py


def rnnt_loss_simple(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """RNN-T loss with the additive joiner ``lm[b, s] + am[b, t]`` (``k2.rnnt_loss_simple``).

    Shapes as in :func:`get_rnnt_logprobs`. ``reduction``: ``"none"`` -> ``(B,)``, ``"mean"`` or
    ``"sum"`` -> scalar. With ``return_grad`` also returns ``(px_grad, py_grad)``: the gradients of
    the summed per-sequence log-likelihoods w.r.t. ``px``/``py`` (occupation probabilities, shapes of
    ``px``/``py``), the input of :func:`get_rnnt_prune_ranges`.
    """
    check_reduction(reduction)
    px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, boundary, rnnt_type)
    px = apply_delay_penalty(px, boundary, rnnt_type, delay_penalty)
    return _score(px, py, boundary, reduction, return_grad)


def _score(px: Tensor, py: Tensor, boundary: Tensor | None, reduction, return_grad: bool):
    if return_grad:
        scores, grads = mutual_information_recursion(px, py, boundary, return_grad=True)
        return reduce_loss(scores, reduction), grads
    return reduce_loss(mutual_information_recursion(px, py, boundary), reduction)


def get_rnnt_logprobs_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """Like :func:`get_rnnt_logprobs`, with the log-probs interpolated (in log space) as k2 does::

        (1 - lm_only_scale - am_only_scale) * joint + lm_only_scale * lm_only + am_only_scale * am_only

    ``lm_only`` is ``log_softmax(lm[b, s])``; ``am_only`` is ``am[b, t]`` combined with a unigram
    prior (the mean over the batch and all ``S+1`` positions of ``softmax(lm)``), normalised. A zero
    scale drops its term, so zero scales give exactly :func:`get_rnnt_logprobs`.
    """
    check_rnnt_type(rnnt_type)
    _check_simple_inputs(lm, am, symbols, boundary)
    lattice = _SimpleLattice(lm, am, symbols, termination_symbol)
    px, py = lattice.joint()
    joint_scale = 1.0 - lm_only_scale - am_only_scale
    px, py = px * joint_scale, py * joint_scale
    lm_sums = lattice.lm_probs.sum(dim=2, keepdim=True)  # (B, S+1, 1), times exp(-lm_max)
    if lm_only_scale != 0.0:
        lm_only_norm = lm_sums.log() + lattice.lm_max
        px = px + lm_only_scale * (lattice.px_lm - lm_only_norm[:, : lattice.num_symbols])
        py = py + lm_only_scale * (lattice.py_lm - lm_only_norm)
    if am_only_scale != 0.0:
        unigram = (lattice.lm_probs / lm_sums).mean(dim=(0, 1)) + 1.0e-20  # (C,)
        log_unigram = unigram.log()
        am_only_norm = (torch.matmul(lattice.am_probs, unigram).log() + lattice.am_max.squeeze(2)).unsqueeze(
            1
        )  # (B, 1, T)
        px_prior = log_unigram[lattice.symbols].unsqueeze(-1)  # (B, S, 1)
        px = px + am_only_scale * (lattice.px_am + px_prior - am_only_norm)
        py = py + am_only_scale * (lattice.py_am + log_unigram[termination_symbol] - am_only_norm)
    return finish_px(px, py, boundary, rnnt_type), py


def rnnt_loss_smoothed(
    lm: Tensor,
    am: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    lm_only_scale: float = 0.1,
    am_only_scale: float = 0.1,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """The simple loss with LM-only and AM-only smoothing (``k2.rnnt_loss_smoothed``); see
    :func:`get_rnnt_logprobs_smoothed` and :func:`rnnt_loss_simple` for arguments and returns."""
    check_reduction(reduction)
    px, py = get_rnnt_logprobs_smoothed(
        lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale, boundary, rnnt_type
    )
    px = apply_delay_penalty(px, boundary, rnnt_type, delay_penalty)
    return _score(px, py, boundary, reduction, return_grad)


def _monotonic_lower_bound(x: Tensor) -> Tensor:
    """``out[..., i] = min(x[..., i:])``: the largest non-decreasing sequence below ``x``."""
    return torch.flip(torch.cummin(torch.flip(x, dims=[-1]), dim=-1).values, dims=[-1])


def _adjust_pruning_lower_bound(s_begin: Tensor, max_step: int) -> Tensor:
    """Makes ``s_begin (B, T)`` non-decreasing, starting at 0, and rising by less than ``max_step``
    per frame (so no label is skipped), changing it as little as possible.

    ``s_begin[t+1] - s_begin[t] < max_step`` is the same as ``(max_step - 1) * t - s_begin[t]`` being
    non-decreasing, which the monotonic lower bound of that transform enforces; clamping the
    transform at 0 also forces ``s_begin[0] = 0``.
    """
    s_begin = _monotonic_lower_bound(s_begin)
    ramp = (max_step - 1) * torch.arange(s_begin.shape[1], device=s_begin.device)
    slack = _monotonic_lower_bound(ramp - s_begin).clamp_(min=0)
    return ramp - slack


def get_rnnt_prune_ranges(
    px_grad: Tensor,
    py_grad: Tensor,
    boundary: Tensor | None,
    s_range: int,
) -> Tensor:
    """Per-frame windows of ``s_range`` label positions to keep, from the simple loss' occupation
    probabilities (``k2.get_rnnt_prune_ranges``).

    Each frame keeps the window whose summed blank occupation (minus the occupation of the symbol move
    entering it from below) is largest; the window starts are then made non-decreasing, start at 0,
    rise by less than ``s_range`` per frame (less than 2 for modified/constrained lattices) and reach
    ``max(S_b - s_range + 1, 0)`` on the last frame ``T_b - 1``, so at least one full path survives.

    Args:
      px_grad: ``(B, S, T+1)`` (regular) or ``(B, S, T)`` occupation of symbol moves.
      py_grad: ``(B, S+1, T)`` occupation of blank moves.
      boundary: ``(B, 4)`` int64 ``[0, 0, S_b, T_b]`` rows (None: full ``S`` and ``T``).
      s_range: window width; values above ``S`` are cut to ``S + 1``. At least 2 for a regular
        lattice (1 for modified), else no path can survive. A constrained lattice also scores the
        blank one row above each symbol, so it needs at least 2 as well (not checkable here: its
        gradients have the modified shapes).

    Returns:
      ``ranges (B, T, s_range)`` int64, ``ranges[b, t] = s_begin[b, t] + arange(s_range)``.
    """
    batch, num_symbols, px_frames = px_grad.shape
    num_frames = py_grad.shape[2]
    if py_grad.shape != (batch, num_symbols + 1, num_frames) or px_frames not in (num_frames, num_frames + 1):
        raise ValueError(f"px_grad {tuple(px_grad.shape)} / py_grad {tuple(py_grad.shape)} do not match")
    modified = px_frames == num_frames
    min_range = 1 if modified else 2
    if s_range < min_range:
        raise ValueError(
            f"s_range must be >= {min_range} for a {'modified' if modified else 'regular'} lattice "
            f"(or no path survives pruning), got {s_range}"
        )
    if boundary is None:
        boundary = torch.tensor([[0, 0, num_symbols, num_frames]] * batch, device=px_grad.device)
    check_boundary(boundary, batch, num_symbols, num_frames)
    s_range = min(s_range, num_symbols + 1)
    num_windows = num_symbols + 2 - s_range

    # (B, num_windows, T): blank occupation summed over each window of s_range rows.
    window_blank = py_grad.unfold(1, s_range, 1).sum(dim=-1)
    # Occupation of the symbol move from row w-1 into window w (none into window 0).
    nothing_enters = px_grad.new_zeros(batch, 1, num_frames)
    entering = torch.cat((nothing_enters, px_grad[:, : num_windows - 1, :num_frames]), dim=1)
    s_begin = torch.argmax(window_blank - entering, dim=1)  # (B, T)

    # From the last frame on, the window must reach the last label.
    frame = torch.arange(num_frames, device=px_grad.device).unsqueeze(0)
    t_end = boundary[:, 3].to(px_grad.device).unsqueeze(1)
    last_start = (boundary[:, 2].to(px_grad.device).unsqueeze(1) - s_range + 1).clamp(min=0)
    s_begin = torch.where(frame >= t_end - 1, last_start, s_begin)
    s_begin = _adjust_pruning_lower_bound(s_begin, 2 if modified else s_range)
    return s_begin.unsqueeze(-1) + torch.arange(s_range, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> tuple[Tensor, Tensor]:
    """Expands ``am (B, T, D)`` and ``lm (B, S+1, D')`` onto the pruned band (``k2.do_rnnt_pruning``).

    Returns ``am_pruned (B, T, s_range, D)`` (a broadcast view) and ``lm_pruned (B, T, s_range, D')``
    with ``lm_pruned[b, t, i] = lm[b, ranges[b, t, i]]``. The gradient of ``lm`` is accumulated by
    index, never through a ``(B, T, S+1, D')`` temporary.
    """
    if ranges.ndim != 3 or tuple(ranges.shape[:2]) != tuple(am.shape[:2]) or lm.shape[0] != am.shape[0]:
        raise ValueError(
            f"ranges {tuple(ranges.shape)} must be (B, T, s_range) for am {tuple(am.shape)}, lm {tuple(lm.shape)}"
        )
    batch, num_frames, s_range = ranges.shape
    am_pruned = am.unsqueeze(2).expand(batch, num_frames, s_range, am.shape[2])
    batch_index = torch.arange(batch, device=lm.device).reshape(batch, 1, 1)
    lm_pruned = lm[batch_index, ranges.to(lm.device)]
    return am_pruned, lm_pruned


def get_rnnt_logprobs_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """``(px, py)`` of the lattice restricted to the band ``ranges`` (-inf outside it).

    Args:
      logits: pruned joiner output ``(B, T, s_range, C)``; ``logits[b, t, i]`` is for label position
        ``ranges[b, t, i]``.
      symbols: ``(B, S)`` int64; ranges: ``(B, T, s_range)`` int64 from :func:`get_rnnt_prune_ranges`.
      termination_symbol, boundary, rnnt_type: as in :func:`rnnt_loss_pruned`.

    Returns:
      ``px (B, S, T+1)`` (regular) or ``(B, S, T)``, and ``py (B, S+1, T)``.
    """
    check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, s_range, C), got {tuple(logits.shape)}")
    batch, num_frames, s_range, _ = logits.shape
    if ranges.shape != (batch, num_frames, s_range):
        raise ValueError(f"ranges must be {(batch, num_frames, s_range)}, got {tuple(ranges.shape)}")
    num_symbols = symbols.shape[1]
    if symbols.shape[0] != batch:
        raise ValueError(f"symbols must have batch size {batch}, got {tuple(symbols.shape)}")
    check_boundary(boundary, batch, num_symbols, num_frames)
    ranges = ranges.to(torch.int64)
    if bool((ranges < 0).any()) or bool((ranges > num_symbols).any()):
        raise ValueError(f"ranges must lie in [0, S={num_symbols}]")
    blank = torch.full((batch, 1), termination_symbol, dtype=torch.int64, device=symbols.device)
    next_symbol = torch.cat((symbols.to(torch.int64), blank), dim=1)  # (B, S+1)
    band_symbol = next_symbol.gather(1, ranges.reshape(batch, -1)).reshape(ranges.shape)
    index = torch.stack((band_symbol, blank.reshape(batch, 1, 1).expand_as(band_symbol)), dim=-1)
    band = log_softmax_gather(logits, index)  # (B, T, s_range, 2)

    # Place the band into (B, T, S+1) lattices that are -inf off the band.
    outside = band.new_full((batch, num_frames, num_symbols + 1), float("-inf"))
    px = outside.scatter(2, ranges, band[..., 0])[:, :, :num_symbols].transpose(1, 2)  # (B, S, T)
    py = outside.scatter(2, ranges, band[..., 1]).transpose(1, 2).contiguous()  # (B, S+1, T)
    return finish_px(px, py, boundary, rnnt_type).contiguous(), py


def rnnt_loss_pruned(
    logits: Tensor,
    symbols: Tensor,
    ranges: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
) -> Tensor:
    """The RNN-T loss over the pruned band (``k2.rnnt_loss_pruned``): only alignments that stay
    inside ``ranges`` count. Equals :func:`~asr.losses.rnnt.rnnt_loss` when the band covers every
    label position (``s_range == S + 1``).

    Args as in :func:`get_rnnt_logprobs_pruned`, plus ``delay_penalty`` and ``reduction``
    (``"none"`` -> ``(B,)``; ``"mean"`` | ``"sum"`` -> scalar).
    """
    check_reduction(reduction)
    px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)
    px = apply_delay_penalty(px, boundary, rnnt_type, delay_penalty)
    return reduce_loss(mutual_information_recursion(px, py, boundary), reduction)
