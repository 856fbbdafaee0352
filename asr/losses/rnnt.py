"""The full RNN-T loss on joiner output ``logits (B, T, S+1, C)``, with k2's names and conventions.

``rnnt_loss`` reduces the lattice to the per-cell log-probabilities of the next symbol (``px``) and of
blank (``py``), then runs :func:`~asr.losses.mutual_information.mutual_information_recursion`. The
log-softmax is never materialised: a custom autograd function gathers the two log-probs per cell
chunk by chunk and writes the gradient w.r.t. ``logits`` directly, so memory beyond ``logits`` and its
gradient is ``O(B * T * S)``.

Lattice variants (``rnnt_type``), as in k2:
  * ``"regular"``: any number of symbols per frame; blank moves to the next frame.
  * ``"modified"``: at most one symbol per frame; emitting a symbol also moves to the next frame.
  * ``"constrained"``: like modified, but a symbol emission also scores the blank that follows it
    (``px[s, t] += py[s+1, t]``).

This module also holds the helpers shared with :mod:`asr.losses.pruned_rnnt`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from asr.losses.mutual_information import mutual_information_recursion

__all__ = ["RNNT_TYPES", "fix_for_boundary", "get_rnnt_logprobs_joint", "rnnt_loss"]

RNNT_TYPES = ("regular", "modified", "constrained")
_REDUCTIONS = ("none", "mean", "sum")
# Cap on the elements of one chunk of logits processed at once by the log-softmax gather (~16 MB fp32).
_CHUNK_ELEMENTS = 1 << 22


def check_rnnt_type(rnnt_type: str) -> None:
    if rnnt_type not in RNNT_TYPES:
        raise ValueError(f"rnnt_type must be one of {RNNT_TYPES}, got {rnnt_type!r}")


def check_reduction(reduction: str | None) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction should be one of {_REDUCTIONS}, got {reduction!r}")


def check_boundary(boundary: Tensor | None, batch: int, num_symbols: int, num_frames: int) -> None:
    """``boundary (B, 4)`` int64 rows ``[s_begin, t_begin, s_end, t_end]`` within ``S`` and ``T``."""
    if boundary is None:
        return
    if boundary.shape != (batch, 4) or boundary.dtype != torch.int64:
        raise ValueError(
            f"boundary must be an int64 tensor of shape ({batch}, 4), got {boundary.dtype} {tuple(boundary.shape)}"
        )
    s_end, t_end = boundary[:, 2], boundary[:, 3]
    if bool((s_end > num_symbols).any()) or bool((t_end > num_frames).any()) or bool((boundary < 0).any()):
        raise ValueError(f"boundary rows must lie within S={num_symbols}, T={num_frames}: {boundary.tolist()}")


def reduce_loss(negated_loss: Tensor, reduction: str | None) -> Tensor:
    """k2's reductions of the per-sequence scores ``(B,)`` (log-likelihoods) into losses."""
    check_reduction(reduction)
    if reduction == "none":
        return -negated_loss
    if reduction == "sum":
        return -torch.sum(negated_loss)
    return -torch.mean(negated_loss)


def fix_for_boundary(px: Tensor, boundary: Tensor | None = None) -> Tensor:
    """Sets ``px[b, :, t_end[b]]`` to -inf (out of place): no symbol may be emitted on the
    one-past-the-last frame of a regular lattice. ``px (B, S, T+1)``; ``boundary (B, 4)`` or None
    (then only column ``T``, already -inf, is concerned and ``px`` is returned unchanged)."""
    if boundary is None:
        return px
    frame = torch.arange(px.shape[2], device=px.device)
    past_end = frame.reshape(1, 1, -1) == boundary[:, 3].to(px.device).reshape(-1, 1, 1)
    return px.masked_fill(past_end, float("-inf"))


def finish_px(px: Tensor, py: Tensor, boundary: Tensor | None, rnnt_type: str) -> Tensor:
    """Turns the per-cell symbol log-probs ``px (B, S, T)`` into the ``px`` that
    :func:`mutual_information_recursion` expects for ``rnnt_type`` (``py (B, S+1, T)``)."""
    if rnnt_type == "regular":
        no_emission = px.new_full((px.shape[0], px.shape[1], 1), float("-inf"))
        return fix_for_boundary(torch.cat((px, no_emission), dim=2), boundary)
    if rnnt_type == "constrained":
        return px + py[:, 1:, :]
    return px


def apply_delay_penalty(px: Tensor, boundary: Tensor | None, rnnt_type: str, delay_penalty: float) -> Tensor:
    """k2's delay penalty: adds ``delay_penalty * ((T_b - 1) / 2 - t)`` to every symbol emission on
    frame ``t``, rewarding early emission (zero net effect on a uniformly spread alignment)."""
    if delay_penalty <= 0.0:
        return px
    batch, _, px_frames = px.shape
    num_frames = px_frames - 1 if rnnt_type == "regular" else px_frames
    if boundary is None:
        offset = torch.full((batch,), (num_frames - 1) / 2, dtype=px.dtype, device=px.device)
    else:
        offset = (boundary[:, 3].to(device=px.device, dtype=px.dtype) - 1) / 2
    frame = torch.arange(px_frames, device=px.device, dtype=px.dtype)
    penalty = (offset.reshape(batch, 1, 1) - frame.reshape(1, 1, px_frames)) * delay_penalty
    return px + penalty


class _LogSoftmaxGather(torch.autograd.Function):
    """``log_softmax(logits, -1).gather(-1, index)`` without a full-size log-softmax.

    ``logits (B, T, U, C)``, ``index (B, T, U, K)`` -> ``(B, T, U, K)``. Works on chunks of frames;
    saves only ``logits`` (by reference) and the log-normalisers ``(B, T, U)``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor) -> Tensor:
        batch, num_frames, rows, classes = logits.shape
        compute_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        log_norm = torch.empty(batch, num_frames, rows, dtype=compute_dtype, device=logits.device)
        gathered = torch.empty(index.shape, dtype=compute_dtype, device=logits.device)
        step = _frames_per_chunk(logits.shape)
        for t0 in range(0, num_frames, step):
            chunk = logits[:, t0 : t0 + step].to(compute_dtype)
            chunk_norm = torch.logsumexp(chunk, dim=-1)
            log_norm[:, t0 : t0 + step] = chunk_norm
            gathered[:, t0 : t0 + step] = chunk.gather(-1, index[:, t0 : t0 + step]) - chunk_norm.unsqueeze(-1)
        ctx.save_for_backward(logits, index, log_norm)
        return gathered

    @staticmethod
    def backward(ctx, grad_gathered: Tensor):
        logits, index, log_norm = ctx.saved_tensors
        num_frames = logits.shape[1]
        grad = torch.empty_like(logits)
        step = _frames_per_chunk(logits.shape)
        for t0 in range(0, num_frames, step):
            frames = slice(t0, t0 + step)
            g = grad_gathered[:, frames]
            # d/dlogits of sum_k g_k * (logits[i_k] - lse) = scatter(g) - softmax * sum_k g_k,
            # built in place in the gradient's own storage when the dtypes allow.
            in_place = grad.dtype == log_norm.dtype
            chunk_grad = grad[:, frames] if in_place else None
            chunk_grad = torch.sub(
                logits[:, frames].to(log_norm.dtype), log_norm[:, frames].unsqueeze(-1), out=chunk_grad
            ).exp_()
            chunk_grad.mul_(-g.sum(-1, keepdim=True))
            chunk_grad.scatter_add_(-1, index[:, frames], g)
            if not in_place:
                grad[:, frames] = chunk_grad
        return grad, None


def _frames_per_chunk(shape: torch.Size) -> int:
    batch, _, rows, classes = shape
    return max(1, _CHUNK_ELEMENTS // max(1, batch * rows * classes))


def log_softmax_gather(logits: Tensor, index: Tensor) -> Tensor:
    """``log_softmax(logits, dim=-1).gather(-1, index)`` for ``logits (B, T, U, C)`` and
    ``index (B, T, U, K)`` (int64), computed chunk-wise so that neither the forward nor the backward
    pass holds a second logits-sized temporary (besides the gradient itself). Output is float32
    (float64 for float64 logits)."""
    if index.dtype != torch.int64:
        raise ValueError(f"index must be int64, got {index.dtype}")
    return _LogSoftmaxGather.apply(logits, index.contiguous())


def get_rnnt_logprobs_joint(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
) -> tuple[Tensor, Tensor]:
    """Reduces the full RNN-T lattice to ``(px, py)`` for :func:`mutual_information_recursion`.

    Args:
      logits: joiner output ``(B, T, S+1, C)``.
      symbols: ``(B, S)`` int64 label sequences (padding beyond ``boundary[:, 2]`` is ignored).
      termination_symbol: the blank id.
      boundary: optional ``(B, 4)`` int64 ``[0, 0, S_b, T_b]`` rows; None means ``[0, 0, S, T]``.
      rnnt_type: ``"regular"``, ``"modified"`` or ``"constrained"``.

    Returns:
      ``px (B, S, T+1)`` for regular (``(B, S, T)`` otherwise): log-prob of emitting
      ``symbols[b, s]`` at ``(s, t)``; ``py (B, S+1, T)``: log-prob of blank at ``(s, t)``.
    """
    check_rnnt_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    batch, num_frames, rows, _ = logits.shape
    num_symbols = rows - 1
    if symbols.shape != (batch, num_symbols):
        raise ValueError(
            f"symbols must be ({batch}, {num_symbols}) for logits {tuple(logits.shape)}, got {tuple(symbols.shape)}"
        )
    check_boundary(boundary, batch, num_symbols, num_frames)
    blank = torch.full((batch, 1), termination_symbol, dtype=torch.int64, device=symbols.device)
    # Row S has no next symbol; blank stands in for it and its log-prob is dropped below.
    next_symbol = torch.cat((symbols.to(torch.int64), blank), dim=1)  # (B, S+1)
    index = torch.stack((next_symbol, blank.expand(batch, rows)), dim=-1)  # (B, S+1, 2)
    index = index.unsqueeze(1).expand(batch, num_frames, rows, 2)
    logprobs = log_softmax_gather(logits, index)  # (B, T, S+1, 2)
    px = logprobs[:, :, :num_symbols, 0].transpose(1, 2)  # (B, S, T)
    py = logprobs[..., 1].transpose(1, 2).contiguous()  # (B, S+1, T)
    return finish_px(px, py, boundary, rnnt_type).contiguous(), py


def rnnt_loss(
    logits: Tensor,
    symbols: Tensor,
    termination_symbol: int,
    boundary: Tensor | None = None,
    rnnt_type: str = "regular",
    delay_penalty: float = 0.0,
    reduction: str | None = "mean",
) -> Tensor:
    """The RNN-T loss of the full joiner output (``k2.rnnt_loss``).

    Args:
      logits: ``(B, T, S+1, C)`` unnormalised joiner output; ``logits[b, t, s]`` scores the next
        token after ``s`` labels on frame ``t``.
      symbols: ``(B, S)`` int64 labels.
      termination_symbol: blank id (0 in asr).
      boundary: optional ``(B, 4)`` int64 rows ``[0, 0, S_b, T_b]``; None means full ``S`` and ``T``.
      rnnt_type: ``"regular"`` | ``"modified"`` | ``"constrained"`` (see module docstring).
      delay_penalty: if > 0, k2's penalty on late symbol emission.
      reduction: ``"none"`` -> ``(B,)``; ``"mean"`` | ``"sum"`` over the batch -> scalar.

    Returns:
      negative log-likelihood, reduced as asked (``inf`` for a sequence with no valid alignment).
    """
    check_reduction(reduction)
    px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary, rnnt_type)
    px = apply_delay_penalty(px, boundary, rnnt_type, delay_penalty)
    scores = mutual_information_recursion(px, py, boundary)
    return reduce_loss(scores, reduction)
