"""``asr export onnx``: write a Zipformer model as ONNX files that sherpa-onnx runs, and check them.

    asr export onnx --checkpoint exp/synth --out-dir exp/synth/onnx                      # offline
    asr export onnx --checkpoint exp/causal --out-dir onnx-stream --streaming --chunk-size 32 --int8

Transducers give ``encoder.onnx``, ``decoder.onnx``, ``joiner.onnx`` and ``tokens.txt`` (``--int8`` adds
``*.int8.onnx``); CTC (``--head ctc``) gives ``model.onnx`` and ``tokens.txt``. After writing, a random batch
runs through torch and onnxruntime, and the command fails (status 1, nothing left in ``--out-dir``) when they
differ by more than ``--tolerance``. Models or options that cannot export are refused before any file is written.
"""

from __future__ import annotations

import logging
import sys

from asr.cli.common import make_parser, parse

log = logging.getLogger("asr.export")


def build_parser():
    parser = make_parser("export onnx", __doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument(
        "--checkpoint", required=True, help="training or model checkpoint, or an experiment dir (its newest checkpoint)"
    )
    parser.add_argument("--out-dir", required=True, help="where the ONNX files and tokens.txt go")
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="the chunk-by-chunk encoder with its caches (sherpa-onnx OnlineRecognizer); needs a causal model",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="with --streaming: chunk in 50 Hz frames (32 = 640 ms; default: the model's)",
    )
    parser.add_argument(
        "--left-context-frames",
        type=int,
        default=None,
        help="with --streaming: left context in 50 Hz frames (default: the model's)",
    )
    parser.add_argument(
        "--head",
        choices=("transducer", "ctc"),
        default=None,
        help="which head to export (default: the transducer where the model has one)",
    )
    parser.add_argument("--int8", action="store_true", help="also write *.int8.onnx (dynamic int8 quantization)")
    parser.add_argument("--lang-dir", default=None, help="tokenizer dir (default: the one in the checkpoint)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="largest torch-vs-onnxruntime difference accepted, times max(1, largest output magnitude) (default: 1e-4)",
    )
    return parser


def onnx(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not args.streaming and (args.chunk_size is not None or args.left_context_frames is not None):
        parser.error("--chunk-size and --left-context-frames need --streaming")
    from asr.checkpoint import load_model
    from asr.export import ExportError, export_onnx
    from asr.export.onnx import DEFAULT_TOLERANCE

    try:
        model = load_model(args.checkpoint, "cpu", args.lang_dir)
    except (FileNotFoundError, ValueError) as error:
        print(f"asr export onnx: {error}", file=sys.stderr)
        return 1
    if model.tokenizer is None and args.lang_dir is None:
        print(f"asr export onnx: {args.checkpoint} holds no tokenizer; pass --lang-dir", file=sys.stderr)
        return 1
    try:
        result = export_onnx(
            model,
            args.out_dir,
            streaming=args.streaming,
            chunk_size=args.chunk_size,
            left_context_frames=args.left_context_frames,
            head=args.head,
            int8=args.int8,
            tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance,
        )
    except ExportError as error:
        print(f"asr export onnx: {error}", file=sys.stderr)
        return 1
    for path in result.files:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    print(
        "torch vs onnxruntime, max abs difference: "
        + ", ".join(f"{name} {value:.2g}" for name, value in result.max_abs_diff.items())
    )
    if result.int8_max_abs_diff:
        print(
            "torch vs int8 onnxruntime, max abs difference: "
            + ", ".join(f"{name} {value:.2g}" for name, value in result.int8_max_abs_diff.items())
        )
    return 0
