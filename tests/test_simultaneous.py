"""Simultaneous recognition with the attention decoder: the EDAtt and AlignAtt rules on hand-made attention,
whole-word commits, the step loop against a plain re-statement of it, the limits (never block: greedy;
always block: the full search), emission-time bookkeeping for both the AED policies and a chunked
transducer, and their latency under asr.metrics.latency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asr.data.tokenizer import CharTokenizer
from asr.decoding.attention import attention_beam_search
from asr.decoding.simultaneous import (
    AlignAttPolicy,
    EDAttPolicy,
    SimultaneousResult,
    beam_search_continuation,
    greedy_continuation,
    simultaneous_decode,
    stream_emission_times,
    whole_word_cut,
)
from asr.inference import DecodingOptions
from asr.metrics.latency import corpus_latency_scores, latency_scores
from asr.models import build_model
from asr.streaming import OnlineRecognizer

from helpers.aed_reference import tiny_decoder
from helpers.simultaneous_reference import (
    FEATURE_DIM,
    WordPieceTokenizer,
    alignatt_rule,
    edatt_rule,
    explicit_greedy,
    reference_simultaneous,
    tiny_aed_model,
)
from helpers.tiny_models import TINY_ZIPFORMER

STEP_MS = 80


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def features(seed: int, frames: int = 40) -> torch.Tensor:
    return torch.randn(frames, FEATURE_DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def layered(rows: list[list[float]], layer: int = 3, layers: int = 4) -> list[torch.Tensor]:
    """Per-layer weights ``(H=2, U, T)`` whose head average at ``layer`` is ``rows``; the two heads differ
    and every other layer holds garbage the policy must not read."""
    mean = torch.tensor(rows, dtype=torch.float64)
    skew = torch.linspace(-1, 1, mean.size(1), dtype=torch.float64) * 0.01
    heads = torch.stack([mean + skew, mean - skew])
    return [heads if i == layer else torch.rand_like(heads) for i in range(layers)]


# -- the rules on hand-made attention ---------------------------------------------------------------------
def test_edatt_sums_the_l2_normalised_tail_without_the_last_frame():
    rows = [
        [0.1, 0.1, 0.2, 0.2, 0.4],  # kept (.1,.1,.2,.2), norm sqrt(.1): tail (.2+.2)/sqrt(.1) = 1.2649
        [0.5, 0.3, 0.1, 0.05, 0.05],  # kept (.5,.3,.1,.05), norm sqrt(.3525): tail .15/.5937 = 0.2526
        [0.02, 0.02, 0.02, 0.02, 0.92],  # the last frame's .92 is dropped: tail .04/.04 = 1
    ]
    policy = EDAttPolicy(alpha=0.5, lambda_frames=2)
    mass = policy.tail_mass(policy.head_average(layered(rows)))
    torch.testing.assert_close(
        mass, torch.tensor([0.4 / math.sqrt(0.1), 0.15 / math.sqrt(0.3525), 1.0], dtype=torch.float64)
    )
    assert policy.blocked(policy.head_average(layered(rows))).tolist() == [True, False, True]
    assert policy.allowed(layered(rows)) == 0
    assert EDAttPolicy(alpha=1.1).allowed(layered(rows)) == 0  # row 0 still blocked
    assert EDAttPolicy(alpha=1.1).blocked(torch.tensor(rows)).tolist() == [True, False, False]
    assert EDAttPolicy(alpha=1.1).allowed(layered(rows[1:])) == 2
    assert EDAttPolicy(alpha=1.3).allowed(layered(rows)) == 3
    assert EDAttPolicy(alpha=0.2).allowed(layered(rows[1:])) == 0
    # λ = 1: the tail is the one frame before the dropped last: .2/sqrt(.1), .05/sqrt(.3525), .02/.04.
    torch.testing.assert_close(
        EDAttPolicy(alpha=1.0, lambda_frames=1).tail_mass(torch.tensor(rows, dtype=torch.float64)),
        torch.tensor([0.2 / math.sqrt(0.1), 0.05 / math.sqrt(0.3525), 0.5], dtype=torch.float64),
    )
    # α is compared with ">=": at exactly the mass the token is blocked.
    exact = [[0.0, 0.6, 0.8, 0.3]]  # kept (0, .6, .8) has norm 1: tail 1.4
    assert EDAttPolicy(alpha=1.4).blocked(torch.tensor(exact, dtype=torch.float64)).tolist() == [True]
    assert EDAttPolicy(alpha=1.4 + 1e-9).blocked(torch.tensor(exact, dtype=torch.float64)).tolist() == [False]


def test_edatt_is_scale_free_and_reads_only_its_layer():
    torch.manual_seed(0)
    rows = torch.rand(6, 9, dtype=torch.float64)
    policy = EDAttPolicy(alpha=0.6, layer=1)
    torch.testing.assert_close(policy.tail_mass(rows), policy.tail_mass(rows * 7.5))
    expected = [edatt_rule(0.6, 2)(row) for row in rows.tolist()]
    weights = layered(rows.tolist(), layer=1)
    assert policy.blocked(policy.head_average(weights)).tolist() == expected
    first = expected.index(True) if True in expected else len(expected)
    assert policy.allowed(weights) == first
    assert EDAttPolicy(alpha=0.6, layer=-3).allowed(weights) == first  # -3 of 4 layers is layer 1
    with pytest.raises(ValueError, match="decoder layer 4 does not exist in a 4-layer"):
        EDAttPolicy(alpha=0.6, layer=4).allowed(weights)


def test_edatt_never_blocks_above_sqrt_lambda_and_always_blocks_at_zero():
    rows = torch.softmax(torch.randn(20, 12, generator=torch.Generator().manual_seed(1)) * 4, dim=1)
    rows[0] = torch.tensor([0.0] * 9 + [0.5, 0.5, 0.0])  # all kept mass on the last two kept frames: sqrt(2)
    assert not EDAttPolicy(alpha=math.sqrt(2) + 1e-6).blocked(rows).any()
    assert EDAttPolicy(alpha=math.sqrt(2) - 1e-6).blocked(rows)[0]
    assert EDAttPolicy(alpha=0.0).blocked(rows).all()
    assert not EDAttPolicy(alpha=math.inf).blocked(rows).any()
    assert EDAttPolicy(alpha=0.5).blocked(torch.ones(3, 1)).all()  # one frame: nothing left to judge


def test_alignatt_blocks_tokens_aligned_to_the_last_frames():
    T = 8
    argmaxes = [0, 3, 5, 6, 7, 2]
    rows = []
    for position in argmaxes:
        row = [0.05] * T
        row[position] = 1 - 0.05 * (T - 1)
        rows.append(row)
    for f, first_blocked in [(1, 4), (2, 3), (3, 2), (5, 1), (8, 0)]:
        policy = AlignAttPolicy(align_frames=f)
        expected = [p >= T - f for p in argmaxes]
        assert policy.blocked(torch.tensor(rows)).tolist() == expected
        assert [alignatt_rule(f)(row) for row in rows] == expected
        assert policy.allowed(layered(rows)) == first_blocked
    tie = torch.tensor([[0.1, 0.4, 0.1, 0.4]])  # first of the tied maxima: frame 1
    assert AlignAttPolicy(align_frames=2).blocked(tie).tolist() == [False]
    assert AlignAttPolicy(align_frames=3).blocked(tie).tolist() == [True]


def test_policy_arguments_are_checked():
    with pytest.raises(ValueError, match="alpha"):
        EDAttPolicy(alpha=-0.1)
    with pytest.raises(ValueError, match="lambda_frames"):
        EDAttPolicy(alpha=0.3, lambda_frames=0)
    with pytest.raises(ValueError, match="align_frames"):
        AlignAttPolicy(align_frames=0)
    with pytest.raises(TypeError, match="layer"):
        AlignAttPolicy(align_frames=2, layer=1.5)


# -- whole words ------------------------------------------------------------------------------------------
def test_only_whole_words_are_cut():
    tok = WordPieceTokenizer()  # ids: 3 ▁the, 4 ▁ca, 5 t, 6 s, 7 ▁do, 8 g, 9 ▁a, 10 re
    hyp = [3, 4, 5, 6, 7, 8, 9, 10]  # the | cats | dog | are
    assert whole_word_cut(tok, hyp, 0, 8) == 6  # "are" is the last word: held back
    assert whole_word_cut(tok, hyp, 0, 7) == 6
    assert whole_word_cut(tok, hyp, 0, 6) == 6  # "▁a" is not allowed but shows that "dog" is complete
    assert whole_word_cut(tok, hyp, 0, 5) == 4  # "do" of "dog" is not a word
    assert whole_word_cut(tok, hyp, 0, 3) == 1  # "cat" of "cats" is not a word yet
    assert whole_word_cut(tok, hyp, 0, 1) == 1
    assert whole_word_cut(tok, hyp, 0, 0) == 0
    assert whole_word_cut(tok, hyp, 1, 2) == 1  # committed "the", "▁ca t" allowed, "s" not
    assert whole_word_cut(tok, hyp, 4, 4) == 6
    assert whole_word_cut(tok, [3, 4, 5], 1, 2) == 1  # the hypothesis ends inside "cat": held back
    chars = CharTokenizer({"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, "你": 3, "好": 4})
    assert whole_word_cut(chars, [3, 4, 3], 0, 3) == 3  # a character is a whole word, the last one too
    assert whole_word_cut(chars, [3, 4, 3], 1, 1) == 2


# -- the step loop ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [2, 3, 5])
@pytest.mark.parametrize("rule", ["edatt", "alignatt"])
def test_decode_equals_the_plain_step_loop(seed, rule):
    model = tiny_aed_model(seed)
    x = features(seed)
    if rule == "edatt":
        policy, blocked = EDAttPolicy(alpha=0.52, lambda_frames=2), edatt_rule(0.52, 2)
    else:
        policy, blocked = AlignAttPolicy(align_frames=4), alignatt_rule(4)
    result = simultaneous_decode(model, x, policy, step_ms=STEP_MS)
    tokens, times = reference_simultaneous(model, x, blocked, STEP_MS)
    assert result.tokens == tokens
    assert result.token_emission_ms == times
    assert result.text == model.tokenizer.decode(tokens)
    assert " ".join(result.words) == result.text
    assert len(result.word_emission_ms) == len(result.words) == len(result.computation_ms)


def test_decodes_commit_words_early_and_the_bookkeeping_holds():
    """Over several models and policies: some words come out before the end, each step commits whole
    words only; emission times are non-decreasing, multiples of the step or the audio length, never past
    it; computation times grow."""
    early = 0
    for seed in (2, 3, 5):
        model = tiny_aed_model(seed)
        x = features(seed, frames=33)  # 330 ms: the end is not a multiple of the step
        for policy in (EDAttPolicy(alpha=0.6), EDAttPolicy(alpha=0.2), AlignAttPolicy(align_frames=2)):
            result = simultaneous_decode(model, x, policy, step_ms=STEP_MS)
            times = result.word_emission_ms
            assert result.source_length_ms == 330
            assert times == sorted(times)
            assert all(t % STEP_MS == 0 or t == 330 for t in times) and all(0 < t <= 330 for t in times)
            assert result.computation_ms == sorted(result.computation_ms)
            assert all(e >= t for e, t in zip(result.elapsed_ms, times))
            # Only whole words: whatever was committed by a step is followed by a word start.
            for t in set(result.token_emission_ms) - {330.0}:
                n = sum(e <= t for e in result.token_emission_ms)
                assert n == len(result.tokens) or model.tokenizer.id_to_token(result.tokens[n]).startswith("\u2581")
            early += sum(t < 330 for t in times)
    assert early > 0


@pytest.mark.parametrize("seed", [3, 5])
def test_never_blocking_commits_every_whole_word_and_ends_as_offline_greedy(seed):
    """With a decoder that ignores the audio every prefix decodes alike, so committing everything the
    policy allows must give exactly the offline greedy decode of the whole input; each step commits
    every whole word of the greedy hypothesis on the audio so far."""
    model = tiny_aed_model(seed, memory_independent=True)
    x = features(seed)
    T = x.size(0)
    result = simultaneous_decode(model, x, EDAttPolicy(alpha=math.inf), step_ms=STEP_MS)
    offline = explicit_greedy(model, x, [], max_len=T)
    assert len(result.words) >= 3
    assert result.tokens == offline
    assert result.text == model.tokenizer.decode(offline)
    # Each commit time: the first step whose greedy hypothesis (capped at the frames received) holds the
    # token inside a whole word, else the end.
    tok = model.tokenizer
    whole = [
        (s * STEP_MS, whole_word_cut(tok, explicit_greedy(model, x[: s * STEP_MS // 10], [], s * STEP_MS // 10), 0, T))
        for s in range(1, T * 10 // STEP_MS + 1)
        if s * STEP_MS < T * 10
    ]
    expected = [next((ms for ms, n in whole if n > k), T * 10.0) for k in range(len(offline))]
    assert result.token_emission_ms == expected
    assert min(expected) < T * 10


@pytest.mark.parametrize("seed", [3, 5])
def test_never_blocking_commits_everything_at_each_step_on_a_real_decoder(seed):
    model = tiny_aed_model(seed)
    x = features(seed)
    result = simultaneous_decode(model, x, EDAttPolicy(alpha=math.inf), step_ms=STEP_MS)
    tokens, times = reference_simultaneous(model, x, lambda row: False, STEP_MS)
    assert (result.tokens, result.token_emission_ms) == (tokens, times)


@pytest.mark.parametrize("seed, beam", [(2, 1), (3, 1), (5, 1), (0, 3), (11, 3)])  # non-empty searches
def test_always_blocking_commits_nothing_before_the_end_and_gives_the_full_search(seed, beam):
    model = tiny_aed_model(seed)
    x = features(seed)
    T = x.size(0)
    result = simultaneous_decode(model, x, EDAttPolicy(alpha=0.0), step_ms=STEP_MS, beam=beam)
    assert result.tokens and set(result.token_emission_ms) == {T * 10.0}
    if beam == 1:
        full = explicit_greedy(model, x, [], max_len=T)
    else:
        memory, lens = model.encode(x.unsqueeze(0), torch.tensor([T]))
        (hyp,) = attention_beam_search(model.attention_decoder, memory, lens, beam=beam)
        full = hyp.tokens
    assert result.tokens == full


def test_a_larger_alpha_never_emits_later():
    """With the audio-independent decoder the hypotheses do not depend on α, and a larger α blocks a
    subset of the tokens, so every word comes out no later; the text stays the offline greedy one."""
    model = tiny_aed_model(3, memory_independent=True)
    x = features(3)
    results = [simultaneous_decode(model, x, EDAttPolicy(alpha=a), step_ms=STEP_MS) for a in (0.0, 0.3, 0.6, 0.9, 2)]
    assert len({tuple(r.tokens) for r in results}) == 1
    for lower, higher in zip(results, results[1:]):
        assert all(h <= lo for h, lo in zip(higher.word_emission_ms, lower.word_emission_ms))
    assert results[-1].word_emission_ms != results[0].word_emission_ms


@pytest.mark.parametrize("seed", [4, 5, 10])
@pytest.mark.parametrize("beam", [2, 4])
def test_beam_continuation_from_nothing_is_attention_beam_search(seed, beam):
    decoder = tiny_decoder(seed=seed)
    memory = torch.randn(6, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    (hyp,) = attention_beam_search(decoder, memory.unsqueeze(0), torch.tensor([6]), beam=beam, max_len=5)
    assert beam_search_continuation(decoder, memory, 6, [], beam, max_len=5) == hyp.tokens


def test_continuations_keep_the_prefix_and_extend_it_as_the_search_would():
    decoder = tiny_decoder(seed=5)
    memory = torch.randn(6, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    prefix = [4, 2]
    greedy = greedy_continuation(decoder, memory, 6, prefix, max_len=6)
    assert greedy[:2] == prefix
    # Greedy continues with the argmax of each step (blank excluded).
    tokens = list(prefix)
    while len(tokens) < 6:
        log_probs, _ = decoder.next_log_probs(torch.tensor([[1, *tokens]]), memory[None], torch.tensor([6]))
        log_probs[0, 0] = -math.inf
        if int(log_probs.argmax()) == 1:
            break
        tokens.append(int(log_probs.argmax()))
    assert greedy == tokens
    wide = beam_search_continuation(decoder, memory, 6, prefix, beam=50, max_len=4)
    assert wide[:2] == prefix and len(wide) <= 4
    assert greedy_continuation(decoder, memory, 6, [2, 3, 4], max_len=2) == [2, 3, 4]


def test_a_continuation_can_be_made_to_start_a_new_word():
    """The driver continues a committed prefix with word starts only, so a committed word stays whole:
    here the unconstrained continuation would glue a piece onto the prefix's last word."""
    model = tiny_aed_model(5)
    decoder, tok = model.attention_decoder, model.tokenizer
    x = features(5)
    memory, lens = model.encode(x.unsqueeze(0), torch.tensor([x.size(0)]))
    memory, T = memory[0], int(lens[0])
    free = greedy_continuation(decoder, memory, T, [], max_len=12)
    k = next(i for i in range(1, len(free)) if not tok.id_to_token(free[i]).startswith("\u2581"))
    prefix = free[:k]
    starts = torch.tensor([tok.id_to_token(i).startswith("\u2581") for i in range(tok.vocab_size)])
    assert greedy_continuation(decoder, memory, T, prefix, max_len=12)[k] == free[k]
    constrained = greedy_continuation(decoder, memory, T, prefix, max_len=12, first_allowed=starts)
    assert constrained == explicit_greedy(model, x, prefix, max_len=12) and constrained[k : k + 1] != [free[k]]
    for beam in (2, 4):
        searched = beam_search_continuation(decoder, memory, T, prefix, beam, max_len=12, first_allowed=starts)
        assert searched[:k] == prefix and (len(searched) == k or bool(starts[searched[k]]))


def test_bad_arguments_name_what_is_wrong():
    model = tiny_aed_model(0)
    x = features(0)
    with pytest.raises(ValueError, match="step_ms"):
        simultaneous_decode(model, x, EDAttPolicy(alpha=0.3), step_ms=0)
    with pytest.raises(ValueError, match="features"):
        simultaneous_decode(model, x[None], EDAttPolicy(alpha=0.3), step_ms=80)
    with pytest.raises(ValueError, match="decoder layer 5"):
        simultaneous_decode(model, x, AlignAttPolicy(align_frames=2, layer=5), step_ms=80)
    with pytest.raises(ValueError, match="final_beam"):
        simultaneous_decode(model, x, AlignAttPolicy(align_frames=2), step_ms=80, final_beam=0)
    no_aed = build_model("conformer-xs", 11, heads=("ctc",), encoder_kwargs=dict(num_layers=1, encoder_dim=16))
    with pytest.raises(ValueError, match="aed"):
        simultaneous_decode(no_aed, torch.randn(30, 80), EDAttPolicy(alpha=0.3), step_ms=80)


def test_a_step_without_a_feature_frame_commits_nothing():
    model = tiny_aed_model(3)
    x = features(3, frames=4)
    result = simultaneous_decode(model, x, EDAttPolicy(alpha=math.inf), step_ms=5)  # the 5 ms step has no frame
    assert result.tokens and all(t >= 10 and t % 5 == 0 for t in result.token_emission_ms)


# -- latency ----------------------------------------------------------------------------------------------
def test_latency_of_a_hand_made_emission_sequence():
    """Delays 1000 … 4000 ms over a 4000 ms source, 5 reference words: the lags behind the ideal 800 ms
    per word are 1000, 800, 600, 1000, 800, so AL = 840 ms; with 10 … 50 ms of computation the elapsed
    times are 1010, 1620, 2230, 3440, 4050, so AL_CA = (1010 + 820 + 630 + 1040 + 850) / 5 = 870 ms."""
    result = SimultaneousResult(
        tokens=[3, 4, 5, 7, 9],
        text="the cat dog a",
        words=["the", "cat", "dog", "a", "b"],
        word_emission_ms=[1000, 1600, 2200, 3400, 4000],
        computation_ms=[10, 20, 30, 40, 50],
        token_emission_ms=[1000, 1600, 2200, 3400, 4000],
        source_length_ms=4000,
    )
    scores = corpus_latency_scores([result.timing(reference_length=5)])
    assert scores["AL"] == pytest.approx(840)
    assert scores["AL_CA"] == pytest.approx(870)
    # LAAL with 5 reference and 5 hypothesis words is AL; AP = 12200 / (4000 · 5).
    assert scores["LAAL"] == pytest.approx(840) and scores["AP"] == pytest.approx(0.61)
    assert "AL_CA" not in corpus_latency_scores([result.timing(5, computation_aware=False)])


def test_decoded_results_score_under_the_latency_metrics():
    model = tiny_aed_model(5)
    x = features(5)
    result = simultaneous_decode(model, x, EDAttPolicy(alpha=0.4), step_ms=STEP_MS)
    scores = latency_scores(result.word_emission_ms, result.source_length_ms, len(result.words), result.elapsed_ms)
    assert scores == corpus_latency_scores([result.timing(len(result.words))])
    assert scores["AL_CA"] >= scores["AL"]


# -- the chunked transducer -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer() -> OnlineRecognizer:
    tokenizer = WordPieceTokenizer()
    torch.manual_seed(0)
    model = build_model(
        "zipformer-xs",
        tokenizer.vocab_size,
        heads=("transducer",),
        causal=True,
        encoder_kwargs=TINY_ZIPFORMER,
        decoder_dim=16,
        joiner_dim=32,
    ).eval()
    with torch.no_grad():  # noise on the decoder and joiner: varied tokens from a random model
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder."):
                parameter.add_(torch.randn_like(parameter))
    model.tokenizer = tokenizer
    options = DecodingOptions(method="greedy", chunk_size=16, left_context_frames=64)
    return OnlineRecognizer(model, options, endpoint=None)


def test_transducer_emission_times_are_when_each_token_first_appears(recognizer):
    """Against streams fed a growing number of chunks: a token's time is the audio of the first such
    stream whose decoded tokens reach it (greedy never revises), the audio length if none does."""
    samples = np.random.default_rng(0).uniform(-0.5, 0.5, 30400).astype(np.float32)  # 1.9 s
    chunk_ms = recognizer.chunk_seconds * 1000
    assert chunk_ms == 320
    result = stream_emission_times(recognizer, samples)
    whole = recognizer.create_stream()
    whole.accept_waveform(16000, samples)
    whole.input_finished()
    recognizer.decode_to_end([whole])
    final = recognizer.get_result(whole)
    assert result.tokens == final.token_ids and len(result.tokens) >= 5
    assert result.text == final.text and result.source_length_ms == pytest.approx(1900)
    counts = []
    piece = 5120
    for k in range(1, -(-samples.size // piece) + 1):
        stream = recognizer.create_stream()
        stream.accept_waveform(16000, samples[: k * piece])
        while recognizer.is_ready(stream):
            recognizer.decode_streams([stream])
        counts.append((min(k * piece, samples.size) / 16, len(recognizer.get_result(stream).token_ids)))
    expected = [next((ms for ms, n in counts if n > i), 1900.0) for i in range(len(result.tokens))]
    assert result.token_emission_ms == pytest.approx(expected)
    assert any(t < 1900 for t in result.token_emission_ms)
    times = result.word_emission_ms
    assert times == sorted(times) and all(t % chunk_ms == 0 or t == pytest.approx(1900) for t in times)
    scores = corpus_latency_scores([result.timing(reference_length=len(result.words))])
    assert set(scores) == {"AL", "LAAL", "AP", "DAL", "AL_CA", "LAAL_CA", "AP_CA", "DAL_CA"}
