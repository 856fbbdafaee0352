"""Forward and forward+backward time and peak memory of speech encoders at matched parameter count.

By default it compares the four encoder families at about 22M parameters (``MATCHED_22M``): the
``zipformer-small`` and ``conformer-small`` presets as they are, and an Efficient Conformer and a
Transformer-Transducer audio encoder resized with ``build_encoder`` overrides (neither family has a 22M
preset). Any ``asr.encoders.encoder_names()`` name can be benchmarked too.

Input: ``--batch`` utterances of each of ``--durations`` seconds of 80-dim fbank (100 frames/s), random
values, full length. Modes:

  forward    eval mode, ``torch.no_grad()``
  train      train mode, forward + backward of ``y.square().mean()`` (the encoder's own training-time
             randomness included: layer skipping, feature masks, dropout; the scheduled modules are set to
             batch count 10000, as ``asr.training.trainer.set_batch_count`` does in training)

Each (encoder, duration, mode) runs in a fresh subprocess so its peak memory is its own. On CPU peak
memory is the peak RSS of the process (``VmHWM``, reset via ``/proc/self/clear_refs`` just before the
first full-size step) minus its RSS at that moment (model and inputs built, and one 1 s step run so that
lazily loaded library kernels are resident), over one untimed warm-up step and the timed ones:
activations, gradients and allocator slack, not parameters or inputs. The workers run with fixed glibc
malloc thresholds (``WORKER_MALLOC_ENV``) so that RSS follows live memory. On CUDA peak memory is
``torch.cuda.max_memory_allocated`` over the timed steps (parameters included). Time is the fastest of
``--repeats`` timed steps. With ``--compile`` each encoder runs through ``torch.compile(dynamic=True)``
(as ``asr train --compile`` and ``Recognizer(..., compile=True)`` do); its compilation happens in an
extra full-size step before the peak memory is reset, so neither its time nor its memory is counted.
``--amp bf16`` (or ``fp16``) runs each step under ``torch.autocast`` in that dtype, as ``asr train --amp``
does (GPU training at a realistic batch: ``--device cuda --batch 64 --durations 15 --amp bf16``, 960 s of
audio per batch).
Every time and memory figure is also given as a ratio to the ``--reference``
encoder (a Conformer by default) measured in the same run, same duration and mode. Prints a table and
writes JSON.

    .venv/bin/python tools/bench/encoders.py [--encoders NAMES] [--reference conformer-small]
        [--durations 10,30] [--batch 4] [--repeats 2] [--threads 2] [--device cpu] [--causal] [--compile]
        [--amp off|bf16|fp16] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

MODES = ("forward", "train")
AMP_DTYPES = ("off", "bf16", "fp16")
DEFAULT_JSON = Path(__file__).parent / "results" / "encoders.json"
# glibc otherwise raises its mmap threshold as large blocks are freed and keeps later ones on the heap,
# so RSS would depend on allocation history (two runs of one training step measured 40% apart); with
# fixed thresholds large tensors are mapped and unmapped and peak RSS follows peak live memory.
WORKER_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}

# label -> (build_encoder preset, overrides). zipformer-small (21.99M) and conformer-small (22.49M) are
# matched presets. The Efficient Conformer keeps its small preset's depth (5, 5, 5 blocks), heads and
# kernel and is widened 1.3x (120/168/240 -> 156/216/312): 22.16M. The T-T encoder keeps its small
# preset's width (256, 4 heads, feedforward 1024, the Conformer's) and is deepened from 6 to 24 layers:
# 22.38M. Parameter counts are of the encoder alone (front end included), as built here.
MATCHED_22M: dict[str, tuple[str, dict]] = {
    "zipformer-small": ("zipformer-small", {}),
    "conformer-small": ("conformer-small", {}),
    "efficient-conformer-22m": ("efficient-conformer-small", {"stage_dims": (156, 216, 312)}),
    "transformer-transducer-22m": ("transformer-transducer-small", {"num_layers": 24}),
}
HOW_MATCHED = {
    "zipformer-small": "preset",
    "conformer-small": "preset",
    "efficient-conformer-22m": "efficient-conformer-small widened 1.3x: stage_dims (156, 216, 312)",
    "transformer-transducer-22m": "transformer-transducer-small deepened: num_layers 24 (width 256 kept)",
}


def resolve(label: str) -> tuple[str, dict]:
    """The ``build_encoder`` preset and overrides behind a benchmark label."""
    from asr.encoders import encoder_names

    if label in MATCHED_22M:
        return MATCHED_22M[label]
    if label in encoder_names():
        return label, {}
    raise SystemExit(f"unknown encoder {label!r}; choose from {sorted(MATCHED_22M)} or {encoder_names()}")


def build(label: str, causal: bool):
    from asr.encoders import build_encoder

    preset, overrides = resolve(label)
    return build_encoder(preset, causal=causal, **overrides)


def _proc_status_bytes(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Set the peak RSS to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _run_worker(args: argparse.Namespace) -> dict:
    import torch

    from asr.models.asr_model import encode_checked
    from asr.training.trainer import scheduled_modules, set_batch_count

    torch.set_num_threads(args.threads)
    # Both generators: Zipformer's balancers and positional-score skipping draw from Python's `random`.
    random.seed(0)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = build(args.encoder, args.causal).to(device)
    frames = round(args.seconds * 100)
    x = torch.randn(args.batch, frames, 80, device=device)
    x_lens = torch.full((args.batch,), frames, dtype=torch.int64, device=device)
    output_frames = []
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)

    def step(x: torch.Tensor, x_lens: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            if args.mode == "forward":
                with torch.no_grad():
                    y, _ = encode_checked(model, x, x_lens)
            else:
                model.zero_grad(set_to_none=True)
                y, _ = encode_checked(model, x, x_lens)
        if args.mode == "train":
            y.float().square().mean().backward()
        output_frames.append(y.shape[1])

    model.train(args.mode == "train")
    set_batch_count(scheduled_modules(model), 10_000.0)
    # The same step on one 1 s utterance first, so that lazily initialised kernels and buffers of the
    # math libraries are resident before the baseline and do not count as the batch's memory.
    step(x[:1, :100], x_lens[:1].clamp(max=100))
    if args.compile:
        model.compile(dynamic=True)
        step(x, x_lens)  # compiles (dynamic shapes: the 1 s step reuses nothing of a static graph)
    model.zero_grad(set_to_none=True)
    peak_was_reset = _reset_peak_rss()
    rss_before = _proc_status_bytes("VmRSS")
    step(x, x_lens)  # warm-up (not timed; its memory counts, it is the same work)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step(x, x_lens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak, memory_kind = torch.cuda.max_memory_allocated(), "cuda max_memory_allocated"
    else:
        peak = _proc_status_bytes("VmHWM") - rss_before
        memory_kind = "cpu peak rss - rss before the first full-size step"
        if not peak_was_reset:
            # The peak may then be that of building the model: the figure is only an upper bound.
            memory_kind += " (upper bound: peak rss could not be reset)"
    preset, overrides = resolve(args.encoder)
    return {
        "encoder": args.encoder,
        "preset": preset,
        "overrides": overrides,
        "causal": args.causal,
        "compiled": args.compile,
        "amp": args.amp,
        "mode": args.mode,
        "batch": args.batch,
        "seconds": args.seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "output_dim": model.output_dim,
        "output_frames": output_frames[-1],
        "seconds_per_batch": min(times),
        "utterances_per_second": args.batch / min(times),
        "all_times": times,
        "peak_memory_bytes": peak,
        "memory_kind": memory_kind,
    }


def _run_case(args: argparse.Namespace, encoder: str, seconds: float, mode: str) -> dict:
    command = (
        [
            sys.executable,
            __file__,
            "--worker",
            "--encoder",
            encoder,
            "--mode",
            mode,
            "--batch",
            str(args.batch),
            "--seconds",
            str(seconds),
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        + (["--causal"] if args.causal else [])
        + (["--compile"] if args.compile else [])
        + ["--amp", args.amp]
    )
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **WORKER_MALLOC_ENV})
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        # The exception's own line, not the hints torch prints after it.
        errors = [line for line in lines if "Error" in line.split(":", 1)[0]]
        return {"encoder": encoder, "seconds": seconds, "mode": mode, "error": (errors or lines)[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def add_ratios(rows: list[dict], reference: str) -> None:
    """Set ``time_ratio`` and ``memory_ratio`` of each row to the reference's row of the same duration
    and mode (None where either failed)."""
    ref = {(r["seconds"], r["mode"]): r for r in rows if r["encoder"] == reference and "error" not in r}
    for r in rows:
        base = ref.get((r["seconds"], r["mode"]))
        ok = base is not None and "error" not in r
        r["time_ratio"] = r["seconds_per_batch"] / base["seconds_per_batch"] if ok else None
        r["memory_ratio"] = (
            r["peak_memory_bytes"] / base["peak_memory_bytes"] if ok and base["peak_memory_bytes"] > 0 else None
        )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _models_table(models: list[dict], reference: str) -> str:
    ref_params = next((m["params"] for m in models if m["encoder"] == reference and "error" not in m), None)
    lines = [f"{'encoder':<27} {'params':>11} {'x ref':>6} {'out dim':>7} {'out Hz':>6}  how matched"]
    for m in models:
        if "error" in m:
            lines.append(f"{m['encoder']:<27} not built: {m['error']}")
            continue
        ratio = _ratio(None if ref_params is None else m["params"] / ref_params)
        lines.append(
            f"{m['encoder']:<27} {m['params']:>11,} {ratio:>6} {m['output_dim']:>7} {m['output_hz']:>6g}  {m['how']}"
        )
    return "\n".join(lines)


def _results_table(rows: list[dict], batch: int) -> str:
    lines = [
        f"{'encoder':<27} {'audio':>9} {'mode':<8} {'s/batch':>9} {'x ref':>6} {'x realtime':>10} "
        f"{'peak MiB':>9} {'x ref':>6}"
    ]
    for r in rows:
        audio = f"{batch}x{r['seconds']:g}s"
        if "error" in r:
            lines.append(f"{r['encoder']:<27} {audio:>9} {r['mode']:<8} failed: {r['error']}")
            continue
        lines.append(
            f"{r['encoder']:<27} {audio:>9} {r['mode']:<8} {r['seconds_per_batch']:>9.3f} "
            f"{_ratio(r['time_ratio']):>6} {batch * r['seconds'] / r['seconds_per_batch']:>10.1f} "
            f"{r['peak_memory_bytes'] / 2**20:>9.1f} {_ratio(r['memory_ratio']):>6}"
        )
    return "\n".join(lines)


def _describe_models(labels: list[str], causal: bool) -> list[dict]:
    """Parameter count, output width and frame rate of each encoder (built here, in the parent)."""
    import torch

    models = []
    for label in labels:
        try:
            model = build(label, causal).eval()
        except ValueError as error:  # e.g. a family without a causal variant
            models.append({"encoder": label, "error": str(error)})
            continue
        with torch.no_grad():
            x_lens = torch.tensor([1000])
            _, y_lens = model(torch.zeros(1, 1000, 80), x_lens)
        preset, overrides = resolve(label)
        models.append(
            {
                "encoder": label,
                "preset": preset,
                "overrides": overrides,
                "how": HOW_MATCHED.get(label, "preset"),
                "params": sum(p.numel() for p in model.parameters()),
                "output_dim": model.output_dim,
                "output_hz": round(int(y_lens[0]) / 10.0, 1),
            }
        )
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--encoders",
        default=",".join(MATCHED_22M),
        help="comma-separated labels: the matched-size ones below or any build_encoder name "
        f"(default: {','.join(MATCHED_22M)})",
    )
    parser.add_argument(
        "--reference", default="conformer-small", help="ratios are to this encoder (added to --encoders if missing)"
    )
    parser.add_argument("--durations", default="10,30", help="comma-separated utterance durations, seconds")
    parser.add_argument("--batch", type=int, default=4, help="utterances per batch")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per case (the fastest is reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--causal", action="store_true", help="build the streaming variants")
    parser.add_argument("--compile", action="store_true", help="time the encoders through torch.compile")
    parser.add_argument("--amp", choices=AMP_DTYPES, default="off", help="torch.autocast dtype of each step")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--encoder", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_run_worker(args)))
        return 0

    labels = [name for name in args.encoders.split(",") if name]
    if args.reference not in labels:
        labels.insert(0, args.reference)
    for label in labels:
        resolve(label)  # unknown names fail here, before any work
    try:
        durations = [float(d) for d in args.durations.split(",") if d]
    except ValueError:
        parser.error(f"--durations must be comma-separated numbers, got {args.durations!r}")
    if not durations or min(durations) <= 0 or args.batch < 1 or args.repeats < 1:
        parser.error("--durations, --batch and --repeats must be positive")

    header = (
        f"batch {args.batch} x {','.join(f'{d:g}' for d in durations)} s of fbank (100 frames/s), "
        f"{args.threads} thread(s), {args.device}, causal={args.causal}, compiled={args.compile}, "
        f"amp={args.amp}, reference {args.reference}"
    )
    print(header, flush=True)
    models = _describe_models(labels, args.causal)
    print(_models_table(models, args.reference), flush=True)
    rows = []
    for seconds in durations:
        for label in (m["encoder"] for m in models if "error" not in m):
            for mode in MODES:
                rows.append(_run_case(args, label, seconds, mode))
                r = rows[-1]
                done = r.get("error") or f"{r['seconds_per_batch']:.3f} s, {r['peak_memory_bytes'] / 2**20:.0f} MiB"
                print(f"  {label} {args.batch}x{seconds:g}s {mode}: {done}", file=sys.stderr, flush=True)
    add_ratios(rows, args.reference)
    print()
    print(_results_table(rows, args.batch))
    report = {
        "benchmark": "encoders",
        "batch": args.batch,
        "durations": durations,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": args.device,
        "causal": args.causal,
        "compiled": args.compile,
        "amp": args.amp,
        "reference": args.reference,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "models": models,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 1 if any("error" in r for r in rows + models) else 0


if __name__ == "__main__":
    sys.exit(main())
