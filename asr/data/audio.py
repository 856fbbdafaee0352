"""Reading one audio file into a mono float32 waveform at a chosen sample rate.

Used where a single file is at hand (``asr decode`` on a wav, the streaming demo). Corpora go through
lhotse manifests instead, whose own loader reads the same formats.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

__all__ = ["AudioError", "load_audio", "resample"]

log = logging.getLogger(__name__)

# Whether this process has already warned that a file was upsampled (one warning, not one per file).
_warned_upsampling = False

# libsndfile reports a header/file-size mismatch in its log as "data : <declared> (should be <actual>)".
_DATA_SIZE_MISMATCH = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers that stream to a pipe put a placeholder size in the header; those files are not truncated.
_UNKNOWN_LENGTH_MARKER = 0x7FFFF000


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and what is wrong with it."""


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read ``path`` as a mono float32 waveform in [-1, 1] at ``sample_rate`` Hz.

    Reads wav/flac/ogg (and mp3 where the installed libsndfile supports it) with soundfile,
    averages channels, and resamples with a polyphase filter when the file's rate differs. A file of a
    lower rate (8 kHz telephone audio) lacks the upper band the models were trained on: the first such
    file of the process is named in a warning.

    Returns:
        samples: ``(num_samples,)`` float32.

    Raises:
        AudioError: the file is missing, empty, not audio, corrupt or truncated, or has no samples.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not an audio file" if path.is_dir() else "does not exist"
        raise AudioError(f"{path}: {what}")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() == ".mp3" and "MP3" not in sf.available_formats():
        raise AudioError(
            f"{path}: mp3 is not supported by this libsndfile ({sf.__libsndfile_version__}); "
            "convert the file to wav or flac, or install libsndfile >= 1.1"
        )
    try:
        with sf.SoundFile(str(path)) as audio_file:
            _check_not_truncated(path, audio_file.extra_info)
            file_rate = audio_file.samplerate
            samples = audio_file.read(dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile.LibsndfileError and its other runtime errors
        raise AudioError(
            f"{path}: not a readable audio file (corrupt, truncated or unsupported format): {error}"
        ) from error
    if samples.shape[0] == 0:
        raise AudioError(f"{path}: contains no audio samples")
    mono = samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0]
    if file_rate < sample_rate:
        _warn_upsampling(path, file_rate, sample_rate)
    return resample(mono, file_rate, sample_rate)


def _warn_upsampling(path: Path, file_rate: int, sample_rate: int) -> None:
    global _warned_upsampling
    if _warned_upsampling:
        return
    _warned_upsampling = True
    log.warning(
        "%s: %d Hz audio upsampled to %d Hz; it has nothing above %d Hz, which the models were trained "
        "with, so expect more errors (warned once; other low-rate files are upsampled silently)",
        path,
        file_rate,
        sample_rate,
        file_rate // 2,
    )


def resample(samples: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample a 1-D waveform from ``orig_rate`` to ``new_rate`` Hz (polyphase, Kaiser window).

    The output has ``ceil(len(samples) * new_rate / orig_rate)`` samples, float32.
    """
    if orig_rate == new_rate:
        return np.ascontiguousarray(samples, dtype=np.float32)
    common = math.gcd(orig_rate, new_rate)
    out = resample_poly(samples, new_rate // common, orig_rate // common)
    return out.astype(np.float32, copy=False)


def _check_not_truncated(path: Path, sndfile_log: str) -> None:
    # libsndfile silently reads what is present of a cut-short wav; its log tells the declared size.
    match = _DATA_SIZE_MISMATCH.search(sndfile_log)
    if match is None:
        return
    declared, actual = int(match.group(1)), int(match.group(2))
    if actual < declared < _UNKNOWN_LENGTH_MARKER:
        raise AudioError(
            f"{path}: truncated file: header declares {declared} bytes of audio data, only {actual} present"
        )
