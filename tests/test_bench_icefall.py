"""tools/bench/icefall_zipformer.py: its torch stand-ins for k2's swoosh kernels against closed forms and finite
differences, the "no icefall files -> exit 0" path, and (where the icefall mirror is here) extracting icefall's
files and running its scaling.py's Swoosh users on the stand-ins."""

from __future__ import annotations

import importlib.util
import math
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "bench" / "icefall_zipformer.py"
ICEFALL_MIRROR = Path("/work/.mirror/k2-fsa+icefall/repo")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("icefall_zipformer_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def isolated_modules():
    """Undo the script's sys.modules / sys.path changes (its k2 stand-in must not leak into other tests)."""
    modules, path = dict(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]
    sys.modules.update(modules)
    sys.path[:] = path


def _closed_form(v: float, shift: float, offset: float) -> float:
    return math.log1p(math.exp(v - shift)) - 0.08 * v - offset


@pytest.mark.parametrize("which", ["l", "r"])
def test_swoosh_stand_ins_values_and_derivatives(bench, which):
    shift, offset = {"l": (4.0, 0.035), "r": (1.0, 0.313261687)}[which]
    forward = getattr(bench, f"swoosh_{which}_forward")
    differentiable = getattr(bench, f"swoosh_{which}")
    forward_and_deriv = getattr(bench, f"swoosh_{which}_forward_and_deriv")
    x = torch.tensor([-30.0, -5.0, -1.0, 0.0, 0.5, 1.0, 3.9, 4.0, 7.0, 23.0, 40.0], dtype=torch.float64)
    expected = torch.tensor([_closed_form(v, shift, offset) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(forward(x), expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(forward(x.float()), expected.float(), atol=1e-5, rtol=1e-6)

    y, deriv = forward_and_deriv(x)
    torch.testing.assert_close(y, expected, atol=1e-8, rtol=0)
    torch.testing.assert_close(deriv, torch.sigmoid(x - shift) - 0.08, atol=1e-12, rtol=0)
    h = 1e-6
    torch.testing.assert_close(deriv, (forward(x + h) - forward(x - h)) / (2 * h), atol=1e-7, rtol=0)
    assert -0.08 <= float(deriv.min()) and float(deriv.max()) <= 0.92  # reached where sigmoid saturates

    # The differentiable one: same values, its backward (the saved derivative) against finite differences.
    xg = x.clone().requires_grad_(True)
    out = differentiable(xg)
    torch.testing.assert_close(out.detach(), expected, atol=1e-8, rtol=0)
    assert torch.autograd.gradcheck(differentiable, (torch.randn(6, dtype=torch.float64, requires_grad=True),))


def test_torch_autocast_stand_in(bench):
    a = torch.randn(4, 4)
    with bench.torch_autocast(device_type="cpu", dtype=torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
        with bench.torch_autocast(device_type="cpu", enabled=False):
            assert (a @ a).dtype == torch.float32
    with bench.torch_autocast(enabled=False):  # as scaling.py calls it (CUDA autocast off)
        assert (a @ a).dtype == torch.float32


def test_without_icefall_files_says_what_it_needs_and_exits_0(bench, tmp_path, capsys):
    assert bench.main([]) == 0
    assert "needs --icefall-dir" in capsys.readouterr().out
    (tmp_path / "zipformer.py").write_text("")
    assert bench.main(["--icefall-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "missing in" in out and "scaling.py" in out and "missing in zipformer.py" not in out
    assert not (tmp_path / "results").exists()


@pytest.mark.skipif(
    not ICEFALL_MIRROR.is_dir() or shutil.which("git") is None, reason="no icefall mirror (or no git) here"
)
def test_extracted_icefall_scaling_runs_on_the_stand_ins(bench, tmp_path, isolated_modules):
    commit = bench.extract_from_git(ICEFALL_MIRROR, "HEAD", tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and bench.icefall_commit(tmp_path, None) == commit
    assert bench.missing_files(tmp_path) == []
    assert "class EncoderInterface" in (tmp_path / "encoder_interface.py").read_text()  # the symlink, followed

    bench.import_icefall(tmp_path)
    scaling = sys.modules["scaling"]
    torch.manual_seed(0)
    x = 3 * torch.randn(5, 8, dtype=torch.float64)
    for name, shift, offset in (("SwooshL", 4.0, 0.035), ("SwooshR", 1.0, 0.313261687)):
        expected = _swoosh(x, shift, offset)
        module = getattr(scaling, name)()
        torch.testing.assert_close(module(x), expected)  # no grad: k2.swoosh_*_forward
        xg = x.clone().requires_grad_(True)
        module(xg).sum().backward()  # k2.swoosh_* (autograd)
        torch.testing.assert_close(xg.grad, torch.sigmoid(x - shift) - 0.08)

        # ActivationDropoutAndLinear in training: k2.swoosh_*_forward, then *_forward_and_deriv in backward.
        layer = scaling.ActivationDropoutAndLinear(8, 3, activation=name, dropout_p=0.0).double().train()
        xg = x.clone().requires_grad_(True)
        layer(xg).square().sum().backward()
        xr = x.clone().requires_grad_(True)
        reference = torch.nn.functional.linear(_swoosh(xr, shift, offset), layer.weight, layer.bias)
        reference.square().sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad)


def _swoosh(x: torch.Tensor, shift: float, offset: float) -> torch.Tensor:
    return torch.nn.functional.softplus(x - shift) - 0.08 * x - offset
