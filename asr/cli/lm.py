"""``asr lm text`` and ``asr lm train``: LM text without the evaluation sentences, and an n-gram LM on it.

``asr lm text --out OUT.txt.gz --exclude-cuts DEV.jsonl.gz TEST.jsonl.gz [--language en|cmn]``
``asr lm train --lang-dir LANG --text TEXT[.gz] [--order N] [--min-counts 1 1 2 2] [--out FILE]``
(default ``LANG/lm_{N}gram.arpa.gz``); ``--words`` (no lang dir) models the text's words instead, for
``asr decode --word-lm``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from asr.cli.common import make_parser, parse


def text(argv: list[str] | None = None) -> int:
    parser = make_parser("lm text", "Write the LM text: the corpus's sentence pool minus the evaluation sentences.")
    parser.add_argument("--out", type=Path, required=True, help="output text, one sentence a line (.gz to compress)")
    parser.add_argument(
        "--exclude-cuts",
        type=Path,
        nargs="+",
        required=True,
        help="cut sets (dev/test) whose supervision texts must not be in the LM text",
    )
    parser.add_argument("--language", choices=["en", "cmn"], default="en")
    args = parse(parser, argv)
    from asr.lm.text import write_lm_text

    try:
        written, excluded = write_lm_text(args.out, args.exclude_cuts, args.language)
    except FileNotFoundError as error:
        parser.error(str(error))
    print(f"wrote {written} sentences to {args.out}; excluded {excluded} evaluation sentences")
    return 0


def train(argv: list[str] | None = None) -> int:
    from asr.lm.text import DEFAULT_MIN_COUNT

    parser = make_parser("lm train", "Train an n-gram LM (interpolated modified Kneser-Ney) and write it as ARPA.")
    parser.add_argument("--lang-dir", type=Path, default=None, help="the tokenizer's lang dir (not with --words)")
    parser.add_argument(
        "--words",
        action="store_true",
        help="a model over the text's words (for asr decode --word-lm), not the tokenizer's ids",
    )
    parser.add_argument("--text", type=Path, required=True, help="one sentence a line (.gz read too)")
    parser.add_argument("--order", type=int, default=4)
    parser.add_argument(
        "--min-counts",
        type=int,
        nargs="+",
        default=None,
        help="per order, the raw count an n-gram needs to be kept (non-decreasing, first 1); "
        f"default: 1 for uni- and bigrams, {DEFAULT_MIN_COUNT} above",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="ARPA file (default: LANG/lm_{N}gram.arpa.gz; required with --words)"
    )
    args = parse(parser, argv)
    from asr.lm.text import default_min_counts, train_lm, train_word_lm

    if args.order < 1:
        parser.error(f"--order must be >= 1, got {args.order}")
    if args.words and (args.out is None or args.lang_dir is not None):
        parser.error("--words needs --out and takes no --lang-dir")
    if not args.words and args.lang_dir is None:
        parser.error("--lang-dir is required (or --words for a word model)")
    min_counts = args.min_counts if args.min_counts is not None else default_min_counts(args.order)
    out = args.out or args.lang_dir / f"lm_{args.order}gram.arpa.gz"
    started = time.perf_counter()
    try:
        if args.words:
            model = train_word_lm(args.text, args.order, min_counts)
        else:
            model = train_lm(args.lang_dir, args.text, args.order, min_counts)
    except (FileNotFoundError, ValueError) as error:
        print(f"asr lm train: {error}", file=sys.stderr)
        return 1
    trained = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_arpa(out)
    print(
        f"wrote {out}: order {model.order}, n-grams per order {model.num_ngrams}, "
        f"trained in {trained - started:.1f} s, written in {time.perf_counter() - trained:.1f} s"
    )
    return 0
