"""Checkpoints: one module for every model file the toolkit writes or reads.

Two kinds, told apart by their ``"format"`` key, both plain ``torch.save`` dicts with a ``"version"``:

- ``"asr-train"`` (``asr train``: ``EXP/checkpoint-<batch>.pt``, ``EXP/epoch-<n>.pt``): ``build_config``,
  ``model``, ``model_avg`` (the running average since batch 0), optimizer, scheduler, grad scaler,
  ``state`` (position in training), RNG states, the training ``config`` and the ``tokenizer`` files;
- ``"asr-model"`` (:func:`save_model`; ``asr average``, ``asr convert icefall``): ``config`` (the build
  config), ``state_dict`` and ``extra`` (plain data; ``extra["tokenizer"]`` holds the tokenizer files).

:func:`load_model` reads either (a directory means its newest checkpoint) and returns the model in eval
mode with its tokenizer; a file that cannot be one (torn, a text file, a TorchScript archive) raises
:class:`CheckpointError` naming it, and a directory whose newest checkpoint is torn falls back to the
newest intact one with a warning naming the skipped file. Every write is atomic: a temporary file in the
same directory, flushed to disk, then renamed over the target, so a process killed mid-write leaves the
old file or the new one.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("asr.checkpoint")

TRAIN_FORMAT = "asr-train"
MODEL_FORMAT = "asr-model"
VERSION = 1
TOKENIZER_FILES = ("bpe.model", "tokens.txt")

__all__ = [
    "CheckpointError",
    "MODEL_FORMAT",
    "TRAIN_FORMAT",
    "average_checkpoints",
    "average_state_dicts",
    "averaged_state_dict",
    "batch_checkpoints",
    "checkpoint_batch",
    "checkpoint_near_batch",
    "epoch_checkpoints",
    "load",
    "load_model",
    "newest_checkpoint",
    "newest_readable_checkpoint",
    "open_checkpoint",
    "read_checkpoint",
    "remove_old_batch_checkpoints",
    "remove_old_epoch_checkpoints",
    "resolve",
    "save_atomic",
    "save_model",
    "tokenizer_files",
]


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what it is instead."""

    def __init__(self, path: str | os.PathLike, reason: str):
        """The message is ``"PATH: reason"``, or ``reason`` itself where it already starts with the path."""
        super().__init__(reason if reason.startswith(str(path)) else f"{path}: {reason}")
        self.path = Path(path)


# ---- files -------------------------------------------------------------------------------------------
def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, all or nothing (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict:
    """The object stored in ``path`` by ``torch.save``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: ``path`` is empty, torn, a text file, a TorchScript archive or otherwise not
            a ``torch.save`` file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_torch_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:  # torch raises several types for a torn or foreign file
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(
            path, f"not a readable checkpoint (torn, or not written by torch.save): {first_line}"
        ) from e


_ZIP_MAGIC = b"PK\x03\x04"


def _check_torch_file(path: Path) -> None:
    """Tell the common wrong files apart before torch.load, whose errors for them are cryptic."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise CheckpointError(path, "empty file (0 bytes)")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(path, "truncated or corrupt checkpoint (its zip archive has no end record)")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        # torch.jit.save archives carry the model's code and constants; torch.save archives do not.
        if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
            raise CheckpointError(
                path, "a TorchScript archive (torch.jit.save), not a checkpoint of asr train, asr average or save_model"
            )
        return
    try:
        # Incremental, so that a character cut at the 512th byte is not mistaken for binary.
        text = codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return  # binary: perhaps a checkpoint in torch's legacy format; torch.load decides
    if all(c.isprintable() or c.isspace() for c in text):
        raise CheckpointError(path, "a text file, not a checkpoint")


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw dict of a training or model checkpoint, checked for its format and version."""
    checkpoint = load(path, map_location)
    kind = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if kind not in (TRAIN_FORMAT, MODEL_FORMAT):
        raise CheckpointError(
            path, f"{path} is not an asr model checkpoint (no format={MODEL_FORMAT!r} or {TRAIN_FORMAT!r})"
        )
    if checkpoint.get("version", VERSION) != VERSION:
        raise CheckpointError(path, f"checkpoint version {checkpoint.get('version')} is not supported")
    return checkpoint


# ---- the checkpoints of a run ------------------------------------------------------------------------
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
    return _newest_of(batch_checkpoints(exp_dir), epoch_checkpoints(exp_dir))


def _newest_of(batches: list[Path], epochs: list[Path]) -> Path | None:
    if not epochs:
        return batches[-1] if batches else None
    if not batches:
        return epochs[-1]
    last_batch = int(_BATCH_CKPT.match(batches[-1].name).group(1))
    return epochs[-1] if checkpoint_batch(epochs[-1]) >= last_batch else batches[-1]


def checkpoint_batch(path: str | Path) -> int:
    """The number of batches trained on when ``path`` was written: from a batch checkpoint's name, else
    read from the file (memory-mapped, so an epoch checkpoint's tensors are not read)."""
    path = Path(path)
    match = _BATCH_CKPT.match(path.name)
    if match:
        return int(match.group(1))
    checkpoint = load(path, mmap=True)
    try:
        return int(checkpoint["state"]["batch_idx_train"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(path, f"holds no batch count of a training run ({type(e).__name__}: {e})") from e


def newest_readable_checkpoint(exp_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of ``exp_dir`` (see :func:`newest_checkpoint`) that reads as an asr
    checkpoint, and its dict; None when the directory holds no checkpoint file.

    A torn newer file (a copy cut short, a full disk) is skipped with a warning naming it, and the next
    newest is tried. Raises :class:`CheckpointError` when every checkpoint file is unreadable.
    """
    batches, epochs = batch_checkpoints(exp_dir), epoch_checkpoints(exp_dir)
    skipped: list[Path] = []
    while batches or epochs:
        try:
            path = _newest_of(batches, epochs)
            checkpoint = read_checkpoint(path)
        except CheckpointError as error:
            log.warning("skipping %s", error)
            skipped.append(error.path)
            batches = [p for p in batches if p != error.path]
            epochs = [p for p in epochs if p != error.path]
            continue
        if skipped:
            log.warning(
                "using %s, the newest intact checkpoint in %s (skipped %s)",
                path.name,
                exp_dir,
                ", ".join(p.name for p in skipped),
            )
        return path, checkpoint
    if skipped:
        raise CheckpointError(exp_dir, f"none of its {len(skipped)} checkpoint files is readable")
    return None


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


def open_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """(the file, its dict) of a checkpoint file or of an experiment directory's newest readable one."""
    path = Path(path)
    if path.is_dir():
        found = newest_readable_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no checkpoint-*.pt or epoch-*.pt in {path}")
        log.info("using %s", found[0])
        return found
    return path, read_checkpoint(path)


def remove_old_epoch_checkpoints(exp_dir: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` ``epoch-<n>.pt`` of ``exp_dir``; 0 (or less) keeps them all."""
    for path in epoch_checkpoints(exp_dir)[:-keep_last] if keep_last > 0 else []:
        path.unlink(missing_ok=True)


def resolve(path: str | Path) -> Path:
    """``path`` itself, or for an experiment directory its newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        newest = newest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no checkpoint-*.pt or epoch-*.pt in {path}")
        log.info("using %s", newest)
        return newest
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


# ---- averaging ---------------------------------------------------------------------------------------
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


def averaged_state_dict(end: dict, start: dict) -> dict[str, torch.Tensor]:
    """The model averaged over the batches between two training checkpoints of one run (icefall's
    ``--use-averaged-model``): each holds the running mean ``model_avg`` of the model since batch 0, so
    the mean over ``(b_start, b_end]`` is ``(avg_end·b_end - avg_start·b_start) / (b_end - b_start)``."""
    b_end, b_start = end["state"]["batch_idx_train"], start["state"]["batch_idx_train"]
    if end.get("model_avg") is None or start.get("model_avg") is None:
        raise ValueError("averaging needs checkpoints written by asr train with a model average")
    if b_start >= b_end:
        raise ValueError(f"--average-from must be earlier than the decoded checkpoint (batch {b_start} >= {b_end})")
    averaged = {}
    for key, value in end["model_avg"].items():
        if value.is_floating_point():
            averaged[key] = (value * b_end - start["model_avg"][key] * b_start) / (b_end - b_start)
        else:
            averaged[key] = value
    return averaged


def average_start(path: Path, end_batch: int, average_batches: int) -> Path | None:
    """The checkpoint of ``path``'s run (same directory) to average from so that the average spans about
    the last ``average_batches`` batches up to ``end_batch``; None, with a warning, when the directory
    holds no earlier checkpoint (a run shorter than one checkpoint interval): there is nothing to average."""
    if average_batches <= 0:
        raise ValueError(f"--average-batches must be positive, got {average_batches}")
    start = checkpoint_near_batch(path.parent, end_batch - average_batches, before=end_batch)
    if start is None:
        log.warning(
            "--average-batches %d: %s has no checkpoint of the run written before batch %d to average "
            "from; decoding the model of %s alone",
            average_batches,
            path.parent,
            end_batch,
            path.name,
        )
        return None
    log.info(
        "decoding the model averaged over batches %d-%d (from %s to %s)",
        checkpoint_batch(start) + 1,
        end_batch,
        start.name,
        path.name,
    )
    return start


# ---- model files -------------------------------------------------------------------------------------
def tokenizer_files(lang_dir: str | Path) -> dict[str, bytes]:
    """The files of a lang dir that :func:`asr.data.tokenizer.load_tokenizer` reads, by name."""
    return {p.name: p.read_bytes() for p in sorted(Path(lang_dir).iterdir()) if p.name in TOKENIZER_FILES}


def _tokenizer_from_files(files: dict[str, bytes]):
    from asr.data.tokenizer import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        return load_tokenizer(tmp)


def save_model(path: str | os.PathLike, model, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (built by :func:`asr.models.build_model`) and ``extra`` (plain data: numbers, strings,
    lists, dicts, tensors; ``extra["tokenizer"]``: the tokenizer files) as a model file, atomically."""
    if getattr(model, "build_config", None) is None:
        raise ValueError("save_model needs a model made by build_model (it stores the build config)")
    checkpoint = {
        "format": MODEL_FORMAT,
        "version": VERSION,
        "config": model.build_config,
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    return save_atomic(checkpoint, path)


def model_weights(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, bytes]]:
    """(build config, state dict, tokenizer files) of a training or model checkpoint dict."""
    if checkpoint["format"] == TRAIN_FORMAT:
        return checkpoint["build_config"], checkpoint["model"], checkpoint.get("tokenizer", {})
    return checkpoint["config"], checkpoint["state_dict"], checkpoint.get("extra", {}).get("tokenizer", {})


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    lang_dir: str | os.PathLike | None = None,
    average_from: str | os.PathLike | None = None,
    average_batches: int | None = None,
):
    """The model of a checkpoint in eval mode, its tokenizer as ``model.tokenizer``.

    Args:
        path: a training checkpoint (``asr train``), a model file (``asr average``, ``asr convert icefall``,
            :func:`save_model`), or an experiment directory (its newest checkpoint).
        device: where the model goes.
        lang_dir: a tokenizer dir to use instead of the one stored in the checkpoint.
        average_from: an earlier training checkpoint of the same run: the weights are the model averaged
            over the training between the two (:func:`averaged_state_dict`).
        average_batches: pick ``average_from`` as the checkpoint of the same directory nearest to that
            many batches back (:func:`average_start`).

    ``model.tokenizer`` is None when neither the checkpoint nor ``lang_dir`` gives one.
    """
    from asr.models import model_from_config

    if average_from is not None and average_batches is not None:
        raise ValueError("give --average-from or --average-batches, not both")
    path, checkpoint = open_checkpoint(path)
    config, state_dict, stored_tokenizer = model_weights(checkpoint)
    if average_from is not None or average_batches is not None:
        if checkpoint["format"] != TRAIN_FORMAT:
            raise ValueError(f"{path} is a model file; averaging needs training checkpoints")
        if average_batches is not None:
            average_from = average_start(path, checkpoint["state"]["batch_idx_train"], average_batches)
        if average_from is not None:
            state_dict = averaged_state_dict(checkpoint, load(resolve(average_from)))
    model = model_from_config(config, state_dict)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()})
    model.tokenizer = None
    if lang_dir is not None:
        from asr.data.tokenizer import load_tokenizer

        model.tokenizer = load_tokenizer(lang_dir)
    elif stored_tokenizer:
        model.tokenizer = _tokenizer_from_files(stored_tokenizer)
    if model.tokenizer is not None and model.tokenizer.vocab_size != config["vocab_size"]:
        raise ValueError(
            f"tokenizer has {model.tokenizer.vocab_size} symbols but the model was built for {config['vocab_size']}"
        )
    return model.to(device).eval()


def average_checkpoints(paths: list[str | Path], out: str | Path) -> Path:
    """Write the element-wise mean of the models of ``paths`` (training checkpoints or model files of one
    configuration) as a model file; the tokenizer comes from the last of them."""
    if not paths:
        raise ValueError("no checkpoints to average")
    loaded = [model_weights(read_checkpoint(p)) for p in paths]
    if len({repr(config) for config, _, _ in loaded}) != 1:
        raise ValueError("the checkpoints were trained with different model configurations")
    config, _, tokenizer = loaded[-1]
    from asr.models import model_from_config

    state_dict = average_state_dicts([sd for _, sd, _ in loaded])
    model = model_from_config(config, state_dict)
    model.load_state_dict(state_dict)
    return save_model(out, model, extra={"tokenizer": tokenizer, "averaged_from": [str(p) for p in paths]})
