"""asr.optim: ScaledAdam and Eden against icefall's numbers, closed forms and exact resume."""

import io
import logging
import math
from pathlib import Path

import pytest
import torch

from asr.optim import Eden, ScaledAdam

FIXTURE = Path(__file__).parent / "data" / "scaled_adam_reference.pt"


def _split(flat: torch.Tensor, shapes: list[tuple]) -> list[torch.Tensor]:
    sizes = [math.prod(shape) for shape in shapes]
    return [chunk.reshape(shape) for chunk, shape in zip(torch.split(flat, sizes), shapes)]


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE)


@pytest.mark.parametrize("run_name", ["flat", "groups", "short_memory"])
def test_trajectory_matches_icefall(reference, run_name, caplog):
    run = reference["runs"][run_name]
    config = run["config"]
    icefall_clips = run["clip_factors_per_group_call"]
    # The fixture must exercise clipping, mild and hard, or this comparison would not cover it.
    assert min(icefall_clips) < 0.1 and any(0.1 < c < 1.0 for c in icefall_clips)

    params = {
        name: torch.nn.Parameter(value.clone()) for name, value in zip(run["names"], _split(run["init"], run["shapes"]))
    }
    named = list(params.items())
    if config["groups"]:
        groups = [
            {"named_params": named[:6], "lr": config["lr"]},
            {"named_params": named[6:], "lr": config["lr"] * 0.4},
        ]
    else:
        groups = named
    optimizer = ScaledAdam(
        groups,
        lr=config["lr"],
        clipping_scale=2.0,
        size_update_period=config["size_update_period"],
        clipping_update_period=config["clipping_update_period"],
        **config.get("extra", {}),
    )
    scheduler = Eden(optimizer, lr_batches=10, lr_epochs=2, warmup_batches=6, warmup_start=0.1)
    scheduler.step_epoch(0)
    caplog.set_level(logging.INFO, logger="asr.optim.scaled_adam")
    clipped_steps = []
    for step in range(len(run["grads"])):
        if step == 15:
            scheduler.step_epoch(1)
        for (name, p), grad in zip(named, _split(run["grads"][step], run["shapes"])):
            p.grad = None if name in run["no_grad"] else grad.clone()
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(run["lrs"][step].tolist(), rel=1e-12)
        caplog.clear()
        optimizer.step()
        scheduler.step_batch()
        if any("Clipping gradients" in r.getMessage() for r in caplog.records):
            clipped_steps.append(step)
        if step in run["checked_steps"]:
            stored = run["params"][run["checked_steps"].index(step)]
            for (name, p), expected in zip(named, _split(stored, run["shapes"])):
                torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=f"{name} at step {step}")
        if step == 26:
            assert "layer2.weight" in caplog.text  # the spiked parameter is named as dominant
    # icefall's clipping routine runs once per group from the second step on; a factor < 1 means it clipped.
    num_groups = len(optimizer.param_groups)
    icefall_clipped = sorted({1 + i // num_groups for i, c in enumerate(icefall_clips) if c < 1.0})
    assert clipped_steps == icefall_clipped
    assert run["checked_steps"][-1] == len(run["grads"]) - 1 == 29


def _eden_closed_form(base_lr, batch, epoch, lr_batches=7500, lr_epochs=3.5, warmup_batches=500, warmup_start=0.1):
    decay = (1 + (batch / lr_batches) ** 2) ** -0.25 * (1 + (epoch / lr_epochs) ** 2) ** -0.25
    warmup = min(1.0, warmup_start + (1 - warmup_start) * batch / warmup_batches)
    return base_lr * decay * warmup


def _two_group_optimizer(lrs=(0.04, 0.01)) -> ScaledAdam:
    return ScaledAdam([{"params": [torch.nn.Parameter(torch.ones(3))], "lr": lr} for lr in lrs])


@pytest.mark.parametrize("batch,epoch", [(0, 0), (123, 0), (500, 1), (7500, 3.5), (30000, 12), (2000, 0.25)])
def test_eden_matches_closed_form(batch, epoch):
    optimizer = _two_group_optimizer()
    scheduler = Eden(optimizer)
    scheduler.step_epoch(epoch)
    scheduler.step_batch(batch)
    expected = [_eden_closed_form(base, batch, epoch) for base in (0.04, 0.01)]
    assert scheduler.get_last_lr() == pytest.approx(expected, rel=1e-12)
    assert [g["lr"] for g in optimizer.param_groups] == scheduler.get_last_lr()
    assert [g["base_lr"] for g in optimizer.param_groups] == [0.04, 0.01]


def test_eden_at_the_decay_constants_halves_to_one_over_sqrt2():
    scheduler = Eden(_two_group_optimizer((1.0,)), lr_batches=100, lr_epochs=4, warmup_batches=10)
    scheduler.step_epoch(4)
    scheduler.step_batch(100)
    assert scheduler.get_last_lr() == pytest.approx([0.5**0.5], rel=1e-12)


def test_eden_warmup_is_linear_from_warmup_start():
    scheduler = Eden(_two_group_optimizer((1.0,)), lr_batches=1e12, lr_epochs=1e12, warmup_batches=40)
    # Applied at construction: the very first optimizer step is already warmed up.
    lrs = [scheduler.get_last_lr()[0]]
    for _ in range(60):
        scheduler.step_batch()
        lrs.append(scheduler.get_last_lr()[0])
    expected = [0.1 + 0.9 * b / 40 if b < 40 else 1.0 for b in range(61)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_eden_state_dict_round_trip():
    scheduler = Eden(_two_group_optimizer())
    scheduler.step_epoch(2)
    for _ in range(17):
        scheduler.step_batch()
    restored = Eden(_two_group_optimizer())
    restored.load_state_dict(scheduler.state_dict())
    assert restored.get_last_lr() == scheduler.get_last_lr()
    assert (restored.batch, restored.epoch) == (17, 2)
    with pytest.raises(ValueError, match="2 base lrs"):
        Eden(_two_group_optimizer((0.1,))).load_state_dict(scheduler.state_dict())


class _Toy(torch.nn.Module):
    """A tiny model with repeated shapes (stacked together), a 3-D tensor and scalars."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.conv = torch.nn.Conv1d(4, 2, 3)
        self.gain = torch.nn.Parameter(torch.tensor(0.7))
        self.offset = torch.nn.Parameter(torch.tensor([0.1]))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def loss(self, step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1000 + step)
        x = torch.randn(3, 6, 4, generator=g)
        h = self.b(torch.tanh(self.a(x)))
        y = self.conv(h.transpose(1, 2)).mean(dim=(1, 2)) * self.gain + self.offset
        return ((y - 1.0) ** 2).mean()


def _train(model: _Toy, optimizer, scheduler, steps: range) -> list[list[torch.Tensor]]:
    snapshots = []
    for step in steps:
        optimizer.zero_grad()
        loss = model.loss(step)
        if step == 9:
            loss = loss * 100.0  # a spike, so clipping state is exercised before and after the resume
        loss.backward()
        optimizer.step()
        scheduler.step_batch()
        snapshots.append([p.detach().clone() for p in model.parameters()])
    return snapshots


def _make(model: _Toy) -> tuple[ScaledAdam, Eden]:
    optimizer = ScaledAdam(model.named_parameters(), lr=0.05, clipping_update_period=4)
    return optimizer, Eden(optimizer, lr_batches=20, lr_epochs=2, warmup_batches=5)


def test_resume_from_state_dict_is_bit_identical():
    model = _Toy()
    optimizer, scheduler = _make(model)
    _train(model, optimizer, scheduler, range(11))  # 11: mid size-update period, after a clipping refresh
    checkpoint = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        checkpoint,
    )
    continued = _train(model, optimizer, scheduler, range(11, 20))

    checkpoint.seek(0)
    saved = torch.load(checkpoint)
    resumed_model = _Toy()
    resumed_model.load_state_dict(saved["model"])
    resumed_optimizer, resumed_scheduler = _make(resumed_model)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_scheduler.load_state_dict(saved["scheduler"])
    resumed = _train(resumed_model, resumed_optimizer, resumed_scheduler, range(11, 20))

    for step, (a, b) in enumerate(zip(continued, resumed)):
        assert all(torch.equal(x, y) for x, y in zip(a, b)), f"step {11 + step} differs after resume"
    # And the resumed run really continued rather than restarting.
    fresh_model = _Toy()
    fresh_model.load_state_dict(saved["model"])
    fresh = _train(fresh_model, *_make(fresh_model), range(11, 20))
    assert not torch.equal(fresh[-1][0], continued[-1][0])


def test_three_parameter_forms_give_the_same_trajectory():
    def run(make_params):
        model = _Toy()
        optimizer = ScaledAdam(make_params(model), lr=0.03, clipping_scale=None)
        for step in range(6):
            optimizer.zero_grad()
            model.loss(step).backward()
            optimizer.step()
        return optimizer, [p.detach() for p in model.parameters()]

    plain_opt, plain = run(lambda m: m.parameters())
    named_opt, named = run(lambda m: m.named_parameters())
    group_opt, grouped = run(
        lambda m: [
            {"named_params": list(m.named_parameters())[:4]},
            {"named_params": list(m.named_parameters())[4:], "lr": 0.03},
        ]
    )
    for a, b, c in zip(plain, named, grouped):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert named_opt.param_groups[0]["param_names"] == [n for n, _ in _Toy().named_parameters()]
    assert plain_opt.param_groups[0]["param_names"][:2] == ["group0.param0", "group0.param1"]
    assert group_opt.param_groups[1]["param_names"] == ["b.weight", "b.bias", "conv.weight", "conv.bias"]


def test_icefall_groups_keep_their_options_and_are_not_mutated():
    model = _Toy()
    groups = [
        {"named_params": list(model.a.named_parameters()), "lr": 0.1},
        {"named_params": list(model.b.named_parameters())},
    ]
    optimizer = ScaledAdam(groups, lr=0.02)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.02]
    assert "named_params" in groups[0]
    with pytest.raises(ValueError, match="empty"):
        ScaledAdam([])
    with pytest.raises(TypeError, match="item 0 of parameter group 0"):
        ScaledAdam([{"params": ["weight"]}])


def test_first_step_closed_form_and_scalar_lr_scale():
    """Step 1 moves each tensor element by -lr·(1-β1)·rms(p)·sign(g), a scalar by -lr·s·(1-β1)·sign(g)."""
    lr, beta1 = 0.05, 0.9
    for scalar_lr_scale in (0.1, 0.5):
        matrix = torch.nn.Parameter(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        scalar = torch.nn.Parameter(torch.tensor(0.0))
        optimizer = ScaledAdam([matrix, scalar], lr=lr, scalar_lr_scale=scalar_lr_scale)
        matrix_grad = torch.tensor([[0.3, -0.1], [2.0, -5.0]])
        before_matrix, before_scalar = matrix.detach().clone(), scalar.detach().clone()
        matrix.grad, scalar.grad = matrix_grad, torch.tensor(-0.02)
        optimizer.step()
        rms = before_matrix.pow(2).mean().sqrt()
        torch.testing.assert_close(matrix.detach() - before_matrix, -lr * (1 - beta1) * rms * matrix_grad.sign())
        torch.testing.assert_close(
            scalar.detach() - before_scalar, torch.tensor(lr * scalar_lr_scale * (1 - beta1)), rtol=1e-5, atol=0
        )


def test_scalars_are_clamped_to_scalar_max():
    scalar = torch.nn.Parameter(torch.tensor(25.0))
    optimizer = ScaledAdam([scalar], lr=0.05, scalar_max=10.0)
    scalar.grad = torch.tensor(1.0)
    optimizer.step()
    assert scalar.item() == pytest.approx(10.0 - 0.05 * 0.1 * 0.1, rel=1e-5)


def test_clipping_log_names_the_dominant_parameter(caplog):
    model = _Toy()
    optimizer = ScaledAdam(model.named_parameters(), lr=0.01, clipping_update_period=4)
    caplog.set_level(logging.INFO, logger="asr.optim.scaled_adam")
    for step in range(12):
        optimizer.zero_grad()
        model.loss(step).backward()
        if step == 11:
            model.conv.weight.grad.mul_(1.0e4)
        caplog.clear()
        optimizer.step()
    clip_records = [r for r in caplog.records if "Clipping gradients" in r.getMessage()]
    assert len(clip_records) == 1
    assert clip_records[0].levelno == logging.WARNING  # clipped far below 0.1
    assert "dominant parameter conv.weight " in clip_records[0].getMessage()


def test_sparse_gradients_are_rejected_with_the_parameter_name():
    embedding = torch.nn.Embedding(5, 3, sparse=True)
    optimizer = ScaledAdam(embedding.named_parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="'weight'"):
        optimizer.step()
