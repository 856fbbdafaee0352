#!/usr/bin/env python3
"""WER against training time: decode checkpoints of an ``asr train`` run on a CutSet.

    python tools/training_curve.py --exp-dir exp/synth --cuts data/synth/fbank/synth_cuts_test.jsonl.gz \
        [--batches 500 1000 1500] [--every 500] [--json curve.json] \
        [--method modified_beam_search --beam 8 --lm LANG/lm_4gram.arpa.gz --lm-scale 0.5 --lm-bonus 1.5]
        [--average-batches N]

For each chosen ``checkpoint-<batch>.pt`` it prints the batch, the epoch, the wall-clock minutes since the
run started (the checkpoint file's time against the creation time in the first tensorboard event file's
name, so a resumed run counts the pause too) and the WER of greedy search (or ``--method``). The minutes are
those of the machine and load the run had; report them with that.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from asr import checkpoint as ckpt
from asr.checkpoint import load_model
from asr.decoding import TokenLmScorer
from asr.inference import DecodingOptions, Recognizer, utterances_from_cuts
from asr.lm import NgramLM
from asr.wer import compute_wer


def run_start(exp_dir: Path) -> float:
    """Seconds since the epoch at which the run wrote its first tensorboard event file."""
    stamps = []
    for path in (exp_dir / "tensorboard").glob("events.out.tfevents.*"):
        match = re.match(r"events\.out\.tfevents\.(\d+)\.", path.name)
        if match:
            stamps.append(int(match.group(1)))
    if not stamps:
        raise SystemExit(f"training_curve.py: no tensorboard event file under {exp_dir / 'tensorboard'}")
    return float(min(stamps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exp-dir", required=True, type=Path)
    parser.add_argument("--cuts", required=True)
    parser.add_argument("--batches", type=int, nargs="*", default=None, help="checkpoints to decode (batch numbers)")
    parser.add_argument("--every", type=int, default=None, help="decode every checkpoint whose batch is a multiple")
    parser.add_argument(
        "--epochs", action="store_true", help="decode the epoch-<n>.pt checkpoints instead (they outlive --keep-last-k)"
    )
    parser.add_argument("--method", default="greedy")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lm", default=None, help="ARPA token LM for shallow fusion (modified_beam_search)")
    parser.add_argument("--lm-scale", type=float, default=0.5)
    parser.add_argument("--lm-bonus", type=float, default=1.5)
    parser.add_argument(
        "--average-batches",
        type=int,
        default=None,
        help="decode each checkpoint's model averaged over about this many batches before it "
        "(asr decode --average-batches); checkpoints with none earlier are left out",
    )
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    if args.epochs:
        available = {ckpt.load(p)["state"]["batch_idx_train"]: p for p in ckpt.epoch_checkpoints(args.exp_dir)}
    else:
        available = {int(p.stem.split("-")[1]): p for p in ckpt.batch_checkpoints(args.exp_dir)}
    if not available:
        kind = "epoch-<n>.pt" if args.epochs else "checkpoint-<batch>.pt"
        raise SystemExit(f"training_curve.py: no {kind} in {args.exp_dir}")
    chosen = sorted(available)
    if args.batches:
        missing = sorted(set(args.batches) - set(available))
        if missing:
            raise SystemExit(f"training_curve.py: no checkpoint for batches {missing} in {args.exp_dir}")
        chosen = sorted(args.batches)
    elif args.every:
        chosen = [b for b in chosen if b % args.every == 0]
    start = run_start(args.exp_dir)

    if args.lm is not None and args.method != "modified_beam_search":
        parser.error("--lm needs --method modified_beam_search")
    lm = None
    rows = []
    print(f"{'batch':>6} {'epoch':>5} {'minutes':>7}  WER")
    for batch in chosen:
        path = available[batch]
        epoch = ckpt.load(path)["state"]["epoch"]
        try:
            model = load_model(path, average_batches=args.average_batches)
            tokenizer = model.tokenizer
        except ValueError as error:  # nothing earlier to average from
            print(f"{batch:>6} {epoch:>5}  left out: {error}", flush=True)
            continue
        model.eval()
        if args.lm is not None and lm is None:  # every checkpoint of a run has the same tokenizer
            lm = NgramLM.load_arpa(args.lm, [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)])
        scorers = [TokenLmScorer(lm, args.lm_scale, args.lm_bonus)] if lm is not None else []
        recognizer = Recognizer(model, DecodingOptions(method=args.method, beam=args.beam), scorers=scorers)
        errors: list[str] = []
        result = recognizer.decode(utterances_from_cuts(args.cuts, errors), errors)
        wer = compute_wer(result.references, result.hypotheses)
        minutes = (path.stat().st_mtime - start) / 60
        rows.append(
            {
                "batch": batch,
                "epoch": epoch,
                "minutes": round(minutes, 1),
                "wer": wer.wer,
                "errors": wer.errors,
                "words": wer.ref_words,
            }
        )
        print(f"{batch:>6} {epoch:>5} {minutes:>7.1f}  {wer.summary_line()}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "exp_dir": str(args.exp_dir),
                    "cuts": args.cuts,
                    "method": args.method,
                    "beam": args.beam,
                    "lm": args.lm,
                    "lm_scale": args.lm_scale,
                    "lm_bonus": args.lm_bonus,
                    "average_batches": args.average_batches,
                    "rows": rows,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
