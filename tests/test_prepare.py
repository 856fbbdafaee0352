"""Corpus recipes on miniature corpora laid out exactly like LibriSpeech, AISHELL-1 and MUSAN.

The REAL recipes/*/ASR/prepare.sh scripts run offline from stage 1 on trees of a few generated
tone clips; the manifests are checked against the files written (counts, normalised texts,
durations), then the fbank and lang stages against what they must produce.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from asr.data import prepare

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# LibriSpeech: part -> {speaker-chapter: [(utt, text, seconds)]}; one lower-case word checks the
# upper-casing, and 84-1 lists an utterance whose .flac is absent (lhotse skips it; we count it).
LIBRISPEECH = {
    "dev-clean": {
        "84-121123": [
            ("0000", "GO DO YOU HEAR", 0.55),
            ("0001", "BUT IN LESS THAN five MINUTES THE STAIRCASE GROANED", 0.8),
        ],
        "174-50561": [("0000", "FOREGOING  ALL   THAT", 0.6)],
    },
    "train-clean-100": {
        "103-1240": [
            ("0000", "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED MISSUS RACHEL LYNDE LIVED JUST", 0.9),
            ("0001", "THAT HAD ITS SOURCE AWAY BACK IN THE WOODS OF THE OLD CUTHBERT PLACE", 0.7),
            ("0002", "FOR NOT EVEN A BROOK COULD RUN PAST MISSUS RACHEL LYNDE'S DOOR", 0.65),
        ],
        "1034-121119": [("0000", "THE OLD MAN SAT IN THE SUN WATCHING THE RIVER RUN PAST THE MILL", 0.75)],
    },
}
LIBRISPEECH_MISSING_FLAC = ("dev-clean", "84-121123", "0002", "NOT ON DISK")

# AISHELL: part -> [(speaker, utt id, transcript as shipped, seconds)]; BAC009S0724W0999 has audio
# but no transcript line (a counted skip, as in the real corpus).
AISHELL = {
    "train": [
        ("S0002", "BAC009S0002W0122", "而 对 楼市 成交 抑制 作用 最 大 的 限 购", 0.7),
        ("S0002", "BAC009S0002W0123", "也 成为 地方 政府 的 眼中 钉", 0.5),
        ("S0003", "BAC009S0003W0121", "ｋ 线 图 显示 市场 回暖", 0.6),
    ],
    "dev": [("S0724", "BAC009S0724W0121", "甚至 出现 交易 几乎 停滞 的 情况", 0.55)],
    "test": [("S0764", "BAC009S0764W0121", "甚至 出现 交易 几乎 停滞 的 情况", 0.45)],
}
AISHELL_UNTRANSCRIBED = ("dev", "S0724", "BAC009S0724W0999", 0.4)

# MUSAN: part -> [(relative path, seconds)]; 10 s windows, windows of 5 s or less dropped.
MUSAN = {
    "music": [("fma/music-fma-0000.wav", 6.0)],
    "speech": [("librivox/speech-librivox-0000.wav", 5.5)],
    "noise": [("free-sound/noise-free-sound-0000.wav", 16.0)],
}
MUSAN_WINDOWS = 1 + 1 + 2  # 6 s; 5.5 s; 16 s -> 10 s + 6 s


def write_tone(path: Path, seconds: float, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


def make_librispeech(dl_dir: Path) -> dict[str, dict[str, tuple[str, float]]]:
    """Write the tree; returns part -> utt id -> (normalised text, duration)."""
    expected: dict[str, dict[str, tuple[str, float]]] = {}
    for part, chapters in LIBRISPEECH.items():
        expected[part] = {}
        for spk_chapter, utts in chapters.items():
            spk, chapter = spk_chapter.split("-")
            chapter_dir = dl_dir / "LibriSpeech" / part / spk / chapter
            lines = []
            for i, (utt, text, seconds) in enumerate(utts):
                utt_id = f"{spk_chapter}-{utt}"
                write_tone(chapter_dir / f"{utt_id}.flac", seconds, freq=200.0 + 50 * i)
                lines.append(f"{utt_id} {text}")
                expected[part][utt_id] = (" ".join(text.split()).upper(), seconds)
            if (part, spk_chapter) == LIBRISPEECH_MISSING_FLAC[:2]:
                lines.append(f"{spk_chapter}-{LIBRISPEECH_MISSING_FLAC[2]} {LIBRISPEECH_MISSING_FLAC[3]}")
            (chapter_dir / f"{spk_chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return expected


def make_aishell(dl_dir: Path) -> dict[str, dict[str, tuple[str, float]]]:
    root = dl_dir / "aishell" / "data_aishell"
    expected: dict[str, dict[str, tuple[str, float]]] = {}
    lines = []
    for part, utts in AISHELL.items():
        expected[part] = {}
        for spk, utt_id, text, seconds in utts:
            write_tone(root / "wav" / part / spk / f"{utt_id}.wav", seconds)
            lines.append(f"{utt_id} {text}")
            expected[part][utt_id] = ("".join(text.split()).replace("ｋ", "K"), seconds)
    part, spk, utt_id, seconds = AISHELL_UNTRANSCRIBED
    write_tone(root / "wav" / part / spk / f"{utt_id}.wav", seconds)
    lines.append("BAC009S0900W0001 没有 音频 的 句子")  # a transcript with no audio: ignored
    (root / "transcript").mkdir(parents=True)
    (root / "transcript" / "aishell_transcript_v0.8.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return expected


def make_musan(dl_dir: Path) -> None:
    for part, files in MUSAN.items():
        for rel, seconds in files:
            write_tone(dl_dir / "musan" / part / rel, seconds, freq=300.0)
    (dl_dir / "musan" / "music" / "fma" / "ANNOTATIONS").write_text("music-fma-0000 Classical N Someone\n")


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run_recipe(corpus: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    script = REPO / "recipes" / corpus / "ASR" / "prepare.sh"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env)


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
    assert prepare.main(["librispeech", "--corpus-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert prepare.main(["aishell", "--corpus-dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "o")]) == 1
    assert f"{tmp_path / 'empty'} is empty" in capsys.readouterr().err

    write_tone(tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac", 0.2)
    (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 HI\n")
    args = ["librispeech", "--corpus-dir", str(tmp_path / "LibriSpeech"), "--out-dir", str(tmp_path / "o")]
    assert prepare.main([*args, "--parts", "dev-clean", "test-other"]) == 1
    err = capsys.readouterr().err
    assert "part 'test-other' is absent" in err and str(tmp_path / "LibriSpeech" / "test-other") in err
    assert "present under" in err and "dev-clean" in err
    assert prepare.main([*args, "--parts", "dev-cleen"]) == 1
    assert "unknown librispeech part(s) dev-cleen" in capsys.readouterr().err

    (tmp_path / "LibriSpeech" / "dev-clean" / "1" / "2" / "1-2-0000.flac").write_bytes(b"not audio" * 20)
    assert prepare.main(args) == 1
    assert "unreadable audio" in (err := capsys.readouterr().err) and "1-2-0000.flac" in err
    assert not (tmp_path / "o" / "librispeech_cuts_dev-clean.jsonl.gz").exists()


def test_aishell_needs_all_parts_and_transcript(tmp_path, capsys):
    make_aishell(tmp_path)
    args = ["aishell", "--corpus-dir", str(tmp_path / "aishell"), "--out-dir", str(tmp_path / "o")]
    transcript = tmp_path / "aishell" / "data_aishell" / "transcript" / "aishell_transcript_v0.8.txt"
    transcript.rename(transcript.with_suffix(".bak"))
    assert prepare.main(args) == 1
    assert f"{transcript} does not exist" in capsys.readouterr().err
    transcript.with_suffix(".bak").rename(transcript)
    test_dir = tmp_path / "aishell" / "data_aishell" / "wav" / "test"
    test_dir.rename(tmp_path / "elsewhere")
    assert prepare.main([*args, "--parts", "dev"]) == 1
    assert f"part 'test' is absent: no directory {test_dir}" in capsys.readouterr().err


def test_download_failure_is_a_clear_error(tmp_path, capsys):
    # Port 9 on localhost refuses at once: the failure path without touching the network.
    code = prepare.main(["download", "aishell", "--dl-dir", str(tmp_path), "--mirror", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 1 and "could not download aishell" in err and "openslr.org/33" in err
    assert "Traceback" not in err


def test_normalisers():
    assert prepare.normalize_librispeech(" HELLO  world ") == "HELLO WORLD"
    assert prepare.normalize_aishell("而 对 楼市 ａ") == "而对楼市Ａ"  # full-width letters are mapped by lhotse first
    assert prepare.normalize_aishell(prepare.normalize_aishell("也 成为 b")) == "也成为B"
