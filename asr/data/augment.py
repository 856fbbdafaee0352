"""Training-time augmentation: SpecAugment, speed perturbation, additive noise.

Each piece is lhotse's own transform, configured the way icefall's LibriSpeech recipes do; this
module only chooses the settings and makes noise CutSets (synthetic sox noise, babble, MUSAN).
"""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet
from lhotse.dataset import CutMix, SpecAugment

__all__ = [
    "make_spec_augment",
    "speed_perturb",
    "speed_perturb_one_of",
    "make_noise_mixer",
    "make_noise_cuts",
    "make_babble",
    "musan_noise_cuts",
    "SOX_NOISE_TYPES",
]

SOX_NOISE_TYPES = ("whitenoise", "pinknoise", "brownnoise")


def make_spec_augment(
    time_warp_factor: int | None = 80,
    num_feature_masks: int = 2,
    features_mask_size: int = 27,
    num_frame_masks: int = 10,
    frames_mask_size: int = 100,
    max_frames_mask_fraction: float = 0.15,
    p: float = 0.9,
) -> SpecAugment:
    """lhotse's SpecAugment with icefall's settings.

    Two frequency masks of up to F=27 bins; up to 10 time masks of up to 100 frames, but together
    at most 15% of the utterance, so the number and width of time masks scale with its length.
    ``time_warp_factor=None`` turns time warping off. Applied to ``(N, T, 80)`` batches.
    """
    return SpecAugment(
        time_warp_factor=time_warp_factor,
        num_feature_masks=num_feature_masks,
        features_mask_size=features_mask_size,
        num_frame_masks=num_frame_masks,
        frames_mask_size=frames_mask_size,
        max_frames_mask_fraction=max_frames_mask_fraction,
        p=p,
    )


def speed_perturb(cuts: CutSet, factors: Sequence[float] = (0.9, 1.1)) -> CutSet:
    """The cuts plus one resampled copy per factor (ids get lhotse's ``_sp<factor>`` suffix).

    The copies are computed when their audio is loaded, so this stays lazy for lazy CutSets.
    """
    result = cuts
    for factor in factors:
        result = result + cuts.perturb_speed(factor)
    return result


def speed_perturb_one_of(cuts: CutSet, factors: Sequence[float] = (0.9, 1.0, 1.1), seed: int = 0) -> CutSet:
    """Each cut replaced by itself at one speed drawn uniformly from ``factors`` (1.0 keeps it as is).

    Unlike :func:`speed_perturb`, the number of cuts and (for factors around 1) the hours stay the
    same, so an epoch, and Eden's schedule over epochs, keep their length; the voices still vary in
    pitch and formants. The draw is fixed by ``seed``; perturbed ids get lhotse's ``_sp<factor>`` suffix.
    """
    rng = random.Random(seed)

    def one_speed(cut):
        factor = rng.choice(factors)
        return cut if factor == 1.0 else cut.perturb_speed(factor)

    return CutSet.from_cuts([one_speed(cut) for cut in cuts])


def make_noise_mixer(noise_cuts: CutSet, snr: tuple[float, float] = (5.0, 20.0), p: float = 0.5) -> CutMix:
    """A cut transform mixing a random noise cut into each cut with probability ``p``.

    The SNR is drawn uniformly from ``snr`` dB; the noise starts at a random offset and is cut to the
    speech's length (no padding, so durations and feature lengths are unchanged); cut ids are kept.
    The random stream is per DataLoader worker (``seed="randomized"`` with lhotse's worker init).
    """
    return CutMix(
        cuts=noise_cuts,
        snr=snr,
        p=p,
        pad_to_longest=False,
        preserve_id=True,
        random_mix_offset=True,
        seed="randomized",
    )


def make_noise_cuts(
    out_dir: str | Path,
    duration: float = 10.0,
    sample_rate: int = 16000,
    noise_types: Sequence[str] = SOX_NOISE_TYPES,
    speech_cuts: CutSet | None = None,
    num_babble: int = 2,
    seed: int = 0,
) -> CutSet:
    """Synthesize noise recordings and return them as a CutSet (also saved as ``out_dir/noise_cuts.jsonl.gz``).

    One ``duration``-second file per sox noise type (``sox -n noise.wav synth D whitenoise`` etc.),
    and, when ``speech_cuts`` is given, ``num_babble`` babble files of overlapped speech.
    """
    sox = shutil.which("sox")
    if sox is None:
        raise RuntimeError("making noise needs the `sox` program (apt-get install sox)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for noise_type in noise_types:
        if noise_type not in SOX_NOISE_TYPES:
            raise ValueError(f"unknown sox noise type {noise_type!r}; choose from {SOX_NOISE_TYPES}")
        path = out_dir / f"{noise_type}.wav"
        # -R: repeatable random numbers, so a rerun writes the same file.
        command = [
            sox,
            "-R",
            "-n",
            "-r",
            str(sample_rate),
            "-c",
            "1",
            "-b",
            "16",
            str(path),
            "synth",
            str(duration),
            noise_type,
            "vol",
            "0.5",
        ]
        subprocess.run(command, check=True, capture_output=True)
        paths.append(path)
    if speech_cuts is not None:
        rng = random.Random(seed)
        for index in range(num_babble):
            path = out_dir / f"babble{index}.wav"
            make_babble(speech_cuts, path, duration=duration, sample_rate=sample_rate, rng=rng)
            paths.append(path)
    recordings = RecordingSet.from_recordings(Recording.from_file(p, recording_id=p.stem) for p in paths)
    noise_cuts = CutSet.from_manifests(recordings=recordings)
    noise_cuts.to_file(out_dir / "noise_cuts.jsonl.gz")
    return noise_cuts


def make_babble(
    speech_cuts: CutSet,
    out_path: str | Path,
    num_talkers: int = 5,
    duration: float = 10.0,
    sample_rate: int = 16000,
    rng: random.Random | None = None,
) -> Path:
    """Write babble: ``num_talkers`` streams of random utterances, each looped to ``duration``, summed.

    Each stream is normalised to unit RMS before summing so no talker dominates; the sum is scaled
    to a peak of 0.5.
    """
    rng = rng if rng is not None else random.Random(0)
    num_samples = int(round(duration * sample_rate))
    pool = list(speech_cuts.subset(first=200)) if len(speech_cuts) > 200 else list(speech_cuts)
    if not pool:
        raise ValueError("babble needs at least one speech cut")
    mix = np.zeros(num_samples, dtype=np.float64)
    for _ in range(num_talkers):
        stream = []
        filled = 0
        while filled < num_samples:
            cut = rng.choice(pool)
            cut = cut if cut.sampling_rate == sample_rate else cut.resample(sample_rate)
            audio = cut.load_audio()[0]
            stream.append(audio)
            filled += len(audio)
        talker = np.concatenate(stream)[:num_samples]
        mix += talker / max(float(np.sqrt(np.mean(talker**2))), 1e-8)
    mix *= 0.5 / max(float(np.abs(mix).max()), 1e-8)
    out_path = Path(out_path)
    sf.write(out_path, mix.astype(np.float32), sample_rate, subtype="PCM_16")
    return out_path


def musan_noise_cuts(manifest: str | Path, window: float = 10.0, min_duration: float = 5.0) -> CutSet:
    """MUSAN as a noise CutSet for :func:`make_noise_mixer`.

    Accepts a CutSet manifest that already has features (icefall's ``musan_cuts.jsonl.gz``; used as
    it is) or a recordings/cuts manifest, which is cut into ``window``-second pieces keeping those
    longer than ``min_duration`` seconds, as icefall's compute_fbank_musan does.
    """
    from lhotse import load_manifest

    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no such MUSAN manifest")
    loaded = load_manifest(manifest)
    if isinstance(loaded, RecordingSet):
        loaded = CutSet.from_manifests(recordings=loaded)
    if not isinstance(loaded, CutSet):
        raise ValueError(f"{manifest}: expected a CutSet or RecordingSet, found {type(loaded).__name__}")
    if all(cut.has_features for cut in loaded):
        return loaded
    windows = loaded.cut_into_windows(window)
    return CutSet.from_cuts(cut for cut in windows if cut.duration > min_duration)
