"""Token n-gram LM (interpolated modified Kneser-Ney, ARPA) and its shallow fusion in modified beam search.

References: counts and probabilities of a 3-token toy corpus worked out by hand from the Kneser-Ney
formulas (the numbers are written here, not computed by the implementation), the closed-form fact that
every context's distribution sums to one, a hand-written ARPA file, and brute-force enumeration of every
alignment of a tiny transducer with the LM score added.
"""

from __future__ import annotations

import gzip
import itertools
import math

import numpy as np
import pytest
import torch
from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.cut import MonoCut

import asr.lm.text as lm_text
from asr import cli
from asr.data.tokenizer import build_char_tokenizer, load_tokenizer
from asr.decoding import TokenLmScorer, modified_beam_search
from asr.lm import NgramLM, adjusted_counts, modified_kn_discounts, ngram_counts

from helpers.tiny_models import VOCAB, tiny_model

# ids: 0 <blk>, 1 <sos/eos> (<s> in a context, </s> predicted), 2 <unk>, then a=3, b=4, c=5
SYMBOLS = ["<blk>", "<sos/eos>", "<unk>", "a", "b", "c"]
A, B, C, S = 3, 4, 5, 1
TOY = [[A, B], [A, C], [B]]
# hand-picked discounts (D1, D2, D3+) so that the toy probabilities below are worked out by hand
TOY_DISCOUNTS = (0.5, 1.0, 1.5)


def as_tuples(codes: np.ndarray, values: np.ndarray, n: int, vocab_size: int) -> dict[tuple[int, ...], int]:
    out = {}
    for code, value in zip(codes.tolist(), values.tolist()):
        ids = []
        for _ in range(n):
            code, i = divmod(code, vocab_size)
            ids.append(i)
        out[tuple(reversed(ids))] = value
    return out


# ----------------------------------------------------------------------------- estimation by hand
def test_counts_of_toy_corpus_by_hand():
    raw = ngram_counts(TOY, 3, len(SYMBOLS))
    adjusted = adjusted_counts(raw, len(SYMBOLS))
    # sentences: <s> a b </s> | <s> a c </s> | <s> b </s>
    assert as_tuples(*raw[0], 1, 6) == {(A,): 2, (B,): 2, (C,): 1, (S,): 3}
    assert as_tuples(*raw[1], 2, 6) == {(S, A): 2, (A, B): 1, (B, S): 2, (A, C): 1, (C, S): 1, (S, B): 1}
    assert as_tuples(*raw[2], 3, 6) == {(S, A, B): 1, (A, B, S): 1, (S, A, C): 1, (A, C, S): 1, (S, B, S): 1}
    # continuation counts: distinct left neighbours; n-grams starting with <s> keep their raw count
    assert as_tuples(raw[0][0], adjusted[0], 1, 6) == {(A,): 1, (B,): 2, (C,): 1, (S,): 2}
    assert as_tuples(raw[1][0], adjusted[1], 2, 6) == {(S, A): 2, (S, B): 1, (A, B): 1, (A, C): 1, (B, S): 2, (C, S): 1}
    assert as_tuples(raw[2][0], adjusted[2], 3, 6) == as_tuples(*raw[2], 3, 6)


def test_modified_kn_discounts_closed_form():
    # Y = 10 / 18; D1 = 1 - 2Y 4/10 = 5/9; D2 = 2 - 3Y 2/4 = 7/6; D3+ = 3 - 4Y 1/2 = 17/9
    assert modified_kn_discounts([10, 4, 2, 1]) == pytest.approx((5 / 9, 7 / 6, 17 / 9))
    # t2 = t3 = 0 leaves D2 and D3+ undefined: they fall back to Y = 3 / 3
    assert modified_kn_discounts([3, 0, 0, 0]) == pytest.approx((1.0, 1.0, 1.0))


# p(w) = (a(w) - D) / 6 + gamma / 5 over the 5 words {</s>, <unk>, a, b, c}; gamma = (0.5*2 + 1*2) / 6 = 0.5
UNIGRAM = {S: 1 / 6 + 0.1, 2: 0.1, A: 0.5 / 6 + 0.1, B: 1 / 6 + 0.1, C: 0.5 / 6 + 0.1}
# p(w | h) = (a(hw) - D) / a(h.) + gamma(h) p(w), every gamma(h) here is 0.5
BIGRAM = {
    (S, A): 1 / 3 + 0.5 * UNIGRAM[A],  # 0.425
    (S, B): 0.5 / 3 + 0.5 * UNIGRAM[B],  # 0.3
    (A, B): 0.5 / 2 + 0.5 * UNIGRAM[B],  # 0.383333
    (A, C): 0.5 / 2 + 0.5 * UNIGRAM[C],  # 0.341667
    (B, S): 1 / 2 + 0.5 * UNIGRAM[S],  # 0.633333
    (C, S): 0.5 / 1 + 0.5 * UNIGRAM[S],  # 0.633333
}
TRIGRAM = {
    (S, A, B): 0.5 / 2 + 0.5 * BIGRAM[(A, B)],  # 0.441667
    (S, A, C): 0.5 / 2 + 0.5 * BIGRAM[(A, C)],  # 0.420833
    (A, B, S): 0.5 + 0.5 * BIGRAM[(B, S)],  # 0.816667
    (S, B, S): 0.5 + 0.5 * BIGRAM[(B, S)],
    (A, C, S): 0.5 + 0.5 * BIGRAM[(C, S)],
}


def expected_toy_prob(context: tuple[int, ...], word: int) -> float:
    """Backoff by hand: explicit n-gram, else gamma (0.5 for every seen context) times the lower order."""
    if not context:
        return UNIGRAM[word]
    table = BIGRAM if len(context) == 1 else TRIGRAM
    if (*context, word) in table:
        return table[(*context, word)]
    seen_context = any(k[:-1] == context for k in table)
    return (0.5 if seen_context else 1.0) * expected_toy_prob(context[1:], word)


def test_kneser_ney_unigram_model_of_toy_corpus_by_hand():
    """Order 1 is the highest order: raw counts </s> 3, a 2, b 2, c 1 (total 8), gamma = (1.5+1+1+0.5)/8."""
    lm = NgramLM.train(TOY, SYMBOLS, order=1, discounts=[TOY_DISCOUNTS])
    expected = {2: 0.1, A: 1 / 8 + 0.1, B: 1 / 8 + 0.1, C: 0.5 / 8 + 0.1}
    dense = lm.log_probs(())
    for word, p in expected.items():
        assert math.exp(dense[word]) == pytest.approx(p, rel=1e-6)
    assert math.exp(lm.final_log_prob(())) == pytest.approx(1.5 / 8 + 0.1, rel=1e-6)


@pytest.mark.parametrize("order", [2, 3])
def test_kneser_ney_probabilities_of_toy_corpus_by_hand(order):
    lm = NgramLM.train(TOY, SYMBOLS, order=order, discounts=[TOY_DISCOUNTS] * order)
    assert BIGRAM[(S, A)] == pytest.approx(0.425) and TRIGRAM[(A, B, S)] == pytest.approx(0.8166667)
    states = [(S,)] if order == 2 else [(S,), (S, A), (S, B), (S, C)]
    states += list(itertools.product((A, B, C), repeat=order - 1))
    for state in states:
        dense = lm.log_probs(state)
        for word in (2, A, B, C):
            assert math.exp(dense[word]) == pytest.approx(expected_toy_prob(state, word), rel=1e-6), (state, word)
        assert math.exp(lm.final_log_prob(state)) == pytest.approx(expected_toy_prob(state, S), rel=1e-6)


def test_hand_written_arpa_loads_with_hand_probabilities(tmp_path):
    """The bigram toy model written out by hand as an ARPA file, as SRILM/KenLM would."""

    def l10(p: float) -> str:
        return f"{math.log10(p):.7f}"

    bow = l10(0.5)
    lines = [
        "",
        "\\data\\",
        "ngram 1=6",
        "ngram 2=6",
        "",
        "\\1-grams:",
        f"-99\t<s>\t{bow}",
        f"{l10(UNIGRAM[S])}\t</s>",
        f"{l10(0.1)}\t<unk>",
        f"{l10(UNIGRAM[A])}\ta\t{bow}",
        f"{l10(UNIGRAM[B])}\tb\t{bow}",
        f"{l10(UNIGRAM[C])}\tc\t{bow}",
        "",
        "\\2-grams:",
    ]
    names = {S: None, A: "a", B: "b", C: "c"}
    for (h, w), p in BIGRAM.items():
        lines.append(f"{l10(p)}\t{'<s>' if h == S else names[h]} {'</s>' if w == S else names[w]}")
    lines += ["", "\\end\\", ""]
    path = tmp_path / "toy.arpa"
    path.write_text("\n".join(lines), encoding="utf-8")
    lm = NgramLM.load_arpa(path, SYMBOLS)
    assert lm.order == 2 and lm.num_ngrams == [6, 6]
    for context in [(S,), (A,), (B,), (C,)]:
        for word in (2, A, B, C, S):
            assert math.exp(lm.token_log_prob(context, word)) == pytest.approx(
                expected_toy_prob(context, word), rel=1e-6
            )
    # the sentence "a b": p(a|<s>) p(b|a) p(</s>|b)
    expected = BIGRAM[(S, A)] * BIGRAM[(A, B)] * BIGRAM[(B, S)]
    assert math.exp(lm.sentence_log_prob([A, B])) == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- normalisation, lookups
RANDOM_SYMBOLS = ["<blk>", "<sos/eos>", "<unk>", "p", "q", "r", "s", "t"]


def random_corpus(seed: int = 0, num: int = 40) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    # skewed token distribution so that counts of counts are varied; one empty sentence
    weights = np.array([0.02, 0.4, 0.25, 0.15, 0.1, 0.08])
    return [[]] + [rng.choice(np.arange(2, 8), size=rng.integers(1, 7), p=weights).tolist() for _ in range(num)]


def all_states(order: int, vocab_size: int) -> list[tuple[int, ...]]:
    """Every state the model can be queried in: (<s>, ...) prefixes and every tuple of order-1 word ids."""
    if order == 1:
        return [()]
    words = range(2, vocab_size)
    states = [(S, *rest) for k in range(order - 1) for rest in itertools.product(words, repeat=k)]
    return states + list(itertools.product(words, repeat=order - 1))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("min_counts", [None, "pruned"])
def test_every_context_sums_to_one_and_dense_equals_backoff_lookup(order, min_counts):
    prune = [1, 2, 2, 3][:order] if min_counts else None
    lm = NgramLM.train(random_corpus(), RANDOM_SYMBOLS, order=order, min_counts=prune)
    for state in all_states(order, len(RANDOM_SYMBOLS)):
        exact = [lm.token_log_prob(state, v) for v in range(1, len(RANDOM_SYMBOLS))]  # </s> and the words
        assert math.fsum(math.exp(x) for x in exact) == pytest.approx(1.0, abs=1e-12), state
        dense = lm.log_probs(state)
        assert dense[0] == -np.inf and dense[1] == -np.inf
        np.testing.assert_allclose(dense[2:], exact[1:], rtol=0, atol=1e-5)
        assert lm.final_log_prob(state) == pytest.approx(exact[0], abs=1e-12)
    assert lm.log_probs(lm.start_state) is lm.log_probs(lm.start_state)  # cached


def test_pruning_drops_rare_ngrams_and_keeps_the_others_probabilities(tmp_path):
    corpus = random_corpus(seed=1, num=80)
    full = NgramLM.train(corpus, RANDOM_SYMBOLS, order=3)
    pruned = NgramLM.train(corpus, RANDOM_SYMBOLS, order=3, min_counts=[1, 1, 3])
    raw = ngram_counts(corpus, 3, len(RANDOM_SYMBOLS))
    assert pruned.num_ngrams[:2] == full.num_ngrams[:2]
    assert pruned.num_ngrams[2] == int((raw[2][1] >= 3).sum()) < full.num_ngrams[2]
    pruned.save_arpa(tmp_path / "pruned.arpa")
    ids = {s: i for i, s in enumerate(RANDOM_SYMBOLS)} | {"<s>": S, "</s>": S}
    section = 0
    checked = 0
    for line in (tmp_path / "pruned.arpa").read_text().splitlines():
        if line.endswith("-grams:"):
            section = int(line[1])
        elif section and line and not line.startswith("\\") and "\t<s>" not in line[:12]:
            fields = line.split("\t")
            tokens = [ids[t] for t in fields[1].split()]
            assert float(fields[0]) * math.log(10) == pytest.approx(
                full.token_log_prob(tuple(tokens[:-1]), tokens[-1]),
                abs=5e-6,  # 7 digits in ARPA
            ), line
            checked += 1
    assert checked == sum(pruned.num_ngrams) - 1
    with pytest.raises(ValueError, match="non-decreasing"):
        NgramLM.train(corpus, RANDOM_SYMBOLS, order=3, min_counts=[1, 3, 2])


@pytest.mark.parametrize("suffix", [".arpa", ".arpa.gz"])
def test_arpa_round_trip(tmp_path, suffix):
    lm = NgramLM.train(random_corpus(seed=2), RANDOM_SYMBOLS, order=3, min_counts=[1, 1, 2])
    first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    lm.save_arpa(first)
    loaded = NgramLM.load_arpa(first, RANDOM_SYMBOLS)
    loaded.save_arpa(second)
    again = NgramLM.load_arpa(second, RANDOM_SYMBOLS)
    read = gzip.open if suffix.endswith(".gz") else open
    with read(first, "rt") as f1, read(second, "rt") as f2:
        assert f1.read() == f2.read()
    assert loaded.num_ngrams == lm.num_ngrams
    for state in all_states(3, len(RANDOM_SYMBOLS)):
        np.testing.assert_array_equal(loaded.log_probs(state), again.log_probs(state))
        np.testing.assert_allclose(loaded.log_probs(state), lm.log_probs(state), rtol=0, atol=1e-5)
        assert loaded.final_log_prob(state) == pytest.approx(lm.final_log_prob(state), abs=1e-5)


def test_arpa_with_unknown_token_names_file_and_line(tmp_path):
    path = tmp_path / "bad.arpa"
    path.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0\t</s>\n-1.0\tzebra\n\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bad.arpa:6: token 'zebra'"):
        NgramLM.load_arpa(path, SYMBOLS)
    with pytest.raises(ValueError, match="not a word id"):
        NgramLM.train([[A, 0]], SYMBOLS, order=2)


# ----------------------------------------------------------------------------- shallow fusion
def brute_force_fused_best(model, enc_out, lm, lm_scale, lm_final, length_norm, lm_bonus=0.0):
    """Enumerate every path of blank-or-one-token per frame, sum alignments per token sequence, add the LM."""
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
    scored = {}
    for tokens, scores in totals.items():
        if S in tokens:  # the LM gives <sos/eos> no probability as a token
            continue
        am = float(torch.logsumexp(torch.tensor(scores, dtype=torch.float64), 0))
        lm_lp = (
            lm.sentence_log_prob(tokens)
            if lm_final
            else lm.sentence_log_prob(tokens) - lm.token_log_prob(_state_after(lm, tokens), S)
        )
        fused = am + lm_scale * lm_lp + lm_bonus * len(tokens)
        scored[tokens] = (fused / (len(tokens) + model.decoder.context_size) if length_norm else fused, am)
    best = max(scored, key=lambda k: scored[k][0])
    return best, scored[best][1]


def _state_after(lm: NgramLM, tokens) -> tuple[int, ...]:
    state = lm.start_state
    for token in tokens:
        state = lm.next_state(state, token)
    return state


@pytest.fixture(scope="module")
def fusion_setup():
    model = tiny_model(seed=3, encoder_dim=32).eval()
    enc_out = 2.0 * torch.randn(1, 3, 32, generator=torch.Generator().manual_seed(4))
    # an LM that strongly prefers "c c" and "c a"
    lm = NgramLM.train([[C, C], [C, A], [C, C], [B]], SYMBOLS, order=2)
    return model, enc_out, lm


@pytest.mark.parametrize("lm_scale", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("lm_final", [True, False])
@pytest.mark.parametrize("length_norm", [False, True])
@pytest.mark.parametrize("lm_bonus", [0.0, 2.0])
def test_fused_exhaustive_beam_equals_brute_force(fusion_setup, lm_scale, lm_final, length_norm, lm_bonus):
    model, enc_out, lm = fusion_setup
    expected, am_score = brute_force_fused_best(model, enc_out, lm, lm_scale, lm_final, length_norm, lm_bonus)
    hyp = modified_beam_search(
        model,
        enc_out,
        torch.tensor([3]),
        beam=VOCAB**3,
        length_norm=length_norm,
        scorers=[TokenLmScorer(lm, lm_scale, lm_bonus, lm_final)],
    )[0]
    assert tuple(hyp.tokens) == expected
    assert hyp.score == pytest.approx(am_score, abs=1e-4)


def test_lm_changes_the_result_of_the_tiny_setup(fusion_setup):
    """Guards the brute-force test above against an LM too weak to matter."""
    model, enc_out, lm = fusion_setup
    plain, _ = brute_force_fused_best(model, enc_out, lm, 0.0, True, False)
    fused, _ = brute_force_fused_best(model, enc_out, lm, 3.0, True, False)
    assert plain != fused


def test_lm_scale_zero_is_plain_search_and_batching_is_per_utterance(fusion_setup):
    model, _, lm = fusion_setup
    enc_out = torch.randn(3, 9, 32, generator=torch.Generator().manual_seed(5))
    enc_lens = torch.tensor([9, 6, 4])
    plain = modified_beam_search(model, enc_out, enc_lens, beam=4)
    zero = modified_beam_search(model, enc_out, enc_lens, beam=4, scorers=[TokenLmScorer(lm, 0.0)])
    assert [(h.tokens, h.timestamps, h.score) for h in plain] == [(h.tokens, h.timestamps, h.score) for h in zero]
    fused = modified_beam_search(model, enc_out, enc_lens, beam=4, scorers=[TokenLmScorer(lm, 1.0)])
    alone = [
        modified_beam_search(
            model, enc_out[i : i + 1, :n], torch.tensor([n]), beam=4, scorers=[TokenLmScorer(lm, 1.0)]
        )[0]
        for i, n in enumerate(enc_lens.tolist())
    ]
    assert [h.tokens for h in fused] == [h.tokens for h in alone]
    assert all(S not in h.tokens for h in fused)
    with pytest.raises(ValueError, match="lm_scale"):
        modified_beam_search(model, enc_out, enc_lens, scorers=[TokenLmScorer(lm, -1.0)])


# ----------------------------------------------------------------------------- CLI
def write_cuts(path, texts: list[str]) -> None:
    cuts = []
    for i, text in enumerate(texts):
        recording = Recording(id=f"r{i}", sources=[], sampling_rate=16000, num_samples=16000, duration=1.0)
        supervision = SupervisionSegment(id=f"s{i}", recording_id=f"r{i}", start=0, duration=1.0, text=text)
        cuts.append(
            MonoCut(id=f"c{i}", start=0, duration=1.0, channel=0, recording=recording, supervisions=[supervision])
        )
    CutSet.from_cuts(cuts).to_file(path)


def test_cli_text_excludes_evaluation_sentences(tmp_path, monkeypatch, capsys):
    pool = [f"sentence number {i} of the pool" for i in range(10)]
    monkeypatch.setattr(lm_text, "load_sentences", lambda: list(pool))
    write_cuts(tmp_path / "dev.jsonl.gz", [pool[2], pool[5]])
    write_cuts(tmp_path / "test.jsonl.gz", [pool[7], "a sentence that is not in the pool"])
    out = tmp_path / "lm" / "text.txt.gz"
    assert (
        cli.main(
            [
                "lm",
                "text",
                "--out",
                str(out),
                "--exclude-cuts",
                str(tmp_path / "dev.jsonl.gz"),
                str(tmp_path / "test.jsonl.gz"),
            ]
        )
        == 0
    )
    with gzip.open(out, "rt") as f:
        lines = f.read().splitlines()
    assert lines == [s for i, s in enumerate(pool) if i not in (2, 5, 7)]
    assert "wrote 7 sentences" in capsys.readouterr().out and len(lines) + 3 == len(pool)
    with pytest.raises(SystemExit):
        cli.main(["lm", "text", "--out", str(out), "--exclude-cuts", str(tmp_path / "missing.jsonl.gz")])


def test_cli_train_writes_the_model_of_the_tokenized_text(tmp_path, capsys):
    sentences = ["abc abd", "bad cab", "abba", "dab cad bad", "cc"]
    lang = tmp_path / "lang"
    build_char_tokenizer(sentences, lang)
    text = tmp_path / "text.txt"
    text.write_text("\n".join(sentences) + "\n\n")
    assert (
        cli.main(
            ["lm", "train", "--lang-dir", str(lang), "--text", str(text), "--order", "3", "--min-counts", "1", "1", "2"]
        )
        == 0
    )
    assert "lm_3gram.arpa.gz" in capsys.readouterr().out
    tokenizer = load_tokenizer(lang)
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    loaded = NgramLM.load_arpa(lang / "lm_3gram.arpa.gz", symbols)
    direct = NgramLM.train([tokenizer.encode(s) for s in sentences], symbols, order=3, min_counts=[1, 1, 2])
    assert loaded.num_ngrams == direct.num_ngrams
    for state in all_states(3, len(symbols))[:60]:
        np.testing.assert_allclose(loaded.log_probs(state), direct.log_probs(state), atol=1e-6)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert cli.main(["lm", "train", "--lang-dir", str(lang), "--text", str(empty)]) == 1
    assert "holds no sentences" in capsys.readouterr().err


def test_decode_rejects_lm_with_other_methods(capsys):
    from asr.cli.decode import main as decode_main

    with pytest.raises(SystemExit):
        decode_main(["--checkpoint", "unused.pt", "--cuts", "unused.jsonl.gz", "--method", "greedy", "--lm", "lm.arpa"])
    assert "--lm needs --method modified_beam_search" in capsys.readouterr().err
