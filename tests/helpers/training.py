"""The tiny ``asr train`` run that several test modules train on."""

from __future__ import annotations

from pathlib import Path


def train_argv(corpus: dict[str, Path], exp_dir: Path, *extra: str) -> list[str]:
    """``asr train`` arguments: one epoch of a one-layer-per-stack Zipformer, a checkpoint every 2 batches."""
    return [
        "train",
        "--preset",
        "synth-cpu",
        "--train-cuts",
        str(corpus["train"]),
        "--lang-dir",
        str(corpus["lang"]),
        "--exp-dir",
        str(exp_dir),
        "--encoder-kwargs",
        '{"num_encoder_layers": [1, 1, 1, 1, 1, 1]}',
        "--max-duration",
        "12",
        "--num-epochs",
        "1",
        "--num-workers",
        "0",
        "--save-every-n",
        "2",
        "--keep-last-k",
        "100",
        "--average-period",
        "1",
        "--log-interval",
        "1",
        *extra,
    ]
