"""Acoustic augmentations (asr.data.acoustics) against closed forms and independent measurements,
and `asr data synth --augment` end to end."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from asr import cli
from asr.data import acoustics, synth
from asr.data.acoustics import AddNoise, AugmentConfig, BandLimit, Clip, Codec, Level, PitchShift, Reverb

SR = 16000

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed (tools/install_system_deps.sh)")


def _bursts(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    """Speech-like test signal: noise in 4 Hz syllables, silent for the last 0.5 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2 * (t < seconds - 0.5)
    return (0.3 * envelope * rng.standard_normal(len(t))).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 2.5 s of espeak-ng speech at 16 kHz, float32 ``(T,)``: codecs model speech, not noise."""
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        pytest.skip("espeak-ng and sox are needed (tools/install_system_deps.sh)")
    wav = subprocess.run(["espeak-ng", "--stdout", "the quick brown fox jumps over the lazy dog"], capture_output=True)
    raw = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "f32", "-r", str(SR), "-c", "1", "-"], input=wav.stdout, capture_output=True
    )
    return np.frombuffer(raw.stdout, dtype="<f4").astype(np.float32)


def _lag(reference: np.ndarray, signal: np.ndarray, max_lag: int) -> int:
    """Brute-force lag of ``signal`` behind ``reference`` by the dot product at each shift."""
    n = len(reference)
    scores = {
        lag: float(np.dot(reference[max(0, -lag) : n - max(0, lag)], signal[max(0, lag) : n - max(0, -lag)]))
        for lag in range(-max_lag, max_lag + 1)
    }
    return max(scores, key=scores.get)


def _band_energy_db(audio: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / SR)
    return 10 * math.log10(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum() + 1e-20)


# ----------------------------------------------------------------------------------------------
# Reverberation


def _schroeder_rt60(h: np.ndarray) -> float:
    """RT60 from the backward-integrated energy decay, extrapolated from its -5..-35 dB span (T30)."""
    energy = np.cumsum(h[::-1] ** 2)[::-1]
    decay_db = 10 * np.log10(energy / energy[0])
    return 2 * (np.argmax(decay_db < -35) - np.argmax(decay_db < -5)) / SR


ROOM = dict(room_m=(6.0, 5.0, 3.0), source_m=(2.0, 3.0, 1.5), mic_m=(4.0, 1.5, 1.2))


@pytest.mark.parametrize("rt60_s", [0.3, 0.6])
def test_reverb_impulse_response_decays_at_the_requested_rate(rt60_s):
    pytest.importorskip("pyroomacoustics")
    h = Reverb(rt60_s=rt60_s, seed=1, **ROOM).impulse_response(SR)
    assert int(np.argmax(np.abs(h))) == 0  # direct path first: speech keeps its timing
    assert abs(_schroeder_rt60(h) - rt60_s) < 0.15 * rt60_s


def test_reverb_keeps_length_and_changes_the_signal():
    pytest.importorskip("pyroomacoustics")
    dry = _bursts()
    reverb = Reverb(rt60_s=0.6, seed=7, **ROOM)
    wet = reverb.apply(dry, SR)
    assert wet.dtype == np.float32 and wet.shape == dry.shape
    # A second implementation: direct convolution with the same response, scaled to the dry RMS.
    h = reverb.impulse_response(SR)
    direct = np.convolve(dry.astype(np.float64), h)[: len(dry)]
    direct *= np.sqrt(np.mean(dry.astype(np.float64) ** 2) / np.mean(direct**2))
    np.testing.assert_allclose(wet, direct, atol=1e-5)
    assert np.corrcoef(dry, wet)[0, 1] < 0.6
    # The last 0.5 s is silent when dry; the room's tail fills it.
    tail = slice(len(dry) - SR // 2, len(dry) - SR // 4)
    assert np.all(dry[tail] == 0)
    assert 10 * np.log10(np.mean(wet[tail] ** 2) / np.mean(wet**2)) > -40
    # Same seed, same audio; another seed, another tail.
    np.testing.assert_array_equal(reverb.apply(dry, SR), wet)
    other = dataclasses.replace(reverb, seed=8).apply(dry, SR)
    assert not np.array_equal(other, wet)


def test_reverb_rejects_impossible_rooms():
    with pytest.raises(ValueError, match="mic_m"):
        Reverb(room_m=(3.0, 3.0, 3.0), rt60_s=0.5, source_m=(1.0, 1.0, 1.0), mic_m=(1.0, 3.5, 1.0), seed=0)
    # Sabine: 0.161 * 720 / 504 = 0.23 s even with fully absorbing walls.
    assert acoustics.min_rt60_s((12.0, 10.0, 6.0)) == pytest.approx(0.1611 * 720 / 504, rel=1e-3)
    with pytest.raises(ValueError, match="rt60_s"):
        Reverb(room_m=(12.0, 10.0, 6.0), rt60_s=0.2, source_m=(1.0, 1.0, 1.0), mic_m=(3.0, 3.0, 1.0), seed=0)


# ----------------------------------------------------------------------------------------------
# Noise


@pytest.mark.parametrize("snr_db", [0.0, 5.0, 12.5, 20.0])
def test_noise_is_mixed_at_the_requested_snr(tmp_path, snr_db):
    noise = np.random.default_rng(1).standard_normal(SR).astype(np.float32) * 0.05  # 1 s: loops under 2 s
    path = tmp_path / "noise.wav"
    soundfile.write(path, noise, SR, subtype="FLOAT")
    speech = _bursts()
    transform = AddNoise(str(path), offset_s=0.75, snr_db=snr_db)
    mixed = transform.apply(speech, SR)
    added = mixed.astype(np.float64) - speech
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added**2))
    assert abs(measured - snr_db) < 0.5
    # What was added is the file's noise from 0.75 s on, looping at its end.
    expected = np.tile(noise, 3)[int(0.75 * SR) : int(0.75 * SR) + len(speech)]
    assert np.corrcoef(added, expected)[0, 1] > 0.9999
    assert transform.describe() == {"type": "noise", "noise": "noise", "offset_s": 0.75, "snr_db": snr_db}


# ----------------------------------------------------------------------------------------------
# Microphone and channel


def test_band_limit_passes_the_band_and_cuts_outside():
    t = np.arange(SR) / SR
    tones = {hz: np.sin(2 * np.pi * hz * t).astype(np.float32) for hz in (60, 1000, 7000)}
    band = BandLimit(300.0, 3400.0)
    gains = {hz: 20 * np.log10(np.std(band.apply(x, SR)[SR // 4 : -SR // 4]) / np.std(x)) for hz, x in tones.items()}
    assert abs(gains[1000]) < 0.5
    assert gains[60] < -40 and gains[7000] < -40
    wideband = BandLimit(100.0, 8000.0)  # at Nyquist: high-pass only
    assert abs(20 * np.log10(np.std(wideband.apply(tones[7000], SR)) / np.std(tones[7000]))) < 0.5


def test_align_recovers_a_known_delay():
    rng = np.random.default_rng(0)
    reference = rng.standard_normal(4000).astype(np.float32)
    for delay in (0, 37, 700):
        delayed = np.concatenate([np.zeros(delay, np.float32), reference, np.zeros(50, np.float32)])
        np.testing.assert_array_equal(acoustics._align(reference, delayed, max_lag=1000), reference)
    early = reference[25:]
    aligned = acoustics._align(reference, early, max_lag=100)
    np.testing.assert_array_equal(aligned[25:], early)


@needs_sox
@pytest.mark.parametrize("codec", list(acoustics.CODEC_KBPS))
def test_codec_round_trips_to_16khz_in_time(speech, codec):
    if codec in acoustics.FFMPEG_CODECS and shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed (Debian package ffmpeg)")
    rate_kbps = acoustics.CODEC_KBPS[codec][-1]
    out = Codec(codec, rate_kbps).apply(speech, SR)
    assert out.dtype == np.float32 and out.shape == speech.shape
    assert not np.array_equal(out, speech)
    # Aligned: the brute-force cross-correlation peaks within a sample of no delay.
    assert abs(_lag(speech, out, max_lag=400)) <= 1
    # Telephone codecs keep nothing above 4 kHz.
    if acoustics.CODEC_RATES[codec] == 8000:
        assert _band_energy_db(out, 4200, 8000) - _band_energy_db(speech, 4200, 8000) < -30
    # Waveform codecs keep the waveform; the others at least the short-time energy contour.
    if codec in ("mulaw", "alaw", "g722"):
        assert np.corrcoef(out, speech)[0, 1] > 0.95
    frames = len(speech) // 320
    env_in = np.sqrt((speech[: frames * 320].reshape(frames, 320) ** 2).mean(1))
    env_out = np.sqrt((out[: frames * 320].reshape(frames, 320) ** 2).mean(1))
    assert np.corrcoef(env_in, env_out)[0, 1] > 0.9
    np.testing.assert_array_equal(Codec(codec, rate_kbps).apply(speech, SR), out)


def test_codec_rejects_unknown_names_and_rates():
    with pytest.raises(ValueError, match="unknown 'speex'"):
        Codec("speex", 8.0)
    with pytest.raises(ValueError, match="amr-nb"):
        Codec("amr-nb", 9.0)


# ----------------------------------------------------------------------------------------------
# Voice and level


@needs_sox
def test_pitch_shift_moves_a_tone_by_the_semitones():
    t = np.arange(2 * SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for semitones in (2.0, -3.0):
        out = PitchShift(semitones).apply(tone, SR)
        assert out.shape == tone.shape
        spectrum = np.abs(np.fft.rfft(out[SR // 4 : -SR // 4] * np.hanning(len(tone) - SR // 2)))
        peak_hz = np.fft.rfftfreq(len(tone) - SR // 2, 1 / SR)[np.argmax(spectrum)]
        assert abs(peak_hz / (440 * 2 ** (semitones / 12)) - 1) < 0.01


def test_clip_and_level_are_exact():
    x = _bursts()
    peak = float(np.max(np.abs(x)))
    clipped = Clip(6.0).apply(x, SR)
    threshold = np.float32(peak * 10 ** (-6 / 20))
    np.testing.assert_array_equal(clipped, np.clip(x, -threshold, threshold))
    assert float(np.max(np.abs(clipped))) == pytest.approx(peak * 10 ** (-6 / 20), rel=1e-6)
    assert np.mean(np.abs(clipped) == threshold) > 0.001  # the clipped samples sit at the threshold
    leveled = Level(-20.0).apply(x, SR)
    assert float(np.max(np.abs(leveled))) == pytest.approx(0.1, rel=1e-6)
    nonzero = x != 0
    np.testing.assert_allclose(leveled[nonzero] / x[nonzero], 0.1 / peak, rtol=1e-5)
    silence = np.zeros(100, np.float32)
    np.testing.assert_array_equal(Level(-3.0).apply(silence, SR), silence)


# ----------------------------------------------------------------------------------------------
# Random chains


def test_sample_chain_is_seeded_ordered_and_recordable():
    config = AugmentConfig()
    noises = ["/n/pinknoise.wav", "/n/babble0.wav"]
    chains = [acoustics.sample_chain(np.random.default_rng([4, i]), config, noises, 30.0) for i in range(600)]
    again = [acoustics.sample_chain(np.random.default_rng([4, i]), config, noises, 30.0) for i in range(600)]
    assert chains == again
    order = {kind: i for i, kind in enumerate(acoustics.KINDS)}
    for chain in chains:
        kinds = [t.kind for t in chain]
        assert kinds == sorted(kinds, key=order.get)
        assert not chain or kinds[-1] == "level"
        json.dumps(acoustics.describe_chain(chain))  # manifests must be able to hold it
    # Each kind appears with its probability (600 draws: within 0.07).
    for kind in ("pitch", "reverb", "noise", "band", "codec", "clip"):
        share = np.mean([any(t.kind == kind for t in c) for c in chains])
        assert abs(share - getattr(config, f"p_{kind}")) < 0.07, kind
    for chain in chains:
        for t in chain:
            if isinstance(t, Reverb):
                assert config.rt60_s[0] <= t.rt60_s <= config.rt60_s[1]
                assert math.dist(t.source_m, t.mic_m) >= 0.5
            elif isinstance(t, AddNoise):
                assert t.noise_file in noises and 0 <= t.offset_s <= 30 and 0 <= t.snr_db <= 20
            elif isinstance(t, Codec):
                assert t.bitrate_kbps in acoustics.CODEC_KBPS[t.codec]
    # Leaving a kind out changes nothing of the others' draws.
    no_pitch = dataclasses.replace(config, kinds=tuple(k for k in acoustics.KINDS if k != "pitch"))
    for i, chain in enumerate(chains[:100]):
        other = acoustics.sample_chain(np.random.default_rng([4, i]), no_pitch, noises, 30.0)
        assert [t for t in chain if t.kind not in ("pitch", "level")] == [t for t in other if t.kind != "level"]
    with pytest.raises(ValueError, match="unknown kinds"):
        AugmentConfig(kinds=("echo",))
    with pytest.raises(ValueError, match="dBFS"):
        AugmentConfig(peak_dbfs=(-6.0, 3.0))


@needs_sox
def test_a_chain_is_deterministic_end_to_end(tmp_path):
    pytest.importorskip("pyroomacoustics")
    path = tmp_path / "pinknoise.wav"
    soundfile.write(path, np.random.default_rng(2).standard_normal(2 * SR).astype(np.float32) * 0.1, SR)
    chain = (
        PitchShift(1.5),
        Reverb(rt60_s=0.4, seed=3, **ROOM),
        AddNoise(str(path), 0.5, 10.0),
        BandLimit(200.0, 6000.0),
        Clip(3.0),
        Codec("gsm", 13.2),
        Level(-12.0),
    )
    x = _bursts(seed=5)
    out = acoustics.apply_chain(x, SR, chain)
    assert out.shape == x.shape and float(np.max(np.abs(out))) == pytest.approx(10 ** (-12 / 20), rel=1e-6)
    np.testing.assert_array_equal(acoustics.apply_chain(x, SR, chain), out)


# ----------------------------------------------------------------------------------------------
# asr data synth --augment


def test_synth_with_augmentation_records_every_transform(tmp_path):
    config = AugmentConfig()
    try:
        synth.check_engines(["espeak"])
    except synth.EngineMissingError as e:
        pytest.skip(f"espeak-ng/sox not installed: {e}")
    if config.missing_requirements():
        pytest.skip("; ".join(config.missing_requirements()))
    argv = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "12", "--seed", "2", "--engines", "espeak"]
    argv += ["--augment", "all", "--augment-splits", "train,test", "--num-workers", "1", "--no-progress"]
    assert cli.main(argv) == 0
    from lhotse import load_manifest

    kinds_seen = set()
    for split in synth.SPLITS:
        for cut in load_manifest(tmp_path / f"synth_cuts_{split}.jsonl.gz"):
            (sup,) = cut.supervisions
            record = sup.custom
            assert record["voice"] == sup.speaker and record["engine_speed"] > 0
            transforms = record["transforms"]
            if split == "dev":
                assert transforms == []
            kinds_seen |= {t["type"] for t in transforms}
            audio, rate = soundfile.read(cut.recording.sources[0].source, dtype="float32")
            assert rate == SR and len(audio) == cut.recording.num_samples
            if transforms:  # the recorded final level is the file's peak (to 16-bit precision)
                assert transforms[-1]["type"] == "level"
                assert 20 * np.log10(np.max(np.abs(audio))) == pytest.approx(transforms[-1]["peak_dbfs"], abs=0.01)
            else:
                assert 20 * np.log10(np.max(np.abs(audio))) == pytest.approx(synth.PEAK_DB, abs=0.1)
    assert {"reverb", "level"} <= kinds_seen
    assert sorted(p.name for p in (tmp_path / "noise").iterdir()) == sorted(
        Path(f).name for f in synth.noise_files(tmp_path / "noise")
    )
    # A rerun resumes: nothing is rewritten.
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")} == before


def test_augmented_plan_leaves_the_clean_plan_alone(tmp_path):
    texts = [f"sentence number {w} is here now {i}" for i, w in enumerate("abcdefghijklmnopqrstuvwxyz" * 2)]
    clean = synth.plan_corpus(texts, 30, seed=5)
    augmented = synth.plan_corpus(texts, 30, seed=5, augment=AugmentConfig(), noise_dir=tmp_path)
    assert len(clean) == len(augmented)
    for a, b in zip(clean, augmented):
        assert dataclasses.replace(b, id=a.id, augment=()) == a
        # Only augmented utterances get a new id (the chain is part of its digest).
        assert (a.id == b.id) == (not b.augment)
        assert b.split == "train" or not b.augment
    assert sum(bool(u.augment) for u in augmented) > 15
    assert augmented == synth.plan_corpus(texts, 30, seed=5, augment=AugmentConfig(), noise_dir=tmp_path)
    with pytest.raises(ValueError, match="noise_dir"):
        synth.plan_corpus(texts, 30, seed=5, augment=AugmentConfig())


def test_bad_augment_options_are_clear_errors(tmp_path, capsys):
    base = ["data", "synth", "--out-dir", str(tmp_path), "--num-utts", "10"]
    for option, value in (("--augment", "reverb,echo"), ("--augment-splits", "train,eval"), ("--augment-codecs", "")):
        with pytest.raises(SystemExit):
            cli.main([*base, "--augment", "all", option, value] if option != "--augment" else [*base, option, value])
        assert option in capsys.readouterr().err
