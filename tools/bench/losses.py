"""Time and peak memory (CPU, or GPU with ``--device cuda``) of the full RNN-T loss vs the pruned path,
forward and backward.

Both paths start from the same encoder output ``(B, T, D)`` and decoder output ``(B, S+1, D)`` and use a
tiny joiner ``tanh(enc + dec) @ W`` (``W: (D, C)``):

  full    joiner on the whole lattice ``(B, T, S+1, C)`` -> ``rnnt_loss``
  pruned  ``rnnt_loss_smoothed`` on linear am/lm projections (``return_grad``) -> ``get_rnnt_prune_ranges``
          -> ``do_rnnt_pruning`` -> joiner on ``(B, T, s_range, C)`` -> ``rnnt_loss_pruned``
  torchaudio  joiner on the whole lattice -> ``torchaudio.functional.rnnt_loss`` (when installed)

Each case runs in a fresh subprocess. Peak memory is measured from after the inputs are built (and a tiny
warm-up run) to the end of the timed runs: on CPU the growth of ``ru_maxrss``, on a GPU
``torch.cuda.max_memory_allocated`` above what was allocated then. Prints a table and writes JSON.

    python tools/bench/losses.py [--json tools/bench/results/losses.json] [--max-gb 8] [--threads 1]
    python tools/bench/losses.py --device cuda --max-gb 40 --json tools/bench/results/losses_cuda.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SIZES = [
    {"B": 8, "T": 500, "S": 100, "C": 500},
    {"B": 8, "T": 1000, "S": 100, "C": 2000},
]
JOINER_DIM = 64
S_RANGE = 5
PATHS = ("full", "pruned", "torchaudio")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _run_worker(path: str, size: dict, repeats: int, threads: int, device: str) -> dict:
    import torch

    from asr.losses import (
        do_rnnt_pruning,
        get_rnnt_prune_ranges,
        rnnt_loss,
        rnnt_loss_pruned,
        rnnt_loss_smoothed,
    )

    torch.set_num_threads(threads)
    on_gpu = device != "cpu"

    def make_inputs(B, T, S, C):
        g = torch.Generator().manual_seed(0)
        params = {
            "enc": torch.randn(B, T, JOINER_DIM, generator=g),
            "dec": torch.randn(B, S + 1, JOINER_DIM, generator=g),
            "joiner": torch.randn(JOINER_DIM, C, generator=g) / JOINER_DIM**0.5,
            "am_proj": torch.randn(JOINER_DIM, C, generator=g) / JOINER_DIM**0.5,
            "lm_proj": torch.randn(JOINER_DIM, C, generator=g) / JOINER_DIM**0.5,
        }
        params = {name: p.to(device) for name, p in params.items()}
        for p in params.values():
            p.requires_grad_()
        symbols = torch.randint(1, C, (B, S), generator=g)
        t_lens = torch.randint(T // 2, T + 1, (B,), generator=g)
        t_lens[0] = T
        s_lens = torch.minimum(torch.randint(S // 2, S + 1, (B,), generator=g), t_lens)
        s_lens[0] = S
        boundary = torch.zeros(B, 4, dtype=torch.int64)
        boundary[:, 2], boundary[:, 3] = s_lens, t_lens
        return params, symbols.to(device), boundary.to(device)

    def full_forward(p, symbols, boundary):
        logits = torch.tanh(p["enc"].unsqueeze(2) + p["dec"].unsqueeze(1)) @ p["joiner"]
        return rnnt_loss(logits, symbols, 0, boundary, reduction="sum")

    def pruned_forward(p, symbols, boundary):
        am, lm = p["enc"] @ p["am_proj"], p["dec"] @ p["lm_proj"]
        simple, (px_grad, py_grad) = rnnt_loss_smoothed(
            lm, am, symbols, 0, 0.25, 0.0, boundary, reduction="sum", return_grad=True
        )
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, S_RANGE)
        am_pruned, lm_pruned = do_rnnt_pruning(p["enc"], p["dec"], ranges)
        logits = torch.tanh(am_pruned + lm_pruned) @ p["joiner"]
        return 0.5 * simple + rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, reduction="sum")

    def torchaudio_forward(p, symbols, boundary):
        import torchaudio.functional as AF

        logits = torch.tanh(p["enc"].unsqueeze(2) + p["dec"].unsqueeze(1)) @ p["joiner"]
        return AF.rnnt_loss(logits, symbols.int(), boundary[:, 3].int(), boundary[:, 2].int(), blank=0, reduction="sum")

    forward = {"full": full_forward, "pruned": pruned_forward, "torchaudio": torchaudio_forward}[path]

    # Warm up on a tiny case so that library loading is not counted as loss memory.
    forward(*make_inputs(2, 8, 3, 16)).backward()
    params, symbols, boundary = make_inputs(size["B"], size["T"], size["S"], size["C"])

    def now() -> float:
        if on_gpu:
            torch.cuda.synchronize()
        return time.perf_counter()

    if on_gpu:
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        baseline = _maxrss_bytes()
    forward_s, backward_s, loss_value = [], [], None
    for _ in range(repeats):
        for p in params.values():
            p.grad = None
        start = now()
        loss = forward(params, symbols, boundary)
        middle = now()
        loss.backward()
        end = now()
        forward_s.append(middle - start)
        backward_s.append(end - middle)
        loss_value = float(loss)
        del loss
    return {
        "status": "ok",
        "forward_s": min(forward_s),
        "backward_s": min(backward_s),
        "peak_mem_mb": ((torch.cuda.max_memory_allocated() if on_gpu else _maxrss_bytes()) - baseline) / 2**20,
        "loss": loss_value,
    }


def _estimated_full_gb(size: dict) -> float:
    """Logits, their gradient, tanh hidden state and its gradient (float32)."""
    lattice = size["B"] * size["T"] * (size["S"] + 1)
    return lattice * (2 * size["C"] + 3 * JOINER_DIM) * 4 / 1e9


def _mem_available_gb(device: str) -> float:
    if device != "cpu":
        import torch

        return torch.cuda.mem_get_info()[0] / 1e9
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="losses.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "losses.json", help="JSON output path"
    )
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per case (the best is kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per case")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--max-gb", type=float, default=8.0, help="skip full-lattice cases estimated to need more than this"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps(_run_worker(job["path"], job["size"], args.repeats, args.threads, args.device)))
        return 0

    print(f"{'path':<11}{'B':>3}{'T':>6}{'S':>5}{'C':>6}  {'fwd s':>8}{'bwd s':>8}{'peak MB':>10}  status")
    results = []
    for size in SIZES:
        for path in PATHS:
            row = {"path": path, **size, "s_range": S_RANGE if path == "pruned" else None}
            need_gb = _estimated_full_gb(size)
            limit_gb = min(args.max_gb, 0.6 * _mem_available_gb(args.device))
            if path == "torchaudio" and importlib.util.find_spec("torchaudio") is None:
                row["status"] = "not installed"
            elif path != "pruned" and need_gb > limit_gb:
                row["status"] = f"skipped: needs ~{need_gb:.1f} GB, limit {limit_gb:.1f} GB"
            else:
                job = json.dumps({"path": path, "size": size})
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    job,
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                    "--device",
                    args.device,
                ]
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    reason = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode
                    row["status"] = f"failed: {reason}"
                else:
                    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
            results.append(row)
            _print_row(row)

    summary = {}
    for size in SIZES:
        rows = {r["path"]: r for r in results if all(r[k] == size[k] for k in size)}
        full, pruned = rows["full"], rows["pruned"]
        if full.get("status") == "ok" and pruned.get("status") == "ok":
            key = "B{B}_T{T}_S{S}_C{C}".format(**size)
            summary[key] = {
                "memory_ratio_full_over_pruned": full["peak_mem_mb"] / pruned["peak_mem_mb"],
                "time_ratio_full_over_pruned": (full["forward_s"] + full["backward_s"])
                / (pruned["forward_s"] + pruned["backward_s"]),
            }
            print(
                f"{key}: full/pruned peak memory {summary[key]['memory_ratio_full_over_pruned']:.1f}x, "
                f"time {summary[key]['time_ratio_full_over_pruned']:.1f}x"
            )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        report = {
            "device": _device_name(args.device),
            "threads": args.threads,
            "joiner_dim": JOINER_DIM,
            "results": results,
            "summary": summary,
        }
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")
    return 0


def _device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name()


def _print_row(row: dict) -> None:
    if row.get("status") == "ok":
        numbers = f"{row['forward_s']:8.3f}{row['backward_s']:8.3f}{row['peak_mem_mb']:10.1f}"
    else:
        numbers = f"{'-':>8}{'-':>8}{'-':>10}"
    print(
        f"{row['path']:<11}{row['B']:>3}{row['T']:>6}{row['S']:>5}{row['C']:>6}  {numbers}  {row.get('status')}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
