"""Adam vs ScaledAdam + Eden on a small transformer: steps to a fixed loss, final loss, optimizer step time.

Task: teacher-student regression on synthetic sequences. A fixed, randomly initialised teacher (the same
architecture, different seed) maps Gaussian input sequences ``(N, T, input_dim)`` to per-frame targets
``(N, T, out_dim)``, normalised to unit variance (so predicting zeros scores 1.0). Every run starts the
student from the same initial weights and sees the same batches. Adam is tried at three learning rates and
the best (lowest final loss) is reported against ScaledAdam at the recipe's lr; all runs use the same Eden
schedule (warmup then decay, scaled to the run length), so only the optimizer differs. Held-out loss is
measured every ``--eval-every`` steps; "steps to target" is the first evaluation at or below
``--target-loss``. Everything runs in one process, one thread, on the same machine.

    .venv/bin/python tools/bench/optimizers.py [--steps 600] [--target-loss 0.1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from asr.optim import Eden, ScaledAdam


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
    """Input projection, a pre-norm transformer encoder and a per-frame linear head: ``(N, T, D_in) -> (N, T, D_out)``."""

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


class TeacherTask:
    """Fixed teacher, seeded training batches and a held-out set."""

    def __init__(self, cfg: TaskConfig, seed: int) -> None:
        self.cfg = cfg
        torch.manual_seed(seed + 1)
        self.teacher = SmallEncoder(cfg).eval()
        with torch.no_grad():
            # A sharper teacher than its default init, so the targets are not nearly linear in the input.
            for p in self.teacher.parameters():
                if p.ndim == 2:
                    p.mul_(2.0)
            probe = self.teacher(self._inputs(torch.Generator().manual_seed(seed + 2), 512))
        self.target_mean = probe.mean(dim=(0, 1))
        self.target_std = probe.std(dim=(0, 1))
        self.eval_inputs, self.eval_targets = self.batch(torch.Generator().manual_seed(seed + 3), cfg.eval_size)

    def _inputs(self, generator: torch.Generator, n: int) -> Tensor:
        return torch.randn(n, self.cfg.seq_len, self.cfg.input_dim, generator=generator)

    @torch.no_grad()
    def batch(self, generator: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        x = self._inputs(generator, n)
        return x, (self.teacher(x) - self.target_mean) / self.target_std


def train(task: TeacherTask, name: str, make_optimizer, args, seed: int) -> dict:
    torch.manual_seed(seed)
    model = SmallEncoder(task.cfg)
    optimizer = make_optimizer(model)
    scheduler = Eden(
        optimizer, lr_batches=args.lr_batches, lr_epochs=1e9, warmup_batches=args.warmup_batches, warmup_start=0.1
    )
    batches = torch.Generator().manual_seed(seed + 10)
    curve, steps_to_target, step_seconds = [], None, 0.0
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = task.batch(batches, task.cfg.batch_size)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        optimizer.step()
        step_seconds += time.perf_counter() - t0
        scheduler.step_batch()
        if step % args.eval_every == 0 or step == args.steps:
            with torch.no_grad():
                eval_loss = nn.functional.mse_loss(model(task.eval_inputs), task.eval_targets).item()
            curve.append((step, eval_loss))
            if steps_to_target is None and eval_loss <= args.target_loss:
                steps_to_target = step
    row = {
        "name": name,
        "steps_to_target": steps_to_target,
        "final_eval_loss": curve[-1][1],
        "best_eval_loss": min(loss for _, loss in curve),
        "optimizer_ms_per_step": 1000.0 * step_seconds / args.steps,
        "wall_s": time.perf_counter() - start,
        "curve": curve,
    }
    reached = "-" if steps_to_target is None else str(steps_to_target)
    print(
        f"{name:<26} {reached:>9} {row['final_eval_loss']:>10.4f} {row['best_eval_loss']:>9.4f}"
        f" {row['optimizer_ms_per_step']:>9.3f} {row['wall_s']:>7.1f}",
        flush=True,
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--target-loss", type=float, default=0.1, help="held-out MSE for 'steps to target'")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--adam-lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--scaled-adam-lr", type=float, default=0.045, help="the Zipformer recipe's base lr")
    parser.add_argument("--lr-batches", type=float, default=None, help="Eden lr_batches (default: steps / 3)")
    parser.add_argument("--warmup-batches", type=float, default=None, help="Eden warmup (default: steps / 12)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "optimizers.json")
    args = parser.parse_args(argv)
    args.lr_batches = args.lr_batches or args.steps / 3
    args.warmup_batches = args.warmup_batches or args.steps / 12
    torch.set_num_threads(args.threads)

    cfg = TaskConfig()
    task = TeacherTask(cfg, args.seed)
    print(
        f"{args.steps} steps, batch {cfg.batch_size}x{cfg.seq_len}, Eden(lr_batches={args.lr_batches:g}, "
        f"warmup_batches={args.warmup_batches:g}), target held-out MSE {args.target_loss}"
    )
    print(f"{'optimizer':<26} {'to target':>9} {'final loss':>10} {'best loss':>9} {'opt ms/st':>9} {'wall s':>7}")
    adam_rows = [
        train(task, f"Adam lr={lr:g}", lambda m, lr=lr: torch.optim.Adam(m.parameters(), lr=lr), args, args.seed)
        for lr in args.adam_lrs
    ]
    scaled = train(
        task,
        f"ScaledAdam lr={args.scaled_adam_lr:g}",
        lambda m: ScaledAdam(m.named_parameters(), lr=args.scaled_adam_lr),
        args,
        args.seed,
    )
    best_adam = min(adam_rows, key=lambda row: row["final_eval_loss"])

    def fmt(steps):
        return "not reached" if steps is None else f"{steps} steps"

    print(
        f"\nbest Adam ({best_adam['name']}): {fmt(best_adam['steps_to_target'])} to {args.target_loss}, "
        f"final {best_adam['final_eval_loss']:.4f};  ScaledAdam+Eden: {fmt(scaled['steps_to_target'])}, "
        f"final {scaled['final_eval_loss']:.4f};  final-loss ratio ScaledAdam/Adam "
        f"{scaled['final_eval_loss'] / best_adam['final_eval_loss']:.3f}"
    )
    result = {
        "benchmark": "optimizers",
        "task": {**cfg.__dict__, "kind": "teacher-student per-frame regression, unit-variance targets"},
        "steps": args.steps,
        "target_loss": args.target_loss,
        "eden": {"lr_batches": args.lr_batches, "warmup_batches": args.warmup_batches, "warmup_start": 0.1},
        "seed": args.seed,
        "threads": args.threads,
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0], "torch": torch.__version__},
        "adam": adam_rows,
        "best_adam": best_adam["name"],
        "scaled_adam": scaled,
        "final_loss_ratio_scaled_over_best_adam": scaled["final_eval_loss"] / best_adam["final_eval_loss"],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
