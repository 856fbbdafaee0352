#!/usr/bin/env python3
"""Average the weights of several training checkpoints (icefall's ``--avg N`` without a model average).

    python tools/average_checkpoints.py OUT.pt exp/epoch-8.pt exp/epoch-9.pt exp/epoch-10.pt
    python tools/average_checkpoints.py OUT.pt --exp-dir exp --last 3      # the 3 newest epoch checkpoints

The output is a training checkpoint whose model is the element-wise mean of the inputs' models (the last
input supplies everything else), so ``asr decode --checkpoint OUT.pt`` reads it like any other.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.training import checkpoint as ckpt


def average_checkpoints(paths: list[Path], out: Path) -> Path:
    if not paths:
        raise ValueError("no checkpoints to average")
    loaded = [ckpt.load(p) for p in paths]
    configs = {repr(c.get("build_config")) for c in loaded}
    if len(configs) != 1:
        raise ValueError("the checkpoints were trained with different model configurations")
    averaged = dict(loaded[-1])
    averaged["model"] = ckpt.average_state_dicts([c["model"] for c in loaded])
    averaged["averaged_from"] = [str(p) for p in paths]
    return ckpt.save_atomic(averaged, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--exp-dir", type=Path, help="take the newest --last epoch checkpoints from here")
    parser.add_argument("--last", type=int, default=None)
    args = parser.parse_args(argv)
    paths = list(args.checkpoints)
    if args.exp_dir is not None:
        if args.last is None or args.last < 1:
            parser.error("--exp-dir needs --last N (N >= 1)")
        epochs = ckpt.epoch_checkpoints(args.exp_dir)
        if len(epochs) < args.last:
            parser.error(f"{args.exp_dir} has {len(epochs)} epoch checkpoints, fewer than --last {args.last}")
        paths += epochs[-args.last:]
    try:
        out = average_checkpoints(paths, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"average_checkpoints: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: the mean of {len(paths)} checkpoints")
    return 0


if __name__ == "__main__":
    sys.exit(main())
