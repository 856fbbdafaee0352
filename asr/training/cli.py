"""``asr train``: a preset plus command-line overrides, then :func:`asr.training.trainer.train`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from asr.training.trainer import TrainConfig

# Named starting points; any option given on the command line overrides the preset's value.
PRESETS: dict[str, dict[str, Any]] = {
    # The offline recipe on 2 CPU cores: a few-million-parameter Zipformer, short schedule. Measured on
    # the synth corpus (README): smaller batches learn more per second of audio (50 s beat 100 s; 30 s
    # beat 50 s by 1.1 WER at equal audio, with lr_batches and warmup_batches scaled by 50/30 so the
    # schedules follow the audio seen); the model's regularisation schedules (layer skipping, dropout,
    # balancers), which icefall spreads over ~10^5 batches, reach their final values within 170 batches
    # (ref_duration 0.25 counts each 30 s batch as 120), and SpecAugment is off: a run of minutes is far
    # from overfitting, and both halved the batches the transducer spends on the label prior before it
    # uses the audio.
    "synth-cpu": {
        "encoder": "zipformer-xs", "max_duration": 30.0, "num_epochs": 30, "base_lr": 0.045,
        "lr_batches": 2500.0, "lr_epochs": 2.0, "warmup_batches": 333.0, "warm_step": 500,
        "ref_duration": 0.25, "spec_augment": False, "save_every_n": 100, "average_period": 20,
        "num_workers": 1, "keep_last_k": 8,  # the recipe decodes the model averaged over the last 500 batches
    },
    # icefall's LibriSpeech Zipformer recipe (per-GPU max duration 1000 s).
    "librispeech": {"encoder": "zipformer-medium", "max_duration": 1000.0, "num_epochs": 30, "base_lr": 0.045},
    # icefall's AISHELL Zipformer recipe (characters).
    "aishell": {
        "encoder": "zipformer-medium", "max_duration": 1000.0, "num_epochs": 30, "base_lr": 0.045, "lr_epochs": 1.5,
    },
}

_REQUIRED = ("exp_dir", "train_cuts", "lang_dir")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asr train",
        description="Train a model. Under `torchrun --nproc_per_node N -m asr train ...` it trains data-parallel.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="starting values for the options below")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for f in dataclasses.fields(TrainConfig):
        default = None if f.default is dataclasses.MISSING else f.default
        if f.name in ("model_kwargs", "encoder_kwargs"):
            parser.add_argument(_flag(f.name), type=json.loads, default=None, help=f"JSON object ({f.name})")
        elif f.name == "heads":
            parser.add_argument("--heads", nargs="+", choices=("transducer", "ctc"), default=None)
        elif isinstance(default, bool):
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if f.name in ("max_minutes",):
                kind = float
            parser.add_argument(_flag(f.name), type=kind, default=None, required=False,
                                help=f"(default: {default})" if f.name not in _REQUIRED else "(required)")
    return parser


def resolve_config(args: argparse.Namespace, require_paths: bool = True) -> TrainConfig:
    """The preset overridden by the options given. Without ``require_paths`` (``--print-config``) the
    required paths may be missing and are left None."""
    values: dict[str, Any] = dict(PRESETS.get(args.preset, {}))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
    missing = [name for name in _REQUIRED if name not in values]
    if missing and require_paths:
        raise SystemExit(f"asr train: missing required options: {' '.join(map(_flag, missing))}")
    return TrainConfig.from_dict({**dict.fromkeys(missing), **values})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args, require_paths=not args.print_config)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from asr.training.trainer import TrainingDataError, train

    try:
        state = train(config)
    except TrainingDataError as e:
        print(f"asr train: {e}", file=sys.stderr)
        return 1
    if state.epoch <= config.num_epochs:  # the time budget ran out first
        print(f"stopped in epoch {state.epoch} (time budget), {state.batch_idx_train} batches, "
              f"{state.skipped_batches} skipped")
    else:
        print(f"finished: epoch {state.epoch - 1}, {state.batch_idx_train} batches, {state.skipped_batches} skipped")
    return 0
