"""Time and peak GPU memory of relative-position attention: the fused Triton kernel vs the PyTorch
reference vs ``scaled_dot_product_attention`` with a materialised positional bias.

Inputs per case (head-first): ``q``, ``k`` ``(H, N, T, D)``, ``v`` ``(H, N, T, D_v)``, ``q_pos``
``(H, N, T, P)``, table ``(H, 2T - 1, P)``, the last 5% of keys of the last utterance padded, optionally
a chunked limited-context mask. Shapes (``--shapes``), ``(D, D_v, P)``:

  zipformer            (32, 12, 4)    Zipformer's narrow positional term (the kernels' P-step loop)
  conformer            (64, 64, 64)   a plain Conformer's full-width term (the table-window path)
  efficient-conformer  (90, 90, 90)   the Efficient Conformer's grouped attention (group 3 of 30 dims)

Paths:

  triton            asr_kernels.rel_pos_attention (never materialises (T, T))
  triton_loop_pos   the same with the positional term forced onto the P-step loop (only for shapes whose P
                    takes the table-window path, and only up to --loop-max-length): the window's speed-up
  reference         asr_kernels.reference.rel_pos_attention_reference (materialises scores)
  sdpa_bias         positional bias (H, N, T, T) + key mask built in PyTorch, then
                    torch.nn.functional.scaled_dot_product_attention(attn_mask=bias)
  triton_weights    asr_kernels.rel_pos_attention_weights, one head (what NonlinAttention needs)
  reference_weights the reference weights, one head

Each path runs ``forward`` (no grad) and ``forward+backward`` (gradients of q, k, v, q_pos and the
table); the time is the median of ``--repeats`` runs after a warm-up, the memory is the peak allocated
above what the inputs take. After a path runs out of memory it is skipped for longer T. Before timing,
the Triton outputs are checked against the reference at the smallest T (max abs difference in the JSON).
Prints a table and writes JSON. Needs a CUDA GPU; on a machine without one it says so and exits 0.

    python tools/bench/attention.py [--json tools/bench/results/attention.json] [--dtype float16]
        [--lengths 1024 2048 ... 65536] [--chunk-size 64 --left-chunks 4]
        [--shapes zipformer efficient-conformer] [--loop-max-length 4096]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

PATHS = ("triton", "triton_loop_pos", "reference", "sdpa_bias", "triton_weights", "reference_weights")
MODES = ("forward", "forward+backward")
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
SHAPES = {"zipformer": (32, 12, 4), "conformer": (64, 64, 64), "efficient-conformer": (90, 90, 90)}


def _inputs(
    heads: int, batch: int, length: int, dims: tuple[int, int, int], dtype: torch.dtype, device: torch.device
) -> dict:
    head_dim, value_dim, pos_dim = dims
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, std: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, device=device) * std).to(dtype).requires_grad_()

    padding = torch.zeros(batch, length, dtype=torch.bool, device=device)
    padding[-1, length - length // 20 :] = True
    return dict(
        q=rand(heads, batch, length, head_dim, std=head_dim**-0.25),
        k=rand(heads, batch, length, head_dim, std=head_dim**-0.25),
        v=rand(heads, batch, length, value_dim),
        q_pos=rand(heads, batch, length, pos_dim),
        # std P^-0.5: a positional term of unit size whatever P is (0.5 at Zipformer's P = 4).
        pos_table=rand(heads, 2 * length - 1, pos_dim, std=pos_dim**-0.5),
        padding=padding,
    )


@contextlib.contextmanager
def _positional_loop_forced():
    """Every call inside (forward and backward) takes the kernels' P-step positional loop."""
    from asr_kernels import rel_pos_attention as kernels

    threshold = kernels._WIDE_POS_MIN_DIM
    kernels._WIDE_POS_MIN_DIM = 1 << 30
    try:
        yield
    finally:
        kernels._WIDE_POS_MIN_DIM = threshold


def _takes_window_path(pos_dim: int) -> bool:
    from asr_kernels import rel_pos_attention as kernels

    return pos_dim >= kernels._WIDE_POS_MIN_DIM


def _sdpa_with_bias(x: dict, chunk_size: int, left_chunks: int) -> torch.Tensor:
    from asr_kernels.reference import chunk_mask

    heads, batch, length, _ = x["q"].shape
    pos_scores = torch.matmul(x["q_pos"], x["pos_table"].transpose(-1, -2).unsqueeze(1))  # (H, N, T, 2T-1)
    rows = torch.arange(length, device=pos_scores.device)
    rows = (rows[None, :] - rows[:, None] + length - 1).expand(heads, batch, length, length)
    bias = torch.gather(pos_scores, -1, rows)
    bias = bias.masked_fill(x["padding"][None, :, None, :], float("-inf"))
    masked = chunk_mask(length, length, chunk_size, left_chunks, bias.device)
    if masked is not None:
        bias = bias.masked_fill(masked, float("-inf"))
    return torch.nn.functional.scaled_dot_product_attention(x["q"], x["k"], x["v"], attn_mask=bias, scale=1.0)


def _call(path: str, x: dict, chunk_size: int, left_chunks: int) -> torch.Tensor:
    from asr_kernels import rel_pos_attention as kernels
    from asr_kernels.reference import (
        key_bias_from_padding_mask,
        rel_pos_attention_reference,
        rel_pos_attention_weights_reference,
    )

    key_bias = key_bias_from_padding_mask(x["padding"])
    masks = dict(key_bias=key_bias, chunk_size=chunk_size, left_chunks=left_chunks)
    if path in ("triton", "triton_loop_pos"):  # the caller forces the loop around forward and backward
        return kernels.rel_pos_attention(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], **masks)
    if path == "reference":
        return rel_pos_attention_reference(x["q"], x["k"], x["v"], x["q_pos"], x["pos_table"], **masks)
    if path == "sdpa_bias":
        return _sdpa_with_bias(x, chunk_size, left_chunks)
    one_head = [x[name][:1] for name in ("q", "k", "q_pos", "pos_table")]
    if path == "triton_weights":
        return kernels.rel_pos_attention_weights(*one_head, **masks)
    return rel_pos_attention_weights_reference(*one_head, **masks)


def _measure(path: str, mode: str, x: dict, chunk_size: int, left_chunks: int, repeats: int) -> dict:
    names = ("q", "k", "q_pos", "pos_table") if path.endswith("weights") else ("q", "k", "v", "q_pos", "pos_table")
    grads = [x[name] for name in names]

    def run() -> None:
        with _positional_loop_forced() if path == "triton_loop_pos" else contextlib.nullcontext():
            if mode == "forward":
                with torch.no_grad():
                    _call(path, x, chunk_size, left_chunks)
            else:
                out = _call(path, x, chunk_size, left_chunks)
                torch.autograd.grad(out, grads, torch.ones_like(out))

    run()  # warm-up (and Triton compilation)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return {
        "status": "ok",
        "time_ms": 1e3 * statistics.median(times),
        "peak_mem_mb": (torch.cuda.max_memory_allocated() - baseline) / 2**20,
    }


def _check(x: dict, chunk_size: int, left_chunks: int) -> dict:
    """Max abs differences triton vs reference (outputs and weights; the forced loop's output too where
    the shape takes the window path) on the given inputs."""
    with torch.no_grad():
        reference = _call("reference", x, chunk_size, left_chunks).float()
        diffs = {
            "max_abs_diff_output": (_call("triton", x, chunk_size, left_chunks).float() - reference).abs().max(),
            "max_abs_diff_weights": (
                _call("triton_weights", x, chunk_size, left_chunks).float()
                - _call("reference_weights", x, chunk_size, left_chunks).float()
            )
            .abs()
            .max(),
        }
        if _takes_window_path(x["q_pos"].shape[-1]):
            with _positional_loop_forced():
                loop = _call("triton_loop_pos", x, chunk_size, left_chunks).float()
            diffs["max_abs_diff_output_loop_pos"] = (loop - reference).abs().max()
    return {name: float(diff) for name, diff in diffs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="attention.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "attention.json")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(DEFAULT_LENGTHS))
    parser.add_argument("--shapes", nargs="+", choices=tuple(SHAPES), default=["zipformer", "efficient-conformer"])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--chunk-size", type=int, default=-1, help="chunk mask (frames); -1 = full attention")
    parser.add_argument("--left-chunks", type=int, default=-1, help="left context in chunks; -1 = unlimited")
    parser.add_argument(
        "--loop-max-length",
        type=int,
        default=4096,
        help="longest T for triton_loop_pos (the P-step loop is slow at large P)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("attention.py: this benchmark needs a CUDA GPU (none found); nothing measured.")
        return 0
    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)

    checks, results = {}, []
    for shape in args.shapes:
        dims = SHAPES[shape]
        window_path = _takes_window_path(dims[2])
        x = _inputs(args.heads, args.batch, min(args.lengths), dims, dtype, device)
        checks[shape] = _check(x, args.chunk_size, args.left_chunks)
        del x
        print(f"{shape} (D, D_v, P) = {dims}: triton vs reference at T={min(args.lengths)}: {checks[shape]}")
        print(f"{'shape':<21}{'path':<18}{'mode':<17}{'T':>7}  {'time ms':>10}{'peak MB':>11}  status")
        out_of_memory = set()
        for length in sorted(args.lengths):
            x = _inputs(args.heads, args.batch, length, dims, dtype, device)
            for path in PATHS:
                if path == "triton_loop_pos" and not (window_path and length <= args.loop_max_length):
                    continue
                for mode in MODES:
                    row = {"shape": shape, "path": path, "mode": mode, "T": length}
                    if (path, mode) in out_of_memory:
                        row["status"] = "skipped: out of memory at a shorter T"
                    else:
                        try:
                            row.update(_measure(path, mode, x, args.chunk_size, args.left_chunks, args.repeats))
                        except torch.cuda.OutOfMemoryError:
                            out_of_memory.add((path, mode))
                            row["status"] = "out of memory"
                        torch.cuda.empty_cache()
                    results.append(row)
                    time_ms = f"{row['time_ms']:10.2f}" if "time_ms" in row else f"{'-':>10}"
                    peak = f"{row['peak_mem_mb']:11.1f}" if "peak_mem_mb" in row else f"{'-':>11}"
                    print(f"{shape:<21}{path:<18}{mode:<17}{length:>7}  {time_ms}{peak}  {row['status']}")
            del x

    summary = {}
    for shape in args.shapes:
        for length in sorted(args.lengths):
            for mode in MODES:
                rows = {
                    r["path"]: r
                    for r in results
                    if (r["shape"], r["T"], r["mode"]) == (shape, length, mode) and r["status"] == "ok"
                }
                if "triton" not in rows:
                    continue
                for other in ("triton_loop_pos", "reference", "sdpa_bias"):
                    if other in rows:
                        summary[f"{shape}_T{length}_{mode}_{other}_over_triton"] = {
                            "time": rows[other]["time_ms"] / rows["triton"]["time_ms"],
                            "memory": rows[other]["peak_mem_mb"] / max(rows["triton"]["peak_mem_mb"], 1e-6),
                        }
    for key, ratios in summary.items():
        print(f"{key}: time {ratios['time']:.2f}x, peak memory {ratios['memory']:.1f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name(),
        "dtype": args.dtype,
        "heads": args.heads,
        "batch": args.batch,
        "chunk_size": args.chunk_size,
        "left_chunks": args.left_chunks,
        "shapes": {shape: dict(zip(("head_dim", "value_dim", "pos_dim"), SHAPES[shape])) for shape in args.shapes},
        "check": checks,
        "results": results,
        "summary": summary,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
