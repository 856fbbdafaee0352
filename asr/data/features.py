"""80-dim log-mel filterbank features (lhotse's extractor, 25 ms window, 10 ms hop, 16 kHz).

``compute_fbank`` handles one waveform (decoding a file); ``asr data fbank`` computes and stores
features for a whole CutSet with lilcom compression, the way icefall's compute_fbank scripts do.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from lhotse import CutSet, Fbank, FbankConfig, LilcomChunkyWriter

from asr.data.audio import resample
from asr.data.augment import speed_perturb as add_speed_perturbed_copies
from asr.data.augment import speed_perturb_one_of

__all__ = [
    "FEATURE_DIM",
    "SAMPLE_RATE",
    "FRAME_SHIFT",
    "SPEED_PERTURB_MODES",
    "make_fbank_extractor",
    "compute_fbank",
    "compute_and_store_fbank",
]

FEATURE_DIM = 80
SAMPLE_RATE = 16000
FRAME_SHIFT = 0.01  # seconds
# "copies": each cut plus its 0.9x and 1.1x copies (3x the data, icefall's way); "one-of": each cut
# at one of 0.9x, 1x, 1.1x (the same cuts and hours, so epochs keep their length).
SPEED_PERTURB_MODES = ("off", "copies", "one-of")

log = logging.getLogger(__name__)


def make_fbank_extractor() -> Fbank:
    """lhotse's Kaldi-compatible fbank: 80 mel bins, 16 kHz input, 10 ms hop, no dither."""
    return Fbank(FbankConfig(num_mel_bins=FEATURE_DIM, sampling_rate=SAMPLE_RATE, frame_shift=FRAME_SHIFT))


def compute_fbank(samples: np.ndarray, sample_rate: int, extractor: Fbank | None = None) -> torch.Tensor:
    """Log-mel fbank of one mono waveform.

    Args:
        samples: ``(num_samples,)`` float waveform in [-1, 1]; resampled to 16 kHz if needed.
        sample_rate: rate of ``samples`` in Hz.
        extractor: reuse an extractor across calls; a new one is made when omitted.

    Returns:
        features: ``(T, 80)`` float32 with ``T = round(duration / 10 ms)``.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"compute_fbank expects a mono waveform (num_samples,), got shape {samples.shape}")
    samples = resample(samples, sample_rate, SAMPLE_RATE)
    extractor = extractor if extractor is not None else make_fbank_extractor()
    return torch.from_numpy(extractor.extract(samples, SAMPLE_RATE)).float()


def compute_and_store_fbank(
    cuts: CutSet,
    storage_path: str | Path,
    num_workers: int = 1,
    speed_perturb: str = "off",
    seed: int = 0,
) -> CutSet:
    """Resample ``cuts`` to 16 kHz, optionally speed-perturb them, and store fbank.

    ``speed_perturb`` is one of :data:`SPEED_PERTURB_MODES`: ``"copies"`` adds 0.9x and 1.1x copies,
    ``"one-of"`` replaces each cut by itself at one of 0.9x/1x/1.1x drawn with ``seed``.

    Features go to lilcom-compressed chunk files under ``storage_path``. Cuts whose audio cannot be
    read are left out of the result with a warning naming them (lhotse's loader reports the file).

    Returns:
        The cuts with ``features`` attached (perturbed cuts carry lhotse's ``_sp0.9``/``_sp1.1`` id suffix).
    """
    if speed_perturb not in SPEED_PERTURB_MODES:
        raise ValueError(f"speed_perturb must be one of {SPEED_PERTURB_MODES}, not {speed_perturb!r}")
    Path(storage_path).parent.mkdir(parents=True, exist_ok=True)
    cuts = cuts.to_eager()
    cuts = CutSet.from_cuts(c if c.sampling_rate == SAMPLE_RATE else c.resample(SAMPLE_RATE) for c in cuts)
    if speed_perturb == "copies":
        cuts = add_speed_perturbed_copies(cuts, (0.9, 1.1))
    elif speed_perturb == "one-of":
        cuts = speed_perturb_one_of(cuts, (0.9, 1.0, 1.1), seed)
    # Fbank runs at ~1000x real time in one process, so workers only pay off on big corpora; each
    # worker gets one torch thread, as several workers with a thread per core each ran 20x slower
    # than one process on a 2-core machine.
    executor = None
    if num_workers > 1:
        executor = ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    try:
        with_feats = cuts.compute_and_store_features(
            extractor=make_fbank_extractor(),
            storage_path=str(storage_path),
            num_jobs=max(1, num_workers),
            executor=executor,
            storage_type=LilcomChunkyWriter,
            progress_bar=True,
        )
    finally:
        if executor is not None:
            executor.shutdown()
    with_feats = with_feats.to_eager()
    if len(with_feats) < len(cuts):
        kept = set(with_feats.ids)
        skipped = [cut_id for cut_id in cuts.ids if cut_id not in kept]
        shown = ", ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else "")
        log.warning("skipped %d of %d cuts whose audio could not be read: %s", len(skipped), len(cuts), shown)
    return with_feats


def default_storage_dir(out: Path) -> Path:
    """Where the features of the CutSet written to ``out`` go by default: beside it, named after it."""
    name = out.name.removesuffix(".gz").removesuffix(".jsonl")
    return out.parent / f"{name}_feats"
