"""Time of one full training step (forward, losses, backward, ScaledAdam step) of a transducer+CTC model
under float32, bfloat16 and float16 autocast, with new utterance lengths every step as in real training.

Why: on an H100, `asr train --amp fp16` ran ~7x slower per batch than `--amp bf16`. This script isolates
the step from data loading, and its variants separated the suspects: the cause was cuDNN's per-shape plan
building for float16 depthwise convolutions, fixed by :mod:`asr.nn.depthwise` (results/amp_step_h100*.json).

  <dtype>            autocast dtype (float32 = no autocast); fp16 uses a GradScaler as the trainer does
  <dtype>+fixed      every step the same padded length (no new shapes after the warm-up)
  <dtype>+nocudnn    cuDNN disabled for the whole step (convolutions fall back to PyTorch's own kernels)
  <dtype>+torchattn  attention through the PyTorch reference instead of the Triton kernels
                     (ASR_ATTENTION_BACKEND=torch); options combine: float16+fixed+torchattn

Each variant builds the model afresh from the same seed and sees the same sequence of batches: a batch is
utterances of 2-8 s drawn until ``--batch-seconds`` (features random, ~1 token per 12 frames). The table
gives the median and mean step time after ``--warmup`` steps, the first step's time (cold caches) and the
peak memory (GPU: allocated; CPU: not measured), and each median as a ratio to the first variant.
Variants run in one process in the order given, so caches (cuDNN plans, compiled Triton kernels) carry
over from one to the next: the first variant of a dtype is the one that meets cold caches.
``--profile VARIANT`` runs that variant again under torch.profiler and writes the operator table sorted
by self device time to ``--profile-out`` (and prints its head).

    python tools/bench/amp_step.py --device cuda [--variants float32 bfloat16 float16 float16+fixed
        float16+nocudnn] [--steps 12 --warmup 3] [--profile float16 --profile bfloat16]
    quick check on CPU: python tools/bench/amp_step.py --device cpu --variants float32 bfloat16
        --steps 2 --warmup 1 --batch-seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import time
from pathlib import Path

DEFAULT_JSON = Path(__file__).parent / "results" / "amp_step.json"
DTYPES = ("float32", "bfloat16", "float16")
OPTIONS = ("fixed", "nocudnn", "torchattn")
FRAMES_PER_SECOND = 100
FRAMES_PER_TOKEN = 12
ATTENTION_BACKEND_ENV = "ASR_ATTENTION_BACKEND"  # read by asr.nn.fused_attention at every call


@contextlib.contextmanager
def _environ(name: str, value: str):
    """Set an environment variable for the block, then restore it."""
    saved = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            del os.environ[name]
        else:
            os.environ[name] = saved


def parse_variant(name: str) -> tuple[str, set[str]]:
    """``"float16+nocudnn"`` -> ``("float16", {"nocudnn"})``; unknown parts raise SystemExit."""
    dtype, *options = name.split("+")
    if dtype not in DTYPES or any(o not in OPTIONS for o in options):
        raise SystemExit(f"bad variant {name!r}: <{'|'.join(DTYPES)}>[+{'][+'.join(OPTIONS)}]")
    return dtype, set(options)


def make_batches(
    steps: int, batch_seconds: float, vocab_size: int, seed: int
) -> list[tuple[list[int], list[list[int]]]]:
    """``steps`` batches as (frame counts, token lists); one RNG seed, so every variant gets the same."""
    rng = random.Random(seed)
    batches = []
    for _ in range(steps):
        frames, total = [], 0.0
        while total < batch_seconds:
            seconds = rng.uniform(2.0, 8.0)
            frames.append(round(seconds * FRAMES_PER_SECOND))
            total += seconds
        tokens = [[rng.randrange(3, vocab_size) for _ in range(max(1, n // FRAMES_PER_TOKEN))] for n in frames]
        batches.append((frames, tokens))
    return batches


def run_variant(name: str, args: argparse.Namespace, profile_path: Path | None = None) -> dict:
    import torch

    from asr.models import build_model
    from asr.optim import ScaledAdam
    from asr.training.losses import combine_losses
    from asr.training.trainer import scheduled_modules, set_batch_count

    dtype_name, options = parse_variant(name)
    device = torch.device(args.device)
    random.seed(0)
    torch.manual_seed(0)
    model = build_model(args.encoder, args.vocab_size).to(device)
    model.train()
    set_batch_count(scheduled_modules(model), 10_000.0)
    optimizer = ScaledAdam(model.named_parameters(), lr=0.045, clipping_scale=2.0)
    dtype = getattr(torch, dtype_name)
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0, enabled=dtype == torch.float16)
    steps = args.warmup + args.steps
    batches = make_batches(steps, args.batch_seconds, args.vocab_size, seed=1)
    if "fixed" in options:
        # The first batch's shapes every step: only the warm-up meets a new shape.
        batches = [batches[0]] * steps

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(frames: list[int], tokens: list[list[int]]) -> None:
        x = torch.randn(len(frames), max(frames), 80, device=device)
        x_lens = torch.tensor(frames, device=device)
        autocast = (
            torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        )
        with autocast:
            loss = combine_losses(*model(x, x_lens, tokens), batch_idx_train=10_000, warm_step=500)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    times = []
    with contextlib.ExitStack() as stack:
        if "nocudnn" in options:
            stack.enter_context(torch.backends.cudnn.flags(enabled=False))
        if "torchattn" in options:
            stack.enter_context(_environ(ATTENTION_BACKEND_ENV, "torch"))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for frames, tokens in batches:
            sync()
            start = time.perf_counter()
            step(frames, tokens)
            sync()
            times.append(time.perf_counter() - start)
        if profile_path is not None:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            sort_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            with profile(activities=activities) as prof:
                for frames, tokens in make_batches(args.profile_steps, args.batch_seconds, args.vocab_size, seed=2):
                    step(frames, tokens)
                sync()
            table = prof.key_averages().table(sort_by=sort_key, row_limit=args.profile_rows)
            profile_path.write_text(table + "\n")
            print(f"--- profile of {name} ({args.profile_steps} steps, by {sort_key}) -> {profile_path}")
            print("\n".join(table.splitlines()[: min(25, args.profile_rows + 4)]), flush=True)
    timed = times[args.warmup :]
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {
        "variant": name,
        "median_s": statistics.median(timed),
        "mean_s": statistics.fmean(timed),
        "first_s": times[0],
        "peak_gib": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--encoder", default="zipformer-xs")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument(
        "--variants", nargs="+", default=["float32", "bfloat16", "float16", "float16+fixed", "float16+nocudnn"]
    )
    parser.add_argument("--batch-seconds", type=float, default=200.0)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (new shapes still come after)")
    parser.add_argument("--profile", nargs="*", default=[], help="variants to run again under torch.profiler")
    parser.add_argument("--profile-steps", type=int, default=4)
    parser.add_argument("--profile-rows", type=int, default=40)
    parser.add_argument("--profile-out", type=Path, default=Path("."), help="folder for amp_step_profile_<variant>.txt")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args()
    for name in args.variants + args.profile:
        parse_variant(name)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        return
    # Rows are printed as they finish, so a run cut short by a time limit still reports what it measured.
    print(f"{'variant':<26}{'median s':>10}{'mean s':>10}{'first s':>10}{'peak GiB':>10}{'x ' + args.variants[0]:>18}")
    rows = []
    for name in args.variants:
        row = run_variant(name, args)
        row["ratio_to_first"] = row["median_s"] / (rows[0]["median_s"] if rows else row["median_s"])
        rows.append(row)
        peak = f"{row['peak_gib']:.2f}" if row["peak_gib"] is not None else "-"
        print(
            f"{row['variant']:<26}{row['median_s']:>10.3f}{row['mean_s']:>10.3f}{row['first_s']:>10.3f}"
            f"{peak:>10}{row['ratio_to_first']:>18.2f}",
            flush=True,
        )
    args.profile_out.mkdir(parents=True, exist_ok=True)
    profiles = {}
    for name in args.profile:
        path = args.profile_out / f"amp_step_profile_{name.replace('+', '_')}.txt"
        run_variant(name, args, profile_path=path)
        profiles[name] = str(path)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    result = {
        "device": device_name,
        "torch": torch.__version__,
        "encoder": args.encoder,
        "batch_seconds": args.batch_seconds,
        "steps": args.steps,
        "warmup": args.warmup,
        "rows": rows,
        "profiles": profiles,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
