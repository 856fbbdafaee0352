"""``asr convert icefall``: an icefall Zipformer checkpoint as an asr model file.

``asr convert icefall IN.pt --out OUT.pt --encoder zipformer-medium [--causal] [--set KEY=V[,V..]]
[--lang-dir L] [--ignore PREFIX] [--trust-pickle]``

OUT is a model file (:func:`asr.checkpoint.save_model`) that ``asr decode --checkpoint OUT.pt`` and
``asr.load_model`` read: the encoder and the heads IN holds (transducer, CTC), their sizes read from the
tensors (:mod:`asr.models.icefall`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli.common import make_parser, parse

PROG = "asr convert icefall"


def parse_override(text: str) -> tuple[str, object]:
    """``key=1,2,3`` -> ``("key", (1, 2, 3))``; ``key=16`` -> ``("key", 16)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set needs KEY=VALUE, got {text!r}")
    try:
        numbers = tuple(int(v) for v in value.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--set {key}: expected integers, got {value!r}") from err
    return key, numbers if len(numbers) > 1 else numbers[0]


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(
        "convert icefall",
        "Convert an icefall Zipformer checkpoint (transducer and/or CTC) into an asr model file.\n\n"
        "IN is icefall's pretrained.pt or epoch-N.pt (a dict with a 'model' state dict, or the state dict\n"
        "itself; a DDP 'module.' prefix is removed). Every entry must fit the model: entries of modules asr has\n"
        "no counterpart for (icefall's attention_decoder.*) are an error unless dropped with --ignore.",
    )
    parser.add_argument("input", type=Path, metavar="IN", help="icefall checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument(
        "--encoder", required=True, metavar="NAME", help="the encoder preset IN was trained as, e.g. zipformer-medium"
    )
    parser.add_argument("--causal", action="store_true", help="IN is a streaming (causal) model")
    parser.add_argument(
        "--set",
        dest="overrides",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=V[,V..]",
        help="a preset field IN was trained with, e.g. num_encoder_layers=2,2,2,2,2,2 "
        "(icefall's --num-encoder-layers); repeat for more",
    )
    parser.add_argument(
        "--lang-dir",
        type=Path,
        default=None,
        metavar="L",
        help="the tokenizer (bpe.model or tokens.txt) to store in OUT; without it `asr decode` needs --lang-dir",
    )
    parser.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PREFIX",
        help="drop IN's entries under PREFIX (e.g. attention_decoder, or ctc_output to keep only "
        "the transducer); repeat for more",
    )
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow pickled Python objects in IN (icefall's training checkpoints hold some); "
        "unpickling runs code from the file",
    )
    return parser


def icefall(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    from asr.checkpoint import save_model
    from asr.models.icefall import convert_icefall, read_icefall_checkpoint

    try:
        state = read_icefall_checkpoint(args.input, args.trust_pickle)
        model = convert_icefall(state, args.encoder, args.causal, dict(args.overrides), args.ignore, str(args.input))
        extra: dict = {"converted_from": str(args.input)}
        if args.lang_dir is not None:
            extra["tokenizer"] = _tokenizer(args.lang_dir, model.vocab_size)
    except (FileNotFoundError, ValueError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library's message holds
        print(f"{PROG}: {message}", file=sys.stderr)
        return 1
    save_model(args.out, model, extra=extra)
    num_params = sum(p.numel() for p in model.parameters())
    tokenizer = (
        f"tokenizer from {args.lang_dir}"
        if args.lang_dir is not None
        else "no tokenizer stored: decode with `asr decode --lang-dir L`"
    )
    print(
        f"wrote {args.out}: {args.encoder} (causal={args.causal}), heads {'+'.join(model.heads)}, "
        f"vocab {model.vocab_size}, {num_params:,} parameters; {tokenizer}"
    )
    return 0


def _tokenizer(lang_dir: Path, vocab_size: int) -> dict[str, bytes]:
    """The tokenizer files of ``lang_dir``, checked to have the model's vocabulary size (a file whose
    tokenizer does not fit its model would fail only when loaded)."""
    from asr.checkpoint import tokenizer_files
    from asr.data.tokenizer import load_tokenizer

    if not lang_dir.is_dir():
        raise ValueError(f"--lang-dir {lang_dir}: no such directory")
    tokenizer = load_tokenizer(lang_dir)
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(
            f"--lang-dir {lang_dir}: the tokenizer has {tokenizer.vocab_size} symbols but the "
            f"checkpoint's vocabulary has {vocab_size}"
        )
    return tokenizer_files(lang_dir)
