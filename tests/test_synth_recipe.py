"""recipes/synth/run.sh (what `make demo` runs), all five stages for real on a 40-utterance corpus.

Training is one short epoch, so the WER is near 100%; what is checked is that every stage ran, that the
LM never saw an evaluation sentence, and that each printed WER line equals the error counts computed
here with kaldialign from the hyps.txt the recipe wrote and the cuts' own texts.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import kaldialign
import torch

REPO = Path(__file__).resolve().parents[1]
WER_LINE = re.compile(r"Stage 4: (dev|test): WER \S+% \[(\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub\]$")


def _texts(path: Path) -> dict[str, str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return {cut["id"]: cut["supervisions"][0]["text"] for cut in map(json.loads, f)}


def test_synth_recipe_end_to_end(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    args = [
        "--num-utts",
        "40",
        "--data-dir",
        str(data),
        "--exp-dir",
        str(exp),
        "--vocab-size",
        "60",
        "--num-epochs",
        "1",
        "--train-minutes",
        "2",
        "--nj",
        "1",
        "--lr-epochs",
        "0.25",
        "--speed-perturb",
        "one-of",
        "--augment",
        "reverb,level",
        "--vary-voices",
        "true",
        "--real-speech",  # 22 minutes of real prompts: `asr data real-speech` is tested on its own
        "0",
    ]
    run = subprocess.run(["bash", str(REPO / "recipes/synth/run.sh"), *args], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # Stage 2's LM text is the sentence pool without any dev or test sentence.
    evaluation = {**_texts(data / "synth_cuts_dev.jsonl.gz"), **_texts(data / "synth_cuts_test.jsonl.gz")}
    with gzip.open(data / "lm_text.txt.gz", "rt", encoding="utf-8") as f:
        lm_text = set(f.read().splitlines())
    assert len(lm_text) > 1000 and not lm_text & set(evaluation.values())
    assert (data / "lang_bpe_60" / "lm_4gram.arpa.gz").is_file()

    # --speed-perturb one-of: train holds each utterance once, some at 0.9x or 1.1x; dev and test as spoken.
    train_ids = sorted(_texts(data / "fbank" / "synth_cuts_train.jsonl.gz"))
    spoken_ids = sorted(_texts(data / "synth_cuts_train.jsonl.gz"))
    assert sorted(i.rsplit("_sp", 1)[0] for i in train_ids) == spoken_ids
    assert any(i.endswith("_sp0.9") for i in train_ids) and any(i.endswith("_sp1.1") for i in train_ids)
    assert any(i in spoken_ids for i in train_ids)
    assert sorted(_texts(data / "fbank" / "synth_cuts_test.jsonl.gz")) == sorted(
        _texts(data / "synth_cuts_test.jsonl.gz")
    )
    assert (data / "fbank" / ".train.done").read_text().strip() == "one-of"

    # --augment and --vary-voices reached the corpus: train's utterances record their transforms and engine
    # options (festival's HTS voice has none to vary), dev and test are clean.
    with gzip.open(data / "synth_supervisions_train.jsonl.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line)["custom"] for line in f]
    assert all(r["transforms"] and r["transforms"][-1]["type"] == "level" for r in records)
    assert sum(bool(r["prosody"]) for r in records) > len(records) // 2
    with gzip.open(data / "synth_supervisions_test.jsonl.gz", "rt", encoding="utf-8") as f:
        assert all(not json.loads(line)["custom"]["transforms"] for line in f)

    # --lr-epochs reached the trainer (the preset's value is 2).
    checkpoint = torch.load(exp / "epoch-1.pt", map_location="cpu", weights_only=False)
    assert checkpoint["config"]["lr_epochs"] == 0.25

    # Stage 4 decoded with beam search and LM fusion, one WER line per split, each equal to kaldialign's.
    lines = [WER_LINE.search(line) for line in run.stdout.splitlines()]
    found = {m.group(1): m for m in lines if m}
    assert sorted(found) == ["dev", "test"], run.stdout[-2000:]
    for split, match in found.items():
        results = exp / "decode-modified_beam_search-lm-avg-500" / split
        refs = _texts(data / "fbank" / f"synth_cuts_{split}.jsonl.gz")
        hyps = {}
        for line in (results / "hyps.txt").read_text(encoding="utf-8").splitlines():
            uid, _, text = line.partition("\t")
            hyps[uid] = text
        assert sorted(hyps) == sorted(refs)
        counts = {"ins": 0, "del": 0, "sub": 0}
        for uid, ref in refs.items():
            stats = kaldialign.edit_distance(ref.split(), hyps[uid].split())
            for key in counts:
                counts[key] += stats[key]
        words = sum(len(ref.split()) for ref in refs.values())
        expected = (sum(counts.values()), words, counts["ins"], counts["del"], counts["sub"])
        assert tuple(int(match.group(i)) for i in range(2, 7)) == expected

    # Stage 4 again with the lexicon penalty: the lexicon is the train transcripts' words and the LM text
    # (--word-list "" leaves out the system word list), the results go to their own directory.
    lex = subprocess.run(
        ["bash", str(REPO / "recipes/synth/run.sh"), *args, "--stage", "4", "--oov-penalty", "5", "--word-list", ""],
        capture_output=True,
        text=True,
        env=env,
    )
    assert lex.returncode == 0, lex.stdout[-3000:] + lex.stderr[-3000:]
    assert f"--lexicon {data}/lang_bpe_60/transcript_words.txt --lexicon {data}/lm_text.txt.gz" in lex.stdout
    assert sorted(m.group(1) for m in map(WER_LINE.search, lex.stdout.splitlines()) if m) == ["dev", "test"]
    for split in ("dev", "test"):
        assert (exp / "decode-modified_beam_search-lm-lex-5-avg-500" / split / "hyps.txt").is_file()
    greedy = subprocess.run(
        ["bash", str(REPO / "recipes/synth/run.sh"), *args, "--stage", "4", "--method", "greedy", "--oov-penalty", "5"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert greedy.returncode != 0 and "--oov-penalty needs --method modified_beam_search" in greedy.stderr

    # --lm-min-count 1 keeps every n-gram, in a file of its own beside the default (pruned) one.
    unpruned = subprocess.run(
        ["bash", str(REPO / "recipes/synth/run.sh"), *args, "--stage", "2", "--stop-stage", "2", "--lm-min-count", "1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert unpruned.returncode == 0, unpruned.stdout[-3000:] + unpruned.stderr[-3000:]

    def ngram_counts(path: Path) -> list[int]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return [int(line.split("=")[1]) for line in f if line.startswith("ngram ")]

    pruned_counts = ngram_counts(data / "lang_bpe_60" / "lm_4gram.arpa.gz")
    full_counts = ngram_counts(data / "lang_bpe_60" / "lm_4gram_min1.arpa.gz")
    assert (
        full_counts[:2] == pruned_counts[:2] and full_counts[2] > pruned_counts[2] and full_counts[3] > pruned_counts[3]
    )
