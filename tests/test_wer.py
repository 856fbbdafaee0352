"""`asr wer`: error counts against closed forms and an independent Levenshtein, report formats."""

import random
import re
import subprocess
import sys
import warnings

import pytest

from asr.cli.wer import main
from asr.wer import EPS, compute_wer, format_group_table, read_text_file, wer_by_group, write_error_stats


def levenshtein(ref: list[str], hyp: list[str]) -> int:
    """Textbook edit distance (unit costs), written independently of kaldialign."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i]
        for j, h in enumerate(hyp, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


def score(ref: str, hyp: str):
    """One utterance scored; any warning (there should be none) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return compute_wer({"u": ref}, {"u": hyp})


@pytest.mark.parametrize(
    "ref, hyp, ins, dels, subs",
    [
        ("a b c", "a b c", 0, 0, 0),
        ("a b c", "a x c", 0, 0, 1),  # one substitution
        ("a b c", "", 0, 3, 0),  # all deletions
        ("", "x y", 2, 0, 0),  # all insertions
        ("a b", "x a b y z", 3, 0, 0),
        ("a b c d", "b c", 0, 2, 0),
        ("a b c", "d e f", 0, 0, 3),  # nothing shared: len(ref) substitutions beat del+ins
    ],
)
def test_closed_form_counts(ref, hyp, ins, dels, subs):
    result = score(ref, hyp)
    assert (result.insertions, result.deletions, result.substitutions) == (ins, dels, subs)
    assert result.ref_words == len(ref.split())
    if ref:
        assert result.wer == pytest.approx((ins + dels + subs) / len(ref.split()))


def test_empty_reference_set():
    assert score("", "").wer == 0.0
    assert score("", "x").wer == float("inf")
    assert score("", "x").summary_line() == "WER inf% [1 / 0, 1 ins, 0 del, 0 sub]"


def test_matches_independent_levenshtein_on_random_sentences():
    rng = random.Random(0)
    vocab = ["a", "b", "c", "d"]  # a small vocabulary makes partial matches, hence ties, frequent
    for _ in range(300):
        ref = [rng.choice(vocab) for _ in range(rng.randint(0, 7))]
        hyp = [rng.choice(vocab) for _ in range(rng.randint(0, 7))]
        utt = score(" ".join(ref), " ".join(hyp)).utterances[0]
        assert utt.errors == levenshtein(ref, hyp), (ref, hyp)
        # The alignment must spell out both sentences and agree with its own counts.
        assert [r for r, _ in utt.alignment if r != EPS] == ref
        assert [h for _, h in utt.alignment if h != EPS] == hyp
        assert utt.deletions - utt.insertions == len(ref) - len(hyp)


def test_corpus_totals_add_up():
    refs = {"u1": "the cat sat on the mat", "u2": "hello world", "u3": "one two"}
    hyps = {"u1": "the hat sat on mat", "u2": "hello big world", "u3": "one two"}
    result = compute_wer(refs, hyps)
    assert result.ref_words == 10
    assert (result.insertions, result.deletions, result.substitutions) == (1, 1, 1)
    assert result.summary_line() == "WER 30.00% [3 / 10, 1 ins, 1 del, 1 sub]"
    subs, ins, dels = result.error_counts()
    assert subs == {("cat", "hat"): 1} and ins == {"big": 1} and dels == {"the": 1}


def test_missing_and_extra_ids_are_reported():
    with pytest.warns(UserWarning) as record:
        result = compute_wer({"u1": "a b", "u2": "c d e"}, {"u1": "a b", "u9": "z"})
    messages = " ".join(str(w.message) for w in record)
    assert "u2" in messages and "u9" in messages
    assert result.missing_hyp == ["u2"] and result.extra_hyp == ["u9"]
    assert (result.deletions, result.ref_words, result.insertions) == (3, 5, 0)  # u9 is not scored


def test_wer_by_group_matches_scoring_each_group_alone():
    rng = random.Random(1)
    vocab = ["a", "b", "c", "d", "e"]
    refs, hyps, group_of = {}, {}, {}
    for i in range(60):
        refs[f"u{i}"] = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 8)))
        hyps[f"u{i}"] = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 8)))
        if i % 7:  # every 7th utterance has no speaker
            group_of[f"u{i}"] = rng.choice(["spk1", "spk2", "spk3"])
    groups = wer_by_group(compute_wer(refs, hyps), group_of, unknown="?")
    assert sorted(groups) == ["?", "spk1", "spk2", "spk3"]
    for name, group in groups.items():
        ids = [u for u in refs if group_of.get(u, "?") == name]
        alone = compute_wer({u: refs[u] for u in ids}, {u: hyps[u] for u in ids})
        assert [u.id for u in group.utterances] == ids
        assert (group.ref_words, group.insertions, group.deletions, group.substitutions) == (
            alone.ref_words,
            alone.insertions,
            alone.deletions,
            alone.substitutions,
        )
        errors = sum(levenshtein(refs[u].split(), hyps[u].split()) for u in ids)
        assert group.errors == errors


def test_group_table_is_worst_first_with_shares_of_the_errors():
    refs = {"a1": "x y z w", "a2": "x y", "b1": "x y z", "c1": "x"}
    hyps = {"a1": "x y z w", "a2": "x q", "b1": "q q q", "c1": "x"}  # a: 1/6, b: 3/3, c: 0/1
    groups = wer_by_group(compute_wer(refs, hyps), {"a1": "a", "a2": "a", "b1": "b", "c1": "c"})
    lines = format_group_table(groups).splitlines()
    assert lines[0].split() == ["speaker", "utts", "words", "errors", "WER", "share"]
    assert [line.split() for line in lines[1:]] == [
        ["b", "1", "3", "3", "100.00%", "75.0%"],
        ["a", "2", "6", "1", "16.67%", "25.0%"],
        ["c", "1", "1", "0", "0.00%", "0.0%"],
    ]


def test_character_error_rate():
    result = compute_wer({"u": "今天 天气 好"}, {"u": "今天天汽好啊"}, unit="char")
    assert (result.ref_words, result.substitutions, result.insertions, result.deletions) == (5, 1, 1, 0)
    assert result.summary_line().startswith("CER 40.00%")


def test_read_text_file_formats_and_duplicates(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("u1\tHELLO  WORLD\nu2 kaldi style\n\nu3\n", encoding="utf-8")
    assert read_text_file(path) == {"u1": "HELLO  WORLD", "u2": "kaldi style", "u3": ""}
    path.write_text("u1 a\nu1 b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"t\.txt:2: id 'u1' appears twice"):
        read_text_file(path)


SUMMARY = re.compile(r"^WER (\d+\.\d\d)% \[(\d+) / (\d+), (\d+) ins, (\d+) del, (\d+) sub\]$")


def test_cli_output(tmp_path, capsys):
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("u1\tthe cat sat\nu2\tgood morning\nu3\tmissing here\n", encoding="utf-8")
    hyp.write_text("u1 the bat sat down\nu2 good morning\nu4 stray\n", encoding="utf-8")
    assert main([str(ref), str(hyp)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    m = SUMMARY.match(lines[-1])
    assert m, lines[-1]
    # u1: 1 sub + 1 ins; u3: 2 deletions (no hypothesis) -> 4 errors over 7 words
    assert m.groups() == ("57.14", "4", "7", "1", "2", "1")
    assert "u1:\t2 err / 3 (1 ins, 0 del, 1 sub)\tthe (cat->bat) sat (*->down)" in lines
    assert not any(line.startswith("u2:") for line in lines)  # correct utterances are not listed
    assert "cat -> bat" in out and "down" in out
    assert "u3" in err and "u4" in err

    errs = tmp_path / "errs.txt"
    assert main([str(ref), str(hyp), "--errs", str(errs)]) == 0
    out = capsys.readouterr().out
    assert "the (cat->bat)" not in out
    report = errs.read_text(encoding="utf-8")
    assert report.splitlines()[0] == out.strip().splitlines()[-1]
    assert "u2:\t0 err / 2" in report and "(missing->*) (here->*)" in report


def test_cli_per_speaker_table(tmp_path, capsys):
    ref, hyp, utt2spk = tmp_path / "ref.txt", tmp_path / "hyp.txt", tmp_path / "utt2spk"
    ref.write_text("u1 the cat sat\nu2 good morning\nu3 one two three four\n", encoding="utf-8")
    hyp.write_text("u1 the bat sat\nu2 good morning\nu3 one two\n", encoding="utf-8")
    utt2spk.write_text("u1 alice\nu2 alice\nu3 bob\n", encoding="utf-8")
    assert main([str(ref), str(hyp), "--utt2spk", str(utt2spk)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert SUMMARY.match(lines[-1]).groups() == ("33.33", "3", "9", "0", "2", "1")
    table = [line.split() for line in lines[-4:-1]]
    assert table == [
        ["speaker", "utts", "words", "errors", "WER", "share"],
        ["bob", "1", "4", "2", "50.00%", "66.7%"],
        ["alice", "2", "5", "1", "20.00%", "33.3%"],
    ]


def test_write_error_stats_to_path_and_file(tmp_path):
    import io

    result = compute_wer({"u": "a b"}, {"u": "a c"})
    buf = io.StringIO()
    write_error_stats(buf, result)
    write_error_stats(tmp_path / "e.txt", result)
    assert buf.getvalue() == (tmp_path / "e.txt").read_text(encoding="utf-8")
    assert "a (b->c)" in buf.getvalue()


def test_cli_errors_name_the_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.txt"), str(tmp_path / "nope.txt")]) == 1
    assert "nope.txt" in capsys.readouterr().err


def test_console_command(tmp_path):
    (tmp_path / "r").write_text("a hello there\n")
    (tmp_path / "h").write_text("a hello\n")
    proc = subprocess.run(
        [sys.executable, "-m", "asr", "wer", str(tmp_path / "r"), str(tmp_path / "h")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.strip().splitlines()[-1] == "WER 50.00% [1 / 2, 0 ins, 1 del, 0 sub]"
