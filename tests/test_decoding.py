"""Search: transducer greedy / modified beam search and CTC greedy / prefix beam search.

References are written here independently: a naive per-utterance greedy search, brute-force
enumeration of every path of a tiny model or CTC output, and the full RNN-T lattice recursion
(itself checked against enumeration) giving log P(y | x) of a decoded output under the model.
A tiny transducer + CTC model (tests/helpers/tiny_models.py) is trained here (a couple of seconds) on a
synthetic task in which each token is a noisy per-token feature pattern.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from asr.decoding import (
    Hypothesis,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    greedy_search,
    modified_beam_search,
)
from asr.models import AsrModel, pad_tokens

from helpers.rnnt_reference import full_lattice_logits, reference_losses, reference_rnnt_log_prob
from helpers.tiny_models import VOCAB, make_task, tiny_model


# ----------------------------------------------------------------------------- helpers
def reference_one_symbol_per_frame_log_prob(logits, targets, frame_lens, target_lens) -> torch.Tensor:
    """log P(y | x) over the alignments of the search topology, where a frame emits blank or one
    symbol and either way the next frame follows:
    alpha[t+1, u] = logaddexp(alpha[t, u] + blank[t, u], alpha[t, u-1] + emit[t, u-1]); result alpha[T, U]."""
    log_probs = logits.log_softmax(dim=-1)
    blank = log_probs[..., 0]
    index = targets[:, None, :, None].expand(-1, logits.size(1), -1, 1)
    emit = log_probs[:, :, :-1, :].gather(3, index)[..., 0]
    alpha = torch.full_like(blank[:, 0], float("-inf"))
    alpha[:, 0] = 0.0
    alphas = [alpha]
    for t in range(blank.size(1)):
        stay = alpha + blank[:, t]
        alpha = torch.cat([stay[:, :1], torch.logaddexp(stay[:, 1:], alpha[:, :-1] + emit[:, t])], dim=1)
        alphas.append(alpha)
    alphas = torch.stack(alphas, dim=1)
    return alphas[torch.arange(blank.size(0)), frame_lens, target_lens]


def train_tiny_model(steps: int = 300, seed: int = 0) -> AsrModel:
    """Transducer + CTC trained on the synthetic task with the reference losses (~2 s on one core)."""
    model = tiny_model(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x, x_lens, tokens = make_task(16, generator)
        rnnt, ctc = reference_losses(model, x, x_lens, tokens)
        optimizer.zero_grad()
        ((rnnt + ctc) / len(tokens)).backward()
        optimizer.step()
    return model.eval()


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained():
    model = train_tiny_model()
    x, x_lens, tokens = make_task(40, torch.Generator().manual_seed(99))
    with torch.no_grad():
        enc_out, enc_lens = model.encode(x, x_lens)
    return model, enc_out, enc_lens, tokens


@pytest.fixture(scope="module")
def untrained():
    """A random model: its search paths are far from trivial (many emissions, several per frame)."""
    model = tiny_model(seed=3).eval()
    generator = torch.Generator().manual_seed(5)
    enc_out = 3.0 * torch.randn(5, 9, 32, generator=generator)
    enc_lens = torch.tensor([9, 4, 7, 1, 6])
    return model, enc_out, enc_lens


def assert_same(hyps_a: list[Hypothesis], hyps_b: list[Hypothesis], atol: float = 1e-5):
    assert [h.tokens for h in hyps_a] == [h.tokens for h in hyps_b]
    assert [h.timestamps for h in hyps_a] == [h.timestamps for h in hyps_b]
    assert [h.score for h in hyps_a] == pytest.approx([h.score for h in hyps_b], abs=atol)


def naive_greedy(model: AsrModel, enc_out: torch.Tensor, max_sym_per_frame: int) -> Hypothesis:
    """One utterance, enc_out (T, C); the decoder re-reads the whole history each step."""
    history, timestamps, score = [], [], 0.0
    for t in range(enc_out.size(0)):
        for _ in range(max_sym_per_frame):
            dec_out = model.decoder(torch.tensor([[0] + history]))[:, -1]
            log_probs = model.joiner(enc_out[t : t + 1], dec_out).log_softmax(-1)[0]
            token = int(log_probs.argmax())
            score += float(log_probs[token])
            if token == 0:
                break
            history.append(token)
            timestamps.append(t)
    return Hypothesis(history, timestamps, score)


# ----------------------------------------------------------------------------- the reference itself
def test_reference_rnnt_log_prob_equals_enumeration():
    torch.manual_seed(0)
    num_frames, num_labels = 4, 2
    logits = torch.randn(1, num_frames, num_labels + 1, 4, dtype=torch.float64)
    targets = torch.tensor([[2, 3]])
    log_probs = logits.log_softmax(-1)[0]
    path_scores = []
    # An alignment: a sequence of T blanks and S emissions, ending with the blank of the last frame.
    for emit_steps in itertools.combinations(range(num_frames + num_labels - 1), num_labels):
        t = u = 0
        score = 0.0
        for step in range(num_frames + num_labels):
            if step in emit_steps:
                score += log_probs[t, u, targets[0, u]]
                u += 1
            else:
                score += log_probs[t, u, 0]
                t += 1
        path_scores.append(score)
    expected = torch.logsumexp(torch.stack(path_scores), 0)
    got = reference_rnnt_log_prob(logits, targets, torch.tensor([num_frames]), torch.tensor([num_labels]))
    assert got.item() == pytest.approx(expected.item(), abs=1e-12)


# ----------------------------------------------------------------------------- transducer greedy
@pytest.mark.parametrize("max_sym_per_frame", [1, 3])
def test_greedy_equals_naive_per_utterance_search(untrained, max_sym_per_frame):
    model, enc_out, enc_lens = untrained
    hyps = greedy_search(model, enc_out, enc_lens, max_sym_per_frame=max_sym_per_frame)
    with torch.no_grad():
        expected = [naive_greedy(model, enc_out[i, :n], max_sym_per_frame) for i, n in enumerate(enc_lens.tolist())]
    assert_same(hyps, expected)
    if max_sym_per_frame > 1:  # the case exercises several symbols on one frame
        assert any(len(set(h.timestamps)) < len(h.timestamps) for h in hyps)


@pytest.mark.parametrize("max_sym_per_frame", [1, 2])
def test_batched_greedy_equals_per_utterance_with_padding(untrained, max_sym_per_frame):
    model, enc_out, enc_lens = untrained
    padded = enc_out.clone()
    for i, n in enumerate(enc_lens.tolist()):
        padded[i, n:] = 100.0  # garbage in the padding must not matter
    batched = greedy_search(model, padded, enc_lens, max_sym_per_frame=max_sym_per_frame)
    alone = [
        greedy_search(model, enc_out[i : i + 1, :n], torch.tensor([n]), max_sym_per_frame=max_sym_per_frame)[0]
        for i, n in enumerate(enc_lens.tolist())
    ]
    assert_same(batched, alone)


def test_greedy_decodes_the_trained_task(trained):
    model, enc_out, enc_lens, tokens = trained
    hyps = greedy_search(model, enc_out, enc_lens)
    correct = sum(h.tokens == ref for h, ref in zip(hyps, tokens))
    assert correct >= 0.6 * len(tokens)


# ----------------------------------------------------------------------------- modified beam search
def test_beam_one_equals_greedy(untrained, trained):
    for model, enc_out, enc_lens in (untrained, trained[:3]):
        assert_same(modified_beam_search(model, enc_out, enc_lens, beam=1), greedy_search(model, enc_out, enc_lens))


def test_batched_beam_search_equals_per_utterance(untrained):
    model, enc_out, enc_lens = untrained
    batched = modified_beam_search(model, enc_out, enc_lens, beam=4)
    alone = [
        modified_beam_search(model, enc_out[i : i + 1, :n], torch.tensor([n]), beam=4)[0]
        for i, n in enumerate(enc_lens.tolist())
    ]
    assert_same(batched, alone)


def test_exhaustive_beam_equals_enumeration_of_one_symbol_per_frame_paths():
    """With a beam holding every hypothesis, modified beam search is exact: its best hypothesis and its
    score equal the best token sequence by enumeration of all V^T paths (blank or one token per frame),
    the probabilities of paths with the same tokens summed."""
    model = tiny_model(seed=7, encoder_dim=32).eval()
    enc_out = 2.0 * torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(8))
    by_tokens: dict[tuple[int, ...], list[float]] = {}
    with torch.no_grad():
        for path in itertools.product(range(VOCAB), repeat=enc_out.size(1)):
            history, score = [], 0.0
            for t, symbol in enumerate(path):
                dec_out = model.decoder(torch.tensor([[0] + history]))[:, -1]
                score += float(model.joiner(enc_out[0, t : t + 1], dec_out).log_softmax(-1)[0, symbol])
                if symbol != 0:
                    history.append(symbol)
            by_tokens.setdefault(tuple(history), []).append(score)
    totals = {
        tokens: float(torch.logsumexp(torch.tensor(s, dtype=torch.float64), 0)) for tokens, s in by_tokens.items()
    }
    best_tokens = max(totals, key=totals.get)
    hyp = modified_beam_search(model, enc_out, torch.tensor([4]), beam=VOCAB**4, length_norm=False)[0]
    assert tuple(hyp.tokens) == best_tokens
    assert hyp.score == pytest.approx(totals[best_tokens], abs=1e-4)
    # The recursion used by the beam-vs-greedy test agrees with this enumeration.
    for labels in [k for k in totals if k][:20]:
        targets, target_lens = pad_tokens([list(labels)], VOCAB)
        with torch.no_grad():
            logits = full_lattice_logits(model, enc_out, targets)
        got = reference_one_symbol_per_frame_log_prob(logits, targets, torch.tensor([4]), target_lens)
        assert got.item() == pytest.approx(totals[labels], abs=1e-4)
    # With length normalisation (icefall's default) the pick is by score / (tokens + context_size).
    normed = modified_beam_search(model, enc_out, torch.tensor([4]), beam=VOCAB**4)[0]
    best_normed = max(totals, key=lambda k: totals[k] / (len(k) + model.decoder.context_size))
    assert tuple(normed.tokens) == best_normed


def test_beam_search_never_below_greedy_on_trained_model(trained):
    """Per utterance, the total log-probability of the output under the search topology (every
    alignment with at most one symbol per frame, float64 reference recursion) is at least as high for
    the beam-search output as for the greedy output. Compared without length normalisation: with it
    the beam may trade total probability for length."""
    model, enc_out, enc_lens, tokens = trained
    greedy = greedy_search(model, enc_out, enc_lens)
    beam = modified_beam_search(model, enc_out, enc_lens, beam=4, length_norm=False)
    model64, enc64 = tiny_model().double(), enc_out.double()
    model64.load_state_dict(model.state_dict())

    def log_prob(hyps):
        targets, target_lens = pad_tokens([h.tokens for h in hyps], VOCAB)
        with torch.no_grad():
            logits = full_lattice_logits(model64, enc64, targets)
            return reference_one_symbol_per_frame_log_prob(logits, targets, enc_lens, target_lens)

    greedy_lp, beam_lp = log_prob(greedy), log_prob(beam)
    assert torch.all(beam_lp >= greedy_lp - 1e-9), (beam_lp - greedy_lp).min()
    # Each hypothesis' score counts only alignments it met in the beam (greedy: one path).
    assert all(h.score <= lp + 1e-4 for h, lp in zip(beam + greedy, beam_lp.tolist() + greedy_lp.tolist()))


# ----------------------------------------------------------------------------- CTC
def brute_force_ctc(log_probs: torch.Tensor) -> tuple[dict[tuple[int, ...], float], tuple[list[int], float]]:
    """log_probs (T, V): log-prob of every labelling (summed over its alignments), and the best single
    path (collapsed labelling, its log-prob)."""
    num_frames, vocab = log_probs.shape
    sums: dict[tuple[int, ...], list[float]] = {}
    best_path, best_score = None, -math.inf
    for path in itertools.product(range(vocab), repeat=num_frames):
        score = float(sum(log_probs[t, s] for t, s in enumerate(path)))
        labelling = tuple(s for i, s in enumerate(path) if s != 0 and (i == 0 or path[i - 1] != s))
        sums.setdefault(labelling, []).append(score)
        if score > best_score:
            best_path, best_score = labelling, score
    totals = {k: float(torch.logsumexp(torch.tensor(v, dtype=torch.float64), 0)) for k, v in sums.items()}
    return totals, (list(best_path), best_score)


def random_ctc_log_probs(seed: int, n: int, num_frames: int, vocab: int, scale: float = 1.5) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, num_frames, vocab, generator=generator, dtype=torch.float64)).log_softmax(-1)


@pytest.mark.parametrize("seed", range(4))
def test_ctc_greedy_is_the_best_path(seed):
    log_probs = random_ctc_log_probs(seed, 1, 5, 3)
    _, (best_labelling, best_score) = brute_force_ctc(log_probs[0])
    hyp = ctc_greedy_search(log_probs, torch.tensor([5]))[0]
    assert hyp.tokens == best_labelling
    assert hyp.score == pytest.approx(best_score, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_ctc_prefix_search_with_large_beam_equals_enumeration(seed):
    """Vocabulary of 2 tokens + blank and T <= 5: at most 63 prefixes, so beam 64 is exact. The batch
    pads the shorter utterance, whose search must ignore the padding."""
    scale = [0.5, 1.0, 2.0][seed % 3]
    log_probs = random_ctc_log_probs(seed, 2, 5, 3, scale)
    lens = torch.tensor([5, 4])
    hyps = ctc_prefix_beam_search(log_probs, lens, beam=64, tokens_per_frame=3)
    for i, n in enumerate(lens.tolist()):
        totals, _ = brute_force_ctc(log_probs[i, :n])
        best = max(totals, key=totals.get)
        assert tuple(hyps[i].tokens) == best
        assert hyps[i].score == pytest.approx(totals[best], abs=1e-9)


def test_ctc_prefix_search_beam_one_equals_greedy_on_peaked_outputs(trained):
    """Beam-1 prefix search agrees with greedy when every frame's top symbol has probability above
    1/sqrt(2) (then neither a collapsed repeat nor a held prefix can overtake the best path's choice);
    trained CTC outputs are like that. Below it they may differ (prefix search sums alignments)."""
    generator = torch.Generator().manual_seed(0)
    logits = 0.5 * torch.randn(6, 12, 4, generator=generator, dtype=torch.float64)
    top = torch.randint(0, 4, (6, 12), generator=generator)
    logits.scatter_add_(2, top.unsqueeze(-1), torch.full((6, 12, 1), 4.0, dtype=torch.float64))
    log_probs = logits.log_softmax(-1)
    assert log_probs.max(-1).values.exp().min() > 2**-0.5
    lens = torch.tensor([12, 11, 7, 3, 12, 1])
    prefix, greedy = ctc_prefix_beam_search(log_probs, lens, beam=1), ctc_greedy_search(log_probs, lens)
    assert [h.tokens for h in prefix] == [h.tokens for h in greedy]
    assert [h.timestamps for h in prefix] == [h.timestamps for h in greedy]
    # The prefix score sums alignments, the best path among them.
    assert all(p.score >= g.score - 1e-12 for p, g in zip(prefix, greedy))
    assert any(p.score > g.score + 1e-3 for p, g in zip(prefix, greedy))
    model, enc_out, enc_lens, tokens = trained
    with torch.no_grad():
        ctc_log_probs = model.ctc_log_probs(enc_out)
    greedy = ctc_greedy_search(ctc_log_probs, enc_lens)
    assert [h.tokens for h in ctc_prefix_beam_search(ctc_log_probs, enc_lens, beam=1)] == [h.tokens for h in greedy]
    assert sum(h.tokens == ref for h, ref in zip(greedy, tokens)) >= 0.95 * len(tokens)


# ----------------------------------------------------------------------------- all searches
def test_timestamps_are_monotone_and_within_frames(trained, untrained):
    model, enc_out, enc_lens, _ = trained
    with torch.no_grad():
        ctc_log_probs = model.ctc_log_probs(enc_out)
    results = {
        "greedy": greedy_search(model, enc_out, enc_lens),
        "greedy3": greedy_search(untrained[0], untrained[1], untrained[2], max_sym_per_frame=3),
        "beam": modified_beam_search(model, enc_out, enc_lens, beam=4),
        "ctc_greedy": ctc_greedy_search(ctc_log_probs, enc_lens),
        "ctc_prefix": ctc_prefix_beam_search(ctc_log_probs, enc_lens, beam=4),
    }
    for name, hyps in results.items():
        lens = (untrained[2] if name == "greedy3" else enc_lens).tolist()
        for hyp, n in zip(hyps, lens):
            assert len(hyp.timestamps) == len(hyp.tokens), name
            assert all(0 <= t < n for t in hyp.timestamps), name
            steps = [b - a for a, b in zip(hyp.timestamps, hyp.timestamps[1:])]
            assert all(s >= (0 if name == "greedy3" else 1) for s in steps), (name, hyp.timestamps)
            assert hyp.score <= 0.0 and all(0 < t < VOCAB for t in hyp.tokens), name


def test_bad_arguments_raise():
    model = tiny_model()
    enc_out = torch.randn(2, 5, 32)
    with pytest.raises(ValueError, match="lengths"):
        greedy_search(model, enc_out, torch.tensor([5, 6]))
    with pytest.raises(ValueError, match="max_sym_per_frame"):
        greedy_search(model, enc_out, torch.tensor([5, 5]), max_sym_per_frame=0)
    with pytest.raises(ValueError, match="beam"):
        modified_beam_search(model, enc_out, torch.tensor([5, 5]), beam=0)
    with pytest.raises(ValueError, match="expected"):
        ctc_prefix_beam_search(torch.randn(5, 3), torch.tensor([5]))
