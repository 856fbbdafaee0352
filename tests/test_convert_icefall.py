"""``asr convert icefall`` and :mod:`asr.models.icefall`: an icefall checkpoint becomes a model file that
loads, reproduces icefall's encoder outputs, keeps the heads' tensors and decodes with ``asr decode``.

The inputs are the Zipformer fixtures (``data/zipformer_icefall_tiny*.pt``, icefall's encoder outputs
recorded beside them) with icefall-shaped transducer tensors (``helpers/icefall.py``: the fixtures' own
transducer is a stand-in without icefall's joiner projections or decoder conv).
"""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

import asr
from asr.checkpoint import read_checkpoint, tokenizer_files
from asr.cli import main as asr_main
from asr.data.tokenizer import build_char_tokenizer
from asr.models.icefall import convert_icefall, head_config, read_icefall_checkpoint

from helpers import DATA, REPO
from helpers.icefall import FIXTURE_VOCAB, fixture_config, icefall_state, set_options


@pytest.fixture(scope="module")
def fixture_io() -> dict:
    return torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)


@pytest.fixture(scope="module")
def lang_dir(tmp_path_factory) -> Path:
    """A character table of the fixtures' vocabulary size (3 specials + 7 letters)."""
    out = tmp_path_factory.mktemp("lang")
    tokenizer = build_char_tokenizer(["abcdefg"], out)
    assert tokenizer.vocab_size == FIXTURE_VOCAB
    return out


def _write_input(path: Path, state: dict[str, torch.Tensor], wrap: bool = True) -> Path:
    torch.save({"model": state} if wrap else state, path)
    return path


def _convert(argv: list[str], capsys) -> tuple[int, str, str]:
    code = asr_main(["convert", "icefall", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_one_line_error(code: int, err: str) -> str:
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("asr convert icefall: "), err
    return lines[0]


# -- the converted file ------------------------------------------------------------------------------


def test_converted_file_loads_and_reproduces_icefall_encoder(tmp_path, fixture_io, lang_dir, capsys):
    source = _write_input(tmp_path / "icefall.pt", icefall_state())
    out = tmp_path / "model.pt"
    code, stdout, _ = _convert(
        [str(source), "--out", str(out), "--encoder", "zipformer-small", *set_options(), "--lang-dir", str(lang_dir)],
        capsys,
    )
    assert code == 0
    assert stdout.count("\n") == 1 and "heads transducer+ctc" in stdout and "vocab 10" in stdout
    model = asr.load_model(out)
    assert not model.training and model.heads == ("transducer", "ctc")
    assert model.tokenizer is not None and model.tokenizer.vocab_size == FIXTURE_VOCAB
    with torch.no_grad():
        y, y_lens = model.encode(fixture_io["offline_x"], torch.tensor([61, 61]))
    torch.testing.assert_close(y, fixture_io["offline_y"], atol=1e-4, rtol=0)
    assert torch.equal(y_lens, fixture_io["offline_y_lens"])


def test_converted_causal_file_reproduces_icefall_chunked_encoder(tmp_path, fixture_io, capsys):
    source = _write_input(tmp_path / "icefall.pt", icefall_state("zipformer_icefall_tiny_causal.pt"))
    out = tmp_path / "model.pt"
    code, stdout, _ = _convert(
        [
            str(source),
            "--out",
            str(out),
            "--encoder",
            "zipformer-small",
            "--causal",
            *set_options(),
            f"--set=chunk_size={fixture_io['chunk_size']}",
            f"--set=left_context_frames={fixture_io['left_context_frames']}",
        ],
        capsys,
    )
    assert code == 0 and "no tokenizer stored" in stdout and "asr decode --lang-dir" in stdout
    model = asr.load_model(out)
    assert model.tokenizer is None and model.encoder.causal
    x = fixture_io["causal_x"]
    with torch.no_grad():
        y, y_lens = model.encode(x, torch.tensor([x.shape[1]]))
    torch.testing.assert_close(y, fixture_io["causal_masked_y"], atol=1e-4, rtol=0)
    assert torch.equal(y_lens, fixture_io["causal_masked_y_lens"])


def test_file_holds_the_input_tensors_and_head_sizes(tmp_path, lang_dir, capsys):
    state = icefall_state(decoder_dim=16, joiner_dim=12, context_size=3)
    # DDP's prefix, as a checkpoint saved from a DistributedDataParallel model has it.
    source = _write_input(tmp_path / "icefall.pt", {f"module.{k}": v for k, v in state.items()})
    out = tmp_path / "model.pt"
    code, _, _ = _convert(
        [str(source), "--out", str(out), "--encoder", "zipformer-small", *set_options(), "--lang-dir", str(lang_dir)],
        capsys,
    )
    assert code == 0
    checkpoint = read_checkpoint(out)
    config = checkpoint["config"]
    assert config["encoder_name"] == "zipformer-small" and config["causal"] is False
    assert config["heads"] == ["transducer", "ctc"] and config["vocab_size"] == FIXTURE_VOCAB
    assert {k: config["model_kwargs"][k] for k in ("decoder_dim", "joiner_dim", "context_size")} == {
        "decoder_dim": 16,
        "joiner_dim": 12,
        "context_size": 3,
    }
    assert config["encoder_kwargs"] == fixture_config()
    assert checkpoint["extra"] == {"converted_from": str(source), "tokenizer": tokenizer_files(lang_dir)}
    stored = checkpoint["state_dict"]
    expected_keys = {("encoder." + k if k.startswith(("encoder_embed.", "encoder.")) else k) for k in state}
    assert set(stored) == expected_keys
    for key, value in state.items():
        ours = "encoder." + key if key.startswith(("encoder_embed.", "encoder.")) else key
        assert torch.equal(stored[ours], value), key


@pytest.mark.parametrize("context_size", [1, 2])
def test_head_config_reads_sizes_from_tensors(context_size):
    state = icefall_state(decoder_dim=20, joiner_dim=24, context_size=context_size)
    assert head_config(state) == {
        "heads": ["transducer", "ctc"],
        "vocab_size": 10,
        "decoder_dim": 20,
        "joiner_dim": 24,
        "context_size": context_size,
    }
    ctc_only = {k: v for k, v in state.items() if not k.startswith(("decoder.", "joiner.", "simple_"))}
    assert head_config(ctc_only) == {"heads": ["ctc"], "vocab_size": 10}
    model = convert_icefall(ctc_only, "zipformer-small", overrides=fixture_config())
    assert model.heads == ("ctc",) and not hasattr(model, "decoder")


def test_trust_pickle_reads_training_checkpoints(tmp_path, capsys):
    # icefall's epoch-N.pt holds its params object beside the model; weights-only loading refuses it.
    source = tmp_path / "epoch-1.pt"
    torch.save({"model": icefall_state(), "params": {"lr": Path("/x")}, "optimizer": None}, source)
    argv = [str(source), "--out", str(tmp_path / "model.pt"), "--encoder", "zipformer-small", *set_options()]
    line = _assert_one_line_error(*_convert(argv, capsys)[::2])
    assert "--trust-pickle" in line
    code, _, _ = _convert([*argv, "--trust-pickle"], capsys)
    assert code == 0 and (tmp_path / "model.pt").is_file()


def test_foreign_entries_are_an_error_unless_ignored(tmp_path, fixture_io, capsys):
    state = icefall_state()
    state["attention_decoder.embed.weight"] = torch.randn(10, 8)
    state["attention_decoder.out.bias"] = torch.randn(10)
    source = _write_input(tmp_path / "icefall.pt", state)
    out = tmp_path / "model.pt"
    argv = [str(source), "--out", str(out), "--encoder", "zipformer-small", *set_options()]
    line = _assert_one_line_error(*_convert(argv, capsys)[::2])
    assert "attention_decoder.* (2 tensors)" in line and "--ignore attention_decoder" in line
    assert not out.exists()
    code, _, _ = _convert([*argv, "--ignore", "attention_decoder", "--ignore", "ctc_output"], capsys)
    assert code == 0
    model = asr.load_model(out)
    assert model.heads == ("transducer",)
    with torch.no_grad():
        y, _ = model.encode(fixture_io["offline_x"], torch.tensor([61, 61]))
    torch.testing.assert_close(y, fixture_io["offline_y"], atol=1e-4, rtol=0)


# -- asr decode on the converted file ------------------------------------------------------------------


def _write_noise_wav(path: Path, seconds: float = 1.6, seed: int = 0) -> Path:
    samples = np.random.default_rng(seed).normal(0, 0.1, int(16000 * seconds)).clip(-1, 1)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def test_asr_decode_of_converted_file_equals_greedy_search(tmp_path, lang_dir, capsys):
    from asr.data.audio import load_audio
    from asr.data.features import compute_fbank
    from asr.decoding import greedy_search

    state = icefall_state(context_size=2)
    source = _write_input(tmp_path / "icefall.pt", state)
    out = tmp_path / "model.pt"
    code, _, _ = _convert([str(source), "--out", str(out), "--encoder", "zipformer-small", *set_options()], capsys)
    assert code == 0
    wavs = [_write_noise_wav(tmp_path / f"noise{i}.wav", seconds, seed=i) for i, seconds in enumerate((1.6, 1.1))]
    code = asr_main(["decode", "--checkpoint", str(out), "--lang-dir", str(lang_dir), *map(str, wavs)])
    printed = capsys.readouterr().out
    assert code == 0
    decoded = dict(line.split("\t", 1) for line in printed.splitlines() if "\t" in line)

    # The reference: the state dict converted in memory, run directly on each file alone.
    model = convert_icefall(state, "zipformer-small", overrides=fixture_config())
    tokenizer = asr.load_model(out, lang_dir=lang_dir).tokenizer
    expected = {}
    for wav in wavs:
        features = compute_fbank(load_audio(wav), 16000)[None]
        with torch.no_grad():
            enc_out, enc_lens = model.encode(features, torch.tensor([features.shape[1]]))
            (hyp,) = greedy_search(model, enc_out, enc_lens)
        expected[wav.stem] = tokenizer.decode(hyp.tokens)
    assert decoded == expected
    assert all(expected.values()), "the random heads should emit tokens for the comparison to mean something"


# -- errors ---------------------------------------------------------------------------------------------


def test_missing_head_tensor(tmp_path, capsys):
    state = icefall_state()
    del state["joiner.decoder_proj.weight"]
    source = _write_input(tmp_path / "icefall.pt", state)
    line = _assert_one_line_error(
        *_convert(
            [str(source), "--out", str(tmp_path / "o.pt"), "--encoder", "zipformer-small", *set_options()], capsys
        )[::2]
    )
    assert "missing: joiner.decoder_proj.weight" in line
    assert not (tmp_path / "o.pt").exists()


def test_head_shape_mismatch(tmp_path, capsys):
    state = icefall_state()
    state["ctc_output.1.weight"] = torch.randn(11, 48)  # a vocabulary other than the decoder's
    source = _write_input(tmp_path / "icefall.pt", state)
    line = _assert_one_line_error(
        *_convert(
            [str(source), "--out", str(tmp_path / "o.pt"), "--encoder", "zipformer-small", *set_options()], capsys
        )[::2]
    )
    assert "shape mismatch: ctc_output.1.weight (11, 48) vs ours (10, 48)" in line


@pytest.mark.parametrize(
    "encoder, expected",
    [
        ("zipformer-medium", "entries do not fit zipformer-medium"),  # the right family, other sizes
        ("conformer-small", "entries do not fit conformer-small"),
        ("no-such-encoder", "unknown encoder 'no-such-encoder'"),
    ],
)
def test_wrong_encoder(tmp_path, encoder, expected, capsys):
    source = _write_input(tmp_path / "icefall.pt", icefall_state())
    line = _assert_one_line_error(
        *_convert([str(source), "--out", str(tmp_path / "o.pt"), "--encoder", encoder], capsys)[::2]
    )
    assert expected in line
    assert not (tmp_path / "o.pt").exists()


@pytest.mark.parametrize(
    "name, causal, hint",
    [
        ("zipformer_icefall_tiny_causal.pt", False, "(a causal model: add --causal)"),
        ("zipformer_icefall_tiny.pt", True, "(not a causal model: drop --causal)"),
    ],
)
def test_wrong_causality(tmp_path, name, causal, hint, capsys):
    source = _write_input(tmp_path / "icefall.pt", icefall_state(name))
    argv = [str(source), "--out", str(tmp_path / "o.pt"), "--encoder", "zipformer-small", *set_options()]
    line = _assert_one_line_error(*_convert(argv + (["--causal"] if causal else []), capsys)[::2])
    assert hint in line
    assert not (tmp_path / "o.pt").exists()


def test_lang_dir_of_another_vocabulary(tmp_path, capsys):
    source = _write_input(tmp_path / "icefall.pt", icefall_state())
    other = tmp_path / "lang"
    build_char_tokenizer(["abc"], other)
    line = _assert_one_line_error(
        *_convert(
            [
                str(source),
                "--out",
                str(tmp_path / "o.pt"),
                "--encoder",
                "zipformer-small",
                *set_options(),
                "--lang-dir",
                str(other),
            ],
            capsys,
        )[::2]
    )
    assert "the tokenizer has 6 symbols but the checkpoint's vocabulary has 10" in line


def test_read_rejects_asr_checkpoints_and_empty_dicts(tmp_path):
    torch.save({"format": "asr-model", "state_dict": {}}, tmp_path / "ours.pt")
    with pytest.raises(ValueError, match="already an asr checkpoint"):
        read_icefall_checkpoint(tmp_path / "ours.pt")
    torch.save({"model": {}}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="no 'model' state dict of tensors"):
        read_icefall_checkpoint(tmp_path / "empty.pt")


def test_truncated_file_in_a_real_process(tmp_path):
    source = _write_input(tmp_path / "icefall.pt", icefall_state())
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    out = tmp_path / "o.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "asr",
            "convert",
            "icefall",
            str(truncated),
            "--out",
            str(out),
            "--encoder",
            "zipformer-small",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    _assert_one_line_error(result.returncode, result.stderr)
    assert "cannot read checkpoint (truncated, or not a PyTorch file)" in result.stderr
    assert not out.exists()
