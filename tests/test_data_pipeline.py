"""Features, sampler, filtering, batches and augmentation of the data pipeline."""

from __future__ import annotations

import logging
import math
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Fbank, FbankConfig, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.cut import MonoCut
from lhotse.utils import LOG_EPSILON, compute_num_frames

from asr import cli
from asr.data.audio import load_audio
from asr.data.augment import (
    make_babble,
    make_noise_cuts,
    make_noise_mixer,
    make_spec_augment,
    musan_noise_cuts,
    speed_perturb,
    speed_perturb_one_of,
)
from asr.data.datamodule import (
    AsrDataModule,
    CutFilter,
    DataConfig,
    filter_cuts,
    zipformer_output_frames,
)
from asr.data.features import compute_and_store_fbank, compute_fbank
from asr.data.tokenizer import build_char_tokenizer

# lilcom stores log-energies on a 2^-6 grid: measured max error on these fbanks is 0.0156.
LILCOM_ATOL = 0.03


def speechlike(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A few harmonics with a slow amplitude envelope plus a little noise (fbank-friendly, not silent)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    f0 = 100 + 50 * rng.random()
    wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 2 * t)
    return (0.1 * envelope * wave + 0.003 * rng.standard_normal(len(t))).astype(np.float32)


def make_corpus(tmp_path, durations, texts=None, rate=16000) -> CutSet:
    texts = texts if texts is not None else [f"text of utterance {i}" for i in range(len(durations))]
    recordings, supervisions = [], []
    for i, seconds in enumerate(durations):
        path = tmp_path / f"utt{i}.wav"
        sf.write(path, speechlike(seconds, rate, seed=i), rate, subtype="PCM_16")
        recording = Recording.from_file(path, recording_id=f"utt{i}")
        recordings.append(recording)
        supervisions.append(
            SupervisionSegment(
                id=f"utt{i}", recording_id=f"utt{i}", start=0.0, duration=recording.duration, text=texts[i]
            )
        )
    return (
        CutSet.from_manifests(
            recordings=RecordingSet.from_recordings(recordings),
            supervisions=SupervisionSet.from_segments(supervisions),
        )
        .trim_to_supervisions()
        .to_eager()
    )


def audio_free_cuts(durations, texts=None) -> CutSet:
    """Cuts with durations and texts only: enough for samplers and filters."""
    cuts = []
    for i, seconds in enumerate(durations):
        num_samples = int(round(seconds * 16000))
        recording = Recording(
            id=f"r{i}", sources=[], sampling_rate=16000, num_samples=num_samples, duration=num_samples / 16000
        )
        text = texts[i] if texts is not None else "x"
        supervision = SupervisionSegment(
            id=f"s{i}", recording_id=f"r{i}", start=0, duration=recording.duration, text=text
        )
        cuts.append(
            MonoCut(
                id=f"c{i:03d}",
                start=0,
                duration=recording.duration,
                channel=0,
                recording=recording,
                supervisions=[supervision],
            )
        )
    return CutSet.from_cuts(cuts)


# ------------------------------------------------------------------------------------------ features


def test_compute_fbank_is_lhotse_fbank():
    samples = speechlike(1.234, 16000, seed=0)
    features = compute_fbank(samples, 16000)
    reference = Fbank(FbankConfig(num_mel_bins=80)).extract(samples, 16000)
    assert features.dtype == torch.float32
    assert features.shape == (123, 80) == reference.shape
    torch.testing.assert_close(features, torch.from_numpy(reference), rtol=0, atol=0)


def test_compute_fbank_matches_lhotse_cut_features(tmp_path):
    cut = make_corpus(tmp_path, [0.87])[0]
    reference = cut.compute_features(Fbank(FbankConfig(num_mel_bins=80)))
    torch.testing.assert_close(
        compute_fbank(load_audio(cut.recording.sources[0].source), 16000), torch.from_numpy(reference)
    )
    assert reference.shape[0] == compute_num_frames(cut.duration, 0.01, 16000)


def test_compute_fbank_resamples_other_rates():
    samples = speechlike(1.5, 8000, seed=1)
    features = compute_fbank(samples, 8000)
    assert features.shape == (150, 80)
    with pytest.raises(ValueError, match="mono waveform"):
        compute_fbank(np.zeros((2, 100), dtype=np.float32), 16000)


def test_fbank_cli_stores_features_and_speed_perturbs(tmp_path):
    cuts = make_corpus(tmp_path, [0.9, 1.3])
    low_rate = make_corpus(tmp_path / "..", [0.7], rate=8000).modify_ids(lambda i: "narrowband")
    (cuts + low_rate).to_file(tmp_path / "in.jsonl.gz")
    out = tmp_path / "fbank" / "x_cuts_train.jsonl.gz"
    assert (
        cli.main(["data", "fbank", "--cuts", str(tmp_path / "in.jsonl.gz"), "--out", str(out), "--speed-perturb"]) == 0
    )
    written = CutSet.from_file(out)
    base_ids = ["utt0", "utt1", "narrowband"]
    assert sorted(written.ids) == sorted(base_ids + [f"{i}_sp{f}" for i in base_ids for f in ("0.9", "1.1")])
    assert (tmp_path / "fbank" / "x_cuts_train_feats" / "feats.lca").is_file()
    by_id = {cut.id: cut for cut in written}
    for cut in written:
        assert cut.sampling_rate == 16000 and cut.num_features == 80
        assert cut.num_frames == compute_num_frames(cut.duration, 0.01, 16000) == cut.load_features().shape[0]
    assert by_id["utt0_sp0.9"].duration == pytest.approx(0.9 / 0.9, abs=1e-3)
    assert by_id["utt1_sp1.1"].duration == pytest.approx(1.3 / 1.1, abs=1e-3)
    stored = by_id["utt1"].load_features()
    direct = compute_fbank(load_audio(tmp_path / "utt1.wav"), 16000).numpy()
    np.testing.assert_allclose(stored, direct, atol=LILCOM_ATOL)

    # "one-of": each cut once, at the speed the seed draws; a perturbed cut's features are the fbank
    # of its resampled audio.
    out = tmp_path / "fbank" / "one_of.jsonl.gz"
    argv = ["--cuts", str(tmp_path / "in.jsonl.gz"), "--out", str(out), "--speed-perturb", "one-of", "--seed", "1"]
    assert cli.main(["data", "fbank", *argv]) == 0
    written = CutSet.from_file(out)
    assert sorted(i.rsplit("_sp", 1)[0] for i in written.ids) == sorted(base_ids)
    for cut in written:
        np.testing.assert_allclose(
            cut.load_features(), compute_fbank(cut.load_audio()[0], 16000).numpy(), atol=LILCOM_ATOL
        )
    with pytest.raises(ValueError, match="speed_perturb must be one of"):
        compute_and_store_fbank(written, tmp_path / "x", speed_perturb="twice")


# ------------------------------------------------------------------------------ subsampling & filter


def conv_stack_output_frames(num_frames: int) -> int:
    """Zipformer's front end run for real: 3 convolutions (k3 s1, k3 s2, k3 s1), then /2 rounding up."""
    x = torch.zeros(1, 1, num_frames)
    for stride in (1, 2, 1):
        x = torch.nn.functional.conv1d(x, torch.zeros(1, 1, 3), stride=stride)
    return math.ceil(x.shape[-1] / 2)


def test_zipformer_output_frames_matches_the_conv_stack():
    for num_frames in range(9, 300):  # below 9 frames the convolutions have no input left
        assert zipformer_output_frames(num_frames) == conv_stack_output_frames(num_frames), num_frames
    assert all(zipformer_output_frames(t) < 1 for t in range(0, 9))
    assert zipformer_output_frames(9) == 1


def test_filter_counts_on_hand_made_cuts(tmp_path, caplog):
    tokenizer = build_char_tokenizer(["甲乙丙丁戊己庚辛壬癸"], tmp_path)
    # frames: 8 -> 0 out (too short); 30 -> 6 out; 100 -> 23 out
    plan = [
        (0.08, "甲", "too_short"),
        (0.30, "甲乙丙丁戊己", None),  # 6 tokens in 6 frames: fits exactly
        (0.30, "甲乙丙丁戊己庚", "too_many_tokens"),
        (1.00, "甲乙 丙丁", None),
        (1.00, "甲乙子", "unknown_symbols"),
        (0.05, "甲乙子", "too_short"),  # short is checked first
        (1.00, "甲" * 24, "too_many_tokens"),
    ]
    cuts = audio_free_cuts([p[0] for p in plan], [p[1] for p in plan])
    for cut, (_, _, reason) in zip(cuts, plan):
        assert CutFilter(tokenizer).reason(cut) == reason, cut.id
    caplog.set_level(logging.INFO, logger="asr.data.datamodule")
    kept = filter_cuts(cuts, tokenizer)
    assert list(kept.ids) == ["c001", "c003"]
    assert "kept 2 of 7 cuts: 2 too short, 2 too many tokens, 1 unknown symbols" in caplog.text
    # Keeping cuts with unknown symbols, and another subsampling rate.
    assert len(filter_cuts(cuts, tokenizer, drop_unknown=False)) == 3
    assert len(filter_cuts(cuts, tokenizer, subsampling=lambda t: t)) == 5  # no subsampling: only <unk> drops


def test_filter_keeps_lazy_cut_sets_lazy(tmp_path, caplog):
    tokenizer = build_char_tokenizer(["甲乙"], tmp_path)
    audio_free_cuts([0.05, 1.0, 1.0], ["甲", "甲乙", "乙"]).to_file(tmp_path / "cuts.jsonl.gz")
    lazy = CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")
    caplog.set_level(logging.INFO, logger="asr.data.datamodule")
    kept = filter_cuts(lazy, tokenizer)
    assert kept.is_lazy
    assert list(kept.ids) == ["c001", "c002"]
    assert "kept 2 of 3 cuts: 1 too short, 0 too many tokens, 0 unknown symbols" in caplog.text


# -------------------------------------------------------------------------------------------- sampler


def batches_of(sampler) -> list[list[str]]:
    return [list(batch.ids) for batch in sampler]


def test_sampler_respects_max_duration():
    rng = random.Random(0)
    durations = [rng.uniform(0.5, 6.0) for _ in range(200)]
    cuts = audio_free_cuts(durations)
    config = DataConfig(max_duration=20.0, num_buckets=5, shuffle=True, drop_last=False, num_workers=0)
    sampler = AsrDataModule(config, world_size=1, rank=0).train_dataloader(cuts).sampler
    seen = []
    for batch in sampler:
        assert sum(c.duration for c in batch) <= 20.0 + 1e-6
        seen += batch.ids
    assert sorted(seen) == sorted(cuts.ids)  # each cut exactly once


@pytest.mark.parametrize("drop_last", [False, True])
def test_ddp_ranks_get_disjoint_cuts(drop_last):
    cuts = audio_free_cuts([1.0 + 0.01 * i for i in range(101)])
    config = DataConfig(max_duration=5.0, num_buckets=4, shuffle=True, drop_last=drop_last, num_workers=0)
    per_rank = [
        [
            cid
            for batch in AsrDataModule(config, world_size=2, rank=rank).train_dataloader(cuts).sampler
            for cid in batch.ids
        ]
        for rank in (0, 1)
    ]
    assert len(per_rank[0]) > 30 and len(per_rank[1]) > 30
    assert not set(per_rank[0]) & set(per_rank[1])
    assert len(set(per_rank[0])) == len(per_rank[0]) and len(set(per_rank[1])) == len(per_rank[1])
    seen = per_rank[0] + per_rank[1]
    if drop_last:
        assert set(seen) < set(cuts.ids)
    else:
        # lhotse evens out the ranks' last batches with copies of a cut (id suffix "_dup<k>").
        originals = [cid for cid in seen if "_dup" not in cid]
        assert sorted(originals) == sorted(cuts.ids)
        assert all(cid.split("_dup")[0] in cuts.ids for cid in seen if "_dup" in cid)


def test_sampler_state_resumes_exactly():
    cuts = audio_free_cuts([random.Random(i).uniform(0.5, 3.0) for i in range(60)])
    config = DataConfig(max_duration=6.0, num_buckets=3, shuffle=True, num_workers=0, seed=7)
    module = AsrDataModule(config, world_size=1, rank=0)
    full = module.train_dataloader(cuts).sampler
    full.set_epoch(3)
    expected = batches_of(full)
    interrupted = module.train_dataloader(cuts).sampler
    interrupted.set_epoch(3)
    iterator = iter(interrupted)
    first = [list(next(iterator).ids) for _ in range(4)]
    state = interrupted.state_dict()
    resumed = module.train_dataloader(cuts, sampler_state=state).sampler
    assert first + batches_of(resumed) == expected
    assert len(expected) > 6


def test_training_data_resumes_an_epoch_at_the_batch_training_stopped_at(tmp_path):
    """What exact resume rests on: a fresh TrainingData fast-forwarded past ``skip`` batches of an epoch
    gives the rest of that epoch's batches; each epoch has its own order."""
    from asr.data.training_data import TrainingData

    durations = [random.Random(i).uniform(0.5, 3.0) for i in range(60)]
    path = tmp_path / "cuts.jsonl.gz"
    audio_free_cuts(durations, texts=["今天"] * 60).to_file(path)
    tokenizer = build_char_tokenizer(["今天"], tmp_path / "lang_char")
    config = DataConfig(max_duration=6.0, num_buckets=3, num_workers=0, seed=7)

    def batches(epoch: int, skip: int = 0) -> list[list[str]]:
        data = TrainingData(config, tokenizer, str(path), None, zipformer_output_frames)
        assert data.valid is None
        return batches_of(data.train_batches(epoch, skip=skip).sampler)

    epoch_2 = batches(2)
    assert len(epoch_2) > 6 and sorted(c for b in epoch_2 for c in b) == [f"c{i:03d}" for i in range(60)]
    assert batches(1) != epoch_2
    for skip in (1, 4, len(epoch_2) - 1):
        assert batches(2, skip=skip) == epoch_2[skip:], skip


# -------------------------------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("corpus")
    texts = ["今天天气很好", "我们去公园", "天气很好", "公园很大"]
    cuts = make_corpus(tmp_path, [1.1, 0.7, 0.9, 1.3], texts)
    tokenizer = build_char_tokenizer(texts, tmp_path / "lang_char")
    return cuts, tokenizer


def all_batches(loader) -> dict[str, tuple[torch.Tensor, list[int] | None]]:
    """cut id -> (its unpadded features, its tokens)"""
    out = {}
    for batch in loader:
        for i, cut_id in enumerate(batch["cut_ids"]):
            tokens = batch["tokens"][i] if "tokens" in batch else None
            out[cut_id] = (batch["features"][i, : batch["feature_lens"][i]], tokens)
    return out


def test_batch_layout(corpus):
    cuts, tokenizer = corpus
    config = DataConfig(max_duration=100.0, shuffle=False, num_workers=0)
    batch = next(iter(AsrDataModule(config, tokenizer=tokenizer, world_size=1, rank=0).valid_dataloader(cuts)))
    assert set(batch) == {"features", "feature_lens", "texts", "cut_ids", "tokens", "num_skipped", "skipped_cut_ids"}
    n = len(cuts)
    assert batch["features"].dtype == torch.float32 and batch["features"].shape == (n, 130, 80)
    assert batch["feature_lens"].dtype == torch.int64
    assert batch["feature_lens"].tolist() == [130, 110, 90, 70]  # longest first
    texts = {c.id: c.supervisions[0].text for c in cuts}
    assert batch["texts"] == [texts[cid] for cid in batch["cut_ids"]]
    assert batch["tokens"] == [tokenizer.encode(t) for t in batch["texts"]]
    assert batch["num_skipped"] == 0
    for i, length in enumerate(batch["feature_lens"].tolist()):
        assert torch.all(batch["features"][i, length:] == LOG_EPSILON)


def test_spec_augment_changes_training_batches_only(corpus):
    cuts, tokenizer = corpus
    reference = {c.id: compute_fbank(load_audio(c.recording.sources[0].source), 16000) for c in cuts}
    config = DataConfig(max_duration=100.0, shuffle=False, drop_last=False, num_workers=0)
    module = AsrDataModule(config, tokenizer=tokenizer, world_size=1, rank=0)
    valid = all_batches(module.valid_dataloader(cuts))
    random.seed(0)
    torch.manual_seed(0)
    train = all_batches(module.train_dataloader(cuts))
    plain_module = AsrDataModule(DataConfig(**{**config.__dict__, "spec_augment": False}), world_size=1, rank=0)
    plain = all_batches(plain_module.train_dataloader(cuts))
    assert set(valid) == set(train) == set(plain) == set(cuts.ids)
    changed = 0
    for cut_id, expected in reference.items():
        torch.testing.assert_close(valid[cut_id][0], expected, rtol=0, atol=0)
        torch.testing.assert_close(plain[cut_id][0], expected, rtol=0, atol=0)
        assert train[cut_id][0].shape == expected.shape
        assert train[cut_id][1] == valid[cut_id][1]
        changed += not torch.equal(train[cut_id][0], expected)
    assert changed >= 3  # SpecAugment is applied with p=0.9 per utterance


def count_masked_bins(features: torch.Tensor) -> int:
    """Mel bins that are one constant over every frame (what a frequency mask leaves)."""
    return int((features == features[:1]).all(dim=0).sum())


def test_spec_augment_masks_frequency_bands():
    torch.manual_seed(1)
    random.seed(1)
    features = torch.randn(3, 400, 80)
    lens = torch.tensor([400, 300, 200])
    segments = torch.stack([torch.arange(3), torch.zeros(3, dtype=torch.int64), lens], dim=1).int()
    augmented = make_spec_augment(time_warp_factor=None, p=1.0)(features, supervision_segments=segments)
    masked = [count_masked_bins(augmented[i]) for i in range(3)]
    assert all(0 < m <= 2 * 26 for m in masked)  # two masks of at most F-1 = 26 bins each
    assert all(count_masked_bins(features[i]) == 0 for i in range(3))


def test_precomputed_features_are_used(corpus, tmp_path):
    cuts, _ = corpus
    with_feats = compute_and_store_fbank(cuts, tmp_path / "feats")
    config = DataConfig(max_duration=100.0, shuffle=False, num_workers=0)
    stored = all_batches(AsrDataModule(config, world_size=1, rank=0).valid_dataloader(with_feats))
    recomputed = all_batches(
        AsrDataModule(
            DataConfig(**{**config.__dict__, "on_the_fly_features": True}), world_size=1, rank=0
        ).valid_dataloader(with_feats)
    )
    for cut in with_feats:
        torch.testing.assert_close(stored[cut.id][0], torch.from_numpy(cut.load_features()), rtol=0, atol=0)
        torch.testing.assert_close(stored[cut.id][0], recomputed[cut.id][0], rtol=0, atol=LILCOM_ATOL)


def test_loader_resume_gives_the_remaining_batches(corpus):
    cuts, _ = corpus
    config = DataConfig(max_duration=2.5, shuffle=True, num_workers=0, spec_augment=False, num_buckets=2)
    module = AsrDataModule(config, world_size=1, rank=0)
    expected = [batch["cut_ids"] for batch in module.train_dataloader(cuts)]
    loader = module.train_dataloader(cuts)
    iterator = iter(loader)
    first = next(iterator)["cut_ids"]
    rest = [batch["cut_ids"] for batch in module.train_dataloader(cuts, sampler_state=loader.sampler.state_dict())]
    assert [first, *rest] == expected
    assert len(expected) >= 2


# ------------------------------------------------------------------------------------- augmentation


def low_to_high_band_db(samples: np.ndarray, rate: int) -> float:
    power = np.abs(np.fft.rfft(samples)) ** 2
    freqs = np.fft.rfftfreq(len(samples), 1 / rate)
    return float(
        10 * np.log10(power[(freqs > 50) & (freqs < 500)].mean() / power[(freqs > 4000) & (freqs < 7500)].mean())
    )


def test_sox_noise_cuts(tmp_path, corpus):
    speech, _ = corpus
    noise = make_noise_cuts(tmp_path / "noise", duration=2.0, speech_cuts=speech, num_babble=1)
    assert sorted(c.recording.id for c in noise) == ["babble0", "brownnoise", "pinknoise", "whitenoise"]
    assert list(CutSet.from_file(tmp_path / "noise" / "noise_cuts.jsonl.gz").ids) == list(noise.ids)
    slope = {}
    for cut in noise:
        audio = cut.load_audio()
        assert cut.sampling_rate == 16000 and audio.shape == (1, 32000) and cut.duration == 2.0
        slope[cut.recording.id] = low_to_high_band_db(audio[0], 16000)
    # White noise is flat; pink falls 3 dB/octave (~9 dB over these bands), brown 6 dB/octave.
    assert abs(slope["whitenoise"]) < 2
    assert 5 < slope["pinknoise"] < 15
    assert slope["brownnoise"] > 20


def test_babble_is_a_sum_of_speech(tmp_path, corpus):
    speech, _ = corpus
    path = make_babble(speech, tmp_path / "babble.wav", num_talkers=3, duration=1.5)
    samples, rate = sf.read(path, dtype="float32")
    assert rate == 16000 and len(samples) == 24000
    assert np.abs(samples).max() == pytest.approx(0.5, abs=1e-3)


def test_noise_mixing_hits_the_requested_snr(tmp_path, corpus):
    speech, _ = corpus
    noise = make_noise_cuts(tmp_path / "noise", duration=3.0, noise_types=["whitenoise"])
    random.seed(0)
    for snr in (5.0, 20.0):
        mixed = make_noise_mixer(noise, snr=(snr, snr), p=1.0)(speech)
        assert list(mixed.ids) == list(speech.ids)
        for clean_cut, mixed_cut in zip(speech, mixed):
            clean = clean_cut.load_audio()[0]
            added = mixed_cut.load_audio()[0] - clean
            assert mixed_cut.duration == clean_cut.duration
            assert 10 * np.log10(np.mean(clean**2) / np.mean(added**2)) == pytest.approx(snr, abs=0.75)


def test_noise_in_training_batches(tmp_path, corpus):
    speech, _ = corpus
    noise = make_noise_cuts(tmp_path / "noise", duration=3.0, noise_types=["pinknoise"])
    config = DataConfig(
        max_duration=100.0, shuffle=False, drop_last=False, num_workers=0, spec_augment=False, noise_prob=1.0
    )
    module = AsrDataModule(config, noise_cuts=noise, world_size=1, rank=0)
    noisy = all_batches(module.train_dataloader(speech))
    clean = all_batches(module.valid_dataloader(speech))
    for cut_id, (features, _) in clean.items():
        assert noisy[cut_id][0].shape == features.shape
        assert not torch.equal(noisy[cut_id][0], features)


def test_speed_perturb_adds_two_copies():
    cuts = audio_free_cuts([1.0, 2.0])
    perturbed = speed_perturb(cuts)
    durations = {c.id: c.duration for c in perturbed}
    assert len(durations) == 6
    assert durations["c001_sp0.9"] == pytest.approx(2.0 / 0.9, abs=1e-3)
    assert durations["c000_sp1.1"] == pytest.approx(1.0 / 1.1, abs=1e-3)


def test_speed_perturb_one_of_keeps_each_cut_once():
    durations = [1.0 + 0.01 * i for i in range(300)]
    cuts = audio_free_cuts(durations)
    perturbed = speed_perturb_one_of(cuts, seed=3)
    assert len(perturbed) == 300
    by_base = {c.id.rsplit("_sp", 1)[0]: c for c in perturbed}
    assert sorted(by_base) == sorted(cuts.ids)
    speeds = {"": 0, "_sp0.9": 0, "_sp1.1": 0}
    for cut in cuts:
        new = by_base[cut.id]
        suffix = new.id[len(cut.id) :]
        speeds[suffix] += 1
        factor = {"": 1.0, "_sp0.9": 0.9, "_sp1.1": 1.1}[suffix]
        assert new.duration == pytest.approx(cut.duration / factor, abs=1e-3)
    assert all(70 <= n <= 130 for n in speeds.values()), speeds  # a third each, binomial(300, 1/3) +- 4 sd
    assert list(speed_perturb_one_of(cuts, seed=3).ids) == list(perturbed.ids)
    assert list(speed_perturb_one_of(cuts, seed=4).ids) != list(perturbed.ids)
    assert list(speed_perturb_one_of(cuts, factors=(1.0,)).ids) == list(cuts.ids)


def test_musan_noise_cuts_are_windowed(tmp_path):
    rng = np.random.default_rng(0)
    recordings = []
    for name, seconds in [("music", 23.0), ("speech", 12.0)]:
        sf.write(tmp_path / f"{name}.wav", (0.1 * rng.standard_normal(int(seconds * 8000))).astype(np.float32), 8000)
        recordings.append(Recording.from_file(tmp_path / f"{name}.wav"))
    RecordingSet.from_recordings(recordings).to_file(tmp_path / "musan_recordings.jsonl.gz")
    cuts = musan_noise_cuts(tmp_path / "musan_recordings.jsonl.gz")
    # 23 s -> 10 + 10 (+3 dropped); 12 s -> 10 (+2 dropped)
    assert sorted(round(c.duration, 3) for c in cuts) == [10.0, 10.0, 10.0]
    with pytest.raises(FileNotFoundError, match="absent.jsonl.gz"):
        musan_noise_cuts(tmp_path / "absent.jsonl.gz")
