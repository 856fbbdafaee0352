"""ScaledAdam: the optimizer Zipformer is trained with.

Adam in which each tensor's step is proportional to that tensor's root-mean-square value (so the learning
rate is a *relative* change per step), plus a learned overall scale per tensor, plus gradient clipping
against the median of recent gradient norms. Tensors of one shape are stacked and updated together, so the
number of kernel launches grows with the number of distinct shapes, not the number of parameters.

Numerically this follows icefall's ``zipformer/optim.py`` (same parameter trajectory given the same
gradients) and keeps its per-parameter state keys, so icefall optimizer checkpoints load.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

# Steps (besides multiples of clipping_update_period) at which the clipping threshold is re-estimated
# from the norms seen so far, so clipping starts long before the first full period.
_EARLY_THRESHOLD_STEPS = (10, 20, 40)


@dataclass
class _Stack:
    """The parameters of one group that share dtype and shape, stacked on a new leading dim.

    ``value`` and ``grad`` are ``(K, *shape)`` copies; ``state`` is the optimizer state of the whole stack,
    kept under the first parameter (the other parameters' states stay empty).
    """

    params: list[Tensor]
    names: list[str]
    value: Tensor
    grad: Tensor
    state: dict[str, Any]

    @property
    def is_scalar(self) -> bool:
        """Each stacked parameter has a single element."""
        return self.value.numel() == self.value.shape[0]

    def reduce_dims(self) -> list[int]:
        """All dims but the stacking one."""
        return list(range(1, self.value.ndim))


ParamsInput = Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Iterable[dict[str, Any]]


class ScaledAdam(torch.optim.Optimizer):
    """Adam with parameter-scale-relative steps, learned parameter scales and median-relative clipping.

    For a tensor with more than one element the step is ``-lr · rms(p) · m / sqrt(v)`` (``m`` momentum with
    ``betas[0]``, ``v`` the Adam second moment with ``betas[1]``), and every ``size_update_period`` steps the
    tensor's overall scale ``exp(s)`` takes an Adam step of rate ``lr · scalar_lr_scale`` on ``d loss / d s``,
    keeping ``rms(p)`` in ``[param_min_rms, param_max_rms]``. Single-element parameters take plain Adam steps
    with rate ``lr · scalar_lr_scale`` and are kept within ``±scalar_max``.

    Clipping: the gradient norm (each tensor's gradient weighted by its rms, scalars by ``scalar_lr_scale``)
    is recorded every step; the threshold is ``clipping_scale ×`` the median of the last
    ``clipping_update_period`` norms (re-estimated every period, and at steps 10, 20, 40 with twice that
    threshold). Steps whose norm exceeds it are scaled down, and the parameter with the largest share of the
    norm is logged. Each parameter group is clipped on its own.

    Args:
        params: ``model.parameters()``, ``model.named_parameters()``, or a list of groups, each a dict with
            ``"named_params"`` (icefall style) or ``"params"`` plus per-group options such as ``"lr"``.
            Names appear in the clipping log; unnamed parameters are called ``group<g>.param<i>``.
        lr: learning rate (a relative change per step; usually driven by :class:`asr.optim.Eden`).
        clipping_scale: clip at this multiple of the median recent norm; ``None`` disables clipping.
        betas: momentum and second-moment decay.
        scalar_lr_scale: learning-rate factor for single-element parameters and for parameter scales.
        eps: added to denominators.
        param_min_rms: below this rms a tensor's scale is not shrunk further, and its step uses this rms.
        param_max_rms: the scale update never takes a tensor's rms above this.
        scalar_max: single-element parameters are clamped to ``[-scalar_max, scalar_max]``.
        size_update_period: steps between parameter-scale updates.
        clipping_update_period: number of recent norms the clipping median is taken over.
    """

    def __init__(
        self,
        params: ParamsInput,
        lr: float = 0.045,
        clipping_scale: float | None = 2.0,
        betas: tuple[float, float] = (0.9, 0.98),
        scalar_lr_scale: float = 0.1,
        eps: float = 1.0e-8,
        param_min_rms: float = 1.0e-5,
        param_max_rms: float = 3.0,
        scalar_max: float = 10.0,
        size_update_period: int = 4,
        clipping_update_period: int = 100,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if clipping_scale is not None and clipping_scale <= 0.0:
            raise ValueError(f"clipping_scale must be > 0 or None, got {clipping_scale}")
        if size_update_period < 1 or clipping_update_period < 1:
            raise ValueError(
                f"size_update_period and clipping_update_period must be >= 1, "
                f"got {size_update_period} and {clipping_update_period}"
            )
        if not 0.0 < param_min_rms < param_max_rms:
            raise ValueError(f"need 0 < param_min_rms < param_max_rms, got {param_min_rms}, {param_max_rms}")
        defaults = dict(
            lr=lr,
            clipping_scale=clipping_scale,
            betas=betas,
            scalar_lr_scale=scalar_lr_scale,
            eps=eps,
            param_min_rms=param_min_rms,
            param_max_rms=param_max_rms,
            scalar_max=scalar_max,
            size_update_period=size_update_period,
            clipping_update_period=clipping_update_period,
        )
        if isinstance(params, Tensor):
            raise TypeError("ScaledAdam: pass an iterable of parameters (e.g. [tensor]), not a single Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("ScaledAdam got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        super().__init__(groups, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group given with "params" or icefall's "named_params"; unnamed parameters get index names."""
        super().add_param_group(_named_group(param_group, len(self.param_groups)))

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update every parameter from its ``.grad`` (a missing grad counts as zero)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            with self._stacks(group) as stacks:
                # Clipping needs the rms recorded in every stack's state, so it starts on the second step.
                started = len(stacks[0].state) > 0
                clip = self._clip_factor(group, stacks) if started else 1.0
                for stack in stacks:
                    if not stack.state:
                        self._init_state(group, stack)
                    self._update(group, stack, clip)
        return loss

    @contextlib.contextmanager
    def _stacks(self, group: dict[str, Any]) -> Iterator[list[_Stack]]:
        """Yield the group's parameters stacked by (dtype, shape); write the stacked values back afterwards."""
        by_key: dict[tuple, tuple[list[Tensor], list[str]]] = {}
        for p, name in zip(group["params"], group["param_names"]):
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"ScaledAdam does not support sparse gradients (parameter {name!r})")
            params, names = by_key.setdefault((str(p.dtype), *p.shape), ([], []))
            params.append(p)
            names.append(name)
        # A fixed order (the same as icefall's) so that the state's home and the norm sums are reproducible.
        stacks = []
        for key in sorted(by_key):
            params, names = by_key[key]
            stacks.append(
                _Stack(
                    params=params,
                    names=names,
                    value=torch.stack(params),
                    grad=torch.stack([torch.zeros_like(p) if p.grad is None else p.grad for p in params]),
                    state=self.state[params[0]],
                )
            )
        yield stacks
        for stack in stacks:
            for p, new_value in zip(stack.params, stack.value):
                p.copy_(new_value)

    def _init_state(self, group: dict[str, Any], stack: _Stack) -> None:
        p = stack.value
        state = stack.state
        state["step"] = 0
        # One momentum buffer for every kind of change (Adam step and scale step), in parameter units.
        state["delta"] = torch.zeros_like(p)
        if not stack.is_scalar:
            param_rms = _rms(p, stack.reduce_dims())  # (K, 1, ..., 1)
            state["param_rms"] = param_rms
            state["scale_exp_avg_sq"] = torch.zeros_like(param_rms)
            state["scale_grads"] = p.new_zeros(group["size_update_period"], *param_rms.shape)
        state["exp_avg_sq"] = torch.zeros_like(p)

    def _clip_factor(self, group: dict[str, Any], stacks: list[_Stack]) -> float:
        """The factor (<= 1) to scale this step's gradients by; records the norm and refreshes the threshold."""
        clipping_scale = group["clipping_scale"]
        first_state = stacks[0].state
        step = first_state["step"]
        if clipping_scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]

        sumsq = torch.zeros((), device=stacks[0].value.device)
        for stack in stacks:
            if stack.is_scalar:
                sumsq += (stack.grad**2).sum() * group["scalar_lr_scale"] ** 2
            else:
                sumsq += ((stack.grad * stack.state["param_rms"]) ** 2).sum()
        norm = sumsq.sqrt()

        if "model_norms" not in first_state:
            first_state["model_norms"] = torch.zeros(period, device=norm.device)
        first_state["model_norms"][step % period] = norm

        early_steps = [s for s in _EARLY_THRESHOLD_STEPS if s < period]
        if step % period == 0 or step in early_steps:
            self._refresh_threshold(first_state, clipping_scale, step, early=step in early_steps)

        threshold = first_state.get("model_norm_threshold")
        if threshold is None:
            return 1.0
        factor = min(1.0, (threshold / (norm + 1.0e-20)).item())
        if factor != factor:  # a NaN norm: drop this step's gradients entirely
            factor = 0.0
        if factor < 1.0:
            first_state["num_clipped"] += 1
            self._log_clipping(group, stacks, sumsq, factor, threshold)
        if factor == 0.0:
            for stack in stacks:
                stack.grad.zero_()  # an inf/NaN gradient times zero would still be NaN
        return factor

    @staticmethod
    def _refresh_threshold(state: dict[str, Any], clipping_scale: float, step: int, early: bool) -> None:
        norms = state["model_norms"].sort()[0].cpu()
        if early:
            norms = norms[-step:]  # only `step` norms have been recorded; the rest are the initial zeros
        count = norms.numel()
        quartiles = [norms[min(count - 1, (count // 4) * q)].item() for q in range(5)]
        median = quartiles[2]
        if median != median:
            raise RuntimeError("ScaledAdam: too many non-finite gradient norms to set a clipping threshold")
        # Norms change quickly early in training, so the first estimates are more permissive.
        threshold = clipping_scale * median * (2.0 if early else 1.0)
        percent_clipped = state["num_clipped"] * 100.0 / count if "num_clipped" in state else 0.0
        state["model_norm_threshold"] = threshold
        state["num_clipped"] = 0
        logger.info(
            "Clipping_scale=%s, grad-norm quartiles %s, threshold=%.3e, percent-clipped=%.1f",
            clipping_scale,
            " ".join(f"{q:.3e}" for q in quartiles),
            threshold,
            percent_clipped,
        )

    @staticmethod
    def _log_clipping(
        group: dict[str, Any], stacks: list[_Stack], sumsq: Tensor, factor: float, threshold: float
    ) -> None:
        """Log the clipping with the parameter whose weighted gradient has the largest share of the norm."""
        best_name, best_sumsq = "", -1.0
        for stack in stacks:
            if stack.is_scalar:
                weighted = (stack.grad.reshape(len(stack.names)) * group["scalar_lr_scale"]) ** 2
            else:
                weighted = ((stack.grad * stack.state["param_rms"]) ** 2).sum(dim=stack.reduce_dims())
            index = int(weighted.argmax())
            if weighted[index].item() > best_sumsq:
                best_name, best_sumsq = stack.names[index], weighted[index].item()
        share = best_sumsq / max(sumsq.item(), 1e-30)
        # Hard clipping (below 0.1) usually means a real problem, so it is a warning.
        level = logging.WARNING if factor < 0.1 else logging.INFO
        logger.log(
            level,
            "Clipping gradients by %.4g (norm %.3e > threshold %.3e); dominant parameter %s "
            "with %.2f of the squared norm",
            factor,
            sumsq.sqrt().item(),
            threshold,
            best_name,
            share,
        )

    def _update(self, group: dict[str, Any], stack: _Stack, clip: float) -> None:
        state = stack.state
        grad = stack.grad
        if clip != 1.0:
            grad.mul_(clip)
        step = state["step"]
        state["delta"].mul_(group["betas"][0])
        if not stack.is_scalar:
            period = group["size_update_period"]
            dims = stack.reduce_dims()
            # d loss / d log(scale) of each tensor, gathered over the period.
            state["scale_grads"][step % period] = (stack.value * grad).sum(dim=dims, keepdim=True)
            if step % period == period - 1:
                state["param_rms"].copy_(_rms(stack.value, dims))
                if step > 0:
                    self._scale_step(group, stack)
            self._tensor_step(group, stack)
        else:
            self._scalar_step(group, stack)
        state["step"] = step + 1

    @staticmethod
    def _scale_step(group: dict[str, Any], stack: _Stack) -> None:
        """Adam step on each tensor's log-scale, applied through the momentum buffer as ``p · Δs``."""
        state = stack.state
        beta1, beta2 = group["betas"]
        scale_grads = state["scale_grads"]  # (period, K, 1, ..., 1)
        param_rms = state["param_rms"]
        period = scale_grads.shape[0]
        # One scale update per period, so its second-moment decay is per period too.
        beta2_period = beta2**period
        scale_exp_avg_sq = state["scale_exp_avg_sq"]
        scale_exp_avg_sq.mul_(beta2_period).add_((scale_grads**2).mean(dim=0), alpha=1 - beta2_period)
        num_scale_steps = (state["step"] + 1) // period
        bias_correction2 = 1 - beta2_period**num_scale_steps
        denom = scale_exp_avg_sq.sqrt() + group["eps"]
        # No first-moment bias correction: smaller early steps help stability.
        rate = -group["lr"] * group["scalar_lr_scale"] * bias_correction2**0.5
        scale_step = rate * scale_grads.sum(dim=0) / denom
        scale_step.masked_fill_(param_rms < group["param_min_rms"], 0.0)
        scale_step = torch.minimum(scale_step, (group["param_max_rms"] - param_rms) / param_rms)
        state["delta"].add_(stack.value * scale_step, alpha=1 - beta1)

    @staticmethod
    def _tensor_step(group: dict[str, Any], stack: _Stack) -> None:
        state = stack.state
        beta1, beta2 = group["betas"]
        grad = stack.grad
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        # Like icefall, the correction is dropped once it is under 1%.
        second_moment = exp_avg_sq * (1.0 / bias_correction2) if bias_correction2 < 0.99 else exp_avg_sq
        denom = second_moment.sqrt()
        denom += group["eps"]
        rate = -group["lr"] * (1 - beta1) * state["param_rms"].clamp(min=group["param_min_rms"])
        state["delta"].add_(grad / denom * rate)
        stack.value.add_(state["delta"])

    @staticmethod
    def _scalar_step(group: dict[str, Any], stack: _Stack) -> None:
        state = stack.state
        beta1, beta2 = group["betas"]
        grad = stack.grad
        exp_avg_sq = state["exp_avg_sq"]
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction2 = 1 - beta2 ** (state["step"] + 1)
        denom = (exp_avg_sq / bias_correction2).sqrt() + group["eps"]
        lr = group["lr"] * group["scalar_lr_scale"]
        state["delta"].add_(grad / denom, alpha=-lr * (1 - beta1))
        stack.value.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        stack.value.add_(state["delta"])


def _rms(x: Tensor, dims: list[int]) -> Tensor:
    return (x**2).mean(dim=dims, keepdim=True).sqrt()


def _named_group(group: dict[str, Any], index: int) -> dict[str, Any]:
    """A copy of ``group`` whose "params" are ``(name, tensor)`` pairs, from "named_params" or "params".

    torch's Optimizer then keeps the names in the group's "param_names" (and in ``state_dict()``).
    """
    if not isinstance(group, dict):
        raise TypeError(f"ScaledAdam: parameter group {index} is a {type(group).__name__}, expected a dict")
    options = {k: v for k, v in group.items() if k not in ("params", "named_params")}
    if "named_params" in group:
        entries = list(group["named_params"])
    elif "params" in group:
        entries = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
    else:
        raise ValueError(f"ScaledAdam: parameter group {index} has neither 'params' nor 'named_params'")
    named = []
    for i, entry in enumerate(entries):
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], Tensor):
            named.append((str(entry[0]), entry[1]))
        elif isinstance(entry, Tensor):
            named.append((f"group{index}.param{i}", entry))
        else:
            raise TypeError(
                f"ScaledAdam: item {i} of parameter group {index} is a {type(entry).__name__}, "
                "expected a Tensor or a (name, Tensor) pair"
            )
    if not named:
        raise ValueError(f"ScaledAdam: parameter group {index} is empty")
    return {"params": named, **options}
