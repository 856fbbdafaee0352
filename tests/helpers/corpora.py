"""Miniature corpora laid out exactly like LibriSpeech, AISHELL-1 and MUSAN (tone clips with real
transcripts), and running a recipe's stage script on them.

Each ``make_*`` writes a tree under a download dir and returns what prepare must find in it; the corpus
descriptions below are the defaults, and a caller that needs longer clips or more parts passes its own.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from helpers import REPO

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
    """A 16 kHz sine of amplitude 0.3; the format follows the suffix (.flac, .wav)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(round(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR)


def make_librispeech(
    dl_dir: Path, parts: dict[str, dict[str, list[tuple[str, str, float]]]] = LIBRISPEECH
) -> dict[str, dict[str, tuple[str, float]]]:
    """Write the tree of ``parts`` (laid out as ``LIBRISPEECH``) under ``dl_dir/LibriSpeech``, with the
    transcript line of ``LIBRISPEECH_MISSING_FLAC`` but not its audio; returns part -> utt id ->
    (normalised text, duration)."""
    expected: dict[str, dict[str, tuple[str, float]]] = {}
    for part, chapters in parts.items():
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


def make_aishell(
    dl_dir: Path, parts: dict[str, list[tuple[str, str, str, float]]] = AISHELL
) -> dict[str, dict[str, tuple[str, float]]]:
    """Write the tree of ``parts`` (laid out as ``AISHELL``) under ``dl_dir/aishell``, plus the audio of
    ``AISHELL_UNTRANSCRIBED`` and a transcript line without audio; returns part -> utt id -> (normalised
    text, duration)."""
    root = dl_dir / "aishell" / "data_aishell"
    expected: dict[str, dict[str, tuple[str, float]]] = {}
    lines = []
    for part, utts in parts.items():
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
    """Write ``MUSAN`` under ``dl_dir/musan``, with the music annotations file the real corpus has."""
    for part, files in MUSAN.items():
        for rel, seconds in files:
            write_tone(dl_dir / "musan" / part / rel, seconds, freq=300.0)
    (dl_dir / "musan" / "music" / "fma" / "ANNOTATIONS").write_text("music-fma-0000 Classical N Someone\n")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a gzipped JSON-lines manifest, read without lhotse."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def run_recipe(corpus: str, *args: str, script: str = "prepare.sh") -> subprocess.CompletedProcess:
    """Run recipes/<corpus>/ASR/<script> with ``args``, output captured; this interpreter's ``asr`` is first
    on PATH and torch gets one thread (several recipe runs share the machine)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    path = REPO / "recipes" / corpus / "ASR" / script
    return subprocess.run(["bash", str(path), *args], capture_output=True, text=True, env=env)
