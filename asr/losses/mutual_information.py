"""The mutual-information (monotonic alignment) recursion behind every RNN-T loss here.

Same function, argument names and conventions as ``k2.mutual_information_recursion``, implemented in
PyTorch without k2. For ``px (B, S, T+1)`` ("regular") the recursion over ``p (B, S+1, T+1)`` is::

    p[b, s_begin, t_begin] = 0
    p[b, s, t] = logaddexp(p[b, s-1, t] + px[b, s-1, t], p[b, s, t-1] + py[b, s, t-1])

and for ``px (B, S, T)`` (the "modified"/"constrained" RNN-T lattices, where emitting a symbol also
consumes a frame)::

    p[b, s, t] = logaddexp(p[b, s-1, t-1] + px[b, s-1, t-1], p[b, s, t-1] + py[b, s, t-1])

with out-of-range terms treated as -inf; the result is ``p[b, s_end, t_end]``.

Every cell on one anti-diagonal (regular) or one frame (modified) depends only on the previous one, so
the recursion is a Python loop over ``S + T`` (resp. ``T``) steps, each vectorised over the batch and the
cells of the step. The backward pass runs the mirror-image recursion and forms the occupation
probabilities directly (an exact gradient) instead of recording the loop for autograd, so memory stays
``O(B * S * T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["mutual_information_recursion"]

_NEG_INF = float("-inf")


def _to_steps(px: Tensor, py: Tensor, modified: bool) -> tuple[Tensor, Tensor]:
    """Lays ``px``/``py`` out so that step ``k`` of the recursion reads the contiguous slice ``[:, k]``.

    Returns ``x_steps (B, K-1, S)`` and ``y_steps (B, K-1, S+1)`` where ``K`` is the number of steps
    of ``p`` (``S + T + 1`` anti-diagonals for regular, ``T + 1`` frames for modified). Regular:
    ``x_steps[b, k, s] = px[b, s, k - s]`` (-inf where ``k - s`` is out of range).
    """
    if modified:
        # A fresh copy: the backward pass reuses these buffers in place.
        return (
            px.transpose(1, 2).clone(memory_format=torch.contiguous_format),
            py.transpose(1, 2).clone(memory_format=torch.contiguous_format),
        )
    batch, num_symbols, _ = px.shape
    num_steps = py.shape[1] + py.shape[2]  # (S + 1) + T diagonals of p
    x_steps = px.new_full((batch, num_steps - 1, num_symbols), _NEG_INF)
    y_steps = py.new_full((batch, num_steps - 1, num_symbols + 1), _NEG_INF)
    _diagonal_view(x_steps, px.shape).copy_(px)
    _diagonal_view(y_steps, py.shape).copy_(py)
    return x_steps, y_steps


def _diagonal_view(steps: Tensor, shape: torch.Size) -> Tensor:
    """A ``(B, rows, cols)`` view of the contiguous ``steps (B, K, rows)`` with
    ``view[b, s, t] is steps[b, s + t, s]``; distinct ``(s, t)`` never alias."""
    batch, rows, cols = shape
    assert steps.is_contiguous() and steps.shape[2] == rows and steps.shape[1] >= rows + cols - 1
    stride_b = steps.stride(0)
    return steps.as_strided((batch, rows, cols), (stride_b, rows + 1, rows))


def _from_steps(x_grad: Tensor, y_grad: Tensor, px_shape, py_shape, modified: bool):
    """Inverse of :func:`_to_steps` for the gradients."""
    if modified:
        return x_grad.transpose(1, 2).contiguous(), y_grad.transpose(1, 2).contiguous()
    return (
        _diagonal_view(x_grad, px_shape).contiguous(),
        _diagonal_view(y_grad, py_shape).contiguous(),
    )


def _start_and_end(
    boundary: Tensor | None, batch: int, num_symbols: int, num_frames: int, modified: bool, device
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(start_step, start_s, end_step, end_s), each ``(B,)`` int64, in step coordinates."""
    if boundary is None:
        zeros = torch.zeros(batch, dtype=torch.int64, device=device)
        s_end = torch.full((batch,), num_symbols, dtype=torch.int64, device=device)
        t_end = torch.full((batch,), num_frames, dtype=torch.int64, device=device)
        s_begin, t_begin = zeros, zeros
    else:
        s_begin, t_begin, s_end, t_end = boundary.to(device).unbind(1)
    if modified:
        return t_begin, s_begin, t_end, s_end
    return s_begin + t_begin, s_begin, s_end + t_end, s_end


def _forward_scores(x_steps: Tensor, y_steps: Tensor, start_step: Tensor, start_s: Tensor) -> Tensor:
    """alpha ``(B, K, S+1)``: log-sum of all paths from the start cell to each cell."""
    batch, num_moves, num_symbols = x_steps.shape
    alpha = x_steps.new_full((batch, num_moves + 1, num_symbols + 1), _NEG_INF)
    batch_index = torch.arange(batch, device=x_steps.device)
    starts = {int(k) for k in start_step.tolist()}
    if 0 in starts:
        alpha[batch_index, 0, start_s] = torch.where(start_step == 0, 0.0, _NEG_INF).to(alpha.dtype)
    for k in range(1, num_moves + 1):
        prev = alpha[:, k - 1]
        cur = alpha[:, k]
        torch.add(prev, y_steps[:, k - 1], out=cur)
        # A symbol move goes from row s-1 of the previous step to row s of this one.
        torch.logaddexp(cur[:, 1:], prev[:, :-1] + x_steps[:, k - 1], out=cur[:, 1:])
        if k in starts:
            is_start = start_step == k
            cur[batch_index, start_s] = torch.where(is_start, 0.0, cur[batch_index, start_s])
    return alpha


def _backward_scores(x_steps: Tensor, y_steps: Tensor, end_step: Tensor, end_s: Tensor) -> Tensor:
    """beta ``(B, K, S+1)``: log-sum of all paths from each cell to the end cell."""
    batch, num_moves, num_symbols = x_steps.shape
    beta = x_steps.new_full((batch, num_moves + 1, num_symbols + 1), _NEG_INF)
    batch_index = torch.arange(batch, device=x_steps.device)
    ends = {int(k) for k in end_step.tolist()}
    for k in range(num_moves, -1, -1):
        cur = beta[:, k]
        if k < num_moves:
            nxt = beta[:, k + 1]
            torch.add(nxt, y_steps[:, k], out=cur)
            torch.logaddexp(cur[:, :-1], nxt[:, 1:] + x_steps[:, k], out=cur[:, :-1])
        if k in ends:
            is_end = end_step == k
            cur[batch_index, end_s] = torch.where(is_end, 0.0, cur[batch_index, end_s])
    return beta


class _MutualInformationRecursion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px: Tensor, py: Tensor, boundary: Tensor | None, need_grad: bool):
        batch, num_symbols, _ = px.shape
        num_frames = py.shape[2]
        modified = px.shape[2] == num_frames
        x_steps, y_steps = _to_steps(px, py, modified)
        start_step, start_s, end_step, end_s = _start_and_end(
            boundary, batch, num_symbols, num_frames, modified, px.device
        )
        alpha = _forward_scores(x_steps, y_steps, start_step, start_s)
        batch_index = torch.arange(batch, device=px.device)
        scores = alpha[batch_index, end_step, end_s]
        if not need_grad:
            ctx.save_for_backward(None, None)
            return scores, None, None

        beta = _backward_scores(x_steps, y_steps, end_step, end_s)
        # A batch element with no valid path has score -inf; give it zero occupation, not NaN.
        total = torch.where(torch.isfinite(scores), scores, 0.0).reshape(batch, 1, 1)
        # Occupation of a move = alpha(from) + move score + beta(to) - total.
        x_steps += alpha[:, :-1, :-1]
        x_steps += beta[:, 1:, 1:]
        x_steps -= total
        y_steps += alpha[:, :-1]
        y_steps += beta[:, 1:]
        y_steps -= total
        del alpha, beta
        x_grad, y_grad = _from_steps(x_steps.exp_(), y_steps.exp_(), px.shape, py.shape, modified)
        ctx.save_for_backward(x_grad, y_grad)
        ctx.mark_non_differentiable(x_grad, y_grad)
        return scores, x_grad, y_grad

    @staticmethod
    def backward(ctx, score_grad: Tensor, _unused_x, _unused_y):
        px_grad, py_grad = ctx.saved_tensors
        if px_grad is None:
            raise RuntimeError(
                "mutual_information_recursion: gradients were not prepared in forward (px/py did not require grad)"
            )
        scale = score_grad.reshape(-1, 1, 1)
        return px_grad * scale, py_grad * scale, None, None


def mutual_information_recursion(
    px: Tensor,
    py: Tensor,
    boundary: Tensor | None = None,
    return_grad: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
    """Log-sum over all monotonic paths through the ``(S+1) x (T+1)`` lattice (k2's semantics).

    Args:
      px: ``(B, S, T+1)`` log-score of moving ``s -> s+1`` at ``(s, t)`` (regular), or ``(B, S, T)``
        when a symbol move also advances ``t`` (modified/constrained RNN-T). float32 or float64
        (float16/bfloat16 are computed in float32).
      py: ``(B, S+1, T)`` log-score of moving ``t -> t+1`` at ``(s, t)``.
      boundary: optional ``(B, 4)`` int64 rows ``[s_begin, t_begin, s_end, t_end]`` with
        ``0 <= s_begin <= s_end <= S`` and ``0 <= t_begin <= t_end <= T``; ``None`` means
        ``[0, 0, S, T]`` for every row.
      return_grad: also return ``(px_grad, py_grad)``, the gradient of ``scores.sum()`` w.r.t.
        ``px`` and ``py``, i.e. the occupation probability of every move (used to get prune
        ranges). A row without any valid path has score -inf and zero occupation.

    Returns:
      ``scores (B,)``, or ``(scores, (px_grad, py_grad))`` when ``return_grad``.
    """
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    batch, num_symbols, px_frames = px.shape
    num_frames = py.shape[2]
    if py.shape != (batch, num_symbols + 1, num_frames) or px_frames not in (num_frames, num_frames + 1):
        raise ValueError(
            f"shape mismatch: px {tuple(px.shape)} must be (B, S, T+1) or (B, S, T) "
            f"for py {tuple(py.shape)} = (B, S+1, T)"
        )
    if px.dtype != py.dtype:
        raise ValueError(f"px and py dtypes differ: {px.dtype} vs {py.dtype}")
    if boundary is not None:
        if boundary.shape != (batch, 4) or boundary.dtype != torch.int64:
            raise ValueError(
                f"boundary must be int64 of shape ({batch}, 4), got {boundary.dtype} {tuple(boundary.shape)}"
            )
        s_begin, t_begin, s_end, t_end = boundary.cpu().unbind(1)
        valid_s = (s_begin >= 0) & (s_begin <= s_end) & (s_end <= num_symbols)
        valid_t = (t_begin >= 0) & (t_begin <= t_end) & (t_end <= num_frames)
        if not bool((valid_s & valid_t).all()):
            raise ValueError(
                f"boundary rows must satisfy 0 <= s_begin <= s_end <= S={num_symbols} and "
                f"0 <= t_begin <= t_end <= T={num_frames}; got {boundary.tolist()}"
            )
    compute_dtype = px.dtype if px.dtype in (torch.float32, torch.float64) else torch.float32
    need_grad = return_grad or (torch.is_grad_enabled() and (px.requires_grad or py.requires_grad))
    scores, px_grad, py_grad = _MutualInformationRecursion.apply(
        px.to(compute_dtype), py.to(compute_dtype), boundary, need_grad
    )
    scores = scores.to(px.dtype)
    if not return_grad:
        return scores
    return scores, (px_grad.to(px.dtype), py_grad.to(py.dtype))
