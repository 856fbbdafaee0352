"""Losses against independent references: brute-force enumeration of every alignment on tiny lattices
(values and autograd gradients), a plain Python-loop DP for the full RNN-T loss, and torch's CTC."""

from __future__ import annotations

import itertools
import logging

import pytest
import torch

from asr.losses import (
    ctc_loss,
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    mutual_information_recursion,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

RNNT_TYPES = ["regular", "modified", "constrained"]
DTYPE = torch.float64
# B=3 with different lengths; S=3, T=4 keeps the enumeration tiny (at most 20 alignments).
S, T, C = 3, 4, 5
BOUNDARY = torch.tensor([[0, 0, 3, 4], [0, 0, 2, 3], [0, 0, 1, 4]])


# ----------------------------------------------------------------------------------------------
# Brute-force references
# ----------------------------------------------------------------------------------------------
def alignments(num_symbols: int, num_frames: int, rnnt_type: str):
    """Every RNN-T alignment as a list of moves ``(kind, s, t)``, kind "sym" or "blank".

    regular: on each frame emit any number of symbols, then one blank (moves to the next frame).
    modified/constrained: on each frame emit either one symbol or one blank; both end the frame.
    """
    if rnnt_type == "regular":
        frame_choices = itertools.combinations_with_replacement(range(num_frames), num_symbols)
    else:
        frame_choices = itertools.combinations(range(num_frames), num_symbols)
    for frames_of_symbols in frame_choices:
        moves, s = [], 0
        for t in range(num_frames):
            emitted = frames_of_symbols.count(t)
            for _ in range(emitted):
                moves.append(("sym", s, t))
                s += 1
            if rnnt_type == "regular" or emitted == 0:
                moves.append(("blank", s, t))
        yield moves


def brute_force_rnnt(logp, symbols, boundary, rnnt_type, delay_penalty=0.0):
    """Per-sequence loss ``(B,)`` = -logsumexp over all alignments of the summed log-probs.

    ``logp(b, s, t)`` returns the ``(C,)`` log-probabilities at lattice node ``(s, t)``, or None when
    the node is off the (pruned) lattice, which removes every alignment through it.
    """
    losses = []
    for b, (_, _, s_end, t_end) in enumerate(boundary.tolist()):
        path_scores = []
        for moves in alignments(s_end, t_end, rnnt_type):
            score = torch.zeros((), dtype=DTYPE)
            for kind, s, t in moves:
                lp = logp(b, s, t)
                if lp is None:
                    break
                if kind == "blank":
                    score = score + lp[0]
                    continue
                score = score + lp[symbols[b, s]] + delay_penalty * ((t_end - 1) / 2 - t)
                if rnnt_type == "constrained":  # the symbol is scored with the blank after it
                    lp_next = logp(b, s + 1, t)
                    if lp_next is None:
                        break
                    score = score + lp_next[0]
            else:
                path_scores.append(score)
        if path_scores:
            losses.append(-torch.logsumexp(torch.stack(path_scores), dim=0))
        else:
            losses.append(torch.tensor(float("inf"), dtype=DTYPE))
    return torch.stack(losses)


def brute_force_mutual_information(px, py, boundary):
    """log-sum over all monotone paths from (s_begin, t_begin) to (s_end, t_end) of px/py moves."""
    modified = px.shape[2] == py.shape[2]
    scores = []
    for b, (s_begin, t_begin, s_end, t_end) in enumerate(boundary.tolist()):
        num_x, num_t = s_end - s_begin, t_end - t_begin
        # x moves advance t too in the modified lattice, so only num_t - num_x are pure y moves.
        num_moves = num_t if modified else num_x + num_t
        path_scores = []
        for x_positions in itertools.combinations(range(num_moves), num_x):
            s, t, score = s_begin, t_begin, torch.zeros((), dtype=DTYPE)
            for i in range(num_moves):
                if i in x_positions:
                    score = score + px[b, s, t]
                    s, t = s + 1, t + (1 if modified else 0)
                else:
                    score = score + py[b, s, t]
                    t += 1
            path_scores.append(score)
        scores.append(torch.logsumexp(torch.stack(path_scores), dim=0))
    return torch.stack(scores)


def joint_logp(logits):
    log_probs = logits.log_softmax(dim=-1)
    return lambda b, s, t: log_probs[b, t, s]


def smoothed_logp(lm, am, lm_only_scale, am_only_scale):
    """The smoothed lattice log-probs written out directly (k2's definition)."""
    joint = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(dim=-1)  # (B, T, S+1, C)
    lm_only = lm.log_softmax(dim=-1)  # (B, S+1, C)
    unigram = lm.softmax(dim=-1).mean(dim=(0, 1))  # (C,)
    am_only = (am + unigram.log()).log_softmax(dim=-1)  # (B, T, C)
    combined = 1 - lm_only_scale - am_only_scale

    def logp(b, s, t):
        return combined * joint[b, t, s] + lm_only_scale * lm_only[b, s] + am_only_scale * am_only[b, t]

    return logp


def random_inputs(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DTYPE).requires_grad_()


def random_symbols(seed, batch=3, num_symbols=S, classes=C):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, classes, (batch, num_symbols), generator=g)


def assert_loss_and_grads_match(ours, reference, inputs):
    """Values, and gradients under a non-uniform upstream gradient."""
    torch.testing.assert_close(ours, reference, rtol=1e-9, atol=1e-9)
    weights = torch.tensor([1.0, -0.5, 2.0], dtype=DTYPE)[: ours.shape[0]]
    ours_grads = torch.autograd.grad((ours * weights).sum(), inputs)
    reference_grads = torch.autograd.grad((reference * weights).sum(), inputs)
    for ours_grad, reference_grad in zip(ours_grads, reference_grads):
        torch.testing.assert_close(ours_grad, reference_grad, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# The recursion itself
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modified", [False, True])
def test_mutual_information_matches_brute_force(modified):
    px = random_inputs(0, 3, S, T if modified else T + 1)
    py = random_inputs(1, 3, S + 1, T)
    # Includes non-zero begins and an empty row: k2 allows both.
    rows = [[0, 0, 3, 4], [1, 1, 3, 4], [0, 2, 2, 4]] if modified else [[0, 0, 3, 4], [1, 0, 2, 3], [2, 1, 2, 1]]
    boundary = torch.tensor(rows)
    ours = mutual_information_recursion(px, py, boundary)
    reference = brute_force_mutual_information(px, py, boundary)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)
    ours_grads = torch.autograd.grad((ours * torch.tensor([1.0, -0.5, 2.0], dtype=DTYPE)).sum(), (px, py))
    reference_grads = torch.autograd.grad(
        (reference * torch.tensor([1.0, -0.5, 2.0], dtype=DTYPE)).sum(), (px, py), retain_graph=True
    )
    for a, b in zip(ours_grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)

    # return_grad gives d(scores.sum())/d(px, py), i.e. the occupation probabilities.
    scores, (px_grad, py_grad) = mutual_information_recursion(px.detach(), py.detach(), boundary, return_grad=True)
    reference_px_grad, reference_py_grad = torch.autograd.grad(reference.sum(), (px, py))
    torch.testing.assert_close(scores, reference.detach())
    torch.testing.assert_close(px_grad, reference_px_grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(py_grad, reference_py_grad, rtol=1e-9, atol=1e-12)


def test_mutual_information_without_boundary_and_in_float32():
    px = random_inputs(2, 2, S, T + 1)
    py = random_inputs(3, 2, S + 1, T)
    full = torch.tensor([[0, 0, S, T]] * 2)
    torch.testing.assert_close(mutual_information_recursion(px, py), brute_force_mutual_information(px, py, full))
    scores32 = mutual_information_recursion(px.detach().float(), py.detach().float())
    assert scores32.dtype == torch.float32
    torch.testing.assert_close(scores32, mutual_information_recursion(px.detach(), py.detach()).float())


def test_mutual_information_without_a_path_is_minus_inf_with_zero_grad():
    # Modified lattice: 3 symbols cannot fit in 2 frames.
    px = random_inputs(4, 1, 3, 4)
    py = random_inputs(5, 1, 4, 4)
    boundary = torch.tensor([[0, 0, 3, 2]])
    scores, (px_grad, py_grad) = mutual_information_recursion(px.detach(), py.detach(), boundary, return_grad=True)
    assert scores.item() == float("-inf")
    assert px_grad.abs().sum() == 0 and py_grad.abs().sum() == 0


def test_mutual_information_rejects_bad_shapes_and_boundaries():
    px, py = torch.zeros(2, 3, 5), torch.zeros(2, 4, 4)
    with pytest.raises(ValueError, match="shape"):
        mutual_information_recursion(px, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="boundary"):
        mutual_information_recursion(px, py, torch.tensor([[0, 0, 4, 4], [0, 0, 3, 4]]))


# ----------------------------------------------------------------------------------------------
# Full, simple and smoothed losses
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
@pytest.mark.parametrize("delay_penalty", [0.0, 0.25])
def test_rnnt_loss_matches_brute_force(rnnt_type, delay_penalty):
    logits = random_inputs(10, 3, T, S + 1, C)
    symbols = random_symbols(11)
    ours = rnnt_loss(logits, symbols, 0, BOUNDARY, rnnt_type=rnnt_type, delay_penalty=delay_penalty, reduction="none")
    reference = brute_force_rnnt(joint_logp(logits), symbols, BOUNDARY, rnnt_type, delay_penalty)
    assert_loss_and_grads_match(ours, reference, (logits,))


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_simple_matches_brute_force(rnnt_type):
    lm, am = random_inputs(20, 3, S + 1, C), random_inputs(21, 3, T, C)
    symbols = random_symbols(22)
    ours = rnnt_loss_simple(lm, am, symbols, 0, BOUNDARY, rnnt_type=rnnt_type, reduction="none")
    reference = brute_force_rnnt(joint_logp(am.unsqueeze(2) + lm.unsqueeze(1)), symbols, BOUNDARY, rnnt_type)
    assert_loss_and_grads_match(ours, reference, (lm, am))


def test_rnnt_loss_simple_delay_penalty_and_return_grad():
    lm, am = random_inputs(23, 3, S + 1, C), random_inputs(24, 3, T, C)
    symbols = random_symbols(25)
    ours, (px_grad, py_grad) = rnnt_loss_simple(
        lm, am, symbols, 0, BOUNDARY, delay_penalty=0.5, reduction="none", return_grad=True
    )
    reference = brute_force_rnnt(joint_logp(am.unsqueeze(2) + lm.unsqueeze(1)), symbols, BOUNDARY, "regular", 0.5)
    assert_loss_and_grads_match(ours, reference, (lm, am))
    assert px_grad.shape == (3, S, T + 1) and py_grad.shape == (3, S + 1, T)
    # Occupation probabilities: every path crosses each frame boundary exactly once with a blank.
    for b, (_, _, s_end, t_end) in enumerate(BOUNDARY.tolist()):
        torch.testing.assert_close(py_grad[b, :, :t_end].sum(0), torch.ones(t_end, dtype=DTYPE))
        torch.testing.assert_close(px_grad[b].sum(), torch.tensor(float(s_end), dtype=DTYPE))


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_smoothed_matches_brute_force(rnnt_type):
    lm, am = random_inputs(30, 3, S + 1, C), random_inputs(31, 3, T, C)
    symbols = random_symbols(32)
    ours = rnnt_loss_smoothed(lm, am, symbols, 0, 0.2, 0.15, BOUNDARY, rnnt_type=rnnt_type, reduction="none")
    reference = brute_force_rnnt(smoothed_logp(lm, am, 0.2, 0.15), symbols, BOUNDARY, rnnt_type)
    assert_loss_and_grads_match(ours, reference, (lm, am))


def test_rnnt_loss_smoothed_with_zero_scales_equals_simple():
    lm, am = random_inputs(33, 3, S + 1, C), random_inputs(34, 3, T, C)
    symbols = random_symbols(35)
    smoothed, smoothed_grads = rnnt_loss_smoothed(
        lm, am, symbols, 0, 0.0, 0.0, BOUNDARY, reduction="none", return_grad=True
    )
    simple, simple_grads = rnnt_loss_simple(lm, am, symbols, 0, BOUNDARY, reduction="none", return_grad=True)
    torch.testing.assert_close(smoothed, simple, rtol=0, atol=0)
    for a, b in zip(smoothed_grads, simple_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def python_loop_rnnt(logits, symbols, lengths, rnnt_type):
    """Textbook alpha recursion over (t, s), one cell at a time."""
    log_probs = logits.log_softmax(dim=-1)
    losses = []
    for b, (num_frames, num_symbols) in enumerate(lengths):
        lp, y = log_probs[b], symbols[b]
        # alpha[t][s]: s labels emitted and at frame t (regular), or after t frames (modified);
        # None marks an unreachable cell (keeps -inf out of autograd).
        rows = num_frames if rnnt_type == "regular" else num_frames + 1
        alpha = [[None] * (num_symbols + 1) for _ in range(rows)]
        alpha[0][0] = torch.zeros((), dtype=DTYPE)
        for t in range(rows):
            for s in range(num_symbols + 1):
                if t == 0 and s == 0:
                    continue
                terms = []
                if t > 0 and alpha[t - 1][s] is not None:
                    terms.append(alpha[t - 1][s] + lp[t - 1, s, 0])
                if rnnt_type == "regular" and s > 0 and alpha[t][s - 1] is not None:
                    terms.append(alpha[t][s - 1] + lp[t, s - 1, y[s - 1]])
                if rnnt_type == "modified" and s > 0 and t > 0 and alpha[t - 1][s - 1] is not None:
                    terms.append(alpha[t - 1][s - 1] + lp[t - 1, s - 1, y[s - 1]])
                if terms:
                    alpha[t][s] = torch.logsumexp(torch.stack(terms), dim=0)
        if rnnt_type == "regular":
            losses.append(-(alpha[num_frames - 1][num_symbols] + lp[num_frames - 1, num_symbols, 0]))
        else:
            losses.append(-alpha[num_frames][num_symbols])
    return torch.stack(losses)


@pytest.mark.parametrize("rnnt_type", ["regular", "modified"])
def test_rnnt_loss_matches_python_loop_dp(rnnt_type):
    num_frames, num_symbols, classes = 9, 5, 7
    logits = random_inputs(40, 3, num_frames, num_symbols + 1, classes)
    symbols = random_symbols(41, num_symbols=num_symbols, classes=classes)
    lengths = [(9, 5), (7, 3), (5, 5)]
    boundary = torch.tensor([[0, 0, s, t] for t, s in lengths])
    ours = rnnt_loss(logits, symbols, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    reference = python_loop_rnnt(logits, symbols, lengths, rnnt_type)
    assert_loss_and_grads_match(ours, reference, (logits,))


def test_rnnt_loss_float32_agrees_with_float64():
    logits = random_inputs(42, 2, 20, 7, 11).detach()
    symbols = random_symbols(43, batch=2, num_symbols=6, classes=11)
    loss64 = rnnt_loss(logits, symbols, 0, reduction="none")
    loss32 = rnnt_loss(logits.float(), symbols, 0, reduction="none")
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), loss64, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_name", ["full", "simple", "smoothed", "pruned"])
def test_reductions(loss_name):
    lm, am = random_inputs(50, 3, S + 1, C), random_inputs(51, 3, T, C)
    logits = (am.unsqueeze(2) + lm.unsqueeze(1)).detach()
    symbols = random_symbols(52)
    ranges = torch.arange(S + 1).expand(3, T, S + 1)
    call = {
        "full": lambda r: rnnt_loss(logits, symbols, 0, BOUNDARY, reduction=r),
        "simple": lambda r: rnnt_loss_simple(lm, am, symbols, 0, BOUNDARY, reduction=r),
        "smoothed": lambda r: rnnt_loss_smoothed(lm, am, symbols, 0, boundary=BOUNDARY, reduction=r),
        "pruned": lambda r: rnnt_loss_pruned(logits, symbols, ranges, 0, BOUNDARY, reduction=r),
    }[loss_name]
    per_sequence = call("none")
    assert per_sequence.shape == (3,) and bool((per_sequence > 0).all())
    torch.testing.assert_close(call("sum"), per_sequence.sum())
    torch.testing.assert_close(call("mean"), per_sequence.mean())
    with pytest.raises(ValueError, match="reduction"):
        call("average")


def test_unknown_rnnt_type_is_rejected():
    logits = torch.zeros(1, 2, 2, 3)
    with pytest.raises(ValueError, match="rnnt_type"):
        rnnt_loss(logits, torch.ones(1, 1, dtype=torch.int64), 0, rnnt_type="hat")


# ----------------------------------------------------------------------------------------------
# Pruning
# ----------------------------------------------------------------------------------------------
def pruned_logp(logits, ranges):
    log_probs = logits.log_softmax(dim=-1)

    def logp(b, s, t):
        offset = s - int(ranges[b, t, 0])
        return log_probs[b, t, offset] if 0 <= offset < ranges.shape[2] else None

    return logp


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_rnnt_loss_pruned_matches_brute_force(rnnt_type):
    s_range = 2
    # Bands that allow a path for every lattice type: start at 0, rise by at most 1 a frame,
    # and cover S_b on the last frame T_b - 1.
    starts = torch.tensor([[0, 1, 1, 2], [0, 0, 1, 1], [0, 0, 0, 0]])
    ranges = starts.unsqueeze(-1) + torch.arange(s_range)
    logits = random_inputs(60, 3, T, s_range, C)
    symbols = random_symbols(61)
    ours = rnnt_loss_pruned(logits, symbols, ranges, 0, BOUNDARY, rnnt_type=rnnt_type, reduction="none")
    reference = brute_force_rnnt(pruned_logp(logits, ranges), symbols, BOUNDARY, rnnt_type)
    assert bool(torch.isfinite(reference).all())
    assert_loss_and_grads_match(ours, reference, (logits,))


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_pruned_loss_with_full_band_equals_full_loss(rnnt_type):
    lm, am = random_inputs(70, 3, S + 1, C), random_inputs(71, 3, T, C)
    symbols = random_symbols(72)
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, 0, BOUNDARY, rnnt_type=rnnt_type, return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, BOUNDARY, s_range=S + 3)
    assert ranges.shape == (3, T, S + 1)
    assert bool((ranges == torch.arange(S + 1)).all())

    # A small joiner (tanh + linear), run on the band and on the whole lattice.
    weight = random_inputs(73, C, C)
    am_pruned, lm_pruned = do_rnnt_pruning(am, lm, ranges)
    pruned_logits = torch.tanh(am_pruned + lm_pruned) @ weight
    full_logits = torch.tanh(am.unsqueeze(2) + lm.unsqueeze(1)) @ weight
    pruned = rnnt_loss_pruned(pruned_logits, symbols, ranges, 0, BOUNDARY, rnnt_type=rnnt_type, reduction="none")
    full = rnnt_loss(full_logits, symbols, 0, BOUNDARY, rnnt_type=rnnt_type, reduction="none")
    assert_loss_and_grads_match(pruned, full, (lm, am, weight))


def test_do_rnnt_pruning_gathers_label_positions():
    am, lm = torch.randn(2, 4, 3), torch.randn(2, 6, 5)
    ranges = torch.tensor([[[0, 1], [1, 2], [3, 4], [4, 5]], [[0, 1], [0, 1], [2, 3], [2, 3]]])
    am_pruned, lm_pruned = do_rnnt_pruning(am, lm, ranges)
    assert am_pruned.shape == (2, 4, 2, 3) and lm_pruned.shape == (2, 4, 2, 5)
    for b, t, i in itertools.product(range(2), range(4), range(2)):
        assert torch.equal(lm_pruned[b, t, i], lm[b, ranges[b, t, i]])
        assert torch.equal(am_pruned[b, t, i], am[b, t])


# s_range 1 is only meaningful for "modified": "regular" rejects it (test_prune_range_too_small_is_rejected)
# and "constrained" scores the blank after a symbol one row up, so it needs s_range >= 2.
@pytest.mark.parametrize(
    "rnnt_type, s_range",
    [(t, s) for t in RNNT_TYPES for s in (1, 2, 3, 4) if s > 1 or t == "modified"],
)
def test_prune_ranges_are_valid(rnnt_type, s_range):
    num_frames, num_symbols = 12, 6
    lm, am = random_inputs(80, 3, num_symbols + 1, 9), random_inputs(81, 3, num_frames, 9)
    symbols = random_symbols(82, num_symbols=num_symbols, classes=9)
    boundary = torch.tensor([[0, 0, 6, 12], [0, 0, 2, 9], [0, 0, 5, 7]])
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type=rnnt_type, return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
    assert ranges.shape == (3, num_frames, s_range) and ranges.dtype == torch.int64
    assert bool((ranges[..., 1:] - ranges[..., :-1] == 1).all())
    starts = ranges[..., 0]
    max_rise = 2 if rnnt_type != "regular" else s_range
    for b, (_, _, s_end, t_end) in enumerate(boundary.tolist()):
        last_start = max(s_end - s_range + 1, 0)
        rise = starts[b, 1:] - starts[b, :-1]
        assert starts[b, 0] == 0
        assert bool((rise >= 0).all()) and bool((rise < max_rise).all())
        assert bool((starts[b] <= last_start).all())
        assert bool((starts[b, t_end - 1 :] == last_start).all())  # the last label is reachable
        assert int(ranges[b].max()) <= max(s_end, s_range - 1)
    # The pruned loss over these ranges sums a subset of the paths: never below the full loss.
    logits = (am.unsqueeze(2) + lm.unsqueeze(1)).detach()
    am_pruned, lm_pruned = do_rnnt_pruning(am.detach(), lm.detach(), ranges)
    pruned = rnnt_loss_pruned(
        am_pruned + lm_pruned, symbols, ranges, 0, boundary, rnnt_type=rnnt_type, reduction="none"
    )
    full = rnnt_loss(logits, symbols, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    assert bool(torch.isfinite(pruned).all())
    assert bool((pruned >= full - 1e-9).all())


def test_prune_range_too_small_is_rejected():
    with pytest.raises(ValueError, match="s_range"):
        get_rnnt_prune_ranges(torch.zeros(1, 2, 4), torch.zeros(1, 3, 3), torch.tensor([[0, 0, 2, 3]]), 1)


def test_prune_ranges_contain_the_best_path_of_a_peaked_example():
    """Labels 1..4 emitted on frames 1, 3, 6, 8 of 10; am and lm make that alignment dominant."""
    num_frames, symbols_list, emit_frames, classes = 10, [1, 2, 3, 4], [1, 3, 6, 8], 6
    num_symbols = len(symbols_list)
    am = torch.zeros(1, num_frames, classes, dtype=DTYPE)
    am[0, :, 0] = 9.0
    for symbol, frame in zip(symbols_list, emit_frames):
        am[0, frame, symbol] = 18.0
    lm = torch.full((1, num_symbols + 1, classes), -24.0, dtype=DTYPE)
    lm[0, :, 0] = 0.0
    for s, symbol in enumerate(symbols_list):
        lm[0, s, symbol] = 6.0
    symbols = torch.tensor([symbols_list])
    boundary = torch.tensor([[0, 0, num_symbols, num_frames]])

    log_probs = (am.unsqueeze(2) + lm.unsqueeze(1)).log_softmax(dim=-1)
    best_score, best_path = max(
        (sum(float(log_probs[0, t, s, 0 if kind == "blank" else symbols_list[s]]) for kind, s, t in moves), moves)
        for moves in alignments(num_symbols, num_frames, "regular")
    )
    assert [t for kind, _, t in best_path if kind == "sym"] == emit_frames
    assert best_score > -1.0  # peaked: the best path holds most of the probability

    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    for s_range in (2, 3):
        ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)
        for _, s, t in best_path:
            assert int(ranges[0, t, 0]) <= s <= int(ranges[0, t, -1]), (s_range, s, t, ranges[0, :, 0])
        am_pruned, lm_pruned = do_rnnt_pruning(am, lm, ranges)
        pruned = rnnt_loss_pruned(am_pruned + lm_pruned, symbols, ranges, 0, boundary)
        full = rnnt_loss(am.unsqueeze(2) + lm.unsqueeze(1), symbols, 0, boundary)
        # The band holds the best path (and less than every path).
        assert full <= pruned <= -best_score


# ----------------------------------------------------------------------------------------------
# CTC
# ----------------------------------------------------------------------------------------------
def _ctc_case():
    g = torch.Generator().manual_seed(90)
    log_probs = torch.randn(3, 12, 6, generator=g).log_softmax(-1).requires_grad_()
    targets = torch.randint(1, 6, (3, 4), generator=g)
    return log_probs, targets, torch.tensor([12, 10, 8]), torch.tensor([4, 3, 2])


@pytest.mark.parametrize("reduction", ["sum", "mean", "none"])
def test_ctc_loss_equals_torch(reduction):
    log_probs, targets, input_lengths, target_lengths = _ctc_case()
    ours = ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction=reduction)
    expected = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=0, reduction=reduction
    )
    torch.testing.assert_close(ours, expected)
    grad_ours = torch.autograd.grad(ours.sum(), log_probs)[0]
    grad_expected = torch.autograd.grad(expected.sum(), log_probs)[0]
    torch.testing.assert_close(grad_ours, grad_expected)


def test_ctc_loss_counts_and_zeroes_infinite_utterances(caplog):
    log_probs, targets, _, target_lengths = _ctc_case()
    input_lengths = torch.tensor([12, 2, 8])  # 2 frames cannot carry 3 labels
    with caplog.at_level(logging.WARNING, logger="asr.losses.ctc"):
        losses = ctc_loss(log_probs.double(), targets, input_lengths, target_lengths, reduction="none")
    assert "1 of 3 utterances" in caplog.text
    assert losses.dtype == torch.float32
    assert losses[1] == 0 and bool(torch.isfinite(losses).all())
    grad = torch.autograd.grad(losses.sum(), log_probs)[0]
    assert bool(torch.isfinite(grad).all()) and grad[1].abs().sum() == 0
    finite = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1)[:, [0, 2]],
        targets[[0, 2]],
        input_lengths[[0, 2]],
        target_lengths[[0, 2]],
        reduction="none",
    )
    torch.testing.assert_close(losses[[0, 2]], finite)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="asr.losses.ctc"):
        ctc_loss(log_probs, targets, torch.tensor([12, 10, 8]), target_lengths)
    assert "infinite" not in caplog.text


@pytest.mark.parametrize("rnnt_type", RNNT_TYPES)
def test_empty_label_sequences_cost_one_blank_per_frame(rnnt_type):
    logits = random_inputs(100, 2, T, 1, C)
    no_symbols = torch.zeros(2, 0, dtype=torch.int64)
    boundary = torch.tensor([[0, 0, 0, T], [0, 0, 0, 2]])
    expected = torch.stack([-logits[b, :t_end, 0].log_softmax(-1)[:, 0].sum() for b, t_end in enumerate([T, 2])])
    ours = rnnt_loss(logits, no_symbols, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    assert_loss_and_grads_match(ours, expected, (logits,))
    lm, am = random_inputs(101, 2, 1, C), random_inputs(102, 2, T, C)
    _, (px_grad, py_grad) = rnnt_loss_simple(lm, am, no_symbols, 0, boundary, rnnt_type=rnnt_type, return_grad=True)
    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, 4)
    assert ranges.shape == (2, T, 1) and bool((ranges == 0).all())
    pruned = rnnt_loss_pruned(logits, no_symbols, ranges, 0, boundary, rnnt_type=rnnt_type, reduction="none")
    torch.testing.assert_close(pruned, expected)
