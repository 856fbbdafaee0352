"""Long audio through the offline Recognizer: peak memory and time for 1, 2, 5, 10 and 30 minutes.

Each length runs in a fresh subprocess (so peak RSS is that length's own), decoding one file of noise with a
non-causal ``zipformer-xs`` transducer (random weights: the cost is the architecture's) by greedy search.
The Recognizer cuts audio longer than ``--segment-seconds`` into overlapping segments decoded in padded
batches, so memory should stay flat and time grow linearly; ``--segment-seconds 0`` decodes in one
forward (what the toolkit did before), for comparison at the lengths that fit.

    .venv/bin/python tools/bench/long_audio.py [--minutes 1,2,5,10,30] [--threads 1]
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


def worker(minutes: float, segment_seconds: float, threads: int) -> dict:
    import numpy as np
    import torch

    from asr.data.tokenizer import CharTokenizer
    from asr.inference import Recognizer
    from asr.models import build_model

    torch.set_num_threads(threads)
    tokens = {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    torch.manual_seed(0)
    model = build_model("zipformer-xs", len(tokens), heads=("transducer",)).eval()
    model.tokenizer = CharTokenizer(tokens)
    samples = (0.05 * np.random.default_rng(0).standard_normal(int(minutes * 60 * 16000))).astype(np.float32)
    segment = segment_seconds if segment_seconds > 0 else minutes * 60 + 1
    recognizer = Recognizer(model, max_segment_seconds=segment, max_frames=30000)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    result = recognizer.transcribe(samples, 16000)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "minutes": minutes,
        "seconds": seconds,
        "rtf": seconds / (minutes * 60),
        "peak_rss_mb": peak / 1024,
        "growth_mb": (peak - baseline) / 1024,
        "tokens": len(result.token_ids),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", default="1,2,5,10,30")
    parser.add_argument("--segment-seconds", type=float, default=30.0, help="0: one forward over the whole file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("tools/bench/results/long_audio.json"))
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.segment_seconds, args.threads)))
        return
    rows = []
    print(f"{'minutes':>7} {'time s':>8} {'RTF':>6} {'peak RSS MB':>12} {'growth MB':>10}")
    for minutes in map(float, args.minutes.split(",")):
        command = [sys.executable, __file__, "--worker", str(minutes), "--segment-seconds", str(args.segment_seconds)]
        command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{minutes:>7g}  failed: {done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
            rows.append({"minutes": minutes, "failed": done.stderr[-500:]})
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        memory = f"{row['peak_rss_mb']:>12.0f} {row['growth_mb']:>10.0f}"
        print(f"{minutes:>7g} {row['seconds']:>8.1f} {row['rtf']:>6.3f} {memory}")
    result = {
        "machine": platform.processor() or platform.machine(),
        "model": "zipformer-xs, non-causal, random weights, greedy",
        "segment_seconds": args.segment_seconds,
        "threads": args.threads,
        "rows": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
