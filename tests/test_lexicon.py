"""asr.decoding.lexicon: the unknown-word count that modified beam search penalises.

References: the count of a token sequence by splitting its text into words (independent of the
incremental deltas), and brute-force enumeration of every one-symbol-per-frame path of the tiny
transducer of tests/helpers/tiny_models.py with the penalty applied to each token sequence's text.
"""

from __future__ import annotations

import gzip
import itertools
import random

import pytest
import torch

from asr.decoding import LexiconScorer, WordLmScorer, modified_beam_search
from asr.decoding.lexicon import WORD_START, Lexicon
from asr.lm import NgramLM

from helpers.tiny_models import VOCAB, tiny_model

W = WORD_START
# The tiny model's 6 ids: blank, three word starts, two continuations.
TINY_PIECES = ["<blk>", f"{W}a", f"{W}b", "n", "d", W]
TINY_WORDS = ["and", "an", "bad", "b"]
# A larger inventory for the count test, with a special symbol and a bare word marker.
PIECES = ["<blk>", "<unk>", W, f"{W}t", f"{W}th", "he", "e", "n", f"{W}a", "nd", "s", "'", f"{W}s"]
WORDS = ["the", "then", "thens", "a", "and", "ands", "she", "he's", "s", "ten"]


def count_by_splitting(lexicon: Lexicon, pieces: list[str], tokens: list[int]) -> int:
    text = "".join(pieces[v].replace(W, " ") for v in tokens)
    return sum(word not in lexicon.words for word in text.split())


def incremental_count(lexicon: Lexicon, tokens: list[int]) -> int:
    partial, count = "", 0
    for v in tokens:
        count += int(lexicon.deltas(partial)[v])
        partial = lexicon.next_partial(partial, v)
    return count + lexicon.final_delta(partial)


def test_deltas_add_up_to_the_unknown_words_of_the_text():
    lexicon = Lexicon(WORDS, PIECES)
    rng = random.Random(0)
    for _ in range(3000):
        tokens = [rng.randrange(1, len(PIECES)) for _ in range(rng.randrange(0, 9))]
        assert incremental_count(lexicon, tokens) == count_by_splitting(lexicon, PIECES, tokens), tokens
    # Spot values: "then s" has no unknown word, "tens" one (a prefix of nothing), "<unk>" one.
    assert incremental_count(lexicon, [4, 6, 7, 12]) == 0
    assert incremental_count(lexicon, [3, 6, 7, 10]) == 1
    assert incremental_count(lexicon, [1]) == 1


def test_unfinished_word_counts_once_it_can_no_longer_become_a_word():
    lexicon = Lexicon(WORDS, PIECES)
    th, n, s = 4, 7, 10
    assert lexicon.deltas("")[th] == 0  # "th" starts "the"
    assert lexicon.deltas("th")[n] == 1  # "thn" starts nothing
    assert lexicon.deltas("thn")[s] == 0  # already counted
    assert lexicon.deltas("the")[th] == 0  # "the" is a word: starting the next one costs nothing
    assert lexicon.deltas("th")[th] == 1  # "th" ends unfinished: not a word
    assert lexicon.final_delta("th") == 1 and lexicon.final_delta("the") == 0 and lexicon.final_delta("") == 0
    assert lexicon.deltas("th") is lexicon.deltas("th")  # cached


def sequence_log_probs(model, enc_out) -> dict[tuple[int, ...], float]:
    """Every token sequence of one-symbol-per-frame paths, with its alignments' probabilities summed."""
    totals: dict[tuple[int, ...], list[float]] = {}
    with torch.no_grad():
        for path in itertools.product(range(VOCAB), repeat=enc_out.size(1)):
            history, score = [], 0.0
            for t, symbol in enumerate(path):
                dec_out = model.decoder(torch.tensor([[0] + history]))[:, -1]
                score += float(model.joiner(enc_out[0, t : t + 1], dec_out).log_softmax(-1)[0, symbol])
                if symbol != 0:
                    history.append(symbol)
            totals.setdefault(tuple(history), []).append(score)
    return {k: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for k, v in totals.items()}


def brute_force_penalised_best(model, enc_out, lexicon, penalty):
    scored = {}
    for tokens, am in sequence_log_probs(model, enc_out).items():
        scored[tokens] = (am - penalty * count_by_splitting(lexicon, TINY_PIECES, list(tokens)), am)
    best = max(scored, key=lambda k: scored[k][0])
    return best, scored[best][1]


@pytest.mark.parametrize("penalty", [0.5, 2.0, 10.0])
def test_exhaustive_beam_with_lexicon_equals_brute_force(penalty):
    model = tiny_model(seed=7, encoder_dim=32).eval()
    enc_out = 2.0 * torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(8))
    lexicon = Lexicon(TINY_WORDS, TINY_PIECES)
    expected, am_score = brute_force_penalised_best(model, enc_out, lexicon, penalty)
    hyp = modified_beam_search(
        model, enc_out, torch.tensor([4]), beam=VOCAB**4, length_norm=False, scorers=[LexiconScorer(lexicon, penalty)]
    )[0]
    assert tuple(hyp.tokens) == expected
    assert hyp.score == pytest.approx(am_score, abs=1e-4)


def test_the_penalty_changes_the_tiny_result_and_zero_is_plain_search():
    """Guards the brute-force test against a lexicon that never matters; penalty 0 is the plain search."""
    model = tiny_model(seed=7, encoder_dim=32).eval()
    enc_out = 2.0 * torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(8))
    lexicon = Lexicon(TINY_WORDS, TINY_PIECES)
    plain, _ = brute_force_penalised_best(model, enc_out, lexicon, 0.0)
    strict, _ = brute_force_penalised_best(model, enc_out, lexicon, 10.0)
    assert plain != strict and count_by_splitting(lexicon, TINY_PIECES, list(strict)) == 0
    enc_out = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(5))
    enc_lens = torch.tensor([9, 6, 4])
    without = modified_beam_search(model, enc_out, enc_lens, beam=4)
    zero = modified_beam_search(model, enc_out, enc_lens, beam=4, scorers=[LexiconScorer(lexicon, 0.0)])
    assert [(h.tokens, h.timestamps, h.score) for h in without] == [(h.tokens, h.timestamps, h.score) for h in zero]
    with pytest.raises(ValueError, match="oov_penalty"):
        modified_beam_search(model, enc_out, enc_lens, scorers=[LexiconScorer(lexicon, -1.0)])


def test_from_files_reads_lists_and_texts_and_matches_the_case_of_the_tokens(tmp_path):
    (tmp_path / "words.txt").write_text("Then\nAND\n")
    with gzip.open(tmp_path / "text.txt.gz", "wt") as f:
        f.write("she said then\n")
    lexicon = Lexicon.from_files([tmp_path / "words.txt", tmp_path / "text.txt.gz"], PIECES)
    assert lexicon.words == {"then", "and", "she", "said"}
    upper = Lexicon.from_files([tmp_path / "words.txt"], [p.upper() for p in PIECES])
    assert upper.words == {"THEN", "AND"}
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        Lexicon.from_files([tmp_path / "missing.txt"], PIECES)
    with pytest.raises(ValueError, match="word pieces"):
        Lexicon(["你好"], ["<blk>", "你", "好"])
    with pytest.raises(ValueError, match="no words"):
        Lexicon([], PIECES)


# ----------------------------------------------------------------------------- word LM fusion
WORD_SENTENCES = [["an", "b"], ["and"], ["a", "b", "b"], ["an", "and"], ["b"]]


def toy_word_lm(order: int = 2) -> NgramLM:
    symbols = ["<blk>", "<sos/eos>", "<unk>", "a", "an", "and", "b", "bad"]
    ids = {w: i for i, w in enumerate(symbols)}
    return NgramLM.train([[ids[w] for w in s] for s in WORD_SENTENCES], symbols, order=order)


def word_lm_log_prob(word_lm: NgramLM, words: list[str]) -> float:
    ids = {s: i for i, s in enumerate(word_lm.symbols) if i > 2}
    return word_lm.sentence_log_prob([ids.get(w, 2) for w in words])


@pytest.mark.parametrize("penalty,scale,bonus", [(0.0, 1.0, 0.0), (0.5, 0.7, 1.5), (2.0, 3.0, 0.0)])
def test_exhaustive_beam_with_word_lm_equals_brute_force(penalty, scale, bonus):
    model = tiny_model(seed=7, encoder_dim=32).eval()
    enc_out = 2.0 * torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(8))
    lexicon, word_lm = Lexicon(TINY_WORDS, TINY_PIECES), toy_word_lm()
    scored = {}
    for tokens, am in sequence_log_probs(model, enc_out).items():
        words = "".join(TINY_PIECES[v].replace(W, " ") for v in tokens).split()
        scored[tokens] = (
            am
            - penalty * count_by_splitting(lexicon, TINY_PIECES, list(tokens))
            + scale * word_lm_log_prob(word_lm, words)
            + bonus * len(words),
            am,
        )
    expected = max(scored, key=lambda k: scored[k][0])
    hyp = modified_beam_search(
        model,
        enc_out,
        torch.tensor([4]),
        beam=VOCAB**4,
        length_norm=False,
        scorers=[LexiconScorer(lexicon, penalty), WordLmScorer(word_lm, lexicon, scale, bonus)],
    )[0]
    assert tuple(hyp.tokens) == expected
    assert hyp.score == pytest.approx(scored[expected][1], abs=1e-4)
    if scale == 3.0:  # guards the test against a word LM too weak to matter
        plain = max(scored, key=lambda k: scored[k][1] - penalty * count_by_splitting(lexicon, TINY_PIECES, list(k)))
        assert plain != expected


def test_word_lm_needs_a_lexicon_and_round_trips_through_arpa(tmp_path):
    model = tiny_model(seed=7, encoder_dim=32).eval()
    enc_out = torch.randn(1, 4, 32)
    with pytest.raises(ValueError, match="needs a lexicon"):
        modified_beam_search(model, enc_out, torch.tensor([4]), scorers=[WordLmScorer(toy_word_lm(), None, 1.0)])
    word_lm = toy_word_lm(order=3)
    word_lm.save_arpa(tmp_path / "words.arpa")
    loaded = NgramLM.load_arpa_words(tmp_path / "words.arpa")
    assert sorted(loaded.symbols) == sorted(word_lm.symbols)
    for words in (["an", "b"], ["bad", "a", "and"], ["zebra"], []):
        assert word_lm_log_prob(loaded, words) == pytest.approx(word_lm_log_prob(word_lm, words), abs=1e-5)


def test_cli_trains_a_word_lm(tmp_path, capsys):
    from asr import cli

    text = tmp_path / "text.txt"
    text.write_text("\n".join(" ".join(s) for s in WORD_SENTENCES) + "\n")
    out = tmp_path / "w.arpa.gz"
    assert cli.main(["lm", "train", "--words", "--text", str(text), "--order", "2", "--out", str(out)]) == 0
    loaded = NgramLM.load_arpa_words(out)
    # The vocabulary is the text's words (no "bad"), which sets the uniform floor of the estimate.
    symbols = ["<blk>", "<sos/eos>", "<unk>", "a", "an", "and", "b"]
    ids = {w: i for i, w in enumerate(symbols)}
    direct = NgramLM.train([[ids[w] for w in s] for s in WORD_SENTENCES], symbols, order=2)
    assert sorted(loaded.symbols) == sorted(symbols)
    for words in (["an", "b"], ["and", "a"], ["bad"]):
        assert word_lm_log_prob(loaded, words) == pytest.approx(word_lm_log_prob(direct, words), abs=1e-5)
    with pytest.raises(SystemExit):
        cli.main(["lm", "train", "--words", "--text", str(text)])  # no --out
