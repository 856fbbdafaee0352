"""`asr decode` on hostile audio and options: too-short files and NaN/Inf samples are named per-file skips
while the good files still decode; impossible options are one-line errors before the model is loaded."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from asr import cli
from asr.inference import Recognizer

from helpers.tiny_models import save_tiny_char_transducer


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("decode_input")
    path = save_tiny_char_transducer(root)
    rng = np.random.default_rng(0)
    files = {}
    for name, seconds in (("good", 1.2), ("good2", 0.8), ("short", 0.05)):
        files[name] = root / f"{name}.wav"
        sf.write(files[name], (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
    bad = (0.1 * rng.standard_normal(16000)).astype(np.float32)
    bad[100], bad[200] = np.nan, np.inf
    files["nan"] = root / "nan.wav"
    sf.write(files["nan"], bad, 16000, subtype="FLOAT")
    return {"checkpoint": path, "files": files}


@pytest.mark.parametrize(
    "bad, message",
    [("short", r"short: too short to decode \(0\.05 s"), ("nan", r"nan\.wav: 2 of 16000 samples are NaN or infinite")],
)
def test_a_bad_file_is_a_named_skip_and_the_good_files_still_decode(setup, bad, message, capsys):
    files = setup["files"]
    checkpoint = ["decode", "--checkpoint", str(setup["checkpoint"])]
    assert cli.main([*checkpoint, str(files["good"]), str(files[bad]), str(files["good2"])]) == 1
    captured = capsys.readouterr()
    assert re.search(message, captured.err), captured.err
    printed = dict(line.split("\t", 1) for line in captured.out.splitlines())
    assert set(printed) == {"good", "good2"} and all(printed.values())
    assert cli.main([*checkpoint, str(files["good"]), str(files["good2"])]) == 0
    assert dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines()) == printed


@pytest.mark.parametrize(
    "options, message",
    [
        (["--beam", "0", "--method", "modified_beam_search"], "--beam must be a positive integer, got 0"),
        (["--beam", "-3"], "--beam must be a positive integer, got -3"),
        (["--chunk-size", "0"], "--chunk-size must be a positive number"),
        (["--left-context-frames", "64"], "--left-context-frames needs chunk_size"),
        (["--lm-scale", "-1"], "--lm-scale must be >= 0"),
        (["--max-frames", "0"], "--max-frames must be >= 1"),
    ],
)
def test_impossible_options_are_one_line_errors_before_the_model_loads(setup, tmp_path, options, message, capsys):
    missing = tmp_path / "no-such-model.pt"  # never read: the options fail first
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["decode", "--checkpoint", str(missing), *options, str(setup["files"]["good"])])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert message in stderr and str(missing) not in stderr


def test_chunk_size_on_a_model_that_cannot_stream_fails_before_any_audio_is_read(setup, capsys, monkeypatch):
    import asr.inference.offline as offline

    def no_audio(*args):
        raise AssertionError("audio was read")

    monkeypatch.setattr(offline, "load_audio", no_audio)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(
            ["decode", "--checkpoint", str(setup["checkpoint"]), "--chunk-size", "16", str(setup["files"]["good"])]
        )
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "chunk_size needs a causal (streaming) model" in captured.err and captured.out == ""


def test_long_audio_is_decoded_in_segments_without_growing_attention(setup):
    """A 95 s file decodes through 30 s segments: the encoder never sees more than one segment at a time."""
    from asr.checkpoint import load_model

    model = load_model(setup["checkpoint"])
    seen: list[tuple[int, int]] = []  # (N, T) of every encoder call
    hook = model.encoder.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[:2])))
    try:
        rng = np.random.default_rng(1)
        result = Recognizer(model).transcribe((0.1 * rng.standard_normal(16000 * 95)).astype(np.float32), 16000)
    finally:
        hook.remove()
    assert max(t for _, t in seen) <= 3000 and sum(n * t for n, t in seen) >= 9500
    assert result.timestamps == sorted(result.timestamps) and result.timestamps[-1] < 95.0
