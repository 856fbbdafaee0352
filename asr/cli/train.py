"""``asr train``: train a model from a preset plus command-line overrides.

Every field of :class:`asr.training.trainer.TrainConfig` is an option (``max_duration`` is
``--max-duration``); see :data:`DESCRIPTION`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

from asr.cli.common import make_parser, parse
from asr.models import HEADS
from asr.training.presets import PRESETS
from asr.training.trainer import TrainConfig, TrainState

REQUIRED = ("exp_dir", "train_cuts", "lang_dir")

DESCRIPTION = """Train a model (ScaledAdam + Eden; pruned RNN-T, CTC and/or attention-decoder heads).

A --preset gives starting values; the options given override them, and the defaults shown apply to
what neither sets. --print-config prints the resolved config as JSON and exits. A run resumes from
the newest checkpoint in --exp-dir. Under `torchrun --nproc_per_node N -m asr train ...` it trains
data-parallel (gloo on CPU, nccl on GPU)."""

# What an option means where its name does not say it; every option also shows its default.
HELP = {
    "exp_dir": "where checkpoints and tensorboard go; a run resumes from the newest checkpoint there",
    "train_cuts": "training CutSet (jsonl.gz)",
    "lang_dir": "tokenizer dir (bpe.model or tokens.txt)",
    "valid_cuts": "validation CutSet, scored after each epoch",
    "max_duration": "seconds of audio per batch, per process",
    "ref_duration": "icefall's batch-count normalisation: the model's schedules count batches as if each held "
    "this many seconds of audio",
    "schedule_speedup": "the model's regularisation schedules advance this many times faster than icefall's "
    "batch count",
    "warm_step": "batches of the warm-up of the loss weights",
    "amp": "auto (bf16 where the GPU has it, else fp16; off on CPU), bf16, fp16 or off",
    "max_minutes": "stop, after a checkpoint, when this much wall-clock time is spent",
    "max_batches": "stop, after a checkpoint, when this many batches are trained in total",
    "device": "auto (the process's GPU when there is one, else the CPU), cpu, cuda, cuda:N",
    "compile": "run the encoder through torch.compile (dynamic shapes, so batch lengths do not recompile; "
    "the first batches wait for the compilation; the Zipformer's randomly applied balancers and whitening "
    "split its training graph, so it gains less than the Conformer family)",
    "model_kwargs": "JSON object of AsrModel options (decoder_dim, joiner_dim, ...)",
    "encoder_kwargs": "JSON object of encoder config overrides",
    "noise_cuts": "CutSet of noise to mix into training cuts",
    "on_the_fly_feats": "compute fbank from audio for cuts without stored features (--no-on-the-fly-feats: "
    "every cut must have them)",
    "encoder": "encoder preset (zipformer-xs, conformer-small, ...)",
    "causal": "train a streaming model (random chunk size and left context per batch)",
    "lr_batches": "Eden's batch constant",
    "lr_epochs": "Eden's epoch constant",
    "warmup_batches": "batches of the linear learning-rate warm-up",
    "prune_range": "width of the pruned RNN-T band",
    "lm_scale": "smoothing of the simple RNN-T loss by the label-only part",
    "am_scale": "smoothing of the simple RNN-T loss by the audio-only part",
    "simple_loss_scale": "weight of the simple RNN-T loss after warm-up",
    "ctc_loss_scale": "weight of the CTC loss",
    "aed_loss_scale": "weight of the attention-decoder loss (icefall: 0.8 beside the transducer; without it "
    "CTC 0.1 and AED 0.9)",
    "save_every_n": "batches between checkpoints",
    "keep_last_k": "batch checkpoints kept",
    "keep_last_epochs": "epoch checkpoints kept, the newest (0: all)",
    "average_period": "batches between updates of the running model average",
    "log_interval": "batches between progress and tensorboard updates",
    "num_workers": "data-loader worker processes",
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("train", DESCRIPTION)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="starting values for the options below")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    # Every option defaults to None, meaning "not given": the preset's value, else the config's default,
    # which the help shows instead.
    types = typing.get_type_hints(TrainConfig)
    options = parser.add_argument_group("training options")
    for f in dataclasses.fields(TrainConfig):
        default = None if f.default is dataclasses.MISSING else f.default
        shown = " ".join(default) if isinstance(default, tuple) else default
        text = HELP.get(f.name, "")
        if f.name in REQUIRED:
            text += " (required)"
        elif default is not None:
            text += f" (default: {shown})"
        text = text.strip().replace("%", "%%")
        if f.name in ("model_kwargs", "encoder_kwargs"):
            options.add_argument(_flag(f.name), type=json.loads, default=None, help=HELP[f.name])
        elif f.name == "heads":
            options.add_argument("--heads", nargs="+", choices=HEADS, default=None, help=text)
        elif types[f.name] is bool:
            options.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = next((t for t in (int, float) if types[f.name] in (t, t | None)), str)
            options.add_argument(_flag(f.name), type=kind, default=None, help=text)
    # Shorthands that write into --model-kwargs / --encoder-kwargs (see RELAX_OPTIONS).
    options.add_argument(
        "--relax-cross",
        type=float,
        default=None,
        metavar="GAMMA",
        help="relaxed cross-attention of the attention decoder, training only (model_kwargs relax_cross)",
    )
    options.add_argument(
        "--relax-self",
        type=float,
        default=None,
        metavar="GAMMA",
        help="relaxed self-attention in the encoder, training only (encoder_kwargs relaxed_attention_gamma)",
    )
    return parser


# option -> (TrainConfig dict field, key in it)
RELAX_OPTIONS = {
    "relax_cross": ("model_kwargs", "relax_cross"),
    "relax_self": ("encoder_kwargs", "relaxed_attention_gamma"),
}


def resolve_config(args: argparse.Namespace, require_paths: bool = True) -> TrainConfig:
    """The preset overridden by the options given. Without ``require_paths`` (``--print-config``) the
    required paths may be missing and are left None."""
    values: dict[str, Any] = dict(PRESETS.get(args.preset, {}))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name)
        if given is not None:
            values[f.name] = given
    for option, (field_name, key) in RELAX_OPTIONS.items():
        gamma = getattr(args, option, None)
        if gamma is None:
            continue
        if not 0.0 <= gamma < 1.0:
            raise SystemExit(f"asr train: {_flag(option)} must be in [0, 1), got {gamma}")
        values[field_name] = {**values.get(field_name, {}), key: gamma}
    missing = [name for name in REQUIRED if name not in values]
    if missing and require_paths:
        raise SystemExit(f"asr train: missing required options: {' '.join(map(_flag, missing))}")
    return TrainConfig.from_dict({**dict.fromkeys(missing), **values})


def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    config = resolve_config(args, require_paths=not args.print_config)
    if args.print_config:
        print(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    from asr.data.training_data import TrainingDataError
    from asr.training.trainer import train

    try:
        state = train(config)
    except TrainingDataError as e:
        print(f"asr train: {e}", file=sys.stderr)
        return 1
    if state.epoch <= config.num_epochs:  # the time budget ran out first
        print(f"stopped in epoch {state.epoch} (time budget), {state.batch_idx_train} batches, {_skips(state)}")
    else:
        print(f"finished: epoch {state.epoch - 1}, {state.batch_idx_train} batches, {_skips(state)}")
    return 0


def _skips(state: TrainState) -> str:
    """The two kinds of skip, apart: a skipped cut is left out of its batch, a skipped batch is not trained on."""
    return (
        f"{state.skipped_batches} skipped batches (non-finite loss or gradients), "
        f"{state.skipped_cuts} skipped cuts (audio or features could not be loaded)"
    )
