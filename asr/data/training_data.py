"""The data of a training run: the usable train and valid cuts, and their loaders with a fixed batch order.

:class:`TrainingData` is what the trainer iterates over; :func:`load_usable_cuts` reads a cuts file and
drops the cuts a model cannot learn from, and raises :class:`TrainingDataError` when none is left.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from lhotse import CutSet

from asr.data.datamodule import AsrDataLoader, AsrDataModule, CutFilter, DataConfig, filter_cuts
from asr.data.manifests import ManifestError, load_cuts
from asr.data.tokenizer import Tokenizer

__all__ = ["TrainingData", "TrainingDataError", "load_usable_cuts"]


class TrainingDataError(ValueError):
    """A cuts file leaves nothing to train or validate on; the message names the file and says why."""


def load_usable_cuts(path: str, role: str, tokenizer: Tokenizer, output_frames: Callable[[int], int]) -> CutSet:
    """The cuts of ``path`` that training can use (:func:`asr.data.datamodule.filter_cuts`);
    ``output_frames`` maps fbank frames to encoder output frames, ``role`` names the set in errors.

    Raises :class:`TrainingDataError` when the file cannot be read (:func:`asr.data.manifests.load_cuts`)
    or none is left, with the number dropped for each reason, rather than letting an epoch of zero
    batches pass for a finished run.
    """
    try:
        cuts = load_cuts(path)
    except ManifestError as error:
        raise TrainingDataError(f"the {role} cuts file {error}") from None
    kept = filter_cuts(cuts, tokenizer, output_frames)
    if next(iter(kept), None) is not None:
        return kept
    # Only on this error path: count the reasons again, since filter_cuts only logs them.
    counts = CutFilter(tokenizer, output_frames).count(cuts)
    min_frames = next((t for t in range(1, 100_000) if output_frames(t) >= 1), None)
    shortest = f" (under {min_frames} fbank frames, {min_frames / 100:.2f} s)" if min_frames else ""
    raise TrainingDataError(
        f"no usable {role} cuts in {path}: {counts.summary()}. A cut is too short when the encoder's "
        f"subsampling leaves it no output frame{shortest}; has too many tokens when its transcript has more "
        f"tokens than the encoder has output frames for it; has unknown symbols when its transcript holds "
        f"symbols missing from {tokenizer.source}"
    )


class TrainingData:
    """The train and valid loaders of a run, with the batch order of each epoch fixed by ``config.seed``.

    Resuming mid-epoch rebuilds the epoch's sampler and fast-forwards it past the batches already
    trained on (the sampler only reads manifests, so this is cheap), which is exact whatever the
    number of loader workers.

    Args:
        config: batch size, workers, augmentation and seed of the loaders.
        tokenizer: encodes the transcripts (batches carry ``tokens``) and decides which cuts are usable.
        train_cuts, valid_cuts: cuts files (``valid_cuts`` None: no validation).
        output_frames: fbank frames -> encoder output frames, for :func:`load_usable_cuts`.
        noise_cuts: a cuts file of noise to mix into training cuts, or None.
        world_size, rank: this process's share of the batches under data-parallel training.
    """

    def __init__(
        self,
        config: DataConfig,
        tokenizer: Tokenizer,
        train_cuts: str,
        valid_cuts: str | None,
        output_frames: Callable[[int], int],
        noise_cuts: str | None = None,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        try:
            noise = load_cuts(noise_cuts) if noise_cuts else None
        except ManifestError as error:
            raise TrainingDataError(f"the noise cuts file {error}") from None
        self.seed = config.seed
        self.module = AsrDataModule(config, tokenizer, noise, world_size=world_size, rank=rank)
        self.train_cuts = load_usable_cuts(train_cuts, "training", tokenizer, output_frames)
        self.valid_cuts = load_usable_cuts(valid_cuts, "validation", tokenizer, output_frames) if valid_cuts else None

    def train_batches(self, epoch: int, skip: int = 0) -> AsrDataLoader:
        """The loader of ``epoch`` (1-based), past its first ``skip`` batches."""
        loader = self.module.train_dataloader(self.train_cuts)
        # The loader's own generator, not the global RNG, seeds its iterator, so that the global RNG
        # sequence seen by training does not depend on when the iterator was created.
        loader.generator = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        loader.sampler.set_epoch(epoch)
        if skip:
            batches = iter(loader.sampler)
            for _ in range(skip):
                next(batches, None)
            loader.sampler.load_state_dict(loader.sampler.state_dict())
        return loader

    @property
    def valid(self) -> AsrDataLoader | None:
        return None if self.valid_cuts is None else self.module.valid_dataloader(self.valid_cuts)
