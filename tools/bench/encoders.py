"""Forward and forward+backward time and peak memory of speech encoders, by ``build_encoder`` name.

Input: a batch of ``--batch`` utterances of ``--seconds`` seconds of 80-dim fbank (100 frames/s), random
values, full length. Modes:

  forward    eval mode, ``torch.no_grad()``
  train      train mode, forward + backward of ``y.square().mean()`` (the encoder's own training-time
             randomness included: layer skipping, feature masks, dropout)

Each (encoder, mode) runs in a fresh subprocess so peak memory is its own: on CPU the growth of
``ru_maxrss`` from after the model and inputs are built to the end of the runs (one untimed warm-up, then
the timed ones), so it covers activations, gradients and allocator slack, not parameters or inputs; on
CUDA ``torch.cuda.max_memory_allocated`` over the timed runs (parameters included). Any name that
``asr.encoders.encoder_names()`` lists can be benchmarked. Prints a table and writes JSON.

    .venv/bin/python tools/bench/encoders.py [--encoders zipformer-xs,zipformer-small] [--causal]
        [--batch 4] [--seconds 10] [--repeats 2] [--threads 2] [--device cpu] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

MODES = ("forward", "train")
DEFAULT_JSON = Path(__file__).parent / "results" / "encoders.json"


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_worker(args: argparse.Namespace) -> dict:
    import torch

    from asr.encoders import build_encoder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build_encoder(args.encoder, causal=args.causal).to(device)
    frames = int(args.seconds * 100)
    x = torch.randn(args.batch, frames, 80, device=device)
    x_lens = torch.full((args.batch,), frames, dtype=torch.int64, device=device)

    def step() -> None:
        if args.mode == "forward":
            with torch.no_grad():
                model(x, x_lens)
        else:
            model.zero_grad(set_to_none=True)
            y, _ = model(x, x_lens)
            y.square().mean().backward()

    model.train(args.mode == "train")
    if args.mode == "train":
        model.set_batch_count(10_000)
    rss_before = _maxrss_bytes()
    step()  # warm-up (not timed; its memory counts, it is the same work)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        memory_kind = "cuda max_memory_allocated"
    else:
        peak = _maxrss_bytes() - rss_before
        memory_kind = "cpu ru_maxrss growth"
    return {
        "encoder": args.encoder,
        "causal": args.causal,
        "mode": args.mode,
        "params": sum(p.numel() for p in model.parameters()),
        "output_dim": model.output_dim,
        "seconds_per_batch": min(times),
        "all_times": times,
        "peak_memory_bytes": peak,
        "memory_kind": memory_kind,
    }


def _run_case(args: argparse.Namespace, encoder: str, mode: str) -> dict:
    command = [sys.executable, __file__, "--worker", "--encoder", encoder, "--mode", mode,
               "--batch", str(args.batch), "--seconds", str(args.seconds), "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--device", args.device] + (["--causal"] if args.causal else [])
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"encoder": encoder, "mode": mode, "error": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _table(rows: list[dict], audio_seconds: float) -> str:
    lines = [f"{'encoder':<20} {'mode':<8} {'params':>11} {'s/batch':>9} {'x realtime':>10} {'peak MiB':>9}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['encoder']:<20} {r['mode']:<8} failed: {r['error']}")
            continue
        lines.append(f"{r['encoder']:<20} {r['mode']:<8} {r['params']:>11,} {r['seconds_per_batch']:>9.3f} "
                     f"{audio_seconds / r['seconds_per_batch']:>10.1f} {r['peak_memory_bytes'] / 2**20:>9.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", default="zipformer-xs,zipformer-small",
                        help="comma-separated build_encoder names (zipformer-medium is optional: slow on CPU)")
    parser.add_argument("--causal", action="store_true", help="build the streaming variants")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (the minimum is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_run_worker(args)))
        return 0

    rows = [_run_case(args, name, mode) for name in args.encoders.split(",") for mode in MODES]
    audio_seconds = args.batch * args.seconds
    print(f"batch {args.batch} x {args.seconds:g} s fbank, {args.threads} thread(s), {args.device}, "
          f"causal={args.causal}")
    print(_table(rows, audio_seconds))
    report = {
        "benchmark": "encoders",
        "batch": args.batch,
        "seconds": args.seconds,
        "threads": args.threads,
        "device": args.device,
        "causal": args.causal,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
