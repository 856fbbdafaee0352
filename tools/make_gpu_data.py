#!/usr/bin/env python3
"""Make the small data folder that ``tools/gpu_checks.sh`` reads, from the synth recipe's output.

A lent GPU machine receives only tens of MB, so this takes the first utterances of the train and test
cuts (features copied into new archives), the tokenizer and LM, and a training checkpoint slimmed to
what decoding reads (no optimizer state, no running average):

    python tools/make_gpu_data.py data/synth40k exp/checkpoint-16396.pt .gpu --train 600 --test 200

Output: ``OUT/data/cuts_{train,test}.jsonl.gz`` (+ features), ``OUT/lang/{bpe.model,tokens.txt}`` (and
``lm_4gram.arpa.gz`` where the recipe built one) and ``OUT/model.pt``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from lhotse import CutSet, LilcomChunkyWriter

from asr import checkpoint as ckpt

# What a checkpoint needs to be decoded (asr decode / load_model); the rest is for resuming training.
DECODE_KEYS = ("format", "config", "build_config", "model", "tokenizer")
LANG_FILES = ("bpe.model", "tokens.txt")
LM_FILE = "lm_4gram.arpa.gz"  # only gpu_checks.sh's beam-lm step reads it


def subset_cuts(manifest: Path, num_cuts: int, out_dir: Path, name: str) -> int:
    """Copy the first ``num_cuts`` cuts of ``manifest`` with their features; returns how many were copied."""
    cuts = CutSet.from_file(manifest).subset(first=num_cuts)
    with LilcomChunkyWriter(out_dir / f"feats_{name}") as writer:
        copied = cuts.copy_feats(writer, output_path=out_dir / f"cuts_{name}.jsonl.gz")
    return len(copied.to_eager())


def slim_checkpoint(src: Path, dst: Path) -> Path:
    state = ckpt.load(src)
    missing = [k for k in ("model", "build_config") if k not in state]
    if missing:
        raise ValueError(f"{src} is not a training checkpoint: no {', '.join(missing)}")
    return ckpt.save_atomic({k: state[k] for k in DECODE_KEYS if k in state}, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe_dir", type=Path, help="the synth recipe's data folder, e.g. data/synth40k")
    parser.add_argument("checkpoint", type=Path, help="a training checkpoint of a model trained on it")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=600, help="train utterances (default 600)")
    parser.add_argument("--test", type=int, default=200, help="test utterances (default 200)")
    parser.add_argument("--lang-dir", type=Path, help="default: RECIPE_DIR/lang_bpe_256")
    args = parser.parse_args(argv)

    lang_dir = args.lang_dir or args.recipe_dir / "lang_bpe_256"
    sources = {
        "train": args.recipe_dir / "fbank/synth_cuts_train.jsonl.gz",
        "test": args.recipe_dir / "fbank/synth_cuts_test.jsonl.gz",
    }
    needed = [*sources.values(), args.checkpoint, *(lang_dir / f for f in LANG_FILES)]
    absent = [str(p) for p in needed if not p.is_file()]
    if absent:
        print(f"error: missing {', '.join(absent)}", file=sys.stderr)
        return 1

    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "data").mkdir(parents=True)
    (args.out / "lang").mkdir()
    for name, num_cuts in (("train", args.train), ("test", args.test)):
        copied = subset_cuts(sources[name], num_cuts, args.out / "data", name)
        print(f"{name}: {copied} cuts")
    for f in LANG_FILES:
        shutil.copy2(lang_dir / f, args.out / "lang" / f)
    if (lang_dir / LM_FILE).is_file():
        shutil.copy2(lang_dir / LM_FILE, args.out / "lang" / LM_FILE)
    else:
        print(f"note: no {lang_dir / LM_FILE}: the beam-lm step of gpu_checks.sh will fail", file=sys.stderr)
    slim_checkpoint(args.checkpoint, args.out / "model.pt")
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{args.out}: {size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
