"""Tests for asr.nn.scaling and asr.nn.positional against closed forms and brute force."""

import math
import random

import numpy as np
import pytest
import torch

from asr.nn import scaling
from asr.nn.positional import CompactRelPositionalEncoding
from asr.nn.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    Dropout3,
    PiecewiseLinear,
    ScaledLinear,
    ScheduledFloat,
    SwooshL,
    SwooshR,
    Whiten,
    convert_num_channels,
    limit_param_value,
    penalize_abs_values_gt,
    scale_grad,
    softmax,
    swoosh_l,
    swoosh_l_forward,
    swoosh_r,
    swoosh_r_forward,
    with_loss,
)

SWOOSH = {  # name: (shift, offset, quantised-backward function, plain forward, module)
    "L": (4.0, 0.035, swoosh_l, swoosh_l_forward, SwooshL),
    "R": (1.0, 0.313261687, swoosh_r, swoosh_r_forward, SwooshR),
}
POINTS = [
    -1.0e4,
    -1000.0,
    -100.0,
    -80.0,
    -20.0,
    -5.0,
    -1.0,
    -0.3,
    0.0,
    0.5,
    1.0,
    2.0,
    4.0,
    7.5,
    20.0,
    80.0,
    100.0,
    1000.0,
    1.0e4,
]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def swoosh_closed_form(x: np.ndarray, shift: float, offset: float) -> np.ndarray:
    # log(1 + e^(x - shift)) via numpy's logaddexp, in float64.
    return np.logaddexp(0.0, x - shift) - 0.08 * x - offset


def swoosh_deriv_closed_form(x: np.ndarray, shift: float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * (x - shift))) - 0.08  # sigmoid without overflow


# ------------------------------------------------------------------------- Swoosh


@pytest.mark.parametrize("name", ["L", "R"])
def test_swoosh_matches_closed_form_float64(name):
    shift, offset, fn, fwd, module = SWOOSH[name]
    x = np.array(POINTS + list(np.linspace(-12, 12, 97)))
    expected = swoosh_closed_form(x, shift, offset)
    # Spot-check the closed form itself with math.log1p where exp does not overflow.
    for xi, ei in zip(x, expected):
        if xi - shift < 700:
            assert ei == pytest.approx(math.log1p(math.exp(xi - shift)) - 0.08 * xi - offset, rel=1e-12, abs=1e-12)
    xt = torch.tensor(x, dtype=torch.float64)
    for y in (
        fwd(xt),
        module()(xt),
        fn(xt.clone().requires_grad_(True)).detach(),
        module()(xt.clone().requires_grad_(True)).detach(),
        module(quantised_grad=True)(xt.clone().requires_grad_(True)).detach(),
    ):
        assert y.dtype == torch.float64
        np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["L", "R"])
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float16, 2e-3, 2e-3), (torch.float32, 1e-6, 1e-6)])
def test_swoosh_stable_in_low_precision(name, dtype, rtol, atol):
    shift, offset, fn, fwd, module = SWOOSH[name]
    max_abs = 6.0e4 if dtype == torch.float16 else 1.0e4
    x_list = [p for p in POINTS if abs(p) <= max_abs] + [max_abs, -max_abs]
    x = torch.tensor(x_list, dtype=dtype)
    expected = swoosh_closed_form(x.double().numpy(), shift, offset)
    for requires_grad in (False, True):
        xi = x.clone().requires_grad_(requires_grad)
        y = module()(xi)
        assert y.dtype == dtype
        assert torch.isfinite(y).all(), y
        np.testing.assert_allclose(y.detach().double().numpy(), expected, rtol=rtol, atol=atol)
        if requires_grad:
            y.backward(torch.ones_like(y))
            assert torch.isfinite(xi.grad).all()
            deriv = swoosh_deriv_closed_form(x.double().numpy(), shift)
            np.testing.assert_allclose(xi.grad.double().numpy(), deriv, atol=1.005 / 255 + 1e-3)


@pytest.mark.parametrize("name", ["L", "R"])
def test_swoosh_quantised_backward_within_quantisation_error(name):
    # The saved derivative is quantised to 8 bits, so gradcheck cannot hold to float64
    # precision; instead compare with the analytic derivative: the error per element is
    # below one quantisation step (1.005/255), and the rounding is unbiased on average.
    shift, offset, fn, fwd, module = SWOOSH[name]
    step = 1.005 / 255
    x = torch.linspace(-15, 15, 301, dtype=torch.float64)
    analytic = torch.tensor(swoosh_deriv_closed_form(x.numpy(), shift))
    grads = []
    for _ in range(200):
        xi = x.clone().requires_grad_(True)
        fn(xi).backward(torch.ones_like(xi))
        grads.append(xi.grad)
        assert (xi.grad - analytic).abs().max() < step
    mean_grad = torch.stack(grads).mean(dim=0)
    # 200 samples of a uniform rounding error with std < step/2: mean error within ~5 sigma.
    assert (mean_grad - analytic).abs().max() < 5 * (step / 2) / math.sqrt(200)
    # The quantised gradient is applied as a chain-rule factor on the incoming gradient.
    xi = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    fn(xi).backward(g)
    assert ((xi.grad - g * analytic).abs() <= g.abs() * step + 1e-12).all()


def _saved_tensor_bytes(fn, x):
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel(), t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return saved, y


@pytest.mark.parametrize("name", ["L", "R"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_swoosh_backward_keeps_one_byte_per_element(name, dtype):
    shift, offset, fn, fwd, module = SWOOSH[name]
    x = torch.randn(64, 33, dtype=dtype, requires_grad=True)
    saved, y = _saved_tensor_bytes(module(quantised_grad=True), x)
    assert [(d, n) for d, n, _ in saved] == [(torch.uint8, x.numel())]
    assert sum(n * size for _, n, size in saved) <= x.numel() * 1
    # For contrast, plain autograd through the same formula keeps at least the full-precision input.
    saved_plain, _ = _saved_tensor_bytes(fwd, x)
    assert sum(n * size for _, n, size in saved_plain) >= x.numel() * x.element_size()
    y.sum().backward()  # the saved uint8 tensor is enough for backward


@pytest.mark.parametrize("name", ["L", "R"])
def test_swoosh_exact_backward_on_cpu(name):
    # On CPU the modules default to the exact derivative: float64 gradcheck holds, and the saved
    # tensor is the input itself.
    shift, offset, fn, fwd, module = SWOOSH[name]
    x = torch.linspace(-12, 12, 97, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module(), (x,))
    x.grad = None
    module()(x).backward(torch.ones_like(x))
    expected = swoosh_deriv_closed_form(x.detach().numpy(), shift)
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12, atol=1e-12)
    x32 = torch.randn(64, 33, requires_grad=True)
    saved, _ = _saved_tensor_bytes(module(), x32)
    assert [(d, n) for d, n, _ in saved] == [(torch.float32, x32.numel())]
    assert module(quantised_grad=False).quantised_grad is False


def test_swoosh_saved_codes_use_reference_quantisation():
    # The stored code is floor(sigmoid(x - shift) * 255 / 1.005 + u), u ~ U[0, 1), as in
    # icefall/k2: saturated inputs give codes 253..254 at the top and 0 at the bottom.
    codes = []

    def pack(t):
        codes.append(t)
        return t

    x = torch.tensor([-100.0] * 200 + [100.0] * 200 + [4.0] * 200, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        swoosh_l(x)
    (c,) = codes
    assert set(c[:200].tolist()) == {0}
    assert set(c[200:400].tolist()) == {253, 254}
    assert set(c[400:].tolist()) <= {126, 127}  # 0.5 * 255 / 1.005 = 126.87


def test_swoosh_no_grad_saves_nothing():
    x = torch.randn(10, 4)
    saved, _ = _saved_tensor_bytes(SwooshL(), x)
    assert saved == []


# ------------------------------------------------------------------------- BiasNorm


def bias_norm_reference(x: np.ndarray, bias: np.ndarray, log_scale: float, channel_dim: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[channel_dim] = -1
    b = bias.reshape(shape)
    rms = np.sqrt(np.mean((x - b) ** 2, axis=channel_dim, keepdims=True))
    return x * math.exp(log_scale) / rms


@pytest.mark.parametrize("channel_dim", [-1, 1, 0])
@pytest.mark.parametrize("training", [True, False])
def test_bias_norm_matches_closed_form(channel_dim, training):
    shape = (3, 5, 6)
    C = shape[channel_dim]
    m = BiasNorm(C, channel_dim=channel_dim).double()
    with torch.no_grad():
        m.bias.copy_(torch.randn(C))
        m.log_scale.fill_(0.3)
    m.train(training)
    x = torch.randn(*shape, dtype=torch.float64) * 2 + 1
    y = m(x)
    expected = bias_norm_reference(x.numpy(), m.bias.detach().numpy(), 0.3, channel_dim)
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_bias_norm_parameters_match_icefall():
    m = BiasNorm(7)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"log_scale": (), "bias": (7,)}
    assert m.log_scale.item() == 1.0
    assert torch.equal(m.bias, torch.zeros(7))


def test_bias_norm_rejects_wrong_channels():
    with pytest.raises(ValueError, match="BiasNorm"):
        BiasNorm(7)(torch.randn(2, 6))


@pytest.mark.parametrize("store_output", [False, True])
@pytest.mark.parametrize("channel_dim", [2, 1])
def test_bias_norm_function_gradcheck(store_output, channel_dim):
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(x.shape[channel_dim], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b, s: scaling._BiasNormFunction.apply(x, b, s, channel_dim, store_output)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, bias, log_scale))


def test_bias_norm_log_scale_limited_in_training():
    # Above log_scale_max, limit_param_value makes the log_scale gradient positive
    # (a descent step then lowers it) whenever it is applied (probability 0.6).
    m = BiasNorm(4, log_scale=2.0, log_scale_max=1.5)
    x = torch.randn(20, 4)
    signs = set()
    for _ in range(20):
        m.zero_grad()
        (-m(x).pow(2).sum()).backward()  # pushes log_scale up: raw gradient negative
        signs.add(bool(m.log_scale.grad > 0))
    assert signs == {True, False}
    m.eval()
    m.zero_grad()
    (-m(x).pow(2).sum()).backward()
    assert m.log_scale.grad < 0


# ------------------------------------------------------------------------- ScheduledFloat


def test_piecewise_linear_breakpoints_and_between():
    p = PiecewiseLinear((0.0, 10.0), (1.0, 0.0), (3.0, 4.0))
    for x, y in [(-5, 10.0), (0, 10.0), (0.25, 7.5), (1, 0.0), (2, 2.0), (3, 4.0), (100, 4.0)]:
        assert p(x) == pytest.approx(y)
    with pytest.raises(ValueError):
        PiecewiseLinear((1.0, 0.0), (1.0, 2.0))


def test_piecewise_linear_combinators_match_pointwise():
    p = PiecewiseLinear((0, 10.0), (1, 0.0))
    q = PiecewiseLinear((0.5, 15.0), (0.6, 1.0))
    for x in np.linspace(-1, 2, 61):
        assert p.max(q)(x) == pytest.approx(max(p(x), q(x)))
        assert p.min(q)(x) == pytest.approx(min(p(x), q(x)))
        assert (p + q)(x) == pytest.approx(p(x) + q(x))
        assert (p + 2)(x) == pytest.approx(p(x) + 2)
        assert (p * 3)(x) == pytest.approx(p(x) * 3)
        assert p.max(4.0)(x) == pytest.approx(max(p(x), 4.0))


def test_scheduled_float_values():
    s = ScheduledFloat((0.0, 0.3), (20000.0, 0.1), default=0.05)
    assert float(s) == 0.05  # batch_count unset
    for count, value in [(0, 0.3), (5000, 0.25), (10000, 0.2), (20000, 0.1), (1e6, 0.1), (-10, 0.3)]:
        s.batch_count = count
        assert float(s) == pytest.approx(value)
    parent = torch.nn.Sequential(torch.nn.Identity())
    parent.sched = s
    parent.eval()
    assert float(s) == 0.05  # eval mode follows the parent
    parent.train()
    assert float(s) == pytest.approx(0.3)  # batch_count is still -10
    assert list(parent.state_dict()) == []  # schedules add no state


def test_scheduled_float_arithmetic():
    a = ScheduledFloat((0.0, 1.0), (10.0, 0.0), default=0.5)
    b = ScheduledFloat((5.0, 0.2), (15.0, 0.8), default=0.25)
    for s, ref, default in [
        (a + 1.0, lambda t: a.schedule(t) + 1, 1.5),
        (a + b, lambda t: a.schedule(t) + b.schedule(t), 0.75),
        (a.max(0.3), lambda t: max(a.schedule(t), 0.3), 0.5),
        (a.max(b), lambda t: max(a.schedule(t), b.schedule(t)), 0.5),
    ]:
        assert float(s) == default
        for t in np.linspace(-2, 20, 45):
            s.batch_count = t
            assert float(s) == pytest.approx(ref(t))


# ------------------------------------------------------------------------- Balancer


def _balancer_grads(x, y_grad, **kwargs):
    m = Balancer(x.shape[1], channel_dim=1, prob=1.0, **kwargs)
    xi = x.clone().requires_grad_(True)
    y = m(xi)
    assert torch.equal(y, x)  # identity in forward
    y.backward(y_grad)
    return xi.grad, m


def test_balancer_sign_constraint_pushes_mean_toward_range():
    n = 2000
    x = torch.stack(
        [
            torch.rand(n) + 0.5,  # channel 0: always positive
            -(torch.rand(n) + 0.5),  # channel 1: always negative
            torch.randn(n),
        ],
        dim=1,
    )  # channel 2: balanced
    y_grad = torch.sign(torch.randn(n, 3))
    grad, _ = _balancer_grads(x, y_grad, min_positive=0.05, max_positive=0.95, min_abs=0.0, grad_scale=0.04)
    delta = grad - y_grad
    # Positive gradient on channel 0 means a descent step lowers its values, and vice versa.
    assert delta[:, 0].sum() > 0
    assert delta[:, 1].sum() < 0
    assert torch.equal(delta[:, 2], torch.zeros(n))
    # The correction has rms grad_scale * |y_grad| = 0.04 per violating channel.
    assert delta[:, 0].pow(2).mean().sqrt().item() == pytest.approx(0.04, rel=1e-4)


def test_balancer_magnitude_constraints():
    n = 2000
    signs = torch.sign(torch.randn(n, 3))
    x = signs * torch.tensor([0.01, 50.0, 1.0])  # too small, too large, fine
    y_grad = torch.sign(torch.randn(n, 3))
    grad, _ = _balancer_grads(x, y_grad, min_positive=0.0, max_positive=1.0, min_abs=0.2, max_abs=10.0)
    delta = grad - y_grad
    assert (delta[:, 0] * x[:, 0]).sum() < 0  # descent grows |x|
    assert (delta[:, 1] * x[:, 1]).sum() > 0  # descent shrinks |x|
    assert torch.equal(delta[:, 2], torch.zeros(n))


def test_balancer_inactive_in_eval_and_without_grad():
    x = torch.rand(100, 3) + 1.0
    y_grad = torch.randn(100, 3)
    m = Balancer(3, channel_dim=1, prob=1.0).eval()
    xi = x.clone().requires_grad_(True)
    m(xi).backward(y_grad)
    assert torch.equal(xi.grad, y_grad)
    m.train()
    assert torch.equal(m(x), x)


def test_balancer_default_prob_schedule_and_zero_prob():
    m = Balancer(3, channel_dim=1)
    m.prob.batch_count = 4000
    assert float(m.prob) == pytest.approx(0.5 + (0.125 - 0.5) * 0.5)
    m = Balancer(3, channel_dim=1, prob=0.0)
    x = (torch.rand(50, 3) + 1).requires_grad_(True)
    g = torch.randn(50, 3)
    m(x).backward(g)
    assert torch.equal(x.grad, g)


# ------------------------------------------------------------------------- Whiten


def test_whiten_reduces_metric_when_over_limit():
    n, c = 400, 16
    direction = torch.randn(c)
    x = torch.randn(n, c) + 4.0 * torch.randn(n, 1) * direction  # strongly non-white
    metric = scaling._whitening_metric(x, 1)
    assert metric > 5.0
    m = Whiten(num_groups=1, whitening_limit=2.0, prob=1.0, grad_scale=0.1)
    xi = x.clone().requires_grad_(True)
    y = m(xi)
    assert torch.equal(y, x)
    y_grad = torch.randn(n, c)
    y.backward(y_grad)
    delta = xi.grad - y_grad
    assert delta.norm().item() == pytest.approx(0.1 * y_grad.norm().item(), rel=1e-4)
    # A small descent step along the added gradient lowers the whitening metric.
    assert scaling._whitening_metric(x - 1e-2 * delta / delta.norm(), 1) < metric


def test_whiten_metric_is_one_for_white_data_and_brute_force():
    # Orthogonal columns with equal norms and zero mean: exactly white.
    q, _ = torch.linalg.qr(torch.randn(64, 8, dtype=torch.float64))
    x = q - q.mean(dim=0)
    q, _ = torch.linalg.qr(x)
    assert scaling._whitening_metric(q, 1).item() == pytest.approx(1.0, abs=1e-9)
    # Brute force against the definition, two groups.
    x = torch.randn(50, 6, dtype=torch.float64)
    covs = []
    for g in range(2):
        xg = x[:, 3 * g : 3 * g + 3]
        xg = xg - xg.mean(dim=0)
        covs.append(xg.T @ xg)
    num = sum(torch.trace(c @ c) for c in covs) / 6
    den = (sum(torch.trace(c) for c in covs) / 6) ** 2
    assert scaling._whitening_metric(x, 2).item() == pytest.approx((num / den).item(), rel=1e-10)


def test_whiten_no_change_below_limit_and_in_eval():
    x = torch.randn(2000, 4)  # metric close to 1
    m = Whiten(num_groups=1, whitening_limit=2.0, prob=(0.1, 1.0), grad_scale=0.1)
    g = torch.randn(2000, 4)
    xi = x.clone().requires_grad_(True)
    m(xi).backward(g)
    assert torch.equal(xi.grad, g)
    assert m.prob == 0.1  # checked less often once within the limit
    m.prob = 1.0
    m.eval()
    xs = torch.randn(100, 4) + 5 * torch.randn(100, 1)
    xi = xs.clone().requires_grad_(True)
    m(xi).backward(g[:100])
    assert torch.equal(xi.grad, g[:100])


# ------------------------------------------------------------------------- ActivationDropoutAndLinear


@pytest.mark.parametrize("activation", ["SwooshL", "SwooshR"])
@pytest.mark.parametrize("bias", [True, False])
def test_activation_dropout_and_linear_eval_equals_composition(activation, bias):
    m = (
        ActivationDropoutAndLinear(12, 7, bias=bias, activation=activation, dropout_p=0.3, initial_scale=0.5)
        .double()
        .eval()
    )
    ref_linear = torch.nn.Linear(12, 7, bias=bias).double()
    with torch.no_grad():
        ref_linear.weight.copy_(m.weight)
        if bias:
            ref_linear.bias.copy_(m.bias)
    act = swoosh_l_forward if activation == "SwooshL" else swoosh_r_forward
    x1 = (torch.randn(5, 3, 12, dtype=torch.float64) * 4).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1 = m(x1)
    y2 = ref_linear(torch.nn.functional.dropout(act(x2), p=0.3, training=False))
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y1)
    y1.backward(g)
    y2.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m.weight.grad, ref_linear.weight.grad, rtol=1e-10, atol=1e-12)
    if bias:
        torch.testing.assert_close(m.bias.grad, ref_linear.bias.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shared_dim", [0, None])
def test_activation_dropout_and_linear_training_dropout(shared_dim):
    p = 0.25
    m = (
        ActivationDropoutAndLinear(6, 4, activation="SwooshL", dropout_p=p, dropout_shared_dim=shared_dim)
        .double()
        .train()
    )
    x1 = torch.randn(9, 2, 6, dtype=torch.float64, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    torch.manual_seed(3)
    y1 = m(x1)
    torch.manual_seed(3)  # regenerate the same mask the way the module draws it
    mask_shape = [9, 2, 6]
    if shared_dim is not None:
        mask_shape[shared_dim] = 1
    mask = (torch.rand(*mask_shape, dtype=torch.float64) > p) / (1 - p)
    y2 = torch.nn.functional.linear(swoosh_l_forward(x2) * mask, m.weight, m.bias)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    y1.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-12)


def test_activation_dropout_and_linear_gradcheck_and_saved_memory():
    w = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    x = (3 * torch.randn(5, 6, dtype=torch.float64)).requires_grad_(True)
    for act in ("SwooshL", "SwooshR"):
        fn = lambda x, w, b: scaling._ActivationDropoutAndLinearFunction.apply(x, w, b, act, 0.0, None)  # noqa: E731, B023
        assert torch.autograd.gradcheck(fn, (x, w, b))
    # Only the input and the parameters are stored, never the activation output.
    m = ActivationDropoutAndLinear(32, 8)
    xx = torch.randn(50, 32, requires_grad=True)
    saved, _ = _saved_tensor_bytes(m, xx)
    assert sorted(n for _, n, _ in saved) == sorted([xx.numel(), m.weight.numel(), m.bias.numel()])


def test_activation_dropout_and_linear_parameters_and_bad_activation():
    m = ActivationDropoutAndLinear(5, 3)
    assert {k: tuple(v.shape) for k, v in m.state_dict().items()} == {"weight": (3, 5), "bias": (3,)}
    assert "bias" not in ActivationDropoutAndLinear(5, 3, bias=False).state_dict()
    with pytest.raises(ValueError, match="activation"):
        ActivationDropoutAndLinear(5, 3, activation="Relu")


# ------------------------------------------------------------------------- small helpers


def test_softmax_matches_torch_and_gradcheck():
    x = torch.randn(3, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(softmax(x, -1), x.softmax(-1))
    assert torch.autograd.gradcheck(lambda t: softmax(t, 1), (x,))
    assert torch.autograd.gradcheck(lambda t: softmax(t, 0), (x,))


def test_penalize_abs_values_gt_gradient():
    x = torch.tensor([-30.0, -5.0, 0.0, 10.0, 26.0], requires_grad=True)
    y = penalize_abs_values_gt(x, limit=25.0, penalty=1e-4)
    assert torch.equal(y, x.detach())
    y.sum().backward()
    # d/dx [1e-4 * relu(|x| - 25)] = 1e-4 * sign(x) beyond the limit.
    torch.testing.assert_close(x.grad, torch.tensor([1 - 1e-4, 1.0, 1.0, 1.0, 1 + 1e-4]))


def test_with_loss_and_scale_grad():
    x = torch.randn(4, requires_grad=True)
    aux = torch.randn(4, requires_grad=True)
    with_loss(x, aux * 3, None).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4))
    torch.testing.assert_close(aux.grad, torch.full((4,), 3.0))
    x.grad = None
    scale_grad(x, 0.2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((4,), 0.2))
    m = scaling.ScaleGrad(0.2).eval()
    x.grad = None
    m(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4))


def test_limit_param_value_flips_gradients_outside_range():
    x = torch.tensor([-2.0, 0.0, 2.0], requires_grad=True)
    y = limit_param_value(x, min=-1.0, max=1.0, prob=1.0)
    y.backward(torch.tensor([1.0, 1.0, -1.0]))
    # Below min a positive gradient becomes negative; above max a negative one positive.
    torch.testing.assert_close(x.grad, torch.tensor([-1.0, 1.0, 1.0]))
    x.grad = None
    limit_param_value(x, min=-1.0, max=1.0, prob=1.0, training=False).backward(torch.ones(3))
    torch.testing.assert_close(x.grad, torch.ones(3))


def test_convert_num_channels():
    x = torch.randn(2, 3, 5)
    assert torch.equal(convert_num_channels(x, 3), x[..., :3])
    y = convert_num_channels(x, 8)
    assert y.shape == (2, 3, 8) and torch.equal(y[..., :5], x) and not y[..., 5:].any()


def test_dropout3_shares_mask_and_is_identity_in_eval():
    m = Dropout3(0.5, shared_dim=0)
    x = torch.ones(20, 3, 8, requires_grad=True)
    y = m(x)
    assert torch.equal(y, y[:1].expand_as(y))  # same mask along dim 0
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())  # grad = mask * 1/(1-p)
    m.eval()
    assert torch.equal(m(x), x)


def test_scaled_linear_is_plain_linear_with_scaled_init():
    torch.manual_seed(5)
    ref = torch.nn.Linear(10, 6)
    torch.manual_seed(5)
    m = ScaledLinear(10, 6, initial_scale=0.25)
    assert type(m) is torch.nn.Linear
    torch.testing.assert_close(m.weight, ref.weight * 0.25)
    assert m.bias.abs().max() <= 0.1 * 0.25


# ------------------------------------------------------------------------- ChunkCausalDepthwiseConv1d


def _random_chunk_conv(channels=3, kernel_size=5):
    m = ChunkCausalDepthwiseConv1d(channels, kernel_size).double()
    with torch.no_grad():
        m.chunkwise_conv_scale.normal_(std=0.3)
    return m


def test_chunk_causal_conv_parameters_match_icefall():
    m = ChunkCausalDepthwiseConv1d(8, 31)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "chunkwise_conv_scale": (2, 8, 31),
        "causal_conv.weight": (8, 1, 16),
        "causal_conv.bias": (8,),
        "chunkwise_conv.weight": (8, 1, 31),
        "chunkwise_conv.bias": (8,),
    }


@pytest.mark.parametrize("chunk,T", [(4, 11), (7, 16), (20, 13)])
def test_chunk_causal_conv_brute_force(chunk, T):
    m = _random_chunk_conv()
    N, C, K = 2, 3, 5
    x = torch.randn(N, C, T, dtype=torch.float64)
    y = m(x, chunk_size=chunk)
    chunk = min(chunk, T)  # a chunk longer than the input is one chunk of length T
    wc = m.causal_conv.weight[:, 0]  # (C, 3)
    wk = m.chunkwise_conv.weight[:, 0]  # (C, 5)
    left_scale, right_scale = m.chunkwise_conv_scale
    expected = torch.zeros(N, C, T, dtype=torch.float64)
    for t in range(T):
        start = (t // chunk) * chunk
        pos = t - start  # position in the chunk
        from_end = chunk - 1 - pos  # position counted from the chunk's last frame
        # causal part: x[t-2], x[t-1], x[t] (zero before the start)
        causal = m.causal_conv.bias.clone()
        for j in range(3):
            s = t - 2 + j
            if s >= 0:
                causal = causal + wc[:, j] * x[:, :, s]
        # chunkwise part: centred kernel, zero outside the chunk [start, start + chunk)
        within = m.chunkwise_conv.bias.clone().expand(N, C).clone()
        for j in range(K):
            s = t - K // 2 + j
            if start <= s < min(start + chunk, T):
                within = within + wk[:, j] * x[:, :, s]
        # scale 1 + left-edge correction (indexed from the chunk start) + right-edge
        # correction (indexed from the chunk end); corrections span at most K frames.
        left = left_scale[:, pos] if pos < K else 0.0
        right = right_scale[:, K - 1 - from_end] if from_end < K else 0.0
        expected[:, :, t] = causal + within * (1 + left + right)
    torch.testing.assert_close(y, expected.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("chunk", [4, 6])
def test_chunk_causal_conv_causal_and_streaming(chunk):
    m = _random_chunk_conv(kernel_size=5)
    x = torch.randn(1, 3, 3 * chunk, dtype=torch.float64)
    y = m(x, chunk_size=chunk)
    # Changing a later chunk leaves earlier chunks' outputs unchanged.
    x2 = x.clone()
    x2[..., chunk:] += 1.0
    y2 = m(x2, chunk_size=chunk)
    torch.testing.assert_close(y2[..., :chunk], y[..., :chunk])
    assert not torch.allclose(y2[..., chunk:], y[..., chunk:])
    # Chunk-by-chunk streaming reproduces the chunked forward.
    cache = torch.zeros(1, 3, 2, dtype=torch.float64)
    pieces = []
    for i in range(3):
        out, cache = m.streaming_forward(x[..., i * chunk : (i + 1) * chunk], cache)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=-1), y, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------- positional encoding


def compact_rel_pe_reference(offsets: np.ndarray, dim: int, length_factor: float) -> np.ndarray:
    L = math.sqrt(dim)
    out = np.zeros((len(offsets), dim))
    for i, t in enumerate(offsets):
        tc = L * np.sign(t) * (math.log(abs(t) + L) - math.log(L))
        a = math.atan(tc / (length_factor * dim / (2 * math.pi)))
        for k in range(dim // 2):
            out[i, 2 * k] = math.cos((k + 1) * a)
            out[i, 2 * k + 1] = math.sin((k + 1) * a)
        out[i, -1] = 1.0
    return out


@pytest.mark.parametrize("T,left,length_factor", [(7, 0, 1.0), (5, 3, 1.0), (4, 0, 2.5)])
def test_compact_rel_positional_encoding_values(T, left, length_factor):
    D = 12
    m = CompactRelPositionalEncoding(D, dropout_rate=0.15, max_len=10, length_factor=length_factor).eval()
    out = m(torch.zeros(T, 2, D), left_context_len=left)
    assert out.shape == (1, left + 2 * T - 1, D)
    offsets = np.arange(-(left + T - 1), T)
    expected = compact_rel_pe_reference(offsets, D, length_factor)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Offset 0 sits at row left + T - 1: cosines 1, sines 0.
    row0 = out[0, left + T - 1]
    assert torch.allclose(row0[0:-1:2], torch.ones(D // 2)) and torch.allclose(row0[1:-1:2], torch.zeros(D // 2 - 1))


def test_compact_rel_positional_encoding_grows_and_has_no_state():
    m = CompactRelPositionalEncoding(8, dropout_rate=0.0, max_len=4).eval()
    assert m.pe.shape == (7, 8)
    out = m(torch.zeros(30, 1, 8, dtype=torch.float64))
    assert out.shape == (1, 59, 8) and out.dtype == torch.float64
    np.testing.assert_allclose(
        out[0].numpy(), compact_rel_pe_reference(np.arange(-29, 30), 8, 1.0), rtol=1e-5, atol=1e-6
    )
    assert list(m.state_dict()) == []
    with pytest.raises(ValueError):
        CompactRelPositionalEncoding(7, dropout_rate=0.0)
