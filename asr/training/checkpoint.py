"""Checkpoints: atomic writes, exact resume, averaging.

A checkpoint is one ``torch.save`` dict. Writing goes to a temporary file in the same directory,
is flushed to disk, then renamed over the target, so a run killed mid-write leaves either the old
checkpoint or the new one, never a torn file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from asr.io import save_atomic

__all__ = ["save_atomic", "load", "batch_checkpoints", "epoch_checkpoints", "newest_checkpoint",
           "checkpoint_batch", "checkpoint_near_batch", "remove_old_batch_checkpoints", "average_state_dicts"]


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict; a clear error names a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises several types for a torn or foreign file
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e


_BATCH_CKPT = re.compile(r"^checkpoint-(\d+)\.pt$")
_EPOCH_CKPT = re.compile(r"^epoch-(\d+)\.pt$")


def batch_checkpoints(exp_dir: str | Path) -> list[Path]:
    """``checkpoint-<batch>.pt`` files in ``exp_dir``, oldest batch first."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("checkpoint-*.pt") if (m := _BATCH_CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def epoch_checkpoints(exp_dir: str | Path) -> list[Path]:
    """``epoch-<n>.pt`` files in ``exp_dir``, first epoch first."""
    found = [(int(m.group(1)), p) for p in Path(exp_dir).glob("epoch-*.pt") if (m := _EPOCH_CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def newest_checkpoint(exp_dir: str | Path) -> Path | None:
    """The checkpoint in ``exp_dir`` furthest into training (batch or epoch checkpoint), or None.

    A batch checkpoint's name gives its batch; only the last epoch checkpoint is opened to read its own.
    """
    batches, epochs = batch_checkpoints(exp_dir), epoch_checkpoints(exp_dir)
    if not epochs:
        return batches[-1] if batches else None
    if not batches:
        return epochs[-1]
    last_batch = int(_BATCH_CKPT.match(batches[-1].name).group(1))
    epoch_batch = load(epochs[-1])["state"]["batch_idx_train"]
    return epochs[-1] if epoch_batch >= last_batch else batches[-1]


def checkpoint_batch(path: str | Path) -> int:
    """The number of batches trained on when ``path`` was written: from a batch checkpoint's name, else
    read from the file (memory-mapped, so an epoch checkpoint's tensors are not read)."""
    path = Path(path)
    match = _BATCH_CKPT.match(path.name)
    if match:
        return int(match.group(1))
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["state"]["batch_idx_train"])
    except Exception as e:
        raise ValueError(f"cannot read the batch count of checkpoint {path}: {e}") from e


def checkpoint_near_batch(exp_dir: str | Path, target: int, before: int) -> Path | None:
    """The batch or epoch checkpoint in ``exp_dir`` written nearest to batch ``target`` among those
    written before batch ``before`` (the later one on a tie), or None if there is none."""
    candidates = [(checkpoint_batch(p), p) for p in batch_checkpoints(exp_dir) + epoch_checkpoints(exp_dir)]
    candidates = [(b, p) for b, p in candidates if b < before]
    if not candidates:
        return None
    return min(candidates, key=lambda bp: (abs(bp[0] - target), -bp[0]))[1]


def remove_old_batch_checkpoints(exp_dir: str | Path, keep_last: int) -> None:
    for path in batch_checkpoints(exp_dir)[:-keep_last] if keep_last > 0 else []:
        path.unlink(missing_ok=True)


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; other tensors (counters, int buffers) from the last."""
    if not state_dicts:
        raise ValueError("no state dicts to average")
    keys = state_dicts[-1].keys()
    for i, sd in enumerate(state_dicts):
        if sd.keys() != keys:
            raise ValueError(f"state dict {i} has different keys from the last one")
    out = {}
    for key, last in state_dicts[-1].items():
        if last.is_floating_point():
            total = torch.zeros_like(last, dtype=torch.float64)
            for sd in state_dicts:
                total += sd[key].to(torch.float64)
            out[key] = (total / len(state_dicts)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out
