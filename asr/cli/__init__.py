"""The `asr` command line.

One module per command group under :mod:`asr.cli`, each thin over the library. A table entry names
``"module:function"``; the function takes ``argv`` and returns an exit status. Modules are imported only
when their command runs, so ``asr --help`` stays instant.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help); a dict value is a group of subcommands (`asr data synth`).
COMMANDS: dict[str, tuple[str, str] | dict[str, tuple[str, str]]] = {
    "data": {
        "synth": ("asr.cli.data:synth", "build the offline TTS speech corpus"),
        "prepare": ("asr.cli.data:prepare", "make lhotse manifests of a corpus (librispeech, aishell, musan)"),
        "fbank": ("asr.cli.data:fbank", "compute and store 80-dim fbank features for a CutSet"),
        "tokenizer": ("asr.cli.data:tokenizer", "train a BPE model or build a character table"),
        "real-speech": (
            "asr.cli.data:real_speech",
            "manifest of real recorded speech, for evaluation only",
        ),
    },
    "train": ("asr.cli.train:main", "train a model (ScaledAdam + Eden; DDP under torchrun)"),
    "decode": ("asr.cli.decode:main", "recognise audio files or a CutSet with a trained model"),
    "average": ("asr.cli.average:main", "average checkpoints into one model file"),
    "convert": {
        "icefall": ("asr.cli.convert:icefall", "convert an icefall Zipformer checkpoint into an asr model file"),
    },
    "lm": {
        "text": ("asr.cli.lm:text", "LM text: the sentence pool minus the evaluation sentences"),
        "train": ("asr.cli.lm:train", "train a token (or word) n-gram LM, written as ARPA"),
    },
    "wer": ("asr.cli.wer:main", "word error rate of hypotheses against references"),
    "serve": ("asr.cli.serve:main", "websocket server for streaming recognition, with a browser microphone page"),
    "client": ("asr.cli.client:main", "stream an audio file to an `asr serve` server and print its segments"),
    "export": {"onnx": ("asr.cli.export:onnx", "write a Zipformer model as ONNX files that sherpa-onnx runs")},
}


def resolve(entry: tuple[str, str]):
    """The function a table entry names."""
    module_name, _, function = entry[0].partition(":")
    return getattr(importlib.import_module(module_name), function)


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
    return int(resolve(entry)(rest) or 0)


# The shell's convention for a process ended by SIGINT (128 + 2), so scripts see the interruption.
INTERRUPTED_STATUS = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` names. Ctrl-C ends any command with one line on stderr and status 130:
    what the commands write is written atomically (or skipped on a rerun when complete), so a rerun
    resumes."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _dispatch("asr", COMMANDS, argv)
    except KeyboardInterrupt:
        command = " ".join(argv[:2] if argv and isinstance(COMMANDS.get(argv[0]), dict) else argv[:1])
        print(f"asr {command}: interrupted; rerun to resume", file=sys.stderr, flush=True)
        return INTERRUPTED_STATUS
