"""The `asr` entry point: dispatch, help, errors."""

import subprocess
import sys

import pytest

from asr import cli


def test_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out
    assert cli.main(["data", "--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS["data"]:
        assert f"  {name}" in out


def _entries(table):
    for entry in table.values():
        if isinstance(entry, dict):
            yield from _entries(entry)
        else:
            yield entry


def test_every_registered_command_resolves_to_a_function():
    for entry in _entries(cli.COMMANDS):
        assert callable(cli.resolve(entry)), entry[0]
        assert entry[0].startswith("asr.cli."), entry[0]  # commands live in the CLI package


def test_no_library_module_defines_main():
    import importlib
    import pkgutil

    import asr

    offenders = []
    for info in pkgutil.walk_packages(asr.__path__, "asr."):
        if info.name.startswith("asr.cli") or info.name == "asr.__main__":
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "main") or hasattr(module, "build_parser"):
            offenders.append(info.name)
    assert offenders == []


def test_help_lists_the_user_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("data", "train", "decode", "average", "convert", "lm", "wer"):
        assert f"  {name} " in out
    assert cli.main(["convert", "--help"]) == 0
    assert "  icefall" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "asr", "--help"], capture_output=True, text=True, check=True)
    assert "data" in result.stdout


def test_train_print_config_needs_no_paths(capsys):
    import json

    from asr.training.presets import PRESETS

    assert cli.main(["train", "--preset", "aishell", "--print-config", "--num-epochs", "3"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["exp_dir"] is None and config["train_cuts"] is None and config["lang_dir"] is None
    for name, value in PRESETS["aishell"].items():
        if name != "num_epochs":
            assert config[name] == value, name
    assert config["num_epochs"] == 3  # the command line overrides the preset
    # Training itself still needs them, and names the missing ones.
    with pytest.raises(SystemExit) as missing:
        cli.main(["train", "--preset", "aishell", "--exp-dir", "exp"])
    assert str(missing.value) == "asr train: missing required options: --train-cuts --lang-dir"


def test_train_help_names_every_option_once_with_one_default(capsys):
    import dataclasses
    import re

    from asr.training.trainer import TrainConfig

    with pytest.raises(SystemExit) as help_exit:
        cli.main(["train", "--help"])
    assert help_exit.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    for flag in ("--preset", "--print-config", "--verbose", "--log-level", "--schedule-speedup", "--num-workers"):
        assert flag in out, flag
    help_text = " ".join(out.split())  # argparse wraps lines
    assert "(default: None)" not in help_text
    assert not re.search(r"\(default: [^)]*\)[^-]*\(default:", help_text), "an option shows two defaults"
    assert "--max-duration MAX_DURATION seconds of audio per batch, per process (default: 200.0)" in help_text


def _char_model_and_cuts(tmp_path):
    """A randomly initialised tiny transducer + CTC model whose tokenizer is a character table, saved
    with the table, and a CutSet of three noise clips with Mandarin references (words space-separated)."""
    import numpy as np
    import soundfile
    import torch
    from lhotse import CutSet, Recording, SupervisionSegment

    from asr.checkpoint import save_model
    from asr.data.tokenizer import build_char_tokenizer
    from asr.models import build_model

    texts = {"u1": "今天 天气 很好", "u2": "我们 去 公园", "u3": "你好"}
    build_char_tokenizer(texts.values(), tmp_path / "lang_char")
    tokens_txt = (tmp_path / "lang_char" / "tokens.txt").read_bytes()
    torch.manual_seed(0)
    model = build_model("zipformer-xs", 3 + 11, encoder_kwargs={"num_encoder_layers": [1] * 6})
    save_model(tmp_path / "model.pt", model, extra={"tokenizer": {"tokens.txt": tokens_txt}})
    rng = np.random.default_rng(0)
    cuts = []
    for uid, text in texts.items():
        wav = tmp_path / f"{uid}.wav"
        soundfile.write(wav, rng.normal(0, 0.1, 16000).astype(np.float32), 16000)
        cut = Recording.from_file(wav, recording_id=uid).to_cut()
        speaker = "spk-b" if uid == "u3" else "spk-a"
        cut.supervisions = [SupervisionSegment(uid, uid, start=0, duration=cut.duration, text=text, speaker=speaker)]
        cuts.append(cut)
    CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl.gz")
    return tmp_path / "model.pt", tmp_path / "cuts.jsonl.gz", texts


def test_decode_scores_characters_for_a_character_table_model(tmp_path, capsys):
    import re

    import kaldialign

    checkpoint, cuts, refs = _char_model_and_cuts(tmp_path)
    line = re.compile(r"^(CER|WER) (\d+\.\d\d)% \[(\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub\]$")

    def run(results: str, *options: str) -> tuple[re.Match, dict[str, str]]:
        argv = [
            "decode",
            "--checkpoint",
            str(checkpoint),
            "--cuts",
            str(cuts),
            "--out-dir",
            str(tmp_path / results),
            *options,
        ]
        assert cli.main(argv) == 0
        summary = line.match(capsys.readouterr().out.splitlines()[-1])
        assert summary is not None
        hyps = dict((row.split("\t") + [""])[:2] for row in (tmp_path / results / "hyps.txt").read_text().splitlines())
        assert (tmp_path / results / "refs.txt").read_text(encoding="utf-8") == "".join(
            f"{k}\t{v}\n" for k, v in refs.items()
        )
        assert (tmp_path / results / "errs.txt").read_text(encoding="utf-8").splitlines()[0] == summary.group(0)
        return summary, hyps

    def expected(hyps: dict[str, str], split) -> tuple[int, ...]:
        """(errors, reference units, ins, del, sub) from kaldialign directly."""
        stats = [kaldialign.edit_distance(split(refs[k]), split(hyps[k])) for k in refs]
        return (
            sum(s["total"] for s in stats),
            sum(len(split(t)) for t in refs.values()),
            *(sum(s[kind] for s in stats) for kind in ("ins", "del", "sub")),
        )

    def chars(text: str) -> list[str]:
        return [c for c in text if not c.isspace()]

    def counts(summary: re.Match) -> tuple[int, ...]:
        return tuple(int(summary.group(i)) for i in range(3, 8))

    # Transducer greedy (this random model inserts) and CTC greedy (it deletes): scored by character.
    for method in ("greedy", "ctc_greedy"):
        summary, hyps = run(method, "--method", method)
        assert summary.group(1) == "CER" and any(hyps.values())
        assert counts(summary) == expected(hyps, chars)
        assert counts(summary)[1] == 13  # 13 characters, spaces not counted
        assert float(summary.group(2)) == round(100 * counts(summary)[0] / 13, 2)
    # --no-chars: the same hypotheses scored by word (a sentence of Mandarin words is 1-3 "words").
    summary, hyps = run("words", "--method", "ctc_greedy", "--no-chars")
    assert summary.group(1) == "WER" and counts(summary) == expected(hyps, str.split)
    assert counts(summary)[1] == 7
    # The cuts name speakers: utt2spk and the per-speaker table, whose rows add up to the summary.
    results = tmp_path / "words"
    assert (results / "utt2spk").read_text() == "u1 spk-a\nu2 spk-a\nu3 spk-b\n"
    rows = {row.split()[0]: row.split()[1:] for row in (results / "wer_by_speaker.txt").read_text().splitlines()[1:]}
    assert sorted(rows) == ["spk-a", "spk-b"]
    assert [rows["spk-a"][:2], rows["spk-b"][:2]] == [["2", "6"], ["1", "1"]]  # utterances, words
    assert sum(int(row[2]) for row in rows.values()) == counts(summary)[0]
    refs_a = {k: refs[k] for k in ("u1", "u2")}
    errors_a = sum(kaldialign.edit_distance(refs_a[k].split(), hyps[k].split())["total"] for k in refs_a)
    assert int(rows["spk-a"][2]) == errors_a


def test_decode_scoring_unit_follows_the_tokenizer_unless_forced(tmp_path):
    from asr.data.tokenizer import build_char_tokenizer, train_bpe
    from asr.inference import scoring_unit

    char_table = build_char_tokenizer(["你好"], tmp_path / "chars")
    text = tmp_path / "text.txt"
    text.write_text("HELLO WORLD\nTHE CAT SAT ON THE MAT\n")
    bpe = train_bpe(text, tmp_path / "bpe", vocab_size=18)
    assert [scoring_unit(char_table, c) for c in (None, True, False)] == ["char", "char", "word"]
    assert [scoring_unit(bpe, c) for c in (None, True, False)] == ["word", "char", "word"]
