"""Training end to end on a tiny espeak corpus (skipped without espeak-ng): checkpoints, exact resume
after a kill, decode; and the errors for cuts files that leave nothing to train or validate on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asr import checkpoint as ckpt
from asr import cli

from helpers import HELPERS
from helpers.training import train_argv

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def asr_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "asr", *args]


def train_args(corpus: dict[str, Path], exp_dir: Path, *extra: str) -> list[str]:
    return asr_command(*train_argv(corpus, exp_dir, *extra))


def test_killed_run_resumes_at_the_same_step_and_matches_an_uninterrupted_run(corpus, tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(train_args(corpus, reference_dir), check=True, env=ENV, capture_output=True)
    reference = ckpt.load(reference_dir / "epoch-1.pt")
    total_batches = reference["state"]["batch_idx_train"]
    assert total_batches >= 5, "the test needs an epoch of several batches"

    # Kill (SIGKILL, no chance to clean up) right after the second batch checkpoint is written.
    killed = subprocess.run(
        [sys.executable, str(HELPERS / "kill_after_checkpoint.py"), "checkpoint-4.pt", *train_argv(corpus, killed_dir)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, "training ended before it could be killed: " + killed.stderr[-3000:]
    assert not (killed_dir / "epoch-1.pt").exists()
    # Whatever the kill interrupted, no torn checkpoint is left behind under a real name.
    for path in ckpt.batch_checkpoints(killed_dir):
        ckpt.load(path)

    newest = ckpt.batch_checkpoints(killed_dir)[-1]
    assert newest.name == "checkpoint-4.pt"
    newest_batch = int(newest.stem.split("-")[1])
    resumed = subprocess.run(train_args(corpus, killed_dir), check=True, env=ENV, capture_output=True, text=True)
    assert f"resumed from {newest}: epoch 1, batch {newest_batch} of the epoch" in resumed.stderr
    final = ckpt.load(killed_dir / "epoch-1.pt")
    assert final["state"]["batch_idx_train"] == total_batches
    # Same batches, same RNG, same optimizer state: the resumed run ends where the uninterrupted one did.
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    for key, value in reference["model_avg"].items():
        assert torch.equal(value, final["model_avg"][key]), key


def test_max_batches_stops_at_that_batch_with_a_checkpoint_and_a_rerun_trains_no_more(corpus, tmp_path):
    exp_dir = tmp_path / "exp"
    argv = train_args(corpus, exp_dir, "--max-batches", "3")
    subprocess.run(argv, check=True, env=ENV, capture_output=True)
    assert [p.name for p in ckpt.batch_checkpoints(exp_dir)] == ["checkpoint-2.pt", "checkpoint-3.pt"]
    assert not (exp_dir / "epoch-1.pt").exists()
    stopped = ckpt.load(exp_dir / "checkpoint-3.pt")
    assert stopped["state"]["batch_idx_train"] == 3
    subprocess.run(argv, check=True, env=ENV, capture_output=True)
    assert [p.name for p in ckpt.batch_checkpoints(exp_dir)] == ["checkpoint-2.pt", "checkpoint-3.pt"]
    assert not (exp_dir / "epoch-1.pt").exists()


def test_decode_files_and_cuts_with_a_trained_checkpoint(corpus, tmp_path):
    exp_dir = tmp_path / "exp"
    subprocess.run(train_args(corpus, exp_dir), check=True, env=ENV, capture_output=True)
    from lhotse import load_manifest

    cut = next(iter(load_manifest(corpus["test"])))
    wav = Path(cut.recording.sources[0].source)
    # The same audio at 8 kHz as flac, and a corrupt file: the good ones decode, the bad one is named.
    import soundfile

    from asr.data.audio import load_audio

    flac_8k = tmp_path / "eight_khz.flac"
    soundfile.write(flac_8k, load_audio(wav, 8000), 8000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    result = subprocess.run(
        asr_command("decode", "--checkpoint", str(exp_dir / "epoch-1.pt"), str(wav), str(flac_8k), str(corrupt)),
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    lines = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    assert set(lines) == {wav.stem, "eight_khz"}
    assert "corrupt.wav" in result.stderr
    assert "real-time factor" in result.stderr

    results_dir = tmp_path / "results"
    result = subprocess.run(
        asr_command(
            "decode",
            "--checkpoint",
            str(exp_dir / "epoch-1.pt"),
            "--cuts",
            str(corpus["test"]),
            "--out-dir",
            str(results_dir),
            "--method",
            "ctc_greedy",
        ),
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[-1].startswith("WER ")
    hyps = (results_dir / "hyps.txt").read_text().splitlines()
    assert len(hyps) == len(load_manifest(corpus["test"]))
    assert (results_dir / "errs.txt").read_text().strip()


def test_asr_average_is_the_elementwise_mean_and_decodes(corpus, tmp_path):
    import importlib.util

    exp_dir = tmp_path / "exp"
    subprocess.run(train_args(corpus, exp_dir), check=True, env=ENV, capture_output=True)
    first, second = ckpt.batch_checkpoints(exp_dir)[:2]
    out = tmp_path / "avg.pt"
    assert cli.main(["average", "--out", str(out), str(first), str(second)]) == 0
    a, b, averaged = ckpt.load(first)["model"], ckpt.load(second)["model"], ckpt.load(out)["state_dict"]
    for key, value in averaged.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[key].double() + b[key].double()).div(2).to(value.dtype))
    result = subprocess.run(
        asr_command(
            "decode", "--checkpoint", str(out), "--cuts", str(corpus["test"]), "--out-dir", str(tmp_path / "r")
        ),
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[-1].startswith("WER ")

    # tools/training_curve.py scores each checkpoint as `asr decode` does, and places it in time.
    spec = importlib.util.spec_from_file_location(
        "training_curve", Path(__file__).parents[1] / "tools" / "training_curve.py"
    )
    curve = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curve)
    curve_json = tmp_path / "curve.json"
    batch = int(second.stem.split("-")[1])
    assert (
        curve.main(
            [
                "--exp-dir",
                str(exp_dir),
                "--cuts",
                str(corpus["test"]),
                "--batches",
                str(batch),
                "--json",
                str(curve_json),
            ]
        )
        == 0
    )
    (row,) = json.loads(curve_json.read_text())["rows"]
    decoded = subprocess.run(
        asr_command(
            "decode", "--checkpoint", str(second), "--cuts", str(corpus["test"]), "--out-dir", str(tmp_path / "r2")
        ),
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[-1]
    assert decoded.startswith(f"WER {100 * row['wer']:.2f}% [{row['errors']} / {row['words']},")
    assert row["batch"] == batch and row["epoch"] == 1
    started = min(int(p.name.split(".")[3]) for p in (exp_dir / "tensorboard").iterdir())
    assert row["minutes"] == round((second.stat().st_mtime - started) / 60, 1) >= 0
    # --epochs places epoch-<n>.pt by the batch stored in it.
    (epoch_path,) = ckpt.epoch_checkpoints(exp_dir)
    assert (
        curve.main(["--exp-dir", str(exp_dir), "--cuts", str(corpus["test"]), "--epochs", "--json", str(curve_json)])
        == 0
    )
    (row,) = json.loads(curve_json.read_text())["rows"]
    state = ckpt.load(epoch_path)["state"]
    assert row["batch"] == state["batch_idx_train"] > batch and row["epoch"] == state["epoch"]


def _write_cuts(path: Path, clips: list[tuple[float, str]]) -> Path:
    """A CutSet of silent clips ``(seconds, transcript)`` at 16 kHz."""
    import numpy as np
    import soundfile
    from lhotse import CutSet, Recording, SupervisionSegment

    cuts = []
    for i, (seconds, text) in enumerate(clips):
        wav = path.parent / f"{path.name.split('.')[0]}-{i}.wav"
        soundfile.write(wav, np.zeros(int(seconds * 16000), dtype=np.float32), 16000)
        cut = Recording.from_file(wav, recording_id=wav.stem).to_cut()
        cut.supervisions = [SupervisionSegment(wav.stem, wav.stem, start=0, duration=cut.duration, text=text)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(path)
    return path


@pytest.fixture
def char_lang(tmp_path) -> Path:
    from asr.data.tokenizer import build_char_tokenizer

    build_char_tokenizer(["你好世界"], tmp_path / "lang_char")
    return tmp_path / "lang_char"


def _train(tmp_path: Path, lang: Path, train_cuts: Path, *extra: str) -> int:
    from asr.cli.train import main

    return main(
        [
            "--train-cuts",
            str(train_cuts),
            "--lang-dir",
            str(lang),
            "--exp-dir",
            str(tmp_path / "exp"),
            "--encoder-kwargs",
            '{"num_encoder_layers": [1, 1, 1, 1, 1, 1]}',
            "--num-epochs",
            "1",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            *extra,
        ]
    )


# A zipformer keeps ((T - 7) // 2 + 1) // 2 frames of T fbank frames: 0.05 s (5 frames) leaves none,
# 0.3 s (30) leaves 6, fewer than the 8 characters of "你好世界你好世界".
UNUSABLE = [(0.05, "你好"), (0.3, "你好世界你好世界"), (1.0, "你好吗"), (0.04, "世界")]


def test_average_batches_decodes_the_mean_of_the_models_of_the_last_batches(corpus, tmp_path):
    from asr.checkpoint import load_model

    exp_dir = tmp_path / "exp"
    # A checkpoint after every batch, so the mean of the saved models is the reference.
    subprocess.run(train_args(corpus, exp_dir, "--save-every-n", "1"), check=True, env=ENV, capture_output=True)
    batches = ckpt.batch_checkpoints(exp_dir)
    end_batch = ckpt.checkpoint_batch(batches[-1])
    assert end_batch >= 5 and [ckpt.checkpoint_batch(p) for p in batches] == list(range(1, end_batch + 1))
    assert ckpt.checkpoint_batch(exp_dir / "epoch-1.pt") == end_batch  # read from the file
    # Nearest to the target among the checkpoints written before the end batch (epoch-1.pt is not).
    assert ckpt.checkpoint_near_batch(exp_dir, end_batch - 3, before=end_batch).name == f"checkpoint-{end_batch - 3}.pt"
    assert ckpt.checkpoint_near_batch(exp_dir, -50, before=end_batch).name == "checkpoint-1.pt"
    assert ckpt.checkpoint_near_batch(exp_dir, 0, before=1) is None

    model = load_model(batches[-1], average_batches=3)
    last_three = [ckpt.load(p)["model"] for p in batches[-3:]]
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            expected = sum(sd[key].double() for sd in last_three) / 3
            torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)

    result = subprocess.run(
        asr_command(
            "decode",
            "--checkpoint",
            str(exp_dir),
            "--average-batches",
            "3",
            "--cuts",
            str(corpus["test"]),
            "--out-dir",
            str(tmp_path / "r"),
        ),
        env=ENV,
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"averaged over batches {end_batch - 2}-{end_batch}" in result.stderr
    assert result.stdout.splitlines()[-1].startswith("WER ")
    # The first checkpoint has nothing before it: a warning, and the model of that checkpoint alone.
    first = load_model(batches[0], average_batches=3)
    for key, value in first.state_dict().items():
        torch.testing.assert_close(value, ckpt.load(batches[0])["model"][key])
    failed = subprocess.run(
        asr_command("decode", "--checkpoint", str(batches[0]), "--average-batches", "0", "--cuts", str(corpus["test"])),
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode != 0
    assert "--average-batches must be positive" in failed.stderr and "Traceback" not in failed.stderr


def test_training_cuts_that_all_get_filtered_are_an_error_naming_the_file_and_reasons(tmp_path, char_lang, capsys):
    train_cuts = _write_cuts(tmp_path / "train.jsonl.gz", UNUSABLE)
    assert _train(tmp_path, char_lang, train_cuts) == 1
    err = capsys.readouterr().err
    assert (
        f"asr train: no usable training cuts in {train_cuts}: kept 0 of 4 cuts: 2 too short, "
        "1 too many tokens, 1 unknown symbols." in err
    )
    assert "under 9 fbank frames, 0.09 s" in err and str(char_lang / "tokens.txt") in err
    assert not list((tmp_path / "exp").glob("*.pt"))


def test_an_empty_training_or_validation_set_is_an_error(tmp_path, char_lang, capsys):
    good = _write_cuts(tmp_path / "good.jsonl.gz", [(1.0, "你好"), (1.0, "世界")])
    empty = _write_cuts(tmp_path / "empty.jsonl.gz", [])
    assert _train(tmp_path, char_lang, empty) == 1
    assert f"asr train: the training cuts file {empty} holds no cuts" in capsys.readouterr().err

    valid = _write_cuts(tmp_path / "valid.jsonl.gz", UNUSABLE[:1])
    assert _train(tmp_path, char_lang, good, "--valid-cuts", str(valid)) == 1
    assert f"asr train: no usable validation cuts in {valid}: kept 0 of 1 cuts: 1 too short," in capsys.readouterr().err
    assert not list((tmp_path / "exp").glob("*.pt"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_non_finite_gradients_names_exactly_the_bad_parameters(dtype):
    from asr.training.trainer import non_finite_gradients

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(dtype)
    params = dict(model.named_parameters())

    def set_grads(values: dict[str, float]) -> list[str]:
        for p in params.values():
            p.grad = torch.randn_like(p)
        model[1].bias.grad = None  # parameters without a gradient are ignored
        for name, value in values.items():
            params[name].grad.view(-1)[1] = value
        # Reference: the per-parameter check, one tensor at a time.
        return [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]

    assert set_grads({}) == [] and non_finite_gradients(model) == []
    expected = set_grads({"0.weight": float("inf"), "1.weight": float("nan")})
    assert expected == ["0.weight", "1.weight"] and non_finite_gradients(model) == expected
    expected = set_grads({"0.bias": float("-inf")})
    assert non_finite_gradients(model) == expected == ["0.bias"]
    # Large but finite entries: a norm that overflows (fp16) must not make the step look bad.
    for p in params.values():
        p.grad = torch.full_like(p, 6e4)
    assert non_finite_gradients(model) == []


def test_combine_losses_follows_icefall_warm_up():
    from asr.training.losses import combine_losses

    simple, pruned, ctc = torch.tensor(10.0), torch.tensor(4.0), torch.tensor(6.0)
    # Start: simple 1.0, pruned 0.1; halfway: 0.75 / 0.55; after warm_step: 0.5 / 1.0.
    assert combine_losses(simple, pruned, None, batch_idx_train=0, warm_step=2000).item() == pytest.approx(10.4)
    assert combine_losses(simple, pruned, None, batch_idx_train=1000, warm_step=2000).item() == pytest.approx(7.5 + 2.2)
    assert combine_losses(simple, pruned, None, batch_idx_train=2000, warm_step=2000).item() == pytest.approx(9.0)
    assert combine_losses(simple, pruned, None).item() == pytest.approx(9.0)
    assert combine_losses(simple, pruned, ctc, batch_idx_train=5000).item() == pytest.approx(9.0 + 1.2)
    assert combine_losses(None, None, ctc, ctc_loss_scale=0.5).item() == pytest.approx(3.0)
    with pytest.raises(ValueError):
        combine_losses(simple, None, ctc)
    with pytest.raises(ValueError):
        combine_losses(None, None, None)


def test_schedule_speedup_keeps_the_batch_count_of_configs_saved_with_a_scaled_ref_duration():
    """The synth-cpu preset counts each 30 s batch as 120 for the model's schedules, through schedule_speedup
    with icefall's ref_duration of 600 s; a config stored with ref_duration 0.25 and no schedule_speedup
    (how the preset used to say it) gives the same counts, float for float."""
    from dataclasses import asdict

    from asr.training.presets import PRESETS
    from asr.training.trainer import TrainConfig

    paths = {"exp_dir": "exp", "train_cuts": "cuts.jsonl.gz", "lang_dir": "lang"}
    preset = TrainConfig.from_dict({**paths, **PRESETS["synth-cpu"]})
    assert preset.ref_duration == 600.0 and preset.max_duration == 30.0
    stored = {**asdict(preset), "ref_duration": 0.25}
    del stored["schedule_speedup"]
    old = TrainConfig.from_dict(stored)
    assert old.schedule_speedup == 1.0
    for max_duration in (30.0, 12.0, 6.0):
        new_config = TrainConfig.from_dict({**paths, **PRESETS["synth-cpu"], "max_duration": max_duration})
        old_config = TrainConfig.from_dict({**stored, "max_duration": max_duration})
        for world_size in (1, 2, 3):
            for batch in (0, 1, 7, 167, 1000, 123_457):
                expected = batch * max_duration * world_size / 0.25  # exact: 4 * an integer
                assert new_config.adjusted_batch_count(batch, world_size) == expected
                assert old_config.adjusted_batch_count(batch, world_size) == expected
    assert preset.adjusted_batch_count(1) == 120.0
    # A stored ref_duration of 15 s is a speedup of 40 (the figures tests/test_ddp.py compares with).
    scaled = TrainConfig.from_dict({**paths, "max_duration": 12.0, "ref_duration": 15.0})
    sped_up = TrainConfig.from_dict({**paths, "max_duration": 12.0, "schedule_speedup": 40.0})
    for batch in range(200):
        assert scaled.adjusted_batch_count(batch, 2) == sped_up.adjusted_batch_count(batch, 2) == batch * 24 / 15
    # icefall's count, without a speedup: batches of max_duration seconds times processes over 600 s.
    assert TrainConfig.from_dict(paths).adjusted_batch_count(300, 4) == 300 * 200.0 * 4 / 600


def test_make_gpu_data_subsets_features_and_slims_the_checkpoint(corpus, tmp_path):
    """tools/make_gpu_data.py: the first N cuts with the same features, and a model.pt without training
    state that decodes exactly like the checkpoint it came from."""
    import importlib.util

    from lhotse import load_manifest

    exp_dir, recipe_dir, out = tmp_path / "exp", tmp_path / "recipe", tmp_path / "gpu"
    subprocess.run(train_args(corpus, exp_dir), check=True, env=ENV, capture_output=True)
    for split in ("train", "test"):
        subprocess.run(
            asr_command(
                "data",
                "fbank",
                "--cuts",
                str(corpus[split]),
                "--out",
                str(recipe_dir / "fbank" / f"synth_cuts_{split}.jsonl.gz"),
            ),
            check=True,
            env=ENV,
            capture_output=True,
        )
    spec = importlib.util.spec_from_file_location(
        "make_gpu_data", Path(__file__).parents[1] / "tools" / "make_gpu_data.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    checkpoint = exp_dir / "epoch-1.pt"
    assert (
        tool.main(
            [
                str(recipe_dir),
                str(checkpoint),
                str(out),
                "--train",
                "5",
                "--test",
                "100",
                "--lang-dir",
                str(corpus["lang"]),
            ]
        )
        == 0
    )

    for split, expected in (("train", 5), ("test", len(load_manifest(corpus["test"])))):
        source = list(load_manifest(recipe_dir / "fbank" / f"synth_cuts_{split}.jsonl.gz"))[:expected]
        copied = list(load_manifest(out / "data" / f"cuts_{split}.jsonl.gz"))
        assert [c.id for c in copied] == [c.id for c in source]
        for a, b in zip(source, copied):
            assert b.features.storage_path != a.features.storage_path
            assert (b.load_features() == a.load_features()).all()
    assert sorted(p.name for p in (out / "lang").iterdir()) == ["bpe.model", "tokens.txt"]

    slim = ckpt.load(out / "model.pt")
    assert set(slim) <= set(tool.DECODE_KEYS) and "optimizer" not in slim and "model_avg" not in slim
    decoded = {}
    for name, path in (("full", checkpoint), ("slim", out / "model.pt")):
        subprocess.run(
            asr_command(
                "decode",
                "--checkpoint",
                str(path),
                "--cuts",
                str(out / "data" / "cuts_test.jsonl.gz"),
                "--out-dir",
                str(tmp_path / name),
            ),
            env=ENV,
            check=True,
            capture_output=True,
        )
        decoded[name] = (tmp_path / name / "hyps.txt").read_text()
    assert decoded["slim"] == decoded["full"] and decoded["full"].strip()
