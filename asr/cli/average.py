"""``asr average``: the element-wise mean of several checkpoints' models, as one model file.

    asr average --out OUT.pt exp/epoch-8.pt exp/epoch-9.pt exp/epoch-10.pt
    asr average --out OUT.pt --exp-dir exp --last 3      # the 3 newest epoch checkpoints

This is icefall's ``--avg N`` without the running model average (``asr decode --average-batches`` uses
that one). The output keeps the tokenizer of the last input, so ``asr decode --checkpoint OUT.pt`` and
``asr.load_model("OUT.pt")`` read it like any other checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

from asr.cli.common import make_parser, parse


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("average", __doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("checkpoints", nargs="*", type=Path, help="training checkpoints or model files")
    parser.add_argument("--out", type=Path, required=True, help="the model file to write")
    parser.add_argument("--exp-dir", type=Path, help="take the newest --last epoch checkpoints from here")
    parser.add_argument("--last", type=int, default=None, help="with --exp-dir: how many epoch checkpoints")
    args = parse(parser, argv)
    from asr import checkpoint as ckpt

    paths = list(args.checkpoints)
    if args.exp_dir is not None:
        if args.last is None or args.last < 1:
            parser.error("--exp-dir needs --last N (N >= 1)")
        epochs = ckpt.epoch_checkpoints(args.exp_dir)
        if len(epochs) < args.last:
            parser.error(f"{args.exp_dir} has {len(epochs)} epoch checkpoints, fewer than --last {args.last}")
        paths += epochs[-args.last :]
    if not paths:
        parser.error("give checkpoints, or --exp-dir with --last")
    try:
        out = ckpt.average_checkpoints(paths, args.out)
    except (ValueError, FileNotFoundError) as e:
        print(f"asr average: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: the mean of {len(paths)} checkpoints")
    return 0
