"""``asr wer``: word (or character) error rate of hypotheses against references."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

from asr.cli.common import make_parser, parse
from asr.wer import (
    compute_wer,
    format_group_table,
    format_per_utterance,
    format_top_errors,
    read_text_file,
    wer_by_group,
    write_error_stats,
)


def main(argv: list[str] | None = None) -> int:
    parser = make_parser("wer", "Word error rate of hypotheses against references (kaldialign alignment).")
    parser.add_argument("ref", type=Path, help="reference text: lines '<id>\\t<text>' or '<id> <text>'")
    parser.add_argument("hyp", type=Path, help="hypothesis text, same format")
    parser.add_argument("--errs", type=Path, help="write the full per-utterance report here instead of stdout")
    parser.add_argument("--top", type=int, default=10, help="how many of the most frequent errors to list")
    parser.add_argument("--chars", action="store_true", help="score characters (CER), ignoring spaces")
    parser.add_argument(
        "--utt2spk", type=Path, help="Kaldi-style '<id> <speaker>' lines: also print the error rate of each speaker"
    )
    args = parse(parser, argv)

    try:
        refs, hyps = read_text_file(args.ref), read_text_file(args.hyp)
        utt2spk = read_text_file(args.utt2spk) if args.utt2spk is not None else None
    except (OSError, ValueError) as e:
        print(f"asr wer: {e}", file=sys.stderr)
        return 1
    if not refs:
        print(f"asr wer: {args.ref} holds no utterances", file=sys.stderr)
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute_wer(refs, hyps, unit="char" if args.chars else "word")
    for w in caught:
        print(f"asr wer: warning: {w.message}", file=sys.stderr)

    if args.errs is not None:
        write_error_stats(args.errs, result)
        print(f"per-utterance report written to {args.errs}")
    else:
        per_utt = format_per_utterance(result)
        if per_utt:
            print(per_utt)
    print(format_top_errors(result, top=args.top))
    print(f"{len(result.utterances)} utterances, {sum(u.errors > 0 for u in result.utterances)} with errors")
    if utt2spk is not None:
        print(format_group_table(wer_by_group(result, utt2spk)))
    print(result.summary_line())
    return 0
