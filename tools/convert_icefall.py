#!/usr/bin/env python3
"""Convert an icefall Zipformer checkpoint (transducer and/or CTC) into an asr checkpoint.

    python tools/convert_icefall.py IN.pt OUT.pt --encoder zipformer-medium [--causal]
        [--set num_encoder_layers=2,2,3,4,3,2 ...] [--trust-pickle]

IN is an icefall checkpoint: a dict with a ``model`` state dict (``encoder_embed.*``, ``encoder.*``,
``decoder.*``, ``joiner.*``, ``simple_am_proj.*``, ``simple_lm_proj.*``, ``ctc_output.*``; a DDP
``module.`` prefix is removed), or such a state dict itself. The encoder entries map 1:1 onto
``asr.encoders.build_encoder(NAME, causal)`` and are checked by loading them strictly. OUT is::

    {"encoder": NAME, "causal": bool, "encoder_overrides": {...},
     "encoder_state_dict": {...}, "icefall_other": {every other entry, unchanged}}

``--set`` changes preset fields for checkpoints trained with non-default sizes (icefall's
``--num-encoder-layers`` etc.); the overrides are stored so ``load_encoder`` rebuilds the same model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from asr.encoders import build_encoder, encoder_names

ENCODER_PREFIXES = ("encoder_embed.", "encoder.")


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


def load_icefall_state_dict(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The model state dict of an icefall checkpoint file."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # torch raises several types for non-tensor pickles
        hint = "" if trust_pickle else " (if it holds other Python objects and you trust it, add --trust-pickle)"
        raise ValueError(f"{path}: cannot read checkpoint: {err}{hint}") from err
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no 'model' state dict of tensors found")
    return {k.removeprefix("module."): v for k, v in state.items()}


def convert_state_dict(
    state: dict[str, torch.Tensor], encoder: str, causal: bool, overrides: dict | None = None, source: str = "input"
) -> dict:
    """Split an icefall state dict into our encoder state dict and the other entries (see module doc)."""
    overrides = dict(overrides or {})
    encoder_state = {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
    other = {k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)}
    if not encoder_state:
        raise ValueError(f"{source}: no encoder_embed.* / encoder.* entries")
    model = build_encoder(encoder, causal=causal, **overrides)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(encoder_state))
    unexpected = sorted(set(encoder_state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(encoder_state) if expected[k].shape != encoder_state[k].shape)
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        problems = [f"{name}: {show(keys)}" for name, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if keys]
        looks_causal = any(".causal_conv." in k for k in encoder_state)
        hint = " (a causal model: add --causal)" if looks_causal and not causal else ""
        raise ValueError(f"{source}: encoder entries do not fit {encoder} (causal={causal}){hint}; "
                         + "; ".join(problems))
    model.load_state_dict(encoder_state, strict=True)
    return {
        "encoder": encoder,
        "causal": causal,
        "encoder_overrides": overrides,
        "encoder_state_dict": model.state_dict(),
        "icefall_other": other,
    }


def load_encoder(converted: dict | str | Path) -> torch.nn.Module:
    """Rebuild the encoder of a converted checkpoint (a dict or a file), in eval mode."""
    if not isinstance(converted, dict):
        converted = torch.load(converted, map_location="cpu", weights_only=True)
    model = build_encoder(converted["encoder"], causal=converted["causal"], **converted.get("encoder_overrides", {}))
    model.load_state_dict(converted["encoder_state_dict"], strict=True)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="convert_icefall", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="icefall checkpoint (.pt)")
    parser.add_argument("output", type=Path, help="asr checkpoint to write")
    parser.add_argument("--encoder", required=True, choices=encoder_names())
    parser.add_argument("--causal", action="store_true", help="the checkpoint is a streaming (causal) model")
    parser.add_argument("--set", dest="overrides", type=parse_override, action="append", default=[],
                        metavar="KEY=V[,V...]", help="override a preset field, e.g. num_encoder_layers=2,2,2,2,2,2")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow arbitrary pickled objects in IN (full training checkpoints)")
    args = parser.parse_args(argv)
    try:
        state = load_icefall_state_dict(args.input, args.trust_pickle)
        converted = convert_state_dict(state, args.encoder, args.causal, dict(args.overrides), str(args.input))
    except ValueError as err:
        print(f"convert_icefall: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(converted, args.output)
    num_params = sum(v.numel() for v in converted["encoder_state_dict"].values())
    heads = sorted({k.split(".")[0] for k in converted["icefall_other"]})
    print(f"{args.output}: {args.encoder} (causal={args.causal}), {len(converted['encoder_state_dict'])} encoder "
          f"tensors, {num_params:,} parameters; kept for later: {', '.join(heads) or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
