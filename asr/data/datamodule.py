"""Train/valid DataLoaders over lhotse CutSets.

A lhotse ``DynamicBucketingSampler`` (DDP-aware, resumable through ``state_dict``) draws batches of
cuts up to ``max_duration`` seconds; ``AsrDataset`` turns each into padded fbank features (stored
features when the cuts have them, else computed from audio on the fly), with optional noise
mixing and SpecAugment in training.

A batch is a dict::

    features      (N, T, 80) float32, padded with log(1e-10), longest cut first
    feature_lens  (N,) int64
    texts         list[str]   the cuts' supervision texts joined by spaces
    cut_ids       list[str]
    tokens        list[list[int]]   only when a tokenizer is given
    num_skipped   int          cuts of this batch dropped because they could not be loaded
    skipped_cut_ids list[str]

Cuts that fail to load (unreadable audio, missing feature file) are skipped with a warning naming
the cut and the file, never crashing the run; ``AsrDataLoader.num_skipped`` counts them (it sums
the batches' counts, so it is right with worker processes too) and a batch left with no cuts is
not yielded.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import torch
from lhotse import CutSet
from lhotse.cut import Cut, MixedCut
from lhotse.dataset import DynamicBucketingSampler, SimpleCutSampler
from lhotse.dataset.collation import collate_matrices
from lhotse.dataset.dataloading import make_worker_init_fn
from lhotse.dataset.sampling.base import CutSampler
from lhotse.dataset.signal_transforms import SpecAugment
from lhotse.utils import LOG_EPSILON, compute_num_frames
from torch.utils.data import DataLoader

from asr.data.augment import make_noise_mixer, make_spec_augment
from asr.data.features import FEATURE_DIM, FRAME_SHIFT, SAMPLE_RATE, make_fbank_extractor
from asr.data.tokenizer import Tokenizer

__all__ = [
    "zipformer_output_frames",
    "cut_num_frames",
    "cut_text",
    "FilterCounts",
    "CutFilter",
    "filter_cuts",
    "AsrDataset",
    "AsrDataLoader",
    "DataConfig",
    "AsrDataModule",
]

log = logging.getLogger(__name__)


def zipformer_output_frames(num_frames: int) -> int:
    """Frames left after Zipformer's subsampling: ``((T - 7) // 2 + 1) // 2`` (100 Hz -> 25 Hz)."""
    return ((num_frames - 7) // 2 + 1) // 2


def cut_num_frames(cut: Cut) -> int:
    """Number of 10 ms fbank frames of a cut (stored features' count, else computed from duration)."""
    if cut.has_features:
        return cut.num_frames
    return compute_num_frames(cut.duration, frame_shift=FRAME_SHIFT, sampling_rate=cut.sampling_rate)


def cut_text(cut: Cut) -> str:
    """The cut's transcript: its supervisions' texts joined by single spaces."""
    return " ".join(s.text for s in cut.supervisions if s.text)


@dataclass
class FilterCounts:
    total: int = 0
    too_short: int = 0
    too_many_tokens: int = 0
    unknown_symbols: int = 0

    @property
    def kept(self) -> int:
        return self.total - self.too_short - self.too_many_tokens - self.unknown_symbols

    def summary(self) -> str:
        return (
            f"kept {self.kept} of {self.total} cuts: {self.too_short} too short, "
            f"{self.too_many_tokens} too many tokens, {self.unknown_symbols} unknown symbols"
        )


class CutFilter:
    """Decides whether a cut can train a CTC/transducer model after the encoder's subsampling.

    A cut is dropped when it is too short (``subsampling(T) < 1``), when its text has more tokens
    than output frames (the model could not emit them all), or, with ``drop_unknown``, when its
    text holds symbols the tokenizer maps to ``<unk>``. Checked in that order; a cut counts once.
    """

    TOO_SHORT, TOO_MANY_TOKENS, UNKNOWN_SYMBOLS = "too_short", "too_many_tokens", "unknown_symbols"

    def __init__(
        self,
        tokenizer: Tokenizer,
        subsampling: Callable[[int], int] = zipformer_output_frames,
        drop_unknown: bool = True,
    ) -> None:
        self.tokenizer = tokenizer
        self.subsampling = subsampling
        self.drop_unknown = drop_unknown

    def reason(self, cut: Cut) -> str | None:
        """Why the cut is dropped (one of the class constants), or None when it is kept."""
        output_frames = self.subsampling(cut_num_frames(cut))
        if output_frames < 1:
            return self.TOO_SHORT
        tokens = self.tokenizer.encode(cut_text(cut))
        if len(tokens) > output_frames:
            return self.TOO_MANY_TOKENS
        if self.drop_unknown and self.tokenizer.unk_id in tokens:
            return self.UNKNOWN_SYMBOLS
        return None

    def __call__(self, cut: Cut) -> bool:
        return self.reason(cut) is None

    def count(self, cuts: CutSet) -> FilterCounts:
        return self._tally(self.reason(cut) for cut in cuts)

    @classmethod
    def _tally(cls, reasons: Iterable[str | None]) -> FilterCounts:
        counts = Counter(reasons)
        return FilterCounts(
            total=sum(counts.values()),
            too_short=counts[cls.TOO_SHORT],
            too_many_tokens=counts[cls.TOO_MANY_TOKENS],
            unknown_symbols=counts[cls.UNKNOWN_SYMBOLS],
        )


def filter_cuts(
    cuts: CutSet,
    tokenizer: Tokenizer,
    subsampling: Callable[[int], int] = zipformer_output_frames,
    drop_unknown: bool = True,
) -> CutSet:
    """Drop the cuts a model with this ``subsampling`` cannot learn from (see :class:`CutFilter`).

    Logs ``kept X of Y cuts: A too short, B too many tokens, C unknown symbols`` after one pass over
    the cuts. An eager CutSet is filtered at once; a lazy one stays lazy (filtered again as it is read).
    """
    cut_filter = CutFilter(tokenizer, subsampling, drop_unknown)
    if cuts.is_lazy:
        log.info("%s", cut_filter.count(cuts).summary())
        return cuts.filter(cut_filter)
    reasons = [(cut, cut_filter.reason(cut)) for cut in cuts]
    log.info("%s", CutFilter._tally(reason for _, reason in reasons).summary())
    return CutSet.from_cuts(cut for cut, reason in reasons if reason is None)


def _cut_files(cut: Cut, from_features: bool) -> str:
    """The file(s) a cut reads, for error messages."""
    if from_features and cut.has_features:
        if isinstance(cut, MixedCut):
            paths = [t.cut.features.storage_path for t in cut.tracks if getattr(t.cut, "features", None)]
        else:
            paths = [cut.features.storage_path]
    else:
        tracks = [t.cut for t in cut.tracks] if isinstance(cut, MixedCut) else [cut]
        recordings = [c.recording for c in tracks if getattr(c, "recording", None) is not None]
        paths = [str(source.source) for rec in recordings for source in rec.sources]
    return ", ".join(dict.fromkeys(str(p) for p in paths)) or "<no file>"


def _first_lines(error: Exception) -> str:
    # lhotse's loading errors put "... failed. Details:" first and the cause on the next line.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith("Details:"):
        return f"{lines[0]} {lines[1]}"
    return lines[0] if lines else ""


class AsrDataset(torch.utils.data.Dataset):
    """Maps a CutSet (one sampler batch) to a padded feature batch; see the module docstring.

    Args:
        tokenizer: adds ``tokens`` to batches when given.
        cut_transforms: applied to the CutSet first (noise mixing).
        spec_augment: applied to the padded ``(N, T, 80)`` features (training only).
        on_the_fly_features: True computes fbank from audio even for cuts with stored features;
            False requires stored features; None (default) uses stored features where a cut has them.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | None = None,
        cut_transforms: Sequence[Callable[[CutSet], CutSet]] = (),
        spec_augment: SpecAugment | None = None,
        on_the_fly_features: bool | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.cut_transforms = list(cut_transforms)
        self.spec_augment = spec_augment
        self.on_the_fly_features = on_the_fly_features
        self.extractor = make_fbank_extractor()
        self.num_skipped = 0  # cuts skipped by this copy of the dataset (per worker process)

    def __getitem__(self, cuts: CutSet) -> dict:
        for transform in self.cut_transforms:
            cuts = transform(cuts)
        loaded: list[tuple[Cut, torch.Tensor]] = []
        skipped: list[str] = []
        for cut in cuts:
            try:
                loaded.append((cut, self._features(cut)))
            except Exception as error:  # one bad file must not end the run: count it and go on
                from_features = cut.has_features and self.on_the_fly_features is not True
                log.warning(
                    "skipping cut %s (%s): %s: %s",
                    cut.id,
                    _cut_files(cut, from_features),
                    type(error).__name__,
                    _first_lines(error),
                )
                skipped.append(cut.id)
        self.num_skipped += len(skipped)
        loaded.sort(key=lambda item: item[1].shape[0], reverse=True)

        if loaded:
            features = collate_matrices([f for _, f in loaded], padding_value=LOG_EPSILON)
        else:
            features = torch.zeros(0, 0, FEATURE_DIM)
        feature_lens = torch.tensor([f.shape[0] for _, f in loaded], dtype=torch.int64)
        if self.spec_augment is not None and loaded:
            # Segments (index, start, length) keep time warping inside each cut's real frames.
            segments = torch.stack(
                [torch.arange(len(loaded)), torch.zeros(len(loaded), dtype=torch.int64), feature_lens], dim=1
            ).int()
            features = self.spec_augment(features, supervision_segments=segments)
        texts = [cut_text(cut) for cut, _ in loaded]
        batch = {
            "features": features,
            "feature_lens": feature_lens,
            "texts": texts,
            "cut_ids": [cut.id for cut, _ in loaded],
            "num_skipped": len(skipped),
            "skipped_cut_ids": skipped,
        }
        if self.tokenizer is not None:
            batch["tokens"] = self.tokenizer.encode_batch(texts)
        return batch

    def _features(self, cut: Cut) -> torch.Tensor:
        if cut.has_features and self.on_the_fly_features is not True:
            features = torch.from_numpy(cut.load_features())
        elif self.on_the_fly_features is False:
            raise ValueError("the cut has no stored features and on-the-fly features are disabled")
        else:
            if cut.sampling_rate != SAMPLE_RATE:
                cut = cut.resample(SAMPLE_RATE)
            audio = cut.load_audio()  # (channels, samples)
            samples = audio[0] if audio.shape[0] == 1 else audio.mean(axis=0)
            features = torch.from_numpy(self.extractor.extract(samples, SAMPLE_RATE))
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != FEATURE_DIM:
            raise ValueError(f"expected (T > 0, {FEATURE_DIM}) features, got shape {tuple(features.shape)}")
        return features.float()


class AsrDataLoader(DataLoader):
    """A DataLoader over ``AsrDataset`` that drops batches whose every cut failed and counts skips.

    ``num_skipped`` is the running total of skipped cuts, summed from the batches in the main
    process, so it is right whatever ``num_workers`` is.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.num_skipped = 0

    def __iter__(self) -> Iterator[dict]:
        for batch in super().__iter__():
            self.num_skipped += batch["num_skipped"]
            if batch["cut_ids"]:
                yield batch


@dataclass
class DataConfig:
    """Settings of :class:`AsrDataModule` (icefall's LibriSpeech defaults where it has them)."""

    max_duration: float = 200.0  # seconds of audio per batch
    num_buckets: int = 30
    shuffle: bool = True
    # True drops each bucket's last, incomplete batch (icefall's choice); on a small corpus with a
    # large max_duration that can be every batch, so it is off by default.
    drop_last: bool = False
    num_workers: int = 2
    on_the_fly_features: bool | None = None  # see AsrDataset
    spec_augment: bool = True
    time_warp_factor: int | None = 80
    noise_prob: float = 0.5  # used when the module is given noise cuts
    noise_snr: tuple[float, float] = (5.0, 20.0)
    seed: int = 42


class AsrDataModule:
    """Builds the train and valid DataLoaders.

    Args:
        config: batch size, bucketing, augmentation settings.
        tokenizer: when given, batches carry ``tokens``.
        noise_cuts: noise to mix into training cuts (``make_noise_cuts`` / ``musan_noise_cuts``).
        world_size, rank: DDP layout; taken from ``torch.distributed`` (or env vars) when None.

    Resuming: save ``loader.sampler.state_dict()`` with the checkpoint and pass it back as
    ``sampler_state``; the sampler then continues after the last batch it produced. With
    ``num_workers > 0`` the sampler runs ahead of training by the prefetched batches, so an exact
    resume needs ``num_workers=0``. Call ``loader.sampler.set_epoch(epoch)`` before each epoch.
    """

    def __init__(
        self,
        config: DataConfig | None = None,
        tokenizer: Tokenizer | None = None,
        noise_cuts: CutSet | None = None,
        world_size: int | None = None,
        rank: int | None = None,
    ) -> None:
        self.config = config if config is not None else DataConfig()
        self.tokenizer = tokenizer
        self.noise_cuts = noise_cuts
        self.world_size = world_size
        self.rank = rank

    def train_dataloader(self, cuts: CutSet, sampler_state: dict | None = None) -> AsrDataLoader:
        config = self.config
        transforms = []
        if self.noise_cuts is not None and config.noise_prob > 0:
            transforms.append(make_noise_mixer(self.noise_cuts, snr=config.noise_snr, p=config.noise_prob))
        dataset = AsrDataset(
            tokenizer=self.tokenizer,
            cut_transforms=transforms,
            spec_augment=make_spec_augment(time_warp_factor=config.time_warp_factor) if config.spec_augment else None,
            on_the_fly_features=config.on_the_fly_features,
        )
        sampler = self._sampler(cuts, shuffle=config.shuffle, drop_last=config.drop_last)
        if sampler_state is not None:
            sampler.load_state_dict(sampler_state)
        return self._loader(dataset, sampler)

    def valid_dataloader(self, cuts: CutSet) -> AsrDataLoader:
        dataset = AsrDataset(tokenizer=self.tokenizer, on_the_fly_features=self.config.on_the_fly_features)
        return self._loader(dataset, self._sampler(cuts, shuffle=False, drop_last=False))

    def _sampler(self, cuts: CutSet, shuffle: bool, drop_last: bool) -> CutSampler:
        if sum(1 for _ in islice(cuts, 2)) < 2:  # too few cuts to bucket
            return SimpleCutSampler(
                cuts,
                max_duration=self.config.max_duration,
                shuffle=shuffle,
                drop_last=drop_last,
                world_size=self.world_size,
                rank=self.rank,
                seed=self.config.seed,
            )
        num_buckets = self._num_buckets(cuts)
        with warnings.catch_warnings():
            # Eager CutSets (what filter_cuts returns) are fine here; lhotse's advice targets huge corpora.
            warnings.filterwarnings(
                "ignore", message="You are using DynamicBucketingSampler with an eagerly read CutSet"
            )
            return DynamicBucketingSampler(
                cuts,
                max_duration=self.config.max_duration,
                num_buckets=num_buckets,
                shuffle=shuffle,
                drop_last=drop_last,
                world_size=self.world_size,
                rank=self.rank,
                seed=self.config.seed,
            )

    def _num_buckets(self, cuts: CutSet) -> int:
        # Each bucket fills its own batches, and partial ones are dropped at the end of an epoch, so a
        # small corpus split into many buckets loses much of its data: keep ~2 full batches per bucket.
        # The first 10k cuts are read either way (lhotse estimates the bucket bins from them).
        durations = [cut.duration for cut in islice(cuts, 10_000)]
        affordable = int(sum(durations) // (2 * self.config.max_duration))
        num_buckets = max(2, min(self.config.num_buckets, affordable, len(durations)))  # lhotse needs >= 2
        if num_buckets < self.config.num_buckets:
            log.info(
                "using %d duration buckets instead of %d: the cut set is small", num_buckets, self.config.num_buckets
            )
        return num_buckets

    def _loader(self, dataset: AsrDataset, sampler: CutSampler) -> AsrDataLoader:
        return AsrDataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,  # the sampler yields whole batches
            num_workers=self.config.num_workers,
            persistent_workers=False,
            worker_init_fn=make_worker_init_fn(seed=self.config.seed, rank=sampler.rank, world_size=sampler.world_size),
        )
