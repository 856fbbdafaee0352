"""The LibriSpeech and AISHELL train.sh / decode.sh recipes, run for real on miniature corpora.

The corpus trees are those of tests/test_prepare.py (tests/helpers/corpora.py), with clips long
enough for a Zipformer to emit every token; prepare.sh stages 1-4 make the features and lang dirs,
train.sh trains a tiny Zipformer for two short epochs and decode.sh decodes. Each WER line (CER for
AISHELL, which asr decode scores by character) that decode.sh prints is checked against the error counts
computed here with kaldialign from the hyps.txt it wrote and the cuts' own texts.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import kaldialign
import pytest
import torch

from helpers import corpora

# test_prepare's trees, with a test-clean part added and every clip stretched to 1.4-3.2 s: its clips
# (under 1 s) are too short for their transcripts, and training drops a cut whose tokens outnumber the
# encoder's output frames.
LIBRISPEECH = {
    part: {
        chapter: [(utt, text, 3 * seconds + 0.5) for utt, text, seconds in utts] for chapter, utts in chapters.items()
    }
    for part, chapters in {
        **corpora.LIBRISPEECH,
        "test-clean": {"1089-134686": [("0000", "HE HOPED THERE WOULD BE STEW FOR DINNER", 0.8)]},
    }.items()
}
# AISHELL's training part also gets the dev/test sentence: the character table is built from the
# training text, and without its characters every dev cut is dropped for unknown symbols, which
# asr train rightly refuses (an empty validation set).
AISHELL = {
    part: [(spk, utt, text, 2 * seconds + 0.5) for spk, utt, text, seconds in utts]
    for part, utts in {
        **corpora.AISHELL,
        "train": [*corpora.AISHELL["train"], ("S0002", "BAC009S0002W0124", corpora.AISHELL["dev"][0][2], 0.6)],
    }.items()
}
# Tiny-model overrides of the icefall-sized defaults, and asr train options passed through after `--`.
TINY_TRAIN = ("--encoder", "zipformer-xs", "--num-epochs", "2", "--max-duration", "12")
TRAIN_PASS_THROUGH = ("--", "--num-workers", "0", "--average-period", "1", "--device", "cpu", "--max-minutes", "3")
SUMMARY = re.compile(r"^(\S+)\s+((?:WER|CER) \S+% \[(\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub\])$")


def recipe(corpus: str, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run recipes/<corpus>/ASR/<script> the way test_prepare runs prepare.sh (asr on PATH, one thread)."""
    return corpora.run_recipe(corpus, *args, script=script)


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory) -> Path:
    """prepare.sh stages 1-4 on a miniature LibriSpeech (+ MUSAN) tree; returns the data dir."""
    root = tmp_path_factory.mktemp("librispeech")
    corpora.make_librispeech(root / "download", LIBRISPEECH)
    corpora.make_musan(root / "download")
    run = recipe(
        "librispeech",
        "prepare.sh",
        "--stage",
        "1",
        "--dl-dir",
        str(root / "download"),
        "--data-dir",
        str(root / "data"),
        "--parts",
        " ".join(LIBRISPEECH),
        "--vocab-sizes",
        "40",
        "--speed-perturb",
        "false",
        "--nj",
        "1",
    )
    assert run.returncode == 0, run.stderr
    return root / "data"


@pytest.fixture(scope="module")
def aishell(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aishell")
    corpora.make_aishell(root / "download", AISHELL)
    run = recipe(
        "aishell",
        "prepare.sh",
        "--stage",
        "1",
        "--dl-dir",
        str(root / "download"),
        "--data-dir",
        str(root / "data"),
        "--speed-perturb",
        "false",
        "--nj",
        "1",
    )
    assert run.returncode == 0, run.stderr
    return root / "data"


def cut_texts(cuts_path: Path) -> dict[str, str]:
    return {c["id"]: c["supervisions"][0]["text"] for c in corpora.read_jsonl(cuts_path)}


def check_decode_results(stdout: str, results_dir: Path, cuts: dict[str, Path], chars: bool) -> None:
    """One summary line per test set (CER with ``chars``, else WER), with kaldialign's counts of the
    written hyps against the cuts' texts; errs.txt starts with the same line."""
    lines = {m.group(1): m for line in stdout.splitlines() if (m := SUMMARY.match(line))}
    assert sorted(lines) == sorted(cuts), stdout
    for part, cuts_path in cuts.items():
        hyps_file, errs_file = results_dir / part / "hyps.txt", results_dir / part / "errs.txt"
        assert hyps_file.is_file() and errs_file.is_file()
        refs = cut_texts(cuts_path)
        hyps = dict((line.split("\t") + [""])[:2] for line in hyps_file.read_text(encoding="utf-8").splitlines())
        assert sorted(hyps) == sorted(refs)
        assert (results_dir / part / "refs.txt").read_text(encoding="utf-8") == "".join(
            f"{k}\t{v}\n" for k, v in refs.items()
        )
        line = lines[part]
        assert line.group(2).startswith("CER " if chars else "WER ")
        assert errs_file.read_text(encoding="utf-8").splitlines()[0] == line.group(2)

        def units(text: str) -> list[str]:
            return [c for c in text if not c.isspace()] if chars else text.split()

        stats = [kaldialign.edit_distance(units(refs[k]), units(hyps[k])) for k in refs]
        expected = (
            sum(s["total"] for s in stats),
            sum(len(units(t)) for t in refs.values()),
            *(sum(s[kind] for s in stats) for kind in ("ins", "del", "sub")),
        )
        assert tuple(int(line.group(i)) for i in range(3, 8)) == expected


def test_librispeech_train_and_decode(librispeech, tmp_path):
    exp = tmp_path / "exp"
    common = ("--data-dir", str(librispeech), "--exp-dir", str(exp))
    train = recipe(
        "librispeech",
        "train.sh",
        *common,
        "--lang-dir",
        str(librispeech / "lang_bpe_40"),
        *TINY_TRAIN,
        "--train-parts",
        "train-clean-100",
        "--valid-parts",
        "dev-clean test-clean",
        *TRAIN_PASS_THROUGH,
    )
    assert train.returncode == 0, train.stderr
    assert "mixing MUSAN noise" in train.stdout and "finished: epoch 2" in train.stdout
    # stage 0: the training cuts shuffled, the validation parts concatenated
    fbank = librispeech / "fbank"
    part_cuts = [c["id"] for c in corpora.read_jsonl(fbank / "librispeech_cuts_train-clean-100.jsonl.gz")]
    train_cuts = [c["id"] for c in corpora.read_jsonl(fbank / "librispeech_cuts_train-clean-100-shuf.jsonl.gz")]
    assert sorted(train_cuts) == sorted(part_cuts) and train_cuts != part_cuts
    assert list(cut_texts(fbank / "librispeech_cuts_dev-clean+test-clean.jsonl.gz").items()) == [
        *cut_texts(fbank / "librispeech_cuts_dev-clean.jsonl.gz").items(),
        *cut_texts(fbank / "librispeech_cuts_test-clean.jsonl.gz").items(),
    ]
    for epoch in (1, 2):
        saved = torch.load(exp / f"epoch-{epoch}.pt", map_location="cpu", weights_only=False)
        assert saved["config"]["encoder"] == "zipformer-xs" and saved["config"]["noise_cuts"].endswith(
            "musan_cuts.jsonl.gz"
        )
        assert saved["config"]["lr_epochs"] == 3.5 and saved["state"]["batch_idx_train"] > 0  # preset librispeech
        assert saved["config"]["average_period"] == 1 and saved["config"]["max_minutes"] == 3  # passed through

    # --epoch 2 --avg 1 with the averaged model: asr decode --average-from epoch-1.pt
    sets = {part: fbank / f"librispeech_cuts_{part}.jsonl.gz" for part in ("dev-clean", "test-clean")}
    decode = recipe(
        "librispeech", "decode.sh", *common, "--epoch", "2", "--avg", "1", "--test-sets", "dev-clean test-clean"
    )
    assert decode.returncode == 0, decode.stderr
    assert "WER per test set: greedy_search, epoch 2, avg 1, averaged model" in decode.stdout
    check_decode_results(decode.stdout, exp / "decode-greedy_search", sets, chars=False)


def test_aishell_train_and_decode(aishell, tmp_path):
    exp = tmp_path / "exp"
    common = ("--data-dir", str(aishell), "--exp-dir", str(exp))
    no_musan = recipe("aishell", "train.sh", *common, "--musan", "true")
    assert no_musan.returncode != 0 and str(aishell / "fbank" / "musan_cuts.jsonl.gz") in no_musan.stderr

    train = recipe("aishell", "train.sh", *common, *TINY_TRAIN, *TRAIN_PASS_THROUGH)
    assert train.returncode == 0, train.stderr
    assert "mixing MUSAN" not in train.stdout
    saved = torch.load(exp / "epoch-2.pt", map_location="cpu", weights_only=False)
    assert saved["config"]["lr_epochs"] == 1.5 and saved["config"]["lang_dir"] == str(aishell / "lang_char")

    decode = recipe("aishell", "decode.sh", *common, "--epoch", "2", "--avg", "1", "--method", "greedy")
    assert decode.returncode == 0, decode.stderr
    assert "CER per test set: greedy_search, epoch 2, avg 1, averaged model" in decode.stdout
    sets = {part: aishell / "fbank" / f"aishell_cuts_{part}.jsonl.gz" for part in ("dev", "test")}
    check_decode_results(decode.stdout, exp / "decode-greedy_search", sets, chars=True)
    assert (exp / "decode-greedy_search" / "cer-summary.txt").read_text().splitlines()[1:] == [
        line for line in decode.stdout.splitlines() if SUMMARY.match(line)
    ]


@pytest.mark.parametrize("corpus", ["librispeech", "aishell"])
@pytest.mark.parametrize("script", ["train.sh", "decode.sh"])
def test_unknown_option_and_help(corpus, script):
    run = recipe(corpus, script, "--num-epoch", "3")
    assert run.returncode != 0 and "unknown option --num-epoch" in run.stderr
    run = recipe(corpus, script, "--help")
    assert run.returncode == 0 and run.stdout.startswith("usage:") and "--exp-dir" in run.stdout


@pytest.mark.parametrize("corpus", ["librispeech", "aishell"])
def test_missing_inputs_are_named(corpus, tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    train_part = {"librispeech": "train-clean-100", "aishell": "train"}[corpus]
    valid_part = {"librispeech": "dev-clean", "aishell": "dev"}[corpus]
    args = ("--data-dir", str(data), "--exp-dir", str(exp), "--train-parts", train_part, "--valid-parts", valid_part)
    run = recipe(corpus, "train.sh", *args)
    assert run.returncode != 0 and f"missing {data}/fbank/{corpus}_cuts_{train_part}.jsonl.gz" in run.stderr

    (data / "fbank").mkdir(parents=True)
    for part in (train_part, valid_part):
        (data / "fbank" / f"{corpus}_cuts_{part}.jsonl.gz").touch()
    run = recipe(corpus, "train.sh", *args, "--lang-dir", str(tmp_path / "no_lang"))
    assert run.returncode != 0 and f"missing lang dir {tmp_path / 'no_lang'}" in run.stderr
    default_lang = data / {"librispeech": "lang_bpe_500", "aishell": "lang_char"}[corpus]
    assert f"missing lang dir {default_lang}" in recipe(corpus, "train.sh", *args).stderr
    run = recipe(corpus, "train.sh", *args, "--stage", "1")  # stage 0 skipped: its output is missing
    assert run.returncode != 0 and f"missing {data}/fbank/{corpus}_cuts_{train_part}-shuf.jsonl.gz" in run.stderr

    run = recipe(corpus, "decode.sh", "--data-dir", str(data), "--exp-dir", str(exp))
    assert run.returncode != 0 and f"missing experiment directory {exp}" in run.stderr
    exp.mkdir()
    run = recipe(corpus, "decode.sh", "--data-dir", str(data), "--exp-dir", str(exp), "--epoch", "3", "--avg", "1")
    assert run.returncode != 0 and f"missing {exp}/epoch-3.pt" in run.stderr
    (exp / "epoch-3.pt").touch()
    run = recipe(corpus, "decode.sh", "--data-dir", str(data), "--exp-dir", str(exp), "--epoch", "3", "--avg", "1")
    assert run.returncode != 0 and f"missing {exp}/epoch-2.pt" in run.stderr
    run = recipe(corpus, "decode.sh", "--data-dir", str(data), "--exp-dir", str(exp), "--epoch", "3", "--avg", "3")
    assert run.returncode != 0 and "--avg must be below --epoch" in run.stderr
    run = recipe(
        corpus,
        "decode.sh",
        "--data-dir",
        str(data),
        "--exp-dir",
        str(exp),
        "--checkpoint",
        str(exp / "epoch-3.pt"),
        "--test-sets",
        "nope",
    )
    assert run.returncode != 0 and f"missing {data}/fbank/{corpus}_cuts_nope.jsonl.gz" in run.stderr
    run = recipe(corpus, "decode.sh", "--exp-dir", str(exp), "--method", "beam")
    assert run.returncode != 0 and "unknown --method 'beam'" in run.stderr
    run = recipe(corpus, "decode.sh", "--exp-dir", str(exp), "--left-context-frames", "64")
    assert run.returncode != 0 and "give --chunk-size too" in run.stderr


@pytest.mark.slow
def test_librispeech_causal_two_processes_chunked_decode(librispeech, tmp_path):
    """--world-size 2 trains a causal model under torchrun (gloo on CPU); decode.sh decodes it chunk by
    chunk from the mean of the two epoch checkpoints, then from --checkpoint DIR."""
    exp = tmp_path / "exp"
    common = ("--data-dir", str(librispeech), "--exp-dir", str(exp))
    train = recipe(
        "librispeech",
        "train.sh",
        *common,
        "--lang-dir",
        str(librispeech / "lang_bpe_40"),
        *TINY_TRAIN,
        "--train-parts",
        "train-clean-100",
        "--valid-parts",
        "dev-clean",
        "--causal",
        "true",
        "--world-size",
        "2",
        "--musan",
        "false",
        "--",
        "--num-workers",
        "0",
        "--device",
        "cpu",
    )
    assert train.returncode == 0, train.stderr
    assert "2 process(es)" in train.stdout
    saved = torch.load(exp / "epoch-2.pt", map_location="cpu", weights_only=False)
    assert len(saved["rng"]) == 2 and saved["state"]["batch_idx_train"] > 0  # one RNG state per rank
    assert saved["config"]["causal"] and saved["config"]["noise_cuts"] is None

    # --use-averaged-model false --avg 2: the mean of epoch-1.pt and epoch-2.pt (asr average writes a model file)
    sets = {"test-clean": librispeech / "fbank" / "librispeech_cuts_test-clean.jsonl.gz"}
    decode = recipe(
        "librispeech",
        "decode.sh",
        *common,
        "--epoch",
        "2",
        "--avg",
        "2",
        "--use-averaged-model",
        "false",
        "--method",
        "modified_beam_search",
        "--beam-size",
        "2",
        "--chunk-size",
        "16",
        "--left-context-frames",
        "64",
        "--test-sets",
        "test-clean",
    )
    assert decode.returncode == 0, decode.stderr
    assert "--chunk-size 16 --left-context-frames 64" in decode.stdout
    averaged = torch.load(exp / "averaged" / "epoch-2-avg-2.pt", map_location="cpu", weights_only=False)["state_dict"]
    epochs = [torch.load(exp / f"epoch-{e}.pt", map_location="cpu", weights_only=False)["model"] for e in (1, 2)]
    for name in [k for k, v in averaged.items() if v.is_floating_point()][:5]:
        torch.testing.assert_close(averaged[name], (epochs[0][name] + epochs[1][name]) / 2)
    check_decode_results(decode.stdout, exp / "decode-modified_beam_search-chunk-16-left-64", sets, False)

    # --checkpoint DIR: the directory's newest checkpoint
    decode = recipe(
        "librispeech",
        "decode.sh",
        *common,
        "--checkpoint",
        str(exp),
        "--method",
        "ctc_greedy_search",
        "--test-sets",
        "test-clean",
    )
    assert decode.returncode == 0, decode.stderr
    assert f"WER per test set: ctc_greedy_search, checkpoint {exp}" in decode.stdout
    check_decode_results(decode.stdout, exp / "decode-ctc_greedy_search", sets, False)
