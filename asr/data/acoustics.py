"""Acoustic augmentations of a mono waveform: voice pitch, rooms, noise, channels, levels and clipping.

Every transform is a frozen dataclass whose fields are exactly the parameters applied:

- ``apply(audio, sample_rate)`` maps a float32 waveform ``(T,)`` to a float32 waveform of the same
  length and rate; it is a pure function of the fields and the input (reverberation tails come from
  the transform's own ``seed``, noises from files fixed by name and offset), so a plan that stores
  the transforms reproduces the audio;
- ``describe()`` is a plain JSON-able dict, ``{"type": ..., **fields}``, for manifests (a noise
  file is named by its stem, so the record holds no machine's path).

:func:`sample_chain` draws a random chain from the ranges of an :class:`AugmentConfig` with a numpy
``Generator``; :func:`apply_chain` runs one. The external programs are Debian's ``sox`` (G.711,
GSM, AMR-NB, MP3, pitch) and ``ffmpeg`` (Opus, G.722); reverberation uses ``pyroomacoustics``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

SPEED_OF_SOUND_M_S = 343.0
# Sabine: RT60 = SABINE * V / (S * absorption), so no room reverberates less than SABINE * V / S.
SABINE_S_PER_M = 24 * math.log(10) / SPEED_OF_SOUND_M_S

KINDS = ("pitch", "reverb", "noise", "band", "clip", "codec", "level")
# Narrowband codecs run at 8 kHz (telephone), the others at the input rate.
CODEC_RATES = {"mulaw": 8000, "alaw": 8000, "gsm": 8000, "amr-nb": 8000, "mp3": 16000, "opus": 16000, "g722": 16000}
FFMPEG_CODECS = frozenset({"opus", "g722"})
AMR_NB_KBPS = (4.75, 5.15, 5.9, 6.7, 7.4, 7.95, 10.2, 12.2)  # sox -C mode 0..7
# Bit rates the sampler draws from, per codec (G.711, GSM and G.722 have one rate each).
CODEC_KBPS = {
    "mulaw": (64.0,),
    "alaw": (64.0,),
    "gsm": (13.2,),
    "amr-nb": AMR_NB_KBPS,
    "mp3": (8.0, 16.0, 24.0, 32.0),
    "opus": (6.0, 8.0, 12.0, 16.0, 24.0),
    "g722": (64.0,),
}


class Transform(Protocol):
    kind: ClassVar[str]

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray: ...

    def describe(self) -> dict: ...


def _describe(transform) -> dict:
    fields = {f.name: getattr(transform, f.name) for f in dataclasses.fields(transform)}
    return {"type": transform.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}}


def _as_float32(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected a mono waveform (T,), got shape {audio.shape}")
    return audio


def _fit_length(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """Cut or zero-pad ``audio`` to ``num_samples``."""
    if len(audio) >= num_samples:
        return audio[:num_samples]
    return np.concatenate([audio, np.zeros(num_samples - len(audio), dtype=audio.dtype)])


def _run(cmd: list[str], data: bytes, what: str) -> bytes:
    result = subprocess.run(cmd, input=data, capture_output=True)
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()[-300:]
        raise RuntimeError(f"{what}: {cmd[0]} failed (exit {result.returncode}): {message}")
    return result.stdout


# sox: -D no dither and -R repeatable, so the same input gives the same bytes.
_SOX = ("sox", "-D", "-R", "-V1")


def _sox_f32(sample_rate: int) -> list[str]:
    return ["-t", "f32", "-r", str(sample_rate), "-c", "1", "-"]


# ----------------------------------------------------------------------------------------------
# Voice


@dataclass(frozen=True)
class PitchShift:
    """Shift the whole spectrum (F0 and formants, as a shorter or longer vocal tract) by
    ``semitones`` at the same tempo, with sox's ``pitch`` effect."""

    semitones: float
    kind: ClassVar[str] = "pitch"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = _as_float32(audio)
        cmd = [*_SOX, *_sox_f32(sample_rate), *_sox_f32(sample_rate), "pitch", f"{100 * self.semitones:.1f}"]
        out = np.frombuffer(_run(cmd, audio.astype("<f4").tobytes(), "pitch shift"), dtype="<f4")
        return _fit_length(out.astype(np.float32), len(audio))

    def describe(self) -> dict:
        return _describe(self)


# ----------------------------------------------------------------------------------------------
# Room


@dataclass(frozen=True)
class Reverb:
    """A shoebox room of ``room_m`` (x, y, z) metres with reverberation time ``rt60_s``, a source
    at ``source_m`` and a microphone at ``mic_m``.

    The impulse response is hybrid: pyroomacoustics' image sources of up to ``max_order``
    reflections (walls of one frequency-independent absorption from Sabine's formula), kept until
    the time by which every image of at most that order has arrived, then Gaussian noise from
    ``seed`` decaying 60 dB per ``rt60_s`` from the image sources' energy there. The response
    starts at the direct path, so the speech keeps its timing; the output is the input's length and RMS.
    """

    room_m: tuple[float, float, float]
    rt60_s: float
    source_m: tuple[float, float, float]
    mic_m: tuple[float, float, float]
    seed: int
    max_order: int = 12
    kind: ClassVar[str] = "reverb"

    def __post_init__(self) -> None:
        room = np.asarray(self.room_m)
        for name in ("source_m", "mic_m"):
            pos = np.asarray(getattr(self, name))
            if pos.shape != (3,) or np.any(pos <= 0) or np.any(pos >= room):
                raise ValueError(f"reverb: {name} {getattr(self, name)} is not inside the room {self.room_m}")
        if self.rt60_s < min_rt60_s(self.room_m):
            raise ValueError(
                f"reverb: rt60_s {self.rt60_s} is below {min_rt60_s(self.room_m):.3f} s, the least a room of"
                f" {self.room_m} m can have"
            )

    def impulse_response(self, sample_rate: int) -> np.ndarray:
        """The room's impulse response ``(L,)`` float64, the direct path at sample 0."""
        if importlib.util.find_spec("pyroomacoustics") is None:
            raise RuntimeError("reverb needs the Python package pyroomacoustics (`pip install pyroomacoustics`)")
        import pyroomacoustics as pra

        absorption, _ = pra.inverse_sabine(self.rt60_s, list(self.room_m), c=SPEED_OF_SOUND_M_S)
        room = pra.ShoeBox(
            list(self.room_m),
            fs=sample_rate,
            materials=pra.Material(absorption),
            max_order=self.max_order,
            air_absorption=False,
        )
        room.set_sound_speed(SPEED_OF_SOUND_M_S)
        room.add_source(list(self.source_m))
        room.add_microphone(list(self.mic_m))
        room.compute_rir()
        ism = np.asarray(room.rir[0][0], dtype=np.float64)
        ism = ism[int(np.argmax(np.abs(ism))) :]  # the direct path is the strongest single arrival
        # Every image of order <= N lies within N * min(room) / sqrt(3) metres beyond the direct path.
        complete_s = self.max_order * min(self.room_m) / math.sqrt(3) / SPEED_OF_SOUND_M_S
        n_early = min(len(ism), int(complete_s * sample_rate))
        early = ism[:n_early]
        # Energy at the end of the early part from its mean over a window, given the decay rate.
        decay_per_s = 3 * math.log(10) / self.rt60_s  # amplitude: 60 dB per rt60
        window = max(1, min(n_early // 2, int(0.02 * sample_rate)))
        mean_power = float(np.mean(early[-window:] ** 2))
        x = 2 * decay_per_s * window / sample_rate
        end_power = mean_power * x / math.expm1(x)
        n_tail = int(self.rt60_s * sample_rate)
        t = np.arange(n_tail) / sample_rate
        noise = np.random.default_rng(self.seed).standard_normal(n_tail)
        tail = math.sqrt(end_power) * noise * np.exp(-decay_per_s * t)
        return np.concatenate([early, tail])

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from scipy.signal import fftconvolve

        audio = _as_float32(audio)
        wet = fftconvolve(audio.astype(np.float64), self.impulse_response(sample_rate))[: len(audio)]
        return (wet * _rms(audio) / max(_rms(wet), 1e-12)).astype(np.float32)

    def describe(self) -> dict:
        return _describe(self)


def min_rt60_s(room_m: Sequence[float]) -> float:
    """The reverberation time of ``room_m`` with fully absorbing walls by Sabine's formula."""
    x, y, z = room_m
    return SABINE_S_PER_M * x * y * z / (2 * (x * y + x * z + y * z))


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


# ----------------------------------------------------------------------------------------------
# Noise


@functools.lru_cache(maxsize=16)
def _load_noise(path: str, sample_rate: int) -> np.ndarray:
    import soundfile

    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise ValueError(f"noise {path}: sample rate {rate}, expected {sample_rate}")
    if not np.any(audio[:, 0]):
        raise ValueError(f"noise {path}: the file is silent")
    return audio[:, 0]


@dataclass(frozen=True)
class AddNoise:
    """Add the noise of ``noise_file`` from ``offset_s`` (looping at its end), scaled so that the
    power of the input over the power of the added noise, both over the whole signal, is ``snr_db``."""

    noise_file: str
    offset_s: float
    snr_db: float
    kind: ClassVar[str] = "noise"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = _as_float32(audio)
        noise = _load_noise(str(Path(self.noise_file).resolve()), sample_rate)
        start = int(round(self.offset_s * sample_rate)) % len(noise)
        idx = (start + np.arange(len(audio))) % len(noise)
        segment = noise[idx].astype(np.float64)
        speech_power = float(np.mean(np.square(audio, dtype=np.float64)))
        noise_power = float(np.mean(segment**2))
        if speech_power == 0.0 or noise_power == 0.0:
            return audio.copy()
        scale = math.sqrt(speech_power / (noise_power * 10 ** (self.snr_db / 10)))
        return (audio + scale * segment).astype(np.float32)

    def describe(self) -> dict:
        # The file's name, not its path: the record stays valid when the corpus moves.
        return {
            "type": self.kind,
            "noise": Path(self.noise_file).stem,
            "offset_s": self.offset_s,
            "snr_db": self.snr_db,
        }


# ----------------------------------------------------------------------------------------------
# Microphone and channel


@dataclass(frozen=True)
class BandLimit:
    """A microphone's band: zero-phase Butterworth band-pass ``low_hz``..``high_hz`` of ``order``
    (run forwards and backwards, so the effective order doubles and nothing is delayed)."""

    low_hz: float
    high_hz: float
    order: int = 4
    kind: ClassVar[str] = "band"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from scipy.signal import butter, sosfiltfilt

        audio = _as_float32(audio)
        if not 0 < self.low_hz < self.high_hz:
            raise ValueError(f"band: need 0 < low_hz < high_hz, got {self.low_hz}, {self.high_hz}")
        if self.high_hz < sample_rate / 2:
            sos = butter(self.order, [self.low_hz, self.high_hz], btype="bandpass", fs=sample_rate, output="sos")
        else:
            sos = butter(self.order, self.low_hz, btype="highpass", fs=sample_rate, output="sos")
        return sosfiltfilt(sos, audio.astype(np.float64)).astype(np.float32)

    def describe(self) -> dict:
        return _describe(self)


def _align(reference: np.ndarray, decoded: np.ndarray, max_lag: int) -> np.ndarray:
    """``decoded`` shifted by the lag in ``-max_lag..max_lag`` that best matches ``reference``
    (cross-correlation peak), cut or zero-padded to ``reference``'s length."""
    n = len(reference) + len(decoded)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(decoded, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.concatenate([np.arange(0, max_lag + 1), np.arange(-max_lag, 0)])
    lag = int(lags[np.argmax(corr[lags])])
    shifted = decoded[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, dtype=decoded.dtype), decoded])
    return _fit_length(shifted, len(reference))


@dataclass(frozen=True)
class Codec:
    """Encode with ``codec`` at ``bitrate_kbps`` and decode back to the input's rate, re-aligned
    (encoder delay removed by cross-correlation) to the input's length.

    Codecs: ``mulaw``/``alaw`` (G.711, 8 kHz, 64 kbit/s), ``gsm`` (GSM 06.10, 8 kHz, 13.2 kbit/s),
    ``amr-nb`` (8 kHz, 4.75-12.2 kbit/s), ``mp3`` (8-32 kbit/s) through sox; ``opus`` (6-24 kbit/s)
    and ``g722`` (16 kHz, 64 kbit/s) through ffmpeg.
    """

    codec: str
    bitrate_kbps: float
    kind: ClassVar[str] = "codec"

    def __post_init__(self) -> None:
        if self.codec not in CODEC_KBPS:
            raise ValueError(f"codec: unknown {self.codec!r}; choose from {', '.join(CODEC_KBPS)}")
        if self.codec in ("mulaw", "alaw", "gsm", "g722", "amr-nb") and self.bitrate_kbps not in CODEC_KBPS[self.codec]:
            raise ValueError(f"codec {self.codec}: bitrate_kbps must be one of {CODEC_KBPS[self.codec]}")

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = _as_float32(audio)
        data = audio.astype("<f4").tobytes()
        what = f"codec {self.codec}"
        if self.codec in FFMPEG_CODECS:
            if shutil.which("ffmpeg") is None:
                raise RuntimeError(f"{what} needs ffmpeg (Debian package ffmpeg)")
            rate = str(CODEC_RATES[self.codec])
            ffmpeg = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
            f32 = ["-f", "f32le", "-ac", "1"]
            if self.codec == "opus":
                encode, container = ["-c:a", "libopus", "-b:a", f"{self.bitrate_kbps:g}k", "-f", "ogg"], "ogg"
            else:
                encode, container = ["-c:a", "g722", "-f", "g722"], "g722"
            encoded = _run(
                [*ffmpeg, *f32, "-ar", str(sample_rate), "-i", "pipe:0", "-ar", rate, *encode, "pipe:1"], data, what
            )
            decoded = _run(
                [*ffmpeg, "-f", container, "-i", "pipe:0", *f32, "-ar", str(sample_rate), "pipe:1"], encoded, what
            )
        else:
            rate = str(CODEC_RATES[self.codec])
            fmt = {"mulaw": ["-t", "ul"], "alaw": ["-t", "al"], "gsm": ["-t", "gsm"], "amr-nb": ["-t", "amr-nb"]}
            if self.codec == "mp3":
                enc_opts, dec_opts = ["-t", "mp3", "-C", f"{self.bitrate_kbps:g}"], ["-t", "mp3"]
            elif self.codec == "amr-nb":
                mode = AMR_NB_KBPS.index(self.bitrate_kbps)
                enc_opts, dec_opts = [*fmt["amr-nb"], "-C", str(mode), "-r", rate], fmt["amr-nb"]
            else:
                enc_opts, dec_opts = [*fmt[self.codec], "-r", rate], [*fmt[self.codec], "-r", rate, "-c", "1"]
            encoded = _run([*_SOX, *_sox_f32(sample_rate), *enc_opts, "-"], data, what)
            decoded = _run([*_SOX, *dec_opts, "-", *_sox_f32(sample_rate)], encoded, what)
        out = np.frombuffer(decoded, dtype="<f4").astype(np.float32)
        # Codec delays are a few ms (MP3's ~70 ms at most); search up to 0.15 s.
        return _align(audio, out, max_lag=int(0.15 * sample_rate))

    def describe(self) -> dict:
        return _describe(self)


# ----------------------------------------------------------------------------------------------
# Level


@dataclass(frozen=True)
class Clip:
    """Hard clipping at ``below_peak_db`` below the input's peak: ``clip(x, -t, t)`` with
    ``t = max|x| * 10^(-below_peak_db / 20)``, as an input stage driven too hard."""

    below_peak_db: float
    kind: ClassVar[str] = "clip"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = _as_float32(audio)
        threshold = np.float32(float(np.max(np.abs(audio), initial=0.0)) * 10 ** (-self.below_peak_db / 20))
        return np.clip(audio, -threshold, threshold)

    def describe(self) -> dict:
        return _describe(self)


@dataclass(frozen=True)
class Level:
    """Scale to a peak of ``peak_dbfs`` (dB relative to full scale 1.0); silence stays silence."""

    peak_dbfs: float
    kind: ClassVar[str] = "level"

    def apply(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = _as_float32(audio)
        peak = float(np.max(np.abs(audio), initial=0.0))
        if peak == 0.0:
            return audio.copy()
        return (audio.astype(np.float64) * (10 ** (self.peak_dbfs / 20) / peak)).astype(np.float32)

    def describe(self) -> dict:
        return _describe(self)


# ----------------------------------------------------------------------------------------------
# Random chains


@dataclass(frozen=True)
class AugmentConfig:
    """Which transforms a chain may hold (``kinds``, a subset of :data:`KINDS`), the probability
    of each, and the ranges its parameters are drawn from (uniformly unless said otherwise).

    Chains run in the order of :data:`KINDS`: voice, room, noise in the room, microphone band,
    clipping at the input stage, codec, and a final level. Every non-empty chain ends with a
    :class:`Level`, drawn from ``peak_dbfs`` when ``"level"`` is a kind, else at
    ``default_peak_dbfs``, so no chain overflows full scale.
    """

    kinds: tuple[str, ...] = KINDS
    p_pitch: float = 0.3
    pitch_semitones: tuple[float, float] = (-2.0, 2.0)
    p_reverb: float = 0.5
    room_m: tuple[tuple[float, float], tuple[float, float], tuple[float, float]] = ((3.0, 10.0), (3.0, 8.0), (2.4, 4.0))
    rt60_s: tuple[float, float] = (0.2, 0.8)
    p_noise: float = 0.5
    snr_db: tuple[float, float] = (0.0, 20.0)
    p_band: float = 0.3
    band_low_hz: tuple[float, float] = (50.0, 400.0)
    band_high_hz: tuple[float, float] = (3000.0, 7500.0)
    p_clip: float = 0.1
    clip_below_peak_db: tuple[float, float] = (1.0, 10.0)
    p_codec: float = 0.3
    codecs: tuple[str, ...] = tuple(CODEC_KBPS)
    p_level: float = 1.0
    peak_dbfs: tuple[float, float] = (-30.0, -1.0)
    default_peak_dbfs: float = -1.0

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"augment: unknown kinds {unknown}; choose from {', '.join(KINDS)}")
        bad_codecs = [c for c in self.codecs if c not in CODEC_KBPS]
        if bad_codecs:
            raise ValueError(f"augment: unknown codecs {bad_codecs}; choose from {', '.join(CODEC_KBPS)}")
        if "codec" in self.kinds and not self.codecs:
            raise ValueError("augment: the codec kind needs at least one codec")
        bad_p = [k for k in KINDS if not 0.0 <= getattr(self, f"p_{k}") <= 1.0]
        if bad_p:
            raise ValueError(f"augment: probabilities of {bad_p} must lie in [0, 1]")
        if max(*self.peak_dbfs, self.default_peak_dbfs) > 0:
            raise ValueError("augment: peak levels must be <= 0 dBFS (16-bit files hold nothing louder)")
        # Source and microphone keep 0.5 m from the walls and 0.5 m apart (see _sample_reverb).
        if min(low for low, _ in self.room_m) < 2.0:
            raise ValueError(f"augment: rooms need sides of at least 2 m, got {self.room_m}")

    def missing_requirements(self) -> list[str]:
        """What the chosen kinds need and this machine lacks, each naming the package to install."""
        problems = []
        if ({"pitch", "codec"} & set(self.kinds)) and shutil.which("sox") is None:
            problems.append("augmentation: sox is not installed (Debian packages sox, libsox-fmt-all)")
        if "codec" in self.kinds and FFMPEG_CODECS & set(self.codecs) and shutil.which("ffmpeg") is None:
            problems.append("augmentation: codecs opus and g722 need ffmpeg (Debian package ffmpeg)")
        if "reverb" in self.kinds and importlib.util.find_spec("pyroomacoustics") is None:
            problems.append(
                "augmentation: reverb needs the Python package pyroomacoustics (`pip install -e '.[synth]'`)"
            )
        return problems


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int = 3) -> float:
    return round(float(rng.uniform(*bounds)), digits)


def _sample_reverb(rng: np.random.Generator, config: AugmentConfig) -> Reverb:
    room = tuple(_uniform(rng, bounds, 2) for bounds in config.room_m)
    lo = max(config.rt60_s[0], round(1.2 * min_rt60_s(room), 3))
    rt60 = _uniform(rng, (lo, max(lo, config.rt60_s[1])))
    margin = 0.5  # metres from any wall
    while True:  # source and microphone at least 0.5 m apart (rejection; rooms are >= 2.4 m)
        source = tuple(_uniform(rng, (margin, side - margin), 2) for side in room)
        mic = tuple(_uniform(rng, (margin, side - margin), 2) for side in room)
        if math.dist(source, mic) >= 0.5:
            break
    return Reverb(room, rt60, source, mic, seed=int(rng.integers(2**31)))


def sample_chain(
    rng: np.random.Generator, config: AugmentConfig, noise_files: Sequence[str] = (), noise_seconds: float = 0.0
) -> tuple[Transform, ...]:
    """A random chain: each kind of ``config.kinds`` with its probability, parameters from its ranges.

    ``noise_files`` (each at least ``noise_seconds`` long) are the noises :class:`AddNoise` picks
    from; the ``"noise"`` kind needs them. Draws the same number of values for every kind whether
    or not it is chosen, so the draw of one kind does not depend on the others.
    """
    kinds = set(config.kinds)
    if "noise" in kinds and not noise_files:
        raise ValueError("augment: the noise kind needs noise files")
    chain: list[Transform] = []
    draws = {kind: float(rng.random()) for kind in KINDS}
    sub = {kind: np.random.default_rng(int(rng.integers(2**62))) for kind in KINDS}
    chosen = {k for k in KINDS if k in kinds and draws[k] < getattr(config, f"p_{k}")}
    if "pitch" in chosen:
        chain.append(PitchShift(_uniform(sub["pitch"], config.pitch_semitones, 2)))
    if "reverb" in chosen:
        chain.append(_sample_reverb(sub["reverb"], config))
    if "noise" in chosen:
        r = sub["noise"]
        noise = noise_files[int(r.integers(len(noise_files)))]
        chain.append(AddNoise(noise, _uniform(r, (0.0, noise_seconds)), _uniform(r, config.snr_db, 2)))
    if "band" in chosen:
        r = sub["band"]
        chain.append(BandLimit(_uniform(r, config.band_low_hz, 0), _uniform(r, config.band_high_hz, 0)))
    if "clip" in chosen:
        chain.append(Clip(_uniform(sub["clip"], config.clip_below_peak_db, 2)))
    if "codec" in chosen:
        r = sub["codec"]
        codec = config.codecs[int(r.integers(len(config.codecs)))]
        rates = CODEC_KBPS[codec]
        chain.append(Codec(codec, rates[int(r.integers(len(rates)))]))
    if "level" in chosen:
        chain.append(Level(_uniform(sub["level"], config.peak_dbfs, 2)))
    elif chain:
        chain.append(Level(config.default_peak_dbfs))
    return tuple(chain)


def apply_chain(audio: np.ndarray, sample_rate: int, chain: Sequence[Transform]) -> np.ndarray:
    """Run ``chain`` in order on ``audio`` ``(T,)``; returns float32 ``(T,)``."""
    out = _as_float32(audio)
    for transform in chain:
        out = transform.apply(out, sample_rate)
    return out


def describe_chain(chain: Sequence[Transform]) -> list[dict]:
    return [transform.describe() for transform in chain]
