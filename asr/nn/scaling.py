"""Zipformer building blocks: schedules, normalisation, activations, gradient regularisers.

Every module that owns parameters keeps the class name, constructor arguments and
parameter names/shapes of icefall's ``zipformer/scaling.py``, so icefall checkpoints
load unchanged; forward numerics use the same formulas and constants.

Most regularisers here (:class:`Balancer`, :class:`Whiten`, :func:`limit_param_value`,
:func:`penalize_abs_values_gt`) are the identity in forward and only change gradients
in backward, and only while training.

Shapes follow the caller: ``channel_dim`` arguments say where the channels are;
``(*, C)`` means any leading dimensions and ``C`` channels last.
"""

from __future__ import annotations

import bisect
import math
import random

import torch
import torch.nn as nn
from torch import Tensor

from asr.nn.depthwise import DepthwiseConv1d

__all__ = [
    "ActivationDropoutAndLinear",
    "Balancer",
    "BiasNorm",
    "ChunkCausalDepthwiseConv1d",
    "CutoffEstimator",
    "Dropout2",
    "Dropout3",
    "FloatLike",
    "Identity",
    "PiecewiseLinear",
    "ScaleGrad",
    "ScaledConv1d",
    "ScaledConv2d",
    "ScaledLinear",
    "ScheduledFloat",
    "SwooshL",
    "SwooshLForward",
    "SwooshR",
    "SwooshRForward",
    "Whiten",
    "convert_num_channels",
    "limit_param_value",
    "penalize_abs_values_gt",
    "scale_grad",
    "softmax",
    "swoosh_l",
    "swoosh_l_forward",
    "swoosh_l_forward_and_deriv",
    "swoosh_r",
    "swoosh_r_forward",
    "swoosh_r_forward_and_deriv",
    "with_loss",
]


def _scripting_or_tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing()


# --------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------


class PiecewiseLinear:
    """A piecewise-linear function of one float given by ``(x, y)`` breakpoints.

    Outside the breakpoints the first/last ``y`` is held constant.

    Example: ``PiecewiseLinear((0.0, 0.3), (20000.0, 0.1))``.
    """

    def __init__(self, *points):
        if len(points) == 1 and isinstance(points[0], PiecewiseLinear):
            points = points[0].pairs
        if len(points) == 0:
            raise ValueError("PiecewiseLinear needs at least one (x, y) point")
        self.pairs = [(float(x), float(y)) for x, y in points]
        xs = [x for x, _ in self.pairs]
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise ValueError(f"PiecewiseLinear x values must increase strictly: {xs}")
        self._xs = xs

    def __str__(self) -> str:
        return f"PiecewiseLinear({str(self.pairs)[1:-1]})"

    def __call__(self, x: float) -> float:
        pairs = self.pairs
        if x <= pairs[0][0]:
            return pairs[0][1]
        if x >= pairs[-1][0]:
            return pairs[-1][1]
        i = bisect.bisect_right(self._xs, x)  # pairs[i-1].x <= x < pairs[i].x
        (x0, y0), (x1, y1) = pairs[i - 1], pairs[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    def __eq__(self, other) -> bool:
        return isinstance(other, PiecewiseLinear) and self.pairs == other.pairs

    def __mul__(self, alpha: float) -> PiecewiseLinear:
        return PiecewiseLinear(*[(x, y * alpha) for x, y in self.pairs])

    def __add__(self, other: float | PiecewiseLinear) -> PiecewiseLinear:
        if isinstance(other, (float, int)):
            return PiecewiseLinear(*[(x, y + other) for x, y in self.pairs])
        a, b = self.get_common_basis(other)
        return PiecewiseLinear(*[(x, ya + yb) for (x, ya), (_, yb) in zip(a.pairs, b.pairs)])

    def max(self, other: float | PiecewiseLinear) -> PiecewiseLinear:
        return self._combine(other, max)

    def min(self, other: float | PiecewiseLinear) -> PiecewiseLinear:
        return self._combine(other, min)

    def _combine(self, other, op) -> PiecewiseLinear:
        if isinstance(other, (float, int)):
            other = PiecewiseLinear((0.0, other))
        a, b = self.get_common_basis(other, include_crossings=True)
        return PiecewiseLinear(*[(x, op(ya, yb)) for (x, ya), (_, yb) in zip(a.pairs, b.pairs)])

    def get_common_basis(
        self, other: PiecewiseLinear, include_crossings: bool = False
    ) -> tuple[PiecewiseLinear, PiecewiseLinear]:
        """Return ``(self', other')``, equal to ``self``/``other`` but with the same x points.

        With ``include_crossings`` the x points where the two functions cross are added,
        so that the pointwise max/min of the results is again exact.
        """
        xs = sorted(set(self._xs) | set(other._xs))
        if include_crossings:
            extra = []
            for x0, x1 in zip(xs, xs[1:]):
                d0 = self(x0) - other(x0)
                d1 = self(x1) - other(x1)
                if (d0 > 0) != (d1 > 0):
                    t = abs(d0) / (abs(d0) + abs(d1))
                    extra.append(x0 + t * (x1 - x0))
            xs = sorted(set(xs) | set(extra))
        return (
            PiecewiseLinear(*[(x, self(x)) for x in xs]),
            PiecewiseLinear(*[(x, other(x)) for x in xs]),
        )


class ScheduledFloat(nn.Module):
    """A float that changes piecewise-linearly with the training batch count.

    It is an ``nn.Module`` only so that the training loop can find every schedule via
    ``model.modules()`` and set ``.batch_count``; read it with ``float(sched)``.
    ``default`` is returned while ``batch_count`` is unset, in eval mode (the module's
    ``training`` flag follows its parent's ``train()``/``eval()``), and under TorchScript
    or tracing.

    Example: ``ScheduledFloat((0.0, 0.3), (20000.0, 0.1), default=0.0)``.
    """

    def __init__(self, *points, default: float = 0.0):
        super().__init__()
        self.batch_count: float | None = None  # written by the training loop
        self.name: str | None = None  # for diagnostics, written by the training loop
        self.default = default
        self.schedule = PiecewiseLinear(*points)

    def extra_repr(self) -> str:
        return f"batch_count={self.batch_count}, schedule={self.schedule.pairs}, default={self.default}"

    def __float__(self) -> float:
        if self.batch_count is None or not self.training or _scripting_or_tracing():
            return float(self.default)
        return float(self.schedule(self.batch_count))

    def __add__(self, other: float | ScheduledFloat) -> ScheduledFloat:
        # (icefall keeps the default unchanged when adding a constant; we shift it too,
        # consistent with adding two schedules.)
        if isinstance(other, (float, int)):
            return ScheduledFloat(self.schedule + other, default=self.default + other)
        return ScheduledFloat(self.schedule + other.schedule, default=self.default + other.default)

    def max(self, other: float | ScheduledFloat) -> ScheduledFloat:
        if isinstance(other, (float, int)):
            return ScheduledFloat(self.schedule.max(other), default=self.default)
        return ScheduledFloat(self.schedule.max(other.schedule), default=max(self.default, other.default))


FloatLike = float | ScheduledFloat


class CutoffEstimator:
    """Online estimate of a cutoff that a proportion ``p`` of the values seen exceeds.

    ``estimator(x)`` returns whether ``x`` is above the current cutoff and then moves
    the cutoff toward ``x`` when the observed proportion is off target.
    """

    def __init__(self, p: float):
        self.p = p
        self.count = 0
        self.count_above = 0
        self.cutoff = 0.0

    def __call__(self, x: float) -> bool:
        above = x > self.cutoff
        self.count += 1
        if above:
            self.count_above += 1
        excess = self.count_above / self.count - self.p
        # Too many above and this one was above (or too few and it was below): move.
        if (excess > 0) == above:
            q = abs(excess)
            self.cutoff = x * q + self.cutoff * (1 - q)
        return above


# --------------------------------------------------------------------------------------
# Small autograd helpers
# --------------------------------------------------------------------------------------


class Identity(nn.Module):
    """Identity module, where icefall's modules have one (a place for diagnostics hooks). It returns its
    input itself: icefall's identities add a ``chunk(1)`` node to the autograd graph, whose backward copies
    the gradient (with the no-op Balancer and Whiten calls, ~30 copies per layer per step)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class _SoftmaxFunction(torch.autograd.Function):
    # Stores only the (possibly half-precision) output; backward runs in at least float32.
    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        ans = x.softmax(dim=dim)
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Under autocast softmax returns float32; store/return the autocast dtype.
            ans = ans.to(torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(ans)
        ctx.dim = dim
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        dtype = torch.promote_types(ans.dtype, torch.float32)  # float32, or float64 if given
        with torch.autocast(ans.device.type, enabled=False):
            # ans * (ans_grad - sum(ans_grad * ans)) in one fused kernel (four passes over the
            # (H, N, T, T) weights otherwise).
            x_grad = torch.ops.aten._softmax_backward_data(ans_grad.to(dtype), ans.to(dtype), ctx.dim, dtype)
        return x_grad, None


def softmax(x: Tensor, dim: int) -> Tensor:
    """``x.softmax(dim)`` that stores only its output for backward (saves memory under AMP)."""
    if not x.requires_grad or _scripting_or_tracing():
        return x.softmax(dim=dim)
    return _SoftmaxFunction.apply(x, dim)


class _WithLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, name: str | None) -> Tensor:
        ctx.y_shape = y.shape
        return x

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        y_grad = torch.ones(ctx.y_shape, dtype=ans_grad.dtype, device=ans_grad.device)
        return ans_grad, y_grad, None


def with_loss(x: Tensor, y: Tensor, name: str | None = None) -> Tensor:
    """Return ``x`` unchanged, but backprop as if ``y.sum()`` had been added to the loss.

    ``name`` is a diagnostics label, accepted for icefall call compatibility.
    """
    return _WithLoss.apply(x, y, name)


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float, name: str | None = None) -> Tensor:
    """Return ``x`` unchanged; in backward add the gradient of
    ``penalty * sum(relu(|x| - limit))``. The returned tensor must be used.
    """
    over_limit = (x.abs() - limit) > 0
    # sign(x) * 1[|x| > limit] * x has the same gradient as relu(|x| - limit), and the
    # int8 factor keeps autograd from storing anything larger than x itself.
    aux_loss = penalty * ((x.sign() * over_limit).to(torch.int8) * x)
    return with_loss(x, aux_loss, name)


class _ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


def scale_grad(x: Tensor, alpha: float) -> Tensor:
    """Identity in forward; multiplies the gradient by ``alpha`` in backward."""
    return _ScaleGradFunction.apply(x, alpha)


class ScaleGrad(nn.Module):
    """Module form of :func:`scale_grad`, active only in training."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if _scripting_or_tracing() or not self.training:
            return x
        return scale_grad(x, self.alpha)


class _LimitParamValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, min: float, max: float) -> Tensor:
        if max < min:
            raise ValueError(f"limit_param_value: max={max} < min={min}")
        ctx.save_for_backward(x)
        ctx.min = min
        ctx.max = max
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        # Below min: make every gradient negative (the update then increases x);
        # above max: make every gradient positive.
        x_grad = x_grad * torch.where(torch.logical_and(x_grad > 0, x < ctx.min), -1.0, 1.0)
        x_grad = x_grad * torch.where(torch.logical_and(x_grad < 0, x > ctx.max), -1.0, 1.0)
        return x_grad, None, None


def limit_param_value(x: Tensor, min: float, max: float, prob: float = 0.6, training: bool = True) -> Tensor:
    """Keep a parameter (mostly) inside ``[min, max]`` by flipping gradient signs.

    Identity in forward. Applied with probability ``prob`` per call, only if ``training``.
    """
    if training and random.random() < prob:
        return _LimitParamValue.apply(x, min, max)
    return x


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    """Truncate or zero-pad the last dimension of ``x`` to ``num_channels``."""
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    shape = list(x.shape)
    shape[-1] = num_channels - shape[-1]
    zeros = torch.zeros(shape, dtype=x.dtype, device=x.device)
    return torch.cat((x, zeros), dim=-1)


# --------------------------------------------------------------------------------------
# Scaled-init layers (plain torch modules, so state_dict keys are weight/bias)
# --------------------------------------------------------------------------------------


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:
    """``nn.Linear(*args, **kwargs)`` with its weight scaled by ``initial_scale`` and its
    bias drawn from ``U(-0.1, 0.1) * initial_scale``."""
    ans = nn.Linear(*args, **kwargs)
    _scale_init(ans, initial_scale)
    return ans


def ScaledConv1d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv1d:
    """``nn.Conv1d`` with scaled initialisation, as :func:`ScaledLinear`."""
    ans = nn.Conv1d(*args, **kwargs)
    _scale_init(ans, initial_scale)
    return ans


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:
    """``nn.Conv2d`` with scaled initialisation, as :func:`ScaledLinear`."""
    ans = nn.Conv2d(*args, **kwargs)
    _scale_init(ans, initial_scale)
    return ans


def _scale_init(module: nn.Module, initial_scale: float) -> None:
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)


# --------------------------------------------------------------------------------------
# BiasNorm
# --------------------------------------------------------------------------------------


def _bias_norm_scales(x: Tensor, bias: Tensor, log_scale: Tensor, channel_dim: int) -> Tensor:
    # bias is already unsqueezed to broadcast against x along channel_dim.
    return torch.mean((x - bias) ** 2, dim=channel_dim, keepdim=True) ** -0.5 * log_scale.exp()


class _BiasNormFunction(torch.autograd.Function):
    # Stores either the input or the output (whichever the neighbouring op keeps anyway)
    # plus the per-frame scales, and recomputes the small graph in backward.
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        bias: Tensor,
        log_scale: Tensor,
        channel_dim: int,
        store_output_for_backprop: bool,
    ) -> Tensor:
        bias = bias.reshape((-1,) + (1,) * (x.ndim - channel_dim - 1))
        scales = _bias_norm_scales(x, bias, log_scale, channel_dim)
        ans = x * scales
        ctx.channel_dim = channel_dim
        ctx.store_output_for_backprop = store_output_for_backprop
        ctx.save_for_backward(
            ans.detach() if store_output_for_backprop else x,
            scales.detach(),
            bias.detach(),
            log_scale.detach(),
        )
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        ans_or_x, scales, bias, log_scale = ctx.saved_tensors
        x = ans_or_x / scales if ctx.store_output_for_backprop else ans_or_x
        x = x.detach().requires_grad_(True)
        bias = bias.detach().requires_grad_(True)
        log_scale = log_scale.detach().requires_grad_(True)
        with torch.enable_grad():
            ans = x * _bias_norm_scales(x, bias, log_scale, ctx.channel_dim)
            x_grad, bias_grad, log_scale_grad = torch.autograd.grad(ans, (x, bias, log_scale), ans_grad)
        return x_grad, bias_grad.flatten(), log_scale_grad, None, None


class BiasNorm(nn.Module):
    """LayerNorm replacement: ``y = x * exp(log_scale) / sqrt(mean_c((x - bias)^2))``.

    The bias only enters the normalising statistic (it is not subtracted from the
    output), so a channel with a large constant value cannot dominate the norm.

    Args:
        num_channels: C.
        channel_dim: the channel axis of the input (negative counts from the end).
        log_scale: initial value of the learned scalar log-scale.
        log_scale_min, log_scale_max: in training, gradients keep ``log_scale`` in range.
        store_output_for_backprop: store the output instead of the input for backward
            (memory only; numerics are the same).

    Parameters: ``bias`` (C,), ``log_scale`` () — icefall's names and shapes.
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int = -1,
        log_scale: float = 1.0,
        log_scale_min: float = -1.5,
        log_scale_max: float = 1.5,
        store_output_for_backprop: bool = False,
    ) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max
        self.store_output_for_backprop = store_output_for_backprop

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape with ``x.shape[channel_dim] == num_channels``; returns the same shape."""
        channel_dim = self.channel_dim if self.channel_dim >= 0 else self.channel_dim + x.ndim
        if x.shape[channel_dim] != self.num_channels:
            raise ValueError(
                f"BiasNorm: expected {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        if _scripting_or_tracing():
            bias = self.bias.reshape((-1,) + (1,) * (x.ndim - channel_dim - 1))
            return x * _bias_norm_scales(x, bias, self.log_scale, channel_dim)
        log_scale = limit_param_value(
            self.log_scale,
            min=float(self.log_scale_min),
            max=float(self.log_scale_max),
            training=self.training,
        )
        return _BiasNormFunction.apply(x, self.bias, log_scale, channel_dim, self.store_output_for_backprop)


# --------------------------------------------------------------------------------------
# Swoosh activations
# --------------------------------------------------------------------------------------

# swoosh(x) = log(1 + exp(x - shift)) - 0.08 x - offset
_SWOOSH_COEFF = 0.08
_SWOOSH_L_SHIFT, _SWOOSH_L_OFFSET = 4.0, 0.035
_SWOOSH_R_SHIFT, _SWOOSH_R_OFFSET = 1.0, 0.313261687
# swoosh'(x) + 0.08 = sigmoid(x - shift) lies in [0, 1]; it is stored as a uint8 with this
# step (icefall/k2 use 255 levels over [0, 1.005], so the top code is never reached).
_SWOOSH_DERIV_STEP = 1.005 / 255.0


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half/bfloat16 are evaluated in float32 (as k2 does); float64 stays float64.
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _log1p_exp(z: Tensor) -> Tensor:
    """``log(1 + exp(z))`` without overflow, in one fused op: softplus returns ``z`` itself above
    ``z = 20``, where the exact value differs by ``log1p(exp(-z)) < 2.1e-9``."""
    return nn.functional.softplus(z)


def _in_graph(z: Tensor) -> bool:
    """Whether ops on ``z`` are recorded (autograd, torch.compile, a TorchScript trace for export): the
    in-place shortcuts below (``out=``, updating an output that backward reads) are then off."""
    return _scripting_or_tracing() or torch.compiler.is_compiling() or (torch.is_grad_enabled() and z.requires_grad)


def _swoosh_of_shifted(z: Tensor, xc: Tensor, offset: float) -> Tensor:
    """``log(1 + exp(z)) - 0.08 xc - offset`` for ``z = xc - shift``. Where no autograd graph is being
    built (eval, or inside an autograd.Function) it overwrites ``z``: the activations are the largest
    tensors of the model, and on CPU every extra pass and fresh allocation over them costs as much as
    the softplus itself (3x faster than out-of-place on 4 x 10 s batches)."""
    if _in_graph(z):
        y = _log1p_exp(z)  # softplus's backward reads its input, so its output may be updated in place
    else:
        y = torch._C._nn.softplus(z, 1.0, 20.0, out=z)  # F.softplus, written into z
    return y.sub_(xc, alpha=_SWOOSH_COEFF).sub_(offset)


def _swoosh(x: Tensor, shift: float, offset: float) -> Tensor:
    xc = x.to(_compute_dtype(x))
    return _swoosh_of_shifted(xc - shift, xc, offset).to(x.dtype)


def _swoosh_and_deriv(x: Tensor, shift: float, offset: float) -> tuple[Tensor, Tensor]:
    xc = x.to(_compute_dtype(x))
    z = xc - shift
    deriv = torch.sigmoid(z)  # before z may be overwritten
    # sigmoid's backward reads its output: update it in place only outside a graph.
    deriv = (deriv - _SWOOSH_COEFF if _in_graph(z) else deriv.sub_(_SWOOSH_COEFF)).to(x.dtype)
    return _swoosh_of_shifted(z, xc, offset).to(x.dtype), deriv


def swoosh_l_forward(x: Tensor) -> Tensor:
    """SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035, differentiable by ordinary autograd."""
    return _swoosh(x, _SWOOSH_L_SHIFT, _SWOOSH_L_OFFSET)


def swoosh_r_forward(x: Tensor) -> Tensor:
    """SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687, differentiable by ordinary autograd."""
    return _swoosh(x, _SWOOSH_R_SHIFT, _SWOOSH_R_OFFSET)


def swoosh_l_forward_and_deriv(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(SwooshL(x), SwooshL'(x))`` with the exact derivative ``sigmoid(x-4) - 0.08``."""
    return _swoosh_and_deriv(x, _SWOOSH_L_SHIFT, _SWOOSH_L_OFFSET)


def swoosh_r_forward_and_deriv(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(SwooshR(x), SwooshR'(x))`` with the exact derivative ``sigmoid(x-1) - 0.08``."""
    return _swoosh_and_deriv(x, _SWOOSH_R_SHIFT, _SWOOSH_R_OFFSET)


# icefall's names for the forward-only helpers.
SwooshLForward = swoosh_l_forward
SwooshRForward = swoosh_r_forward


class _SwooshFunction(torch.autograd.Function):
    """Swoosh with a memory-light backward.

    Saved for backward: one uint8 per element, ``floor(sigmoid(x - shift) / step + u)``
    with ``u ~ U[0, 1)`` and ``step = 1.005 / 255`` — exactly what icefall/k2 store.
    Nothing else (not x, not y) is kept, so the activation costs 1 byte/element of
    autograd memory instead of 4 (float32 input). The random offset makes the
    dequantised derivative unbiased; its error per element is below ``step`` (~0.0039).
    """

    @staticmethod
    def forward(ctx, x: Tensor, shift: float, offset: float) -> Tensor:
        xc = x.to(_compute_dtype(x))
        z = xc - shift
        if ctx.needs_input_grad[0]:
            levels = torch.sigmoid(z) * (1.0 / _SWOOSH_DERIV_STEP) + torch.rand_like(z)
            ctx.save_for_backward(levels.to(torch.uint8))
        return _swoosh_of_shifted(z, xc, offset).to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (levels,) = ctx.saved_tensors
        deriv = levels.to(_compute_dtype(y_grad)) * _SWOOSH_DERIV_STEP - _SWOOSH_COEFF
        return (y_grad * deriv).to(y_grad.dtype), None, None


def swoosh_l(x: Tensor) -> Tensor:
    """SwooshL with the uint8-quantised-derivative backward of :class:`_SwooshFunction`."""
    return _SwooshFunction.apply(x, _SWOOSH_L_SHIFT, _SWOOSH_L_OFFSET)


def swoosh_r(x: Tensor) -> Tensor:
    """SwooshR with the uint8-quantised-derivative backward of :class:`_SwooshFunction`."""
    return _SwooshFunction.apply(x, _SWOOSH_R_SHIFT, _SWOOSH_R_OFFSET)


class _SwooshExactFunction(torch.autograd.Function):
    """Swoosh with the exact derivative ``sigmoid(x - shift) - 0.08``, recomputed in backward from the
    saved input (4 bytes/element in float32). On CPU this is 2-2.5x faster than the quantised
    version (no random numbers, no uint8 round trip), and CPU training is compute-bound, not
    memory-bound."""

    @staticmethod
    def forward(ctx, x: Tensor, shift: float, offset: float) -> Tensor:
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(x)
        ctx.shift = shift
        xc = x.to(_compute_dtype(x))
        return _swoosh_of_shifted(xc - shift, xc, offset).to(x.dtype)

    @staticmethod
    def backward(ctx, y_grad: Tensor):
        (x,) = ctx.saved_tensors
        # One fresh tensor, updated in place (the front end's activations are 15M elements a batch).
        deriv = (x.to(_compute_dtype(x)) - ctx.shift).sigmoid_().sub_(_SWOOSH_COEFF)
        return deriv.mul_(y_grad).to(y_grad.dtype), None, None


class _Swoosh(nn.Module):
    """Shared forward of :class:`SwooshL` and :class:`SwooshR`.

    ``quantised_grad`` picks the backward: True stores the derivative as one uint8 per element
    (icefall's memory-light backward, :func:`swoosh_l`), False stores the input and recomputes the exact
    derivative; None (the default) quantises on accelerators, where activation memory limits the
    batch, and is exact on CPU, where the quantisation costs more time than the whole activation.
    The forward values are the same either way.
    """

    shift: float
    offset: float

    def __init__(self, quantised_grad: bool | None = None) -> None:
        super().__init__()
        self.quantised_grad = quantised_grad

    def forward(self, x: Tensor) -> Tensor:
        if _scripting_or_tracing() or not x.requires_grad:
            return _swoosh(x, self.shift, self.offset)
        quantised = x.device.type != "cpu" if self.quantised_grad is None else self.quantised_grad
        function = _SwooshFunction if quantised else _SwooshExactFunction
        return function.apply(x, self.shift, self.offset)


class SwooshL(_Swoosh):
    """SwooshL(x) = log(1 + e^(x-4)) - 0.08 x - 0.035, elementwise, any shape."""

    shift, offset = _SWOOSH_L_SHIFT, _SWOOSH_L_OFFSET


class SwooshR(_Swoosh):
    """SwooshR(x) = log(1 + e^(x-1)) - 0.08 x - 0.313261687, elementwise, any shape."""

    shift, offset = _SWOOSH_R_SHIFT, _SWOOSH_R_OFFSET


# --------------------------------------------------------------------------------------
# Dropout variants
# --------------------------------------------------------------------------------------


class Dropout2(nn.Module):
    """``nn.functional.dropout`` whose probability may be a :class:`ScheduledFloat`."""

    def __init__(self, p: FloatLike):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.dropout(x, p=float(self.p), training=self.training)


class _MulForDropout3(torch.autograd.Function):
    # ans = x * mask * alpha; backward recovers the mask from ans != 0, so only ans is kept.
    @staticmethod
    def forward(ctx, x: Tensor, mask: Tensor, alpha: float) -> Tensor:
        ans = x * mask * alpha
        ctx.save_for_backward(ans)
        ctx.alpha = alpha
        return ans

    @staticmethod
    def backward(ctx, ans_grad: Tensor):
        (ans,) = ctx.saved_tensors
        return ctx.alpha * ans_grad * (ans != 0), None, None


class Dropout3(nn.Module):
    """Dropout with a (scheduled) probability and one mask shared along ``shared_dim``."""

    def __init__(self, p: FloatLike, shared_dim: int):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        p = float(self.p)
        if not self.training or p == 0:
            return x
        mask_shape = list(x.shape)
        mask_shape[self.shared_dim] = 1
        mask = torch.rand(*mask_shape, device=x.device) > p
        return _MulForDropout3.apply(x, mask, 1.0 / (1 - p))


# --------------------------------------------------------------------------------------
# Activation + dropout + linear, recomputing the activation in backward
# --------------------------------------------------------------------------------------

_ACTIVATIONS = {
    "SwooshL": swoosh_l_forward,
    "SwooshR": swoosh_r_forward,
}
_FORWARD_AND_DERIV = {
    "SwooshL": swoosh_l_forward_and_deriv,
    "SwooshR": swoosh_r_forward_and_deriv,
}


class _ActivationDropoutAndLinearFunction(torch.autograd.Function):
    # Keeps only x (plus the small shared dropout mask); the activation output, which
    # is as large as x, is recomputed in backward together with its exact derivative.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        activation: str,
        dropout_p: float,
        dropout_shared_dim: int | None,
    ) -> Tensor:
        if dropout_p != 0.0:
            mask_shape = list(x.shape)
            if dropout_shared_dim is not None:
                mask_shape[dropout_shared_dim] = 1
            keep = torch.rand(*mask_shape, device=x.device, dtype=x.dtype) > dropout_p
            dropout_mask = (1.0 / (1.0 - dropout_p)) * keep
        else:
            dropout_mask = None
        ctx.save_for_backward(x, weight, bias, dropout_mask)
        ctx.activation = activation
        y = _ACTIVATIONS[activation](x)
        if dropout_mask is not None:
            y.mul_(dropout_mask)  # y is a fresh tensor (no graph inside an autograd.Function)
        return nn.functional.linear(y, weight, bias)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, ans_grad: Tensor):
        x, weight, bias, dropout_mask = ctx.saved_tensors
        y, act_deriv = _FORWARD_AND_DERIV[ctx.activation](x)
        if dropout_mask is not None:
            # The activation's tensors are fresh: scale them in place (one pass, no allocation each).
            y.mul_(dropout_mask)
            act_deriv.mul_(dropout_mask)
        out_channels, in_channels = weight.shape
        g = ans_grad.reshape(-1, out_channels)
        weight_grad = torch.matmul(g.t(), y.reshape(-1, in_channels).to(g.dtype))
        bias_grad = None if bias is None else g.sum(dim=0)
        x_grad = torch.matmul(ans_grad, weight.to(ans_grad.dtype)).mul_(act_deriv)
        return x_grad, weight_grad, bias_grad, None, None, None


class ActivationDropoutAndLinear(nn.Module):
    """``activation -> dropout -> linear`` that stores only its input for backward.

    Equivalent to ``nn.Sequential(SwooshL(), Dropout3(dropout_p, dropout_shared_dim),
    ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale))``
    (``Dropout2`` if ``dropout_shared_dim`` is None), but the activation is recomputed in
    backward instead of being stored, and its derivative there is exact (not quantised).

    Dropout is applied only in training. (icefall applies ``float(dropout_p)`` in eval
    too; in Zipformer ``dropout_p`` is a ScheduledFloat whose eval value is 0, so the
    results agree.)

    Args:
        in_channels, out_channels: linear dimensions.
        bias: whether the linear layer has a bias.
        activation: ``"SwooshL"`` or ``"SwooshR"``.
        dropout_p: dropout probability (float or schedule), applied after the activation.
        dropout_shared_dim: dimension along which the dropout mask is shared, or None.
        initial_scale: scale of the initial weight/bias, as in :func:`ScaledLinear`.

    Parameters: ``weight`` (out_channels, in_channels), ``bias`` (out_channels,).
    Input ``(*, in_channels)`` -> output ``(*, out_channels)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bias: bool = True,
        activation: str = "SwooshL",
        dropout_p: FloatLike = 0.0,
        dropout_shared_dim: int | None = -1,
        initial_scale: float = 1.0,
    ):
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"ActivationDropoutAndLinear: unknown activation {activation!r}, expected one of {sorted(_ACTIVATIONS)}"
            )
        linear = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = linear.weight
        self.register_parameter("bias", linear.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if _scripting_or_tracing():
            return nn.functional.linear(_ACTIVATIONS[self.activation](x), self.weight, self.bias)
        dropout_p = float(self.dropout_p) if self.training else 0.0
        return _ActivationDropoutAndLinearFunction.apply(
            x, self.weight, self.bias, self.activation, dropout_p, self.dropout_shared_dim
        )


# --------------------------------------------------------------------------------------
# Chunk-causal depthwise convolution
# --------------------------------------------------------------------------------------


class ChunkCausalDepthwiseConv1d(nn.Module):
    """Depthwise 1-d convolution that is causal across chunks and full within a chunk.

    Output = causal depthwise conv (kernel ``(kernel_size+1)//2``, left padded) +
    within-chunk depthwise conv (kernel ``kernel_size``, zero outside the chunk) scaled
    per position by ``1 + chunkwise_conv_scale`` corrections near the chunk edges.

    Parameters (icefall's names): ``causal_conv.{weight,bias}``,
    ``chunkwise_conv.{weight,bias}``, ``chunkwise_conv_scale`` (2, channels, kernel_size).
    """

    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ChunkCausalDepthwiseConv1d: kernel_size must be odd, got {kernel_size}")
        half_kernel_size = (kernel_size + 1) // 2
        self.causal_conv = DepthwiseConv1d(channels, kernel_size=half_kernel_size, padding=0, bias=True)
        self.chunkwise_conv = DepthwiseConv1d(channels, kernel_size=kernel_size, padding=kernel_size // 2, bias=bias)
        # Row 0: corrections near the left edge of a chunk; row 1: near the right edge.
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        self.kernel_size = kernel_size
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x: (N, C, T); chunk_size in frames (need not divide T; -1 = one chunk). -> (N, C, T)"""
        batch_size, num_channels, seq_len = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > seq_len:
            chunk_size = seq_len
        right_pad = -seq_len % chunk_size
        x = nn.functional.pad(x, (left_pad, right_pad))

        x_causal = self.causal_conv(x[..., : left_pad + seq_len])

        x_chunk = x[..., left_pad:]
        num_chunks = x_chunk.shape[2] // chunk_size
        x_chunk = x_chunk.reshape(batch_size, num_channels, num_chunks, chunk_size)
        x_chunk = x_chunk.permute(0, 2, 1, 3).reshape(batch_size * num_chunks, num_channels, chunk_size)
        x_chunk = self.chunkwise_conv(x_chunk) * self._get_chunk_scale(chunk_size)
        x_chunk = x_chunk.reshape(batch_size, num_chunks, num_channels, chunk_size).permute(0, 2, 1, 3)
        x_chunk = x_chunk.reshape(batch_size, num_channels, num_chunks * chunk_size)[..., :seq_len]
        return x_chunk + x_causal

    def _get_chunk_scale(self, chunk_size: int) -> Tensor:
        """Per-position scale of the chunkwise conv output, shape (C, chunk_size)."""
        left_edge = self.chunkwise_conv_scale[0]
        right_edge = self.chunkwise_conv_scale[1]
        # Zero-extended by chunk_size, then cut to chunk_size: the edges cut short when the chunk is shorter
        # than the kernel, zero-padded when longer. No branch on chunk_size, so a traced (ONNX) graph whose
        # chunk is its dynamic length is right for every length.
        pad = left_edge.new_zeros(left_edge.shape[0], chunk_size)
        left_edge = torch.cat((left_edge, pad), dim=-1)[:, :chunk_size]
        right_edge = torch.cat((pad, right_edge), dim=-1)[:, -chunk_size:]
        return 1.0 + (left_edge + right_edge)

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """One chunk. x: (N, C, T) with T the chunk size; cache: (N, C, kernel_size // 2)
        holding the previous input frames. Returns (y (N, C, T), new cache)."""
        left_pad = self.kernel_size // 2
        if cache.shape[-1] != left_pad:
            raise ValueError(f"ChunkCausalDepthwiseConv1d: cache has {cache.shape[-1]} frames, expected {left_pad}")
        x = torch.cat([cache, x], dim=2)
        cache = x[..., -left_pad:]
        x_causal = self.causal_conv(x)
        x_chunk = self.chunkwise_conv(x[..., left_pad:])
        x_chunk = x_chunk * self._get_chunk_scale(chunk_size=x_chunk.shape[-1])
        return x_chunk + x_causal, cache


# --------------------------------------------------------------------------------------
# Balancer
# --------------------------------------------------------------------------------------


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        min_mean: float,
        max_mean: float,
        min_rms: float,
        max_rms: float,
        grad_scale: float,
        channel_dim: int,
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.config = (min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim)
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x,) = ctx.saved_tensors
        min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim = ctx.config
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            x = x.to(torch.float32).detach().requires_grad_(True)
            stat_dims = [d for d in range(x.ndim) if d != channel_dim]
            uncentered_var = (x**2).mean(dim=stat_dims, keepdim=True)
            mean = x.mean(dim=stat_dims, keepdim=True)
            stddev = (uncentered_var - mean * mean).clamp(min=1.0e-20).sqrt()
            rms = uncentered_var.clamp(min=1.0e-20).sqrt()
            # Penalties: how far mean/stddev is outside [min_mean, max_mean], and how far
            # log(rms) is outside [log(min_rms), log(max_rms)]; both per channel.
            m = mean / stddev
            m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
            r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
            (loss_grad,) = torch.autograd.grad((m_loss + r_loss).sum(), x)
        loss_grad_rms = (loss_grad**2).mean(dim=stat_dims, keepdim=True).sqrt().clamp(min=1.0e-20)
        loss_grad = loss_grad * (grad_scale / loss_grad_rms)
        x_grad_float = x_grad.to(torch.float32)
        # Scale the penalty per element by |x_grad|, a noisy estimate of the gradient
        # magnitude at that (frame, channel), so the correction is relative to it.
        x_grad_mod = x_grad_float + x_grad_float.abs() * loss_grad
        return x_grad_mod.to(x_grad.dtype), None, None, None, None, None, None


def _abs_to_rms(x: float) -> float:
    # For Gaussian data, rms = sqrt(pi / 2) * mean absolute value.
    return 1.25331413732 * x


def _proportion_positive_to_mean(p: float) -> float:
    # For Gaussian data, P(x > 0) = p means mean/stddev = sqrt(2) * erfinv(2p - 1);
    # icefall approximates this as 0.8139535143 * atanh(2p - 1) (eps avoids log(0)).
    x = 2.0 * p - 1.0
    eps = 1.0e-10
    atanh = (math.log(1 + x + eps) - math.log(1 - x + eps)) / 2.0
    return 0.8139535143 * atanh


class Balancer(nn.Module):
    """Identity in forward; in training, nudges gradients so that per channel the
    proportion of positive values stays in ``[min_positive, max_positive]`` and the mean
    absolute value stays in ``[min_abs, max_abs]``.

    Applied on a random subset of forward calls (probability ``prob``, default a schedule
    0.5 -> 0.125 over 8000 batches) to spread the cost; never in eval mode.

    Args:
        num_channels: C.
        channel_dim: the channel axis (negative counts from the end).
        min_positive, max_positive, min_abs, max_abs: limits (float or schedule).
        grad_scale: size of the correction relative to the incoming gradient.
        prob: probability of applying on a given call (float or schedule).
    """

    def __init__(
        self,
        num_channels: int,
        channel_dim: int,
        min_positive: FloatLike = 0.05,
        max_positive: FloatLike = 0.95,
        min_abs: FloatLike = 0.2,
        max_abs: FloatLike = 100.0,
        grad_scale: FloatLike = 0.04,
        prob: FloatLike | None = None,
    ):
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        # On GPU, skip the ~5% of calls made when allocated memory is highest.
        self.mem_cutoff = CutoffEstimator(0.05)
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale

    def forward(self, x: Tensor) -> Tensor:
        """x: any shape with C channels on ``channel_dim``; returns x (same values)."""
        if (
            torch.jit.is_scripting()
            or not self.training
            or not x.requires_grad
            or (x.is_cuda and self.mem_cutoff(torch.cuda.memory_allocated()))
        ):
            return x
        channel_dim = self.channel_dim if self.channel_dim >= 0 else self.channel_dim + x.ndim
        if x.shape[channel_dim] != self.num_channels:
            raise ValueError(
                f"Balancer: expected {self.num_channels} channels on dim {self.channel_dim}, "
                f"got input of shape {tuple(x.shape)}"
            )
        if random.random() >= float(self.prob):
            return x
        return _BalancerFunction.apply(
            x,
            _proportion_positive_to_mean(float(self.min_positive)),
            _proportion_positive_to_mean(float(self.max_positive)),
            _abs_to_rms(float(self.min_abs)),
            _abs_to_rms(float(self.max_abs)),
            float(self.grad_scale),
            channel_dim,
        )


# --------------------------------------------------------------------------------------
# Whiten
# --------------------------------------------------------------------------------------


def _whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """How far the centred covariance of ``x`` (*, C) is from ``lambda * I``, per group.

    Returns a scalar ``mean_g(trace(S_g^2)/c) / (mean_g(trace(S_g)/c))^2`` over the group
    covariances ``S_g`` (c = C / num_groups channels each): 1.0 if every group's
    covariance is the same multiple of the identity, larger otherwise.
    """
    x = x.reshape(-1, x.shape[-1])
    num_frames, num_channels = x.shape
    if num_channels % num_groups != 0:
        raise ValueError(f"Whiten: {num_channels} channels not divisible by {num_groups} groups")
    channels_per_group = num_channels // num_groups
    x = x.reshape(num_frames, num_groups, channels_per_group).transpose(0, 1)
    # Centred covariance: moving the mean around through these gradients destabilises training.
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)  # (groups, c, c)
    mean_diag = covar.diagonal(dim1=1, dim2=2).mean()
    # sum of squares of a symmetric matrix = trace of its square.
    mean_diag_of_square = (covar**2).sum() / (num_groups * channels_per_group)
    return mean_diag_of_square / (mean_diag**2 + 1.0e-20)


class _WhiteningPenaltyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: Whiten) -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        return x

    @staticmethod
    def backward(ctx, x_grad: Tensor):
        (x_orig,) = ctx.saved_tensors
        w = ctx.module
        with torch.enable_grad(), torch.autocast(x_orig.device.type, enabled=False):
            x = x_orig.to(torch.float32).detach().requires_grad_(True)
            metric = _whitening_metric(x, w.num_groups)
            if metric < float(w.whitening_limit):
                # Within the limit: check rarely from now on.
                w.prob = w.min_prob
                return x_grad, None
            w.prob = w.max_prob
            (penalty_grad,) = torch.autograd.grad(metric, x)
        scale = float(w.grad_scale) * (x_grad.to(torch.float32).norm() / (penalty_grad.norm() + 1.0e-20))
        return x_grad + (penalty_grad * scale).to(x_grad.dtype), None


class Whiten(nn.Module):
    """Identity in forward; in training, when the feature covariance of the input is too
    far from white (metric of :func:`_whitening_metric` above ``whitening_limit``), adds
    the gradient of that metric, scaled to ``grad_scale`` times the norm of the incoming
    gradient.

    Args:
        num_groups: channel groups, each whitened separately (with equal traces).
        whitening_limit: metric value (>= 1) below which nothing is done (float or schedule).
        prob: probability of checking on a call, or ``(min_prob, max_prob)``: after a
            check it becomes ``max_prob`` if the limit was exceeded, else ``min_prob``.
        grad_scale: relative size of the added gradient (float or schedule).

    Input ``(*, C)``, returned unchanged; the result must be used for the effect to apply.
    """

    def __init__(
        self,
        num_groups: int,
        whitening_limit: FloatLike,
        prob: float | tuple[float, float],
        grad_scale: FloatLike,
    ):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"Whiten: num_groups must be >= 1, got {num_groups}")
        if float(whitening_limit) < 1:
            raise ValueError(f"Whiten: whitening_limit must be >= 1, got {float(whitening_limit)}")
        if float(grad_scale) < 0:
            raise ValueError(f"Whiten: grad_scale must be >= 0, got {float(grad_scale)}")
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        if isinstance(prob, (float, int)):
            prob = (prob, prob)
        self.min_prob, self.max_prob = prob
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError(f"Whiten: need 0 < min_prob <= max_prob <= 1, got {prob}")
        self.prob = self.max_prob
        self.name: str | None = None  # for diagnostics, written by the training loop

    def forward(self, x: Tensor) -> Tensor:
        if (
            _scripting_or_tracing()
            or not self.training
            or not x.requires_grad
            or float(self.grad_scale) == 0
            or random.random() > self.prob
        ):
            return x
        return _WhiteningPenaltyFunction.apply(x, self)
