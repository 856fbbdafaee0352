"""The `asr` command line.

Each subcommand lives in its own module with a ``main(argv: list[str] | None) -> int | None``
that builds its own ``argparse`` parser (``prog="asr <name>"``). This file only dispatches, and
imports a subcommand's module only when that subcommand runs, so ``asr --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help); a dict value is a group of subcommands (`asr data synth`).
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "data": {
        "synth": ("asr.data.synth", "build the offline TTS speech corpus"),
        "prepare": ("asr.data.prepare", "make lhotse manifests of a corpus (librispeech, aishell, musan)"),
        "fbank": ("asr.data.features", "compute and store 80-dim fbank features for a CutSet"),
        "tokenizer": ("asr.data.tokenizer", "train a BPE model or build a character table"),
    },
    "train": ("asr.training.cli", "train a model (ScaledAdam + Eden; DDP under torchrun)"),
    "decode": ("asr.decode", "recognise audio files or a CutSet with a trained model"),
    "lm": ("asr.lm", "build LM text and train a token n-gram LM (for --lm shallow fusion in asr decode)"),
    "wer": ("asr.wer", "word error rate of hypotheses against references"),
}


def _usage(prog: str, table: dict) -> str:
    width = max(len(name) for name in table)
    lines = [f"usage: {prog} <command> [options]", "", "commands:"]
    for name, entry in table.items():
        text = entry[1] if isinstance(entry, tuple) else "{" + ",".join(entry) + "}"
        lines.append(f"  {name.ljust(width)}  {text}")
    lines += ["", f"Run `{prog} <command> --help` for a command's options."]
    return "\n".join(lines)


def _dispatch(prog: str, table: dict, argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(prog, table))
        return 0 if argv else 2
    if argv[0] == "--version" and prog == "asr":
        from asr import __version__

        print(f"asr {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in table:
        print(f"{prog}: unknown command {name!r}\n\n{_usage(prog, table)}", file=sys.stderr)
        return 2
    entry = table[name]
    if isinstance(entry, dict):
        return _dispatch(f"{prog} {name}", entry, rest)
    module = importlib.import_module(entry[0])
    result = module.main(rest)
    return int(result or 0)


def main(argv: list[str] | None = None) -> int:
    return _dispatch("asr", COMMANDS, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
