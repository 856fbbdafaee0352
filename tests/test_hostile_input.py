"""Hostile input: torn or foreign checkpoints, cuts files and ARPA LMs, Ctrl-C, and the smaller cases
(skip counts, byte-order marks, help defaults, 8 kHz audio, epoch-checkpoint pruning). Each bad input
gets an exit status and one line naming the file or option, never a traceback, and the good inputs
beside it are still processed."""

from __future__ import annotations

import gzip
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, load_manifest

from asr import checkpoint as ckpt
from asr import cli
from asr.data import audio as audio_module
from asr.data.manifests import ManifestError, load_cuts, save_manifest
from asr.lm import NgramLM

from helpers.training import train_argv

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TEXTS = {"good1": "abc", "good2": "cab"}


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``asr ARGV`` run in this process, as the console script would
    give them: ``SystemExit("message")`` prints the message and exits 1. Any other exception escapes and
    fails the test, as it would print a traceback."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
        code = 1 if isinstance(exit_.code, str) else int(exit_.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def transcripts(stdout: str) -> dict[str, str]:
    """``asr decode``'s ``id<TAB>text`` lines."""
    return dict((line.split("\t") + [""])[:2] for line in stdout.splitlines() if "\t" in line)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A randomly initialised one-layer-per-stack zipformer-xs with a character table (a model file and
    the same weights as a training checkpoint dict), two 1 s noise wavs and a CutSet of them."""
    from asr.data.tokenizer import build_char_tokenizer
    from asr.models import build_model

    root = tmp_path_factory.mktemp("hostile")
    tokenizer = build_char_tokenizer(["abc"], root / "lang")
    torch.manual_seed(0)
    model = build_model("zipformer-xs", tokenizer.vocab_size, encoder_kwargs={"num_encoder_layers": [1] * 6})
    tokens_txt = (root / "lang" / "tokens.txt").read_bytes()
    ckpt.save_model(root / "model.pt", model, extra={"tokenizer": {"tokens.txt": tokens_txt}})
    rng = np.random.default_rng(0)
    cuts = []
    for uid, text in TEXTS.items():
        wav = root / f"{uid}.wav"
        sf.write(wav, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
        cut = Recording.from_file(wav, recording_id=uid).to_cut()
        cut.supervisions = [SupervisionSegment(uid, uid, start=0, duration=cut.duration, text=text)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(root / "cuts.jsonl.gz")
    return {"root": root, "model": root / "model.pt", "cuts": root / "cuts.jsonl.gz", "lang": root / "lang"}


def wavs(setup) -> list[str]:
    return [str(setup["root"] / f"{uid}.wav") for uid in TEXTS]


def train_format(setup, batch: int) -> dict:
    """The model file's weights as an ``asr train`` checkpoint dict written at ``batch``."""
    saved = ckpt.read_checkpoint(setup["model"])
    return {
        "format": ckpt.TRAIN_FORMAT,
        "version": ckpt.VERSION,
        "build_config": saved["config"],
        "model": saved["state_dict"],
        "state": {"batch_idx_train": batch},
        "tokenizer": saved["extra"]["tokenizer"],
    }


def torn(path: Path, keep: float = 0.5) -> Path:
    """Cut ``path`` short in place, as a copy interrupted part-way would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ------------------------------------------------------------------------------------ checkpoints


def make_bad_checkpoint(kind: str, setup, tmp_path: Path) -> tuple[Path, str]:
    """A file of ``kind`` given as --checkpoint and the reason the error must give."""
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        path.write_bytes(setup["model"].read_bytes()[:5_000_000])
        return path, "truncated or corrupt checkpoint"
    if kind == "text":
        path.write_text("epoch 3: loss 0.52\nthis is a training log, not a model\n")
        return path, "a text file, not a checkpoint"
    if kind == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
        return path, r"a TorchScript archive \(torch\.jit\.save\)"
    if kind == "empty":
        path.touch()
        return path, r"empty file \(0 bytes\)"
    if kind == "random-bytes":
        path.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)))
        return path, "not a readable checkpoint"
    if kind == "foreign-dict":
        torch.save({"weights": torch.zeros(3)}, path)
        return path, "is not an asr model checkpoint"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "text", "torchscript", "empty", "random-bytes", "foreign-dict"])
def test_bad_checkpoint_is_one_line_naming_the_file(setup, tmp_path, capsys, kind):
    path, reason = make_bad_checkpoint(kind, setup, tmp_path)
    code, out, err = run_cli(capsys, "decode", "--checkpoint", str(path), *wavs(setup))
    assert code == 1 and out == ""
    assert re.fullmatch(rf"asr decode: {re.escape(str(path))}:? .*{reason}.*", err.strip().splitlines()[-1])
    with pytest.raises(ckpt.CheckpointError) as raised:
        ckpt.load_model(path)
    assert raised.value.path == path and isinstance(raised.value, ValueError)
    # The same command with the intact file transcribes every wav.
    code, out, _ = run_cli(capsys, "decode", "--checkpoint", str(setup["model"]), *wavs(setup))
    assert code == 0 and sorted(transcripts(out)) == sorted(TEXTS)


@pytest.mark.parametrize("torn_name", ["checkpoint-6.pt", "epoch-1.pt"])
def test_experiment_dir_falls_back_past_a_torn_newest_checkpoint(setup, tmp_path, capsys, torn_name):
    exp = tmp_path / "exp"
    # checkpoint-4 is the newest intact file; torn_name is newer (batch 6 either way).
    ckpt.save_atomic(train_format(setup, 2), exp / "checkpoint-2.pt")
    ckpt.save_atomic(train_format(setup, 4), exp / "checkpoint-4.pt")
    ckpt.save_atomic(train_format(setup, 6), exp / torn_name)
    assert ckpt.newest_checkpoint(exp) == exp / torn_name
    torn(exp / torn_name)

    code, out, err = run_cli(capsys, "decode", "--checkpoint", str(exp), *wavs(setup))
    assert code == 0
    assert f"skipping {exp / torn_name}: truncated or corrupt checkpoint" in err
    assert f"using checkpoint-4.pt, the newest intact checkpoint in {exp} (skipped {torn_name})" in err
    _, direct, _ = run_cli(capsys, "decode", "--checkpoint", str(exp / "checkpoint-4.pt"), *wavs(setup))
    assert transcripts(out) == transcripts(direct) and sorted(transcripts(out)) == sorted(TEXTS)
    # Training resumes through the same function.
    path, saved = ckpt.newest_readable_checkpoint(exp)
    assert path == exp / "checkpoint-4.pt" and saved["state"]["batch_idx_train"] == 4


def test_experiment_dir_with_no_intact_checkpoint_is_one_line(setup, tmp_path, capsys):
    exp = tmp_path / "exp"
    for batch in (2, 4):
        torn(ckpt.save_atomic(train_format(setup, batch), exp / f"checkpoint-{batch}.pt"))
    code, out, err = run_cli(capsys, "decode", "--checkpoint", str(exp), *wavs(setup))
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1] == f"asr decode: {exp}: none of its 2 checkpoint files is readable"


# ------------------------------------------------------------------------------------ cuts files


def make_bad_cuts(kind: str, good: Path, tmp_path: Path) -> tuple[Path, str]:
    """A cuts file of ``kind`` and the message (after the path) its error must give."""
    path = tmp_path / f"{kind}.jsonl.gz"
    lines = gzip.decompress(good.read_bytes()).decode().splitlines(keepends=True)
    if kind == "truncated-gzip":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) - 12])  # loses the gzip trailer and the end of the stream
        return path, r": truncated gzip file \(it ends inside line \d+\)"
    if kind == "not-gzip":
        path.write_text("".join(lines))
        return path, ": not a gzip file although its name ends in .gz"
    if kind == "malformed-json":
        path.write_bytes(gzip.compress((lines[0] + lines[1][: len(lines[1]) // 2] + "\n").encode()))
        return path, r":2: malformed JSON: .* at column \d+"
    if kind == "empty-gzip":
        path.write_bytes(gzip.compress(b""))
        return path, r" holds no cuts \(empty file\)"
    if kind == "zero-bytes":
        path.touch()
        return path, r" holds no cuts \(empty file\)"
    if kind == "recordings":
        RecordingSet.from_recordings(c.recording for c in load_manifest(good)).to_file(path)
        return path, r":1: holds a Recording, not a cut \(give a CutSet file, e\.g\. \*_cuts_\*\.jsonl\.gz\)"
    if kind == "missing":
        return path, ": no such cuts file"
    raise AssertionError(kind)


CUTS_CASES = ["truncated-gzip", "not-gzip", "malformed-json", "empty-gzip", "zero-bytes", "recordings", "missing"]


@pytest.mark.parametrize("kind", CUTS_CASES)
def test_bad_cuts_file_is_one_line_naming_the_file_and_line(setup, tmp_path, capsys, kind):
    path, message = make_bad_cuts(kind, setup["cuts"], tmp_path)
    argv = ["decode", "--checkpoint", str(setup["model"]), "--out-dir", str(tmp_path / "out")]
    code, out, err = run_cli(capsys, *argv, "--cuts", str(path))
    assert code == 1 and out == ""
    assert re.fullmatch(rf"asr decode: (--cuts )?{re.escape(str(path))}{message}", err.strip().splitlines()[-1])
    assert not (tmp_path / "out" / "hyps.txt").exists()
    with pytest.raises(ManifestError, match=re.escape(str(path))):
        load_cuts(path)
    # The intact file decodes every cut and scores it.
    code, out, _ = run_cli(capsys, *argv, "--cuts", str(setup["cuts"]))
    assert code == 0 and sorted(transcripts(out)) == sorted(TEXTS)
    assert re.fullmatch(r"CER \d+\.\d\d% \[\d+ / 6, .*", out.splitlines()[-1])


@pytest.mark.parametrize("kind", ["truncated-gzip", "malformed-json", "empty-gzip"])
def test_fbank_names_a_bad_cuts_file(setup, tmp_path, capsys, kind):
    path, message = make_bad_cuts(kind, setup["cuts"], tmp_path)
    out_path = tmp_path / "feats.jsonl.gz"
    code, _, err = run_cli(capsys, "data", "fbank", "--cuts", str(path), "--out", str(out_path))
    assert code == 2 and not out_path.exists()
    assert re.fullmatch(rf"asr data fbank: error: --cuts {re.escape(str(path))}{message}", err.strip().splitlines()[-1])
    code, _, _ = run_cli(capsys, "data", "fbank", "--cuts", str(setup["cuts"]), "--out", str(out_path))
    assert code == 0 and sorted(load_cuts(out_path).ids) == sorted(TEXTS)


@pytest.mark.parametrize("kind", ["truncated-gzip", "malformed-json"])
def test_bad_training_cuts_are_a_training_data_error(setup, tmp_path, kind):
    from asr.data.tokenizer import load_tokenizer
    from asr.data.training_data import TrainingDataError, load_usable_cuts

    path, message = make_bad_cuts(kind, setup["cuts"], tmp_path)
    with pytest.raises(TrainingDataError, match=rf"^the training cuts file {re.escape(str(path))}{message}$"):
        load_usable_cuts(str(path), "training", load_tokenizer(setup["lang"]), lambda frames: frames // 4)


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl"])
def test_load_cuts_reads_what_lhotse_reads(setup, tmp_path, suffix):
    path = tmp_path / f"cuts{suffix}"
    load_manifest(setup["cuts"]).to_file(path)
    ours, lhotse_cuts = load_cuts(path), load_manifest(path)
    assert [c.to_dict() for c in ours] == [c.to_dict() for c in lhotse_cuts]


def test_save_manifest_interrupted_leaves_the_old_file_and_no_temporary(setup, tmp_path, monkeypatch):
    path = tmp_path / "cuts.jsonl.gz"
    cuts = load_manifest(setup["cuts"])
    save_manifest(cuts.subset(first=1), path)
    before = path.read_bytes()

    def write_half_then_interrupt(self, target):
        Path(target).write_bytes(gzip.compress(b'{"id": "half'))
        raise KeyboardInterrupt

    monkeypatch.setattr(CutSet, "to_file", write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_manifest(cuts, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cuts.jsonl.gz"]
    monkeypatch.undo()
    save_manifest(cuts, path)
    assert list(load_cuts(path).ids) == list(cuts.ids)
    assert path.stat().st_mode & 0o044, "the manifest must stay readable by others (umask permitting)"


# ----------------------------------------------------------------------------------------- ARPA


@pytest.fixture(scope="module")
def char_lm(setup) -> tuple[Path, list[str]]:
    """A bigram over the model's character table, as ``.arpa.gz``, and the table."""
    from asr.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(setup["lang"])
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    sentences = [tokenizer.encode(text) for text in ("abc", "cab", "bca", "aab", "abcabc")]
    path = setup["root"] / "lm.arpa.gz"
    NgramLM.train(sentences, symbols, order=2).save_arpa(path)
    return path, symbols


def arpa_sections(text: str) -> dict[int, int]:
    """n-gram lines per ``\\N-grams:`` section, counted here independently of the reader."""
    counts, order = {}, 0
    for line in text.splitlines():
        if m := re.fullmatch(r"\\(\d+)-grams:", line.strip()):
            order = int(m.group(1))
            counts[order] = 0
        elif line.strip() == "\\end\\":
            order = 0
        elif order and line.strip():
            counts[order] += 1
    return counts


def make_bad_arpa(kind: str, good: Path, tmp_path: Path) -> tuple[Path, str]:
    text = gzip.decompress(good.read_bytes()).decode()
    sections = arpa_sections(text)
    if kind == "truncated-gzip":
        path = tmp_path / "lm.arpa.gz"
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path, r"truncated gzip file \(it ends inside line \d+\)"
    path = tmp_path / "lm.arpa"
    if kind == "count-mismatch":
        declared = sections[2] + 3
        path.write_text(text.replace(f"ngram 2={sections[2]}\n", f"ngram 2={declared}\n"))
        return path, rf"the header declares {declared} 2-grams, the \\2-grams: section has {sections[2]}"
    if kind == "missing-section":
        path.write_text(text.replace(f"ngram 2={sections[2]}\n", f"ngram 2={sections[2]}\nngram 3=7\n"))
        return path, r"the header declares 7 3-grams but the file has no \\3-grams: section"
    if kind == "no-end":
        path.write_text(text[: text.index("\\end\\")])
        return path, r"ends without the \\end\\ line \(truncated\?\)"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated-gzip", "count-mismatch", "missing-section", "no-end"])
def test_bad_arpa_is_an_error_naming_the_file_order_and_counts(setup, char_lm, tmp_path, capsys, kind):
    good, symbols = char_lm
    path, message = make_bad_arpa(kind, good, tmp_path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {message}$"):
        NgramLM.load_arpa(path, symbols)
    argv = ["decode", "--checkpoint", str(setup["model"]), "--method", "modified_beam_search", *wavs(setup)]
    code, out, err = run_cli(capsys, *argv, "--lm", str(path))
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("asr decode: error: ") and re.search(rf"{re.escape(str(path))}: {message}$", last), last
    code, out, _ = run_cli(capsys, *argv, "--lm", str(good))
    assert code == 0 and sorted(transcripts(out)) == sorted(TEXTS)


def test_save_arpa_interrupted_leaves_no_file(char_lm, tmp_path, monkeypatch):
    good, symbols = char_lm
    lm = NgramLM.load_arpa(good, symbols)

    def interrupted(self, data):
        raise KeyboardInterrupt

    # The text layer hands the compressor its first block when the writing is under way.
    monkeypatch.setattr(gzip.GzipFile, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lm.save_arpa(tmp_path / "out.arpa.gz")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------- Ctrl-C


# Enough espeak utterances (a few seconds) that Ctrl-C lands mid-run on an idle machine, too.
SYNTH_UTTS = 120


def interrupt_when(argv: list[str], ready, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m asr ARGV`` in its own process group and send SIGINT to the whole group, as a
    terminal's Ctrl-C does, once ``ready()`` holds (the command has written its first output).

    The command starts with SIGINT's default action: a suite launched in the background of a
    non-interactive shell inherits SIGINT ignored, and so would the command."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "asr", *argv],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, "the command ended before it could be interrupted: " + proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the command wrote nothing in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_interrupted(result: subprocess.CompletedProcess, command: str) -> None:
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == f"asr {command}: interrupted; rerun to resume"


@pytest.mark.parametrize("num_workers", [1, 2])
def test_ctrl_c_in_synth_is_one_line_and_a_rerun_completes(tmp_path, num_workers):
    if subprocess.run(["which", "espeak-ng"], capture_output=True).returncode != 0:
        pytest.skip("espeak-ng is not installed")
    out_dir = tmp_path / "corpus"
    argv = ["data", "synth", "--out-dir", str(out_dir), "--num-utts", str(SYNTH_UTTS), "--engines", "espeak"]
    argv += ["--num-workers", str(num_workers), "--no-progress"]
    result = interrupt_when(argv, lambda: any(out_dir.glob("audio/*/*.wav")))
    assert_interrupted(result, "data synth")
    # Nothing half-written: every file under a final name is complete, no manifest yet.
    written = sorted(out_dir.glob("audio/*/*.wav"))
    assert 1 <= len(written) < SYNTH_UTTS and not list(out_dir.glob("*.jsonl.gz"))
    for wav in written:
        assert sf.info(str(wav)).frames > 0 and len(sf.read(str(wav))[0]) == sf.info(str(wav)).frames
    rerun = subprocess.run([sys.executable, "-m", "asr", *argv], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(written)} of {SYNTH_UTTS} utterances already synthesized" in rerun.stderr
    cuts = [cut for split in ("train", "dev", "test") for cut in load_cuts(out_dir / f"synth_cuts_{split}.jsonl.gz")]
    assert len(cuts) == SYNTH_UTTS and all(cut.load_audio().shape[1] > 0 for cut in cuts)
    assert not [p for p in out_dir.rglob("*") if p.name.startswith(".")], "temporary files left behind"


def few_train_cuts(corpus: dict[str, Path], path: Path, broken_audio: Path | None = None) -> tuple[Path, str]:
    """The first 12 training cuts of ``corpus`` written to ``path`` (a third of the training time), the
    first one's audio replaced by ``broken_audio`` when given; returns the path and that cut's id."""
    dicts = [cut.to_dict() for cut in load_manifest(corpus["train"]).subset(first=12)]
    if broken_audio is not None:
        dicts[0]["recording"]["sources"][0]["source"] = str(broken_audio)
    CutSet.from_dicts(dicts).to_file(path)
    return path, dicts[0]["id"]


@pytest.mark.slow  # about 30 s; the synth test above covers Ctrl-C in the default run
def test_ctrl_c_in_train_is_one_line_and_a_rerun_resumes(corpus, tmp_path):
    exp_dir = tmp_path / "exp"
    train_cuts, _ = few_train_cuts(corpus, tmp_path / "train.jsonl.gz")
    argv = train_argv({**corpus, "train": train_cuts}, exp_dir)
    result = interrupt_when(argv, lambda: (exp_dir / "checkpoint-2.pt").exists())
    assert_interrupted(result, "train")
    for path in ckpt.batch_checkpoints(exp_dir):
        ckpt.read_checkpoint(path)  # every checkpoint under a final name is whole
    assert not (exp_dir / "epoch-1.pt").exists()
    newest = ckpt.batch_checkpoints(exp_dir)[-1]
    rerun = subprocess.run([sys.executable, "-m", "asr", *argv], env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {newest}" in rerun.stderr and "finished: epoch 1" in rerun.stdout


# ------------------------------------------------------------------------------- smaller cases


def test_train_reports_skipped_cuts_and_batches_apart_and_prunes_epochs(corpus, tmp_path):
    """One training cut's audio is corrupt: each epoch skips that cut (not a batch); with
    --keep-last-epochs 1 only the last epoch checkpoint stays."""
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF" + bytes(200))
    train_cuts, victim = few_train_cuts(corpus, tmp_path / "train.jsonl.gz", broken)
    exp_dir = tmp_path / "exp"
    argv = train_argv({**corpus, "train": train_cuts}, exp_dir, "--num-epochs", "2", "--keep-last-epochs", "1")
    result = subprocess.run([sys.executable, "-m", "asr", *argv], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"skipping cut {victim}" in result.stderr and str(broken) in result.stderr
    assert re.search(
        r"^finished: epoch 2, \d+ batches, 0 skipped batches \(non-finite loss or gradients\), "
        r"2 skipped cuts \(audio or features could not be loaded\)$",
        result.stdout,
        re.MULTILINE,
    ), result.stdout
    assert [p.name for p in ckpt.epoch_checkpoints(exp_dir)] == ["epoch-2.pt"]
    assert ckpt.load(exp_dir / "epoch-2.pt")["state"]["skipped_cuts"] == 2


def test_wer_strips_a_byte_order_mark(tmp_path, capsys):
    lines = "u1\thello world\nu2\tgood morning\n"
    plain, with_bom, hyp = tmp_path / "ref.txt", tmp_path / "ref_bom.txt", tmp_path / "hyp.txt"
    plain.write_text(lines, encoding="utf-8")
    with_bom.write_bytes(b"\xef\xbb\xbf" + lines.encode())
    hyp.write_text("u1\thello word\nu2\tgood morning\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "wer", str(plain), str(hyp))
    assert code == 0 and out.splitlines()[-1] == "WER 25.00% [1 / 4, 0 ins, 0 del, 1 sub]"
    code, out_bom, err = run_cli(capsys, "wer", str(with_bom), str(hyp))
    assert code == 0 and out_bom == out and "warning" not in err


@pytest.mark.parametrize("which", ["ref", "hyp"])
def test_wer_names_a_file_with_invalid_utf8(tmp_path, capsys, which):
    good = tmp_path / "good.txt"
    good.write_text("u1\thello\nu2\tworld\n", encoding="utf-8")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("u1\thello\nu2\twörld\n".encode("latin-1"))
    files = [str(bad), str(good)] if which == "ref" else [str(good), str(bad)]
    code, out, err = run_cli(capsys, "wer", *files)
    assert code == 1 and out == ""
    assert (
        err.strip() == f"asr wer: {bad}:2: not UTF-8 text (byte 0xf6 at byte 5 of the line); convert the file to UTF-8"
    )


def all_commands() -> list[list[str]]:
    return [
        [name, *([sub] if sub else [])]
        for name, entry in cli.COMMANDS.items()
        for sub in (entry if isinstance(entry, dict) else [None])
    ]


@pytest.mark.parametrize("command", all_commands(), ids=" ".join)
def test_help_shows_each_default_once(capsys, command):
    code, out, _ = run_cli(capsys, *command, "--help")
    assert code == 0 and "--help" in out
    text = " ".join(out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    for option in re.split(r"\s(?=-{1,2}[a-z])", text):
        assert option.count("(default:") <= 1, option


def test_upsampled_audio_is_warned_once_per_process(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(audio_module, "_warned_upsampling", False)
    rng = np.random.default_rng(0)
    paths = {}
    for name, rate in [("a8k", 8000), ("b44k", 44100), ("c8k", 8000), ("d16k", 16000)]:
        paths[name] = tmp_path / f"{name}.wav"
        sf.write(paths[name], rng.normal(0, 0.1, rate // 2).astype(np.float32), rate)
    caplog.set_level(logging.WARNING, logger="asr.data.audio")
    for name in ("b44k", "d16k"):  # downsampled or as is: nothing to warn about
        audio_module.load_audio(paths[name])
    assert caplog.records == []
    for name in ("a8k", "c8k"):
        assert len(audio_module.load_audio(paths[name])) == 8000
    (record,) = caplog.records
    assert record.getMessage().startswith(
        f"{paths['a8k']}: 8000 Hz audio upsampled to 16000 Hz; it has nothing above 4000 Hz"
    )


def test_decode_warns_once_for_several_8khz_files_and_transcribes_all(setup, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(audio_module, "_warned_upsampling", False)
    rng = np.random.default_rng(1)
    files = []
    for name, rate in [("phone1", 8000), ("phone2", 8000), ("wide", 16000)]:
        files.append(tmp_path / f"{name}.wav")
        sf.write(files[-1], rng.normal(0, 0.1, rate).astype(np.float32), rate)
    code, out, err = run_cli(capsys, "decode", "--checkpoint", str(setup["model"]), *map(str, files))
    assert code == 0 and sorted(transcripts(out)) == ["phone1", "phone2", "wide"]
    assert err.count("upsampled to 16000 Hz") == 1 and f"{files[0]}: 8000 Hz audio upsampled" in err
