"""``asr lm``: text for a token n-gram LM and its training.

``asr lm text --out OUT.txt.gz --exclude-cuts DEV.jsonl.gz TEST.jsonl.gz [--language en|cmn]`` writes
the sentence pool of the synthetic corpus minus every sentence spoken in the given cut sets (the
evaluation splits), one per line.

``asr lm train --lang-dir LANG --text TEXT[.gz] [--order N] [--min-counts 1 1 2 2] [--out FILE]``
tokenizes every line with the lang dir's tokenizer, estimates an interpolated modified Kneser-Ney
model (:class:`asr.models.lm.NgramLM`) and writes it as ARPA (default ``LANG/lm_{N}gram.arpa.gz``).
With ``--words`` (no lang dir) the model is over the text's words instead, for ``asr decode --word-lm``
(read back with :meth:`NgramLM.load_arpa_words`).
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from asr.data.sentences import load_chinese_sentences, load_sentences
from asr.data.tokenizer import cut_texts, load_tokenizer
from asr.models.lm import NgramLM

log = logging.getLogger("asr.lm")

# Keep 1- and 2-grams, drop singleton 3-grams and up. On the synth LM text (47k sentences, BPE 256) this
# makes the 4-gram 3x smaller (782k -> 259k n-grams, load 1.4 -> 0.5 s) for a dev perplexity of 15.5
# instead of 15.0.
DEFAULT_MIN_COUNT = 2


def default_min_counts(order: int) -> list[int]:
    """1 for unigrams and bigrams, :data:`DEFAULT_MIN_COUNT` for the higher orders."""
    return [1 if n <= 2 else DEFAULT_MIN_COUNT for n in range(1, order + 1)]


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def _read_lines(path: Path) -> Iterator[str]:
    with _open_text(path, "r") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line


def write_lm_text(out: Path, exclude_cuts: list[Path], language: str = "en") -> tuple[int, int]:
    """Write the sentence pool minus the texts of ``exclude_cuts``; returns (written, excluded)."""
    pool = load_chinese_sentences() if language == "cmn" else load_sentences()
    excluded_texts: set[str] = set()
    for path in exclude_cuts:
        if not path.is_file():
            raise FileNotFoundError(f"--exclude-cuts {path}: no such file")
        before = len(excluded_texts)
        excluded_texts.update(text.strip() for text in cut_texts(path))
        log.info("%s: %d distinct texts to exclude", path, len(excluded_texts) - before)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = excluded = 0
    with _open_text(out, "w") as f:
        for sentence in pool:
            if sentence in excluded_texts:
                excluded += 1
                continue
            f.write(sentence + "\n")
            written += 1
    return written, excluded


def train_lm(
    lang_dir: Path, text: Path, order: int, min_counts: list[int] | None = None, show_progress: bool = True
) -> NgramLM:
    """Tokenize ``text`` (one sentence a line) with ``lang_dir``'s tokenizer and estimate the model."""
    from tqdm import tqdm

    if not text.is_file():
        raise FileNotFoundError(f"--text {text}: no such file")
    tokenizer = load_tokenizer(lang_dir)
    lines = tqdm(_read_lines(text), desc=f"tokenizing {text.name}", unit=" lines", disable=not show_progress)
    sequences = [tokenizer.encode(line) for line in lines]
    if not sequences:
        raise ValueError(f"--text {text} holds no sentences")
    if tokenizer.num_unknown:
        log.warning("%d symbols of %s are not in the tokenizer and were mapped to <unk>", tokenizer.num_unknown, text)
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    return NgramLM.train(sequences, symbols, order=order, min_counts=min_counts)


def train_word_lm(text: Path, order: int, min_counts: list[int] | None = None) -> NgramLM:
    """An n-gram over the words of ``text`` (one sentence a line): its vocabulary is every word seen."""
    if not text.is_file():
        raise FileNotFoundError(f"--text {text}: no such file")
    sentences = [line.split() for line in _read_lines(text)]
    if not sentences:
        raise ValueError(f"--text {text} holds no sentences")
    vocabulary = sorted({word for words in sentences for word in words})
    symbols = ["<blk>", "<sos/eos>", "<unk>", *vocabulary]
    ids = {word: i for i, word in enumerate(symbols)}
    return NgramLM.train([[ids[w] for w in words] for words in sentences], symbols, order=order, min_counts=min_counts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr lm", description="Token n-gram language model: text and training.")
    commands = parser.add_subparsers(dest="command", required=True)
    text = commands.add_parser("text", help="write the LM text: the sentence pool minus the evaluation sentences")
    text.add_argument("--out", type=Path, required=True, help="output text, one sentence a line (.gz to compress)")
    text.add_argument("--exclude-cuts", type=Path, nargs="+", required=True,
                      help="cut sets (dev/test) whose supervision texts must not be in the LM text")
    text.add_argument("--language", choices=["en", "cmn"], default="en")
    train = commands.add_parser("train", help="train an n-gram LM on tokenized text and write ARPA")
    train.add_argument("--lang-dir", type=Path, default=None, help="the tokenizer's lang dir (not with --words)")
    train.add_argument("--words", action="store_true",
                       help="a model over the text's words (for asr decode --word-lm), not the tokenizer's ids")
    train.add_argument("--text", type=Path, required=True, help="one sentence a line (.gz read too)")
    train.add_argument("--order", type=int, default=4)
    train.add_argument("--min-counts", type=int, nargs="+", default=None,
                       help="per order, the raw count an n-gram needs to be kept (non-decreasing, first 1); "
                            f"default 1 for uni- and bigrams, {DEFAULT_MIN_COUNT} above")
    train.add_argument("--out", type=Path, default=None,
                       help="ARPA file (default LANG/lm_{N}gram.arpa.gz; required with --words)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.command == "text":
        try:
            written, excluded = write_lm_text(args.out, args.exclude_cuts, args.language)
        except FileNotFoundError as error:
            parser.error(str(error))
        print(f"wrote {written} sentences to {args.out}; excluded {excluded} evaluation sentences")
        return 0

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


if __name__ == "__main__":
    sys.exit(main())
