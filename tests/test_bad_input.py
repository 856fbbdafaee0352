"""Bad input: each case gives an error naming the file, or a counted skip, never a crash of a run."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

from asr import cli
from asr.data import features as features_module
from asr.data.audio import AudioError, load_audio
from asr.data.datamodule import AsrDataModule, DataConfig, filter_cuts
from asr.data.tokenizer import CharTokenizer, build_char_tokenizer


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    sf.write(path, samples, rate, subtype="PCM_16")
    return path


def speech_cuts(paths: list[Path], texts: list[str]) -> CutSet:
    recordings = [Recording.from_file(p, recording_id=p.stem) for p in paths]
    supervisions = [
        SupervisionSegment(id=r.id, recording_id=r.id, start=0.0, duration=r.duration, text=text)
        for r, text in zip(recordings, texts)
    ]
    return (
        CutSet.from_manifests(
            recordings=RecordingSet.from_recordings(recordings),
            supervisions=SupervisionSet.from_segments(supervisions),
        )
        .trim_to_supervisions()
        .to_eager()
    )


# ---------------------------------------------------------------------------------------- load_audio


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match=r"nowhere\.wav: does not exist"):
        load_audio(path)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    with pytest.raises(AudioError, match=r"empty\.wav: empty file \(0 bytes\)"):
        load_audio(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"RIFF" + bytes(range(256)) * 8)
    with pytest.raises(AudioError, match=r"corrupt\.wav: not a readable audio file"):
        load_audio(path)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.flac"
    path.write_text("these are meeting notes, not audio\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.flac: not a readable audio file"):
        load_audio(path)


def test_truncated_wav(tmp_path):
    full = write_wav(tmp_path / "full.wav", tone(440, 1.0, 16000))
    data = full.read_bytes()
    cut_short = tmp_path / "cut_short.wav"
    cut_short.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut_short\.wav: truncated file: header declares 32000 bytes"):
        load_audio(cut_short)
    assert load_audio(full).shape == (16000,)  # the intact file reads


def test_truncated_flac(tmp_path):
    full = tmp_path / "full.flac"
    sf.write(full, tone(440, 1.0, 16000), 16000)
    data = full.read_bytes()
    cut_short = tmp_path / "cut_short.flac"
    cut_short.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"cut_short\.flac: not a readable audio file"):
        load_audio(cut_short)


def test_zero_samples(tmp_path):
    path = write_wav(tmp_path / "silent.wav", np.zeros(0, dtype=np.float32))
    with pytest.raises(AudioError, match=r"silent\.wav: contains no audio samples"):
        load_audio(path)


def test_audio_error_is_value_error():
    assert issubclass(AudioError, ValueError)


def test_mp3_without_decoder_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "speech.mp3"
    path.write_bytes(b"ID3" + bytes(100))
    monkeypatch.setattr(sf, "available_formats", lambda: {"WAV": "", "FLAC": ""})
    with pytest.raises(AudioError, match=r"speech\.mp3: mp3 is not supported"):
        load_audio(path)


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without mp3")
def test_mp3_reads_when_supported(tmp_path):
    path = tmp_path / "tone.mp3"
    sf.write(path, tone(440, 1.0, 16000), 16000, format="MP3")
    samples = load_audio(path)
    # mp3 encoders add priming/padding samples; the length stays within a few frames.
    assert abs(len(samples) - 16000) < 3000


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("file_rate", [8000, 22050, 44100, 48000])
def test_other_sample_rates_are_resampled(tmp_path, file_rate):
    seconds = 1.5
    path = write_wav(tmp_path / f"tone{file_rate}.wav", tone(440, seconds, file_rate), file_rate)
    samples = load_audio(path, sample_rate=16000)
    assert samples.dtype == np.float32
    assert len(samples) == math.ceil(round(seconds * file_rate) * 16000 / file_rate)
    assert len(samples) / 16000 == pytest.approx(seconds, abs=1e-3)
    # 1.5 s gives 2/3 Hz FFT bins: the peak must land on the bin nearest 440 Hz.
    assert dominant_frequency(samples, 16000) == pytest.approx(440, abs=0.7)
    # Amplitude is kept (a 0.3 sine has RMS 0.3/sqrt(2)), away from the filter's edge effects.
    middle = samples[2000:-2000]
    assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.01)


def test_stereo_is_averaged(tmp_path):
    left, right = tone(440, 0.5, 16000), tone(440, 0.5, 16000, amplitude=0.1)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(path), (left + right) / 2, atol=1e-7)


# ---------------------------------------------------------------------------- unknown characters


def test_unknown_characters_are_counted_and_filtered(tmp_path, caplog):
    tokenizer = build_char_tokenizer(["今天天气很好", "我们去公园"], tmp_path / "lang_char")
    caplog.set_level(logging.WARNING, logger="asr.data.tokenizer")
    ids = tokenizer.encode("今天 下雪")  # 下 and 雪 are not in the table
    assert ids == [tokenizer.token_to_id("今"), tokenizer.token_to_id("天"), 2, 2]
    assert tokenizer.unknown_counts == {"下": 1, "雪": 1}
    assert "'下'" in caplog.text and str(tmp_path / "lang_char" / "tokens.txt") in caplog.text

    paths = [write_wav(tmp_path / f"u{i}.wav", tone(300 + 50 * i, 1.0, 16000)) for i in range(3)]
    cuts = speech_cuts(paths, ["今天很好", "我们去下雪", "公园"])
    caplog.set_level(logging.INFO, logger="asr.data.datamodule")
    kept = filter_cuts(cuts, tokenizer)
    assert sorted(kept.ids) == ["u0", "u2"]
    assert "kept 2 of 3 cuts: 0 too short, 0 too many tokens, 1 unknown symbols" in caplog.text


def test_char_tokenizer_rejects_a_bad_table(tmp_path):
    path = tmp_path / "tokens.txt"
    path.write_text("<blk> 0\n<unk> 1\n<sos/eos> 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokens\.txt: <sos/eos> must have id 1"):
        CharTokenizer.from_file(path)
    path.write_text("<blk> 0\n<sos/eos> 1\n<unk> 2\nab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokens\.txt:4: expected '<symbol> <id>'"):
        CharTokenizer.from_file(path)


# ------------------------------------------------------------------------ a DataLoader with a bad cut


def corpus_with_one_corrupt(tmp_path: Path, num_good: int = 5) -> CutSet:
    paths = [write_wav(tmp_path / f"good{i}.wav", tone(200 + 40 * i, 0.6 + 0.1 * i, 16000)) for i in range(num_good)]
    broken = write_wav(tmp_path / "broken.wav", tone(500, 0.8, 16000))
    cuts = speech_cuts([*paths, broken], [f"utterance {i}" for i in range(num_good + 1)])
    broken.write_bytes(b"RIFF" + bytes(200))  # corrupted after the manifest was made
    return cuts


@pytest.mark.parametrize("num_workers", [0, 1])
def test_dataloader_skips_the_corrupt_cut(tmp_path, caplog, num_workers):
    cuts = corpus_with_one_corrupt(tmp_path)
    config = DataConfig(max_duration=2.0, shuffle=False, drop_last=False, num_workers=num_workers)
    loader = AsrDataModule(config, world_size=1, rank=0).train_dataloader(cuts)
    caplog.set_level(logging.WARNING, logger="asr.data.datamodule")
    seen = [cut_id for batch in loader for cut_id in batch["cut_ids"]]
    assert sorted(seen) == [f"good{i}" for i in range(5)]
    assert loader.num_skipped == 1
    if num_workers == 0:  # worker processes log to their own stderr
        assert loader.dataset.num_skipped == 1
        assert "skipping cut broken" in caplog.text and str(tmp_path / "broken.wav") in caplog.text


def test_batch_of_only_bad_cuts_is_not_yielded(tmp_path):
    cuts = corpus_with_one_corrupt(tmp_path, num_good=2)
    broken_only = cuts.filter(lambda c: c.id == "broken").to_eager()
    loader = AsrDataModule(DataConfig(num_workers=0, drop_last=False), world_size=1, rank=0).valid_dataloader(
        broken_only
    )
    assert list(loader) == []
    assert loader.num_skipped == 1


def test_missing_feature_file_is_a_counted_skip(tmp_path, caplog):
    cuts = corpus_with_one_corrupt(tmp_path, num_good=3).filter(lambda c: c.id != "broken").to_eager()
    with_feats = features_module.compute_and_store_fbank(cuts, tmp_path / "feats" / "a")
    # A second storage file that then disappears: its cut cannot be loaded.
    lost = features_module.compute_and_store_fbank(
        cuts.subset(first=1).modify_ids(lambda i: i + "_lost"), tmp_path / "feats" / "b"
    )
    (tmp_path / "feats" / "b.lca").unlink()
    caplog.set_level(logging.WARNING, logger="asr.data.datamodule")
    loader = AsrDataModule(DataConfig(num_workers=0, drop_last=False), world_size=1, rank=0).valid_dataloader(
        with_feats + lost
    )
    seen = sorted(cut_id for batch in loader for cut_id in batch["cut_ids"])
    assert seen == sorted(cuts.ids)
    assert loader.num_skipped == 1
    assert "skipping cut good0_lost" in caplog.text and "b.lca" in caplog.text


def test_fbank_cli_skips_unreadable_audio(tmp_path, caplog):
    cuts = corpus_with_one_corrupt(tmp_path, num_good=2)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    caplog.set_level(logging.WARNING)
    code = cli.main(
        ["data", "fbank", "--cuts", str(tmp_path / "cuts.jsonl.gz"), "--out", str(tmp_path / "out.jsonl.gz")]
    )
    assert code == 0
    written = CutSet.from_file(tmp_path / "out.jsonl.gz")
    assert sorted(written.ids) == ["good0", "good1"]
    assert "skipped 1 of 3 cuts whose audio could not be read: broken" in caplog.text
