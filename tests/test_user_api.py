"""The Python API a user starts from: ``asr.load_model`` on every kind of checkpoint, ``asr.transcribe``, and
the README's Python blocks, run as written against a tiny model trained here."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lhotse import load_manifest

import asr
from asr import checkpoint as ckpt

from helpers.training import train_argv

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run_asr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "asr", *args], env=ENV, capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> dict[str, Path]:
    """An experiment dir of a few batches of ``asr train``, a model file averaged from two of its checkpoints
    by ``asr average``, and two test wavs."""
    root = tmp_path_factory.mktemp("trained")
    exp_dir = root / "exp"
    run_asr(*train_argv(corpus, exp_dir))
    # A few batches teach the model to say nothing; noise on the weights makes every text non-empty, so that
    # equal texts below mean equal models, not two empty outputs.
    generator = torch.Generator().manual_seed(0)
    for path in [*ckpt.batch_checkpoints(exp_dir), *ckpt.epoch_checkpoints(exp_dir)]:
        checkpoint = ckpt.load(path)
        for value in checkpoint["model"].values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn(value.shape, generator=generator, dtype=value.dtype))
        ckpt.save_atomic(checkpoint, path)
    first, second = ckpt.batch_checkpoints(exp_dir)[:2]
    averaged = root / "averaged.pt"
    run_asr("average", "--out", str(averaged), str(first), str(second))
    wavs = [Path(cut.recording.sources[0].source) for cut in load_manifest(corpus["test"])]
    return {"exp": exp_dir, "averaged": averaged, "wavs": wavs}


def decoded_by_cli(checkpoint: Path, wavs: list[Path]) -> dict[str, str]:
    """``asr decode`` of each file alone (as ``transcribe`` sees it: no padding from batching), on one thread."""
    texts = {}
    for wav in wavs:
        (line,) = run_asr("decode", "--checkpoint", str(checkpoint), "--num-threads", "1", str(wav)).stdout.splitlines()
        utterance_id, _, text = line.partition("\t")
        texts[utterance_id] = text
    return texts


@pytest.fixture
def one_thread():
    """One torch thread, as the ``asr decode`` it is compared with runs (sums in another order can flip a
    near tie of the noisy model); the previous count afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["experiment dir", "training checkpoint", "asr average"])
def test_load_model_and_transcribe_equal_asr_decode(trained, kind, one_thread):
    path = {
        "experiment dir": trained["exp"],
        "training checkpoint": ckpt.batch_checkpoints(trained["exp"])[0],
        "asr average": trained["averaged"],
    }[kind]
    model = asr.load_model(path)
    assert not model.training and model.tokenizer is not None
    expected = decoded_by_cli(path, trained["wavs"])
    assert all(expected.values()) and len(expected) == len(trained["wavs"])
    assert {wav.stem: asr.transcribe(model, wav) for wav in trained["wavs"]} == expected


def test_transcribe_takes_samples_at_any_rate(trained):
    from asr.data.audio import load_audio

    model = asr.load_model(trained["exp"])
    wav = trained["wavs"][0]
    samples_8k = load_audio(wav, 8000)
    from_samples = asr.transcribe(model, samples_8k, sample_rate=8000)
    # The same samples written as an 8 kHz file and read back go through the same resampling.
    import soundfile

    path = Path(wav).with_name("eight_khz_copy.wav")
    soundfile.write(path, samples_8k, 8000, subtype="FLOAT")
    assert from_samples == asr.transcribe(model, path)
    with pytest.raises(ValueError, match="sample_rate"):
        asr.transcribe(model, samples_8k)


def readme_python_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def test_readme_python_blocks_run_as_written(trained, tmp_path, monkeypatch, capsys, one_thread):
    blocks = readme_python_blocks()
    assert blocks, "the README has a Python quick start"
    (tmp_path / "exp").mkdir()
    shutil.copytree(trained["exp"], tmp_path / "exp" / "synth", ignore=shutil.ignore_patterns("tensorboard"))
    shutil.copy(trained["wavs"][0], tmp_path / "speech.wav")
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.strip()
    assert printed
    expected = decoded_by_cli(tmp_path / "exp" / "synth", [tmp_path / "speech.wav"])["speech"]
    assert printed.splitlines()[-1] == expected
