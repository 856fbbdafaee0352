"""Corpus recipes on miniature corpora laid out exactly like LibriSpeech, AISHELL-1 and MUSAN.

The REAL recipes/*/ASR/prepare.sh scripts run offline from stage 1 on trees of a few generated
tone clips; the manifests are checked against the files written (counts, normalised texts,
durations), then the fbank and lang stages against what they must produce.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from asr import cli
from asr.data import prepare

from helpers.corpora import (
    AISHELL,
    LIBRISPEECH,
    MUSAN,
    MUSAN_WINDOWS,
    SR,
    make_aishell,
    make_librispeech,
    make_musan,
    read_jsonl,
    run_recipe,
    write_tone,
)


def check_cuts(cuts_path: Path, expected: dict[str, tuple[str, float]], audio_suffix: str) -> None:
    """The cuts hold exactly the expected utterances, with their texts and the files' durations."""
    cuts = read_jsonl(cuts_path)
    assert sorted(c["id"] for c in cuts) == sorted(expected)
    for cut in cuts:
        text, seconds = expected[cut["id"]]
        (sup,) = cut["supervisions"]
        assert sup["text"] == text
        (source,) = cut["recording"]["sources"]
        assert source["source"].endswith(f"{cut['id']}{audio_suffix}") and Path(source["source"]).is_file()
        info = sf.info(source["source"])
        assert cut["recording"]["num_samples"] == info.frames == round(seconds * SR)
        assert cut["duration"] == pytest.approx(info.frames / info.samplerate)
        assert sup["duration"] == pytest.approx(cut["duration"])
    text_lines = (cuts_path.parent / cuts_path.name.replace("_cuts_", "_text_").replace(".jsonl.gz", ".txt")).read_text(
        encoding="utf-8"
    )
    assert text_lines.splitlines() == [c["supervisions"][0]["text"] for c in cuts]


def check_fbank(cuts_path: Path, expected: dict[str, tuple[str, float]], speed_perturbed: bool) -> None:
    from lhotse import CutSet

    cuts = CutSet.from_file(cuts_path)
    factors = (1.0, 0.9, 1.1) if speed_perturbed else (1.0,)
    assert len(cuts) == len(expected) * len(factors)
    for cut in cuts:
        assert cut.has_features and cut.num_features == 80
        base, factor = cut.id, 1.0
        for f in (0.9, 1.1):
            if cut.id.endswith(f"_sp{f}"):
                base, factor = cut.id[: -len(f"_sp{f}")], f
        _, seconds = expected[base]
        assert cut.duration == pytest.approx(seconds / factor, abs=2e-3)
        feats = cut.load_features()
        assert feats.shape[1] == 80 and abs(feats.shape[0] - round(cut.duration * 100)) <= 1


def test_librispeech_recipe(tmp_path):
    dl_dir, data_dir = tmp_path / "download", tmp_path / "data"
    expected = make_librispeech(dl_dir)
    make_musan(dl_dir)
    parts = " ".join(LIBRISPEECH)
    common = ("--dl-dir", str(dl_dir), "--data-dir", str(data_dir), "--parts", parts, "--nj", "1")
    run = run_recipe("librispeech", "--stage", "1", "--stop-stage", "2", *common)
    assert run.returncode == 0, run.stderr
    assert "Stage 1: LibriSpeech manifests" in run.stdout and "Stage 2: MUSAN manifests" in run.stdout
    assert "dev-clean: skipped 1 utterances whose .flac is missing" in run.stdout

    manifests = data_dir / "manifests"
    for part in LIBRISPEECH:
        check_cuts(manifests / f"librispeech_cuts_{part}.jsonl.gz", expected[part], ".flac")
        recordings = read_jsonl(manifests / f"librispeech_recordings_{part}.jsonl.gz")
        supervisions = read_jsonl(manifests / f"librispeech_supervisions_{part}.jsonl.gz")
        assert len(recordings) == len(supervisions) == len(expected[part])
        assert {s["speaker"] for s in supervisions} == {u.split("-")[0] for u in expected[part]}
    windows = read_jsonl(manifests / "musan_cuts.jsonl.gz")
    assert len(windows) == MUSAN_WINDOWS and all(5.0 < w["duration"] <= 10.0 for w in windows)
    for part, files in MUSAN.items():
        (rec,) = read_jsonl(manifests / f"musan_recordings_{part}.jsonl.gz")
        assert rec["duration"] == pytest.approx(files[0][1])

    # Idempotent: a rerun finds the .done markers and rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in manifests.iterdir()}
    rerun = run_recipe("librispeech", "--stage", "1", "--stop-stage", "2", *common)
    assert rerun.returncode == 0, rerun.stderr
    assert "dev-clean done before, skipping" in rerun.stdout and "MUSAN manifests done before" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in manifests.iterdir()} == before

    run = run_recipe("librispeech", "--stage", "3", "--stop-stage", "4", "--vocab-sizes", "40", *common)
    assert run.returncode == 0, run.stderr
    fbank = data_dir / "fbank"
    check_fbank(fbank / "librispeech_cuts_dev-clean.jsonl.gz", expected["dev-clean"], speed_perturbed=False)
    check_fbank(fbank / "librispeech_cuts_train-clean-100.jsonl.gz", expected["train-clean-100"], speed_perturbed=True)
    assert len(read_jsonl(fbank / "musan_cuts.jsonl.gz")) == MUSAN_WINDOWS

    outputs = [p for d in (fbank, data_dir / "lang_bpe_40", manifests) for p in d.rglob("*")]
    before = {p: p.stat().st_mtime_ns for p in outputs}
    rerun = run_recipe("librispeech", "--stage", "3", "--stop-stage", "4", "--vocab-sizes", "40", *common)
    assert rerun.returncode == 0, rerun.stderr
    assert "fbank of train-clean-100 done before" in rerun.stdout and "lang_bpe_40 done before" in rerun.stdout
    assert {p: p.stat().st_mtime_ns for p in outputs} == before

    from asr.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(data_dir / "lang_bpe_40")
    assert tokenizer.vocab_size == 40 and tokenizer.id_to_token(0) == "<blk>"
    for text, _ in expected["train-clean-100"].values():  # BPE trained on the train text only
        assert tokenizer.decode(tokenizer.encode(text)) == text and 2 not in tokenizer.encode(text)


def test_aishell_recipe(tmp_path):
    dl_dir, data_dir = tmp_path / "download", tmp_path / "data"
    expected = make_aishell(dl_dir)
    common = ("--dl-dir", str(dl_dir), "--data-dir", str(data_dir), "--nj", "1")
    run = run_recipe("aishell", "--stage", "1", *common)
    assert run.returncode == 0, run.stderr
    assert "Stage 2: no MUSAN at" in run.stdout
    assert "dev: skipped 1 .wav files without a transcript" in run.stdout

    manifests = data_dir / "manifests"
    for part in AISHELL:
        check_cuts(manifests / f"aishell_cuts_{part}.jsonl.gz", expected[part], ".wav")
    assert not (manifests / "musan_cuts.jsonl.gz").exists()

    check_fbank(data_dir / "fbank" / "aishell_cuts_train.jsonl.gz", expected["train"], speed_perturbed=True)
    check_fbank(data_dir / "fbank" / "aishell_cuts_dev.jsonl.gz", expected["dev"], speed_perturbed=False)
    tokens = (data_dir / "lang_char" / "tokens.txt").read_text(encoding="utf-8").split()[0::2]
    train_chars = {ch for text, _ in expected["train"].values() for ch in text}
    assert tokens[:3] == ["<blk>", "<sos/eos>", "<unk>"] and set(tokens[3:]) == train_chars


def test_recipe_rejects_unknown_option(tmp_path):
    run = run_recipe("aishell", "--stage", "1", "--dl-dri", str(tmp_path))
    assert run.returncode != 0 and "unknown option --dl-dri" in run.stderr


def test_missing_or_empty_corpus_and_absent_part(tmp_path, capsys):
    assert (
        cli.main(
            ["data", "prepare", "librispeech", "--corpus-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o")]
        )
        == 1
    )
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert (
        cli.main(
            ["data", "prepare", "aishell", "--corpus-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")]
        )
        == 1
    )
    assert f"{tmp_path / 'empty'} is empty" in capsys.readouterr().err

    write_tone(tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac", 0.2)
    (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 HI\n")
    args = ["librispeech", "--corpus-dir", str(tmp_path / "LibriSpeech"), "--out-dir", str(tmp_path / "o")]
    assert cli.main(["data", "prepare", *args, "--parts", "dev-clean", "test-other"]) == 1
    err = capsys.readouterr().err
    assert "part 'test-other' is absent" in err and str(tmp_path / "LibriSpeech" / "test-other") in err
    assert "present under" in err and "dev-clean" in err
    assert cli.main(["data", "prepare", *args, "--parts", "dev-cleen"]) == 1
    assert "unknown librispeech part(s) dev-cleen" in capsys.readouterr().err

    (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac").write_bytes(b"not audio" * 20)
    assert cli.main(["data", "prepare", *args]) == 1
    assert "unreadable audio" in (err := capsys.readouterr().err) and "1-2-0000.flac" in err
    assert not (tmp_path / "o" / "librispeech_cuts_dev-clean.jsonl.gz").exists()


def test_aishell_needs_all_parts_and_transcript(tmp_path, capsys):
    make_aishell(tmp_path)
    args = ["aishell", "--corpus-dir", str(tmp_path / "aishell"), "--out-dir", str(tmp_path / "o")]
    transcript = tmp_path / "aishell" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.rename(transcript.with_suffix(".bak"))
    assert cli.main(["data", "prepare", *args]) == 1
    assert f"{transcript} does not exist" in capsys.readouterr().err
    transcript.with_suffix(".bak").rename(transcript)
    test_dir = tmp_path / "aishell" / "data_aishell" / "wav" / "test"
    test_dir.rename(tmp_path / "elsewhere")
    assert cli.main(["data", "prepare", *args, "--parts", "dev"]) == 1
    assert f"part 'test' is absent: no directory {test_dir}" in capsys.readouterr().err


def test_download_failure_is_a_clear_error(tmp_path, capsys):
    # Port 9 on localhost refuses at once: the failure path without touching the network.
    code = cli.main(
        ["data", "prepare", "download", "aishell", "--dl-dir", str(tmp_path), "--mirror", "http://127.0.0.1:9"]
    )
    err = capsys.readouterr().err
    assert code == 1 and "could not download aishell" in err and "openslr.org/33" in err
    assert "Traceback" not in err


def test_normalisers():
    assert prepare.normalize_librispeech(" HELLO  world ") == "HELLO WORLD"
    assert prepare.normalize_aishell("而 对 楼市 ａ") == "而对楼市Ａ"  # full-width letters are mapped by lhotse first
    assert prepare.normalize_aishell(prepare.normalize_aishell("也 成为 b")) == "也成为B"
