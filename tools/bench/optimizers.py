"""Adam vs ScaledAdam + Eden on a 2-stack Zipformer and a small transformer: steps to a fixed loss, final loss.

Task: teacher-student regression on synthetic sequences. A fixed, randomly initialised transformer
teacher maps Gaussian input sequences ``(N, T, input_dim)`` to per-frame targets ``(N, T, out_dim)``.
Students:

  zipformer    input projection, ``Zipformer2`` with two stacks (downsampling 1 and 2, one layer each,
               widths 64 / 96) and a linear head; its output is at half the frame rate, so its targets
               are the teacher's averaged over frame pairs.
  transformer  the teacher's architecture (pre-norm transformer, 2 layers, width 64), per-frame targets.

Targets are normalised to unit variance per channel (so predicting zeros scores 1.0). For one student
every run starts from the same initial weights and sees the same batches and the same training-time
randomness. Adam is tried at three learning rates and the best (lowest final loss) is reported against
ScaledAdam at the recipe's lr; all runs use the same Eden schedule (warmup then decay, scaled to the run
length: ``lr_batches = steps / 3``), so only the optimizer differs. The Zipformer's own schedules (layer
skipping, dropout, balancers, whitening) are stepped with ``set_batch_count`` every step, compressed like
Eden's: the batch count advances by ``7500 / lr_batches`` per step (7500 = the recipe's Eden
``lr_batches``), so a run goes through the schedules of a full training run. Held-out loss (eval mode) is
measured every ``--eval-every`` steps; "steps to target" is the first evaluation at or below the target
loss (``DEFAULT_TARGET_LOSS`` per student, or ``--target-loss``). A run whose training loss turns
non-finite stops there and ranks last. Everything runs in one process, one thread, on the same machine.

    .venv/bin/python tools/bench/optimizers.py [--models zipformer,transformer] [--steps 400]
        [--target-loss MSE] [--adam-lrs 1e-3 3e-3 1e-2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from asr.encoders.zipformer import Zipformer2, zipformer_config
from asr.optim import Eden, ScaledAdam
from asr.training.trainer import set_batch_count

RECIPE_EDEN_LR_BATCHES = 7500.0
# Reachable in the default 400 steps by a good optimizer, not by a poor one (the pooled targets of the
# Zipformer student are harder to fit in 400 steps than the transformer's own-architecture targets).
DEFAULT_TARGET_LOSS = {"zipformer": 0.15, "transformer": 0.1}


@dataclass(frozen=True)
class TaskConfig:
    input_dim: int = 16
    model_dim: int = 64
    num_heads: int = 4
    feedforward_dim: int = 128
    num_layers: int = 2
    out_dim: int = 4
    seq_len: int = 32
    batch_size: int = 32
    eval_size: int = 256


class SmallEncoder(nn.Module):
    """Input projection, a pre-norm transformer encoder and a per-frame linear head:
    ``(N, T, D_in) -> (N, T, D_out)``."""

    output_stride = 1

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__()
        self.input_proj = nn.Linear(cfg.input_dim, cfg.model_dim)
        layer = nn.TransformerEncoderLayer(
            cfg.model_dim, cfg.num_heads, cfg.feedforward_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.model_dim, cfg.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(self.input_proj(x)))


class TwoStackZipformer(nn.Module):
    """Input projection, two Zipformer stacks and a linear head: ``(N, T, D_in) -> (N, (T + 1) // 2, D_out)``.

    The stacks are ``Zipformer2`` with ``zipformer-xs``'s layer settings cut to two stacks at downsampling
    1 and 2, one layer each, narrowed to widths 64 / 96 so that a run takes a minute at one thread.
    """

    output_stride = 2

    def __init__(self, cfg: TaskConfig) -> None:
        super().__init__()
        dims = (64, 96)
        config = zipformer_config(
            "zipformer-xs",
            num_encoder_layers=(1, 1),
            downsampling_factor=(1, 2),
            encoder_dim=dims,
            feedforward_dim=(192, 256),
            encoder_unmasked_dim=(64, 64),
            num_heads=(4, 4),
            cnn_module_kernel=(15, 15),
        )
        self.input_proj = nn.Linear(cfg.input_dim, dims[0])
        self.encoder = Zipformer2(config)
        self.head = nn.Linear(max(dims), cfg.out_dim)

    def forward(self, x: Tensor) -> Tensor:
        lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.int64)
        y, _ = self.encoder(self.input_proj(x).transpose(0, 1), lengths)
        return self.head(y.transpose(0, 1))


STUDENTS: dict[str, type[nn.Module]] = {"zipformer": TwoStackZipformer, "transformer": SmallEncoder}


class TeacherTask:
    """Fixed teacher, seeded training batches and a held-out set. With ``target_stride`` s > 1 the targets
    are the teacher's outputs averaged over groups of s frames (the last group may be shorter), for a
    student whose output is at 1/s of the input frame rate; they are normalised after averaging."""

    def __init__(self, cfg: TaskConfig, seed: int, target_stride: int = 1) -> None:
        self.cfg = cfg
        self.target_stride = target_stride
        torch.manual_seed(seed + 1)
        self.teacher = SmallEncoder(cfg).eval()
        with torch.no_grad():
            # A sharper teacher than its default init, so the targets are not nearly linear in the input.
            for p in self.teacher.parameters():
                if p.ndim == 2:
                    p.mul_(2.0)
            probe = self._pooled(self.teacher(self._inputs(torch.Generator().manual_seed(seed + 2), 512)))
        self.target_mean = probe.mean(dim=(0, 1))
        self.target_std = probe.std(dim=(0, 1))
        self.eval_inputs, self.eval_targets = self.batch(torch.Generator().manual_seed(seed + 3), cfg.eval_size)

    def _inputs(self, generator: torch.Generator, n: int) -> Tensor:
        return torch.randn(n, self.cfg.seq_len, self.cfg.input_dim, generator=generator)

    def _pooled(self, y: Tensor) -> Tensor:
        """``(N, T, C)`` -> ``(N, ceil(T / s), C)``, the mean of each group of s frames."""
        s = self.target_stride
        if s == 1:
            return y
        return nn.functional.avg_pool1d(y.transpose(1, 2), s, s, ceil_mode=True).transpose(1, 2)

    @torch.no_grad()
    def batch(self, generator: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        x = self._inputs(generator, n)
        return x, (self._pooled(self.teacher(x)) - self.target_mean) / self.target_std


def train(task: TeacherTask, student: str, name: str, make_optimizer, args, target_loss: float, seed: int) -> dict:
    # Both generators: Zipformer's balancers and positional-score skipping draw from Python's `random`.
    random.seed(seed)
    torch.manual_seed(seed)
    model = STUDENTS[student](task.cfg)
    optimizer = make_optimizer(model)
    scheduler = Eden(
        optimizer, lr_batches=args.lr_batches, lr_epochs=1e9, warmup_batches=args.warmup_batches, warmup_start=0.1
    )
    schedule_batches_per_step = RECIPE_EDEN_LR_BATCHES / args.lr_batches
    batches = torch.Generator().manual_seed(seed + 10)
    curve, steps_to_target, step_seconds, diverged_at = [], None, 0.0, None
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = task.batch(batches, task.cfg.batch_size)
        model.train()
        set_batch_count(model, step * schedule_batches_per_step)
        loss = nn.functional.mse_loss(model(x), y)
        if not math.isfinite(loss.item()):
            diverged_at = step  # nothing more to learn from this run
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        optimizer.step()
        step_seconds += time.perf_counter() - t0
        scheduler.step_batch()
        if step % args.eval_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                eval_loss = nn.functional.mse_loss(model(task.eval_inputs), task.eval_targets).item()
            curve.append((step, eval_loss))
            if steps_to_target is None and eval_loss <= target_loss:
                steps_to_target = step
    finite = [loss for _, loss in curve if math.isfinite(loss)]
    final_ok = diverged_at is None and bool(curve) and math.isfinite(curve[-1][1])
    row = {
        "name": name,
        "steps_to_target": steps_to_target,
        "final_eval_loss": curve[-1][1] if final_ok else None,  # None: diverged
        "best_eval_loss": min(finite, default=None),
        "diverged_at_step": diverged_at,
        "optimizer_ms_per_step": 1000.0 * step_seconds / step,
        "wall_s": time.perf_counter() - start,
        "curve": curve,
    }
    reached = "-" if steps_to_target is None else str(steps_to_target)
    final = f"{row['final_eval_loss']:>10.4f}" if final_ok else f"{'nan@' + str(diverged_at or step):>10}"
    best = "-" if row["best_eval_loss"] is None else f"{row['best_eval_loss']:.4f}"
    print(
        f"{name:<26} {reached:>9} {final} {best:>9} {row['optimizer_ms_per_step']:>9.3f} {row['wall_s']:>7.1f}",
        flush=True,
    )
    return row


def compare(student: str, args, cfg: TaskConfig) -> dict:
    """Adam at each of ``args.adam_lrs`` and ScaledAdam on one student; prints a table and a summary."""
    torch.manual_seed(args.seed)
    probe = STUDENTS[student](cfg)
    task = TeacherTask(cfg, args.seed, target_stride=probe.output_stride)
    params = sum(p.numel() for p in probe.parameters())
    target_loss = args.target_loss if args.target_loss is not None else DEFAULT_TARGET_LOSS[student]
    print(
        f"\n{student} student: {params:,} parameters, {task.eval_targets.shape[1]} target frames "
        f"per {cfg.seq_len}-frame input, target held-out MSE {target_loss}"
    )
    print(f"{'optimizer':<26} {'to target':>9} {'final loss':>10} {'best loss':>9} {'opt ms/st':>9} {'wall s':>7}")
    adam_rows = [
        train(
            task,
            student,
            f"Adam lr={lr:g}",
            lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr),
            args,
            target_loss,
            args.seed,
        )
        for lr in args.adam_lrs
    ]
    scaled = train(
        task,
        student,
        f"ScaledAdam lr={args.scaled_adam_lr:g}",
        lambda m: ScaledAdam(m.named_parameters(), lr=args.scaled_adam_lr),
        args,
        target_loss,
        args.seed,
    )
    best_adam = min(adam_rows, key=lambda row: math.inf if row["final_eval_loss"] is None else row["final_eval_loss"])
    both_finite = scaled["final_eval_loss"] is not None and best_adam["final_eval_loss"] is not None
    ratio = scaled["final_eval_loss"] / best_adam["final_eval_loss"] if both_finite else None

    def steps(row: dict) -> str:
        return "not reached" if row["steps_to_target"] is None else f"{row['steps_to_target']} steps"

    def final(row: dict) -> str:
        return "diverged" if row["final_eval_loss"] is None else f"{row['final_eval_loss']:.4f}"

    print(
        f"{student}: best Adam ({best_adam['name']}): {steps(best_adam)} to {target_loss}, final {final(best_adam)};"
        f"  ScaledAdam+Eden: {steps(scaled)}, final {final(scaled)};  final-loss ratio ScaledAdam/Adam "
        + ("-" if ratio is None else f"{ratio:.3f}"),
        flush=True,
    )
    return {
        "student": student,
        "params": params,
        "target_stride": task.target_stride,
        "target_loss": target_loss,
        "adam": adam_rows,
        "best_adam": best_adam["name"],
        "scaled_adam": scaled,
        "final_loss_ratio_scaled_over_best_adam": ratio,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="zipformer,transformer", help=f"comma-separated students from {sorted(STUDENTS)}"
    )
    parser.add_argument("--steps", type=int, default=400, help="training steps per run")
    parser.add_argument(
        "--target-loss",
        type=float,
        default=None,
        help=f"held-out MSE for 'steps to target' (default per student: {DEFAULT_TARGET_LOSS})",
    )
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--scaled-adam-lr", type=float, default=0.045, help="the Zipformer recipe's base lr")
    parser.add_argument("--lr-batches", type=float, default=None, help="Eden lr_batches (default: steps / 3)")
    parser.add_argument("--warmup-batches", type=float, default=None, help="Eden warmup (default: steps / 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "optimizers.json")
    args = parser.parse_args(argv)
    students = [name for name in args.models.split(",") if name]
    unknown = [name for name in students if name not in STUDENTS]
    if unknown or not students:
        parser.error(f"--models: unknown {unknown}; choose from {sorted(STUDENTS)}")
    if args.steps < 1 or args.eval_every < 1:
        parser.error("--steps and --eval-every must be positive")
    args.lr_batches = args.lr_batches or args.steps / 3
    args.warmup_batches = args.warmup_batches or args.steps / 12
    torch.set_num_threads(args.threads)

    cfg = TaskConfig()
    print(
        f"{args.steps} steps, batch {cfg.batch_size}x{cfg.seq_len}, Eden(lr_batches={args.lr_batches:g}, "
        f"warmup_batches={args.warmup_batches:g}), module schedules at "
        f"{RECIPE_EDEN_LR_BATCHES / args.lr_batches:g} batches/step, {args.threads} thread(s)"
    )
    results = {student: compare(student, args, cfg) for student in students}
    result = {
        "benchmark": "optimizers",
        "task": {**cfg.__dict__, "kind": "teacher-student regression, transformer teacher, unit-variance targets"},
        "steps": args.steps,
        "eval_every": args.eval_every,
        "eden": {"lr_batches": args.lr_batches, "warmup_batches": args.warmup_batches, "warmup_start": 0.1},
        "module_schedule_batches_per_step": RECIPE_EDEN_LR_BATCHES / args.lr_batches,
        "seed": args.seed,
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
        "students": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
