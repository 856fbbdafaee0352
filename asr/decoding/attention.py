"""Search with the attention decoder (AED): beam search, joint CTC/attention scoring, n-best rescoring.

- :func:`attention_beam_search`: beam search over the attention decoder, all hypotheses of an utterance in
  one decoder call per step; optionally joint with CTC (ESPnet's ``(1 - λ)·attention + λ·CTC``, the CTC
  term being the prefix score of :class:`CtcPrefixScorer`) and shallow fusion with
  :class:`asr.decoding.scorers.Scorer` s.
- :func:`attention_rescore`: picks from an n-best list (CTC prefix beam search, transducer beam search)
  by the attention decoder's log-probability plus, optionally, λ·CTC log-likelihood and a weight times
  the first pass's score (icefall/WeNet attention rescoring).

A hypothesis's attention score is ``Σ log p(y_i | y_<i, x)`` over its tokens and the final ``<sos/eos>``.
The AED has no frame alignment: hypotheses from :func:`attention_beam_search` have empty ``timestamps``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from asr.decoding.hypothesis import Hypothesis
from asr.decoding.scorers import Scorer
from asr.models.aed import AttentionDecoder

__all__ = [
    "CtcPrefixScorer",
    "attention_beam_search",
    "attention_rescore",
    "attention_sequence_scores",
    "ctc_sequence_log_prob",
]

_NEG_INF = -math.inf


def _check_batch(memory: Tensor, memory_lens: Tensor) -> None:
    if memory.ndim != 3 or memory_lens.ndim != 1 or memory.size(0) != memory_lens.size(0):
        raise ValueError(
            f"expected memory (N, T, C) and memory_lens (N,), got {tuple(memory.shape)}, {tuple(memory_lens.shape)}"
        )


class CtcPrefixScorer:
    """CTC prefix scores of one utterance (ESPnet's ``CTCPrefixScore``), batched over hypotheses.

    The prefix score of a labelling prefix ``h`` is ``log P(the CTC labelling starts with h | x)``: the
    probability, summed over all alignments, that the collapsed output begins with ``h``. The state of a
    hypothesis is ``r`` ``(T, 2)``: the log-probabilities that frames ``0..t`` emit exactly ``h``, ending in
    a non-blank (column 0) or in blank (column 1). The end of a hypothesis scores
    ``log P(labelling = h | x) = logaddexp(r[T-1])``.

    Args:
        log_probs: ``(T, V)`` CTC log-probabilities of the valid frames.
        blank_id: blank id.
    """

    def __init__(self, log_probs: Tensor, blank_id: int = 0) -> None:
        if log_probs.ndim != 2 or log_probs.size(0) == 0:
            raise ValueError(f"expected CTC log-probabilities (T, V) with T > 0, got {tuple(log_probs.shape)}")
        self.log_probs = log_probs.detach().double()
        self.blank_id = blank_id

    def initial_state(self) -> Tensor:
        """``r`` ``(T, 2)`` of the empty prefix: only blanks so far."""
        r = torch.full((self.log_probs.size(0), 2), _NEG_INF, dtype=torch.float64, device=self.log_probs.device)
        r[:, 1] = torch.cumsum(self.log_probs[:, self.blank_id], dim=0)
        return r

    def final_scores(self, states: Tensor) -> Tensor:
        """``(M,)`` ``log P(labelling = h | x)`` of ``M`` hypotheses with states ``(M, T, 2)``."""
        return torch.logaddexp(states[:, -1, 0], states[:, -1, 1])

    def extend(self, states: Tensor, last_tokens: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Prefix scores and states of every extension ``h + c``.

        Args:
            states: ``(M, T, 2)`` of the hypotheses ``h``.
            last_tokens: ``(M,)`` the last token of each ``h``, -1 for the empty prefix.
            candidates: ``(M, K)`` token ids ``c`` (not blank).
        Returns:
            prefix scores ``(M, K)`` and states ``(M, K, T, 2)``.
        """
        x = self.log_probs
        T = x.size(0)
        x_c = x[:, candidates]  # (T, M, K)
        x_blank = x[:, self.blank_id]  # (T,)
        r_n, r_b = states[:, :, 0].T.unsqueeze(-1), states[:, :, 1].T.unsqueeze(-1)  # (T, M, 1)
        # phi[t]: h emitted within frames 0..t such that c may start at t + 1 (a repeat of h's last token
        # needs a blank in between).
        repeat = (candidates == last_tokens.unsqueeze(1)).unsqueeze(0)  # (1, M, K)
        phi = torch.logaddexp(r_b, torch.where(repeat, _NEG_INF, r_n))  # (T, M, K)
        empty = (last_tokens < 0).unsqueeze(1)  # (M, 1)
        new_n = torch.full((T, *candidates.shape), _NEG_INF, dtype=torch.float64, device=x.device)
        new_b = torch.full_like(new_n, _NEG_INF)
        new_n[0] = torch.where(empty, x_c[0], torch.full_like(x_c[0], _NEG_INF))
        for t in range(1, T):
            new_n[t] = torch.logaddexp(new_n[t - 1], phi[t - 1]) + x_c[t]
            new_b[t] = torch.logaddexp(new_b[t - 1], new_n[t - 1]) + x_blank[t]
        # c emitted first at frame t: new_n[0] for t = 0, phi[t - 1] + x_c[t] after.
        starts = torch.cat([new_n[:1], phi[:-1] + x_c[1:]], dim=0)
        scores = torch.logsumexp(starts, dim=0)
        return scores, torch.stack([new_n, new_b], dim=-1).permute(1, 2, 0, 3)


def ctc_sequence_log_prob(log_probs: Tensor, tokens: Sequence[int], blank_id: int = 0) -> float:
    """``log P(labelling = tokens | x)`` of one utterance's CTC log-probabilities ``(T, V)`` (all frames valid)."""
    if len(tokens) == 0:
        return float(log_probs[:, blank_id].double().sum())
    loss = F.ctc_loss(
        log_probs.detach().double().unsqueeze(1),
        torch.as_tensor([list(tokens)], dtype=torch.int64),
        torch.tensor([log_probs.size(0)]),
        torch.tensor([len(tokens)]),
        blank=blank_id,
        reduction="sum",
        zero_infinity=False,
    )
    return -float(loss)


@torch.no_grad()
def attention_sequence_scores(
    decoder: AttentionDecoder, memory: Tensor, memory_len: int, sequences: Sequence[Sequence[int]]
) -> Tensor:
    """Attention log-probabilities ``(K,)`` float64 of ``K`` token sequences of one utterance (each followed
    by ``<sos/eos>``), teacher-forced in one batch.

    Args:
        memory: ``(T, C)`` encoder output of the utterance; memory_len: its valid frames.
    """
    if not sequences:
        return torch.zeros(0, dtype=torch.float64)
    K = len(sequences)
    device = memory.device
    lens = torch.tensor([len(s) for s in sequences], dtype=torch.int64, device=device)
    targets = torch.zeros(K, int(lens.max()), dtype=torch.int64, device=device)
    for i, seq in enumerate(sequences):
        targets[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.int64)
    inputs, input_lens, expected = decoder.add_sos_eos(targets, lens)
    memory = memory.unsqueeze(0).expand(K, -1, -1)
    memory_lens = torch.full((K,), memory_len, dtype=torch.int64, device=device)
    log_probs = decoder(inputs, input_lens, memory, memory_lens).logits.double().log_softmax(dim=-1)
    picked = log_probs.gather(2, expected.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(expected < 0, 0.0).sum(dim=1).cpu()


def _search_one(
    decoder: AttentionDecoder,
    memory: Tensor,
    memory_len: int,
    beam: int,
    max_len: int,
    length_normalize: bool,
    ctc: CtcPrefixScorer | None,
    ctc_weight: float,
    ctc_pre_beam: int,
    scorers: Sequence[Scorer],
    blank_id: int,
) -> Hypothesis:
    device = memory.device
    eos = decoder.sos_eos_id
    V = decoder.vocab_size
    att_weight = 1.0 - ctc_weight if ctc is not None else 1.0
    # The alive hypotheses: decoder inputs (<sos/eos> + tokens), ranking scores, CTC and scorer states.
    prefixes = torch.full((1, 1), eos, dtype=torch.int64, device=device)
    scores = torch.zeros(1, dtype=torch.float64)
    ctc_states = ctc.initial_state().unsqueeze(0) if ctc is not None else None
    ctc_prefix = torch.zeros(1, dtype=torch.float64)
    scorer_states = [[s.init_state() for s in scorers]]
    finished: list[tuple[float, list[int]]] = []  # (ranking score, tokens)
    # Every added term is <= 0 without scorers (log-probabilities, and CTC prefix scores never grow), so
    # once a finished hypothesis beats every alive one, none of their extensions can overtake it.
    exact_stop = not length_normalize and not scorers
    for step in range(max_len + 1):
        M = prefixes.size(0)
        mem = memory.unsqueeze(0).expand(M, -1, -1)
        mem_lens = torch.full((M,), memory_len, dtype=torch.int64, device=device)
        att, _ = decoder.next_log_probs(prefixes, mem, mem_lens)
        added = att_weight * att.double().cpu()  # (M, V)
        for j, scorer in enumerate(scorers):
            states = [row[j] for row in scorer_states]
            term = torch.from_numpy(np.asarray(scorer.score(states), dtype=np.float64)).clone()
            term[:, eos] = torch.tensor([scorer.final(state) for state in states], dtype=torch.float64)
            added += term
        added[:, blank_id] = _NEG_INF
        if ctc is not None:
            # CTC prefix scores of the ctc_pre_beam best tokens by the other terms (ESPnet's pre-beam);
            # the others are out of the search. <sos/eos> scores the whole labelling.
            if ctc_pre_beam >= V:
                candidates = torch.arange(V).expand(M, V)
            else:
                ranked = added.clone()
                ranked[:, eos] = _NEG_INF
                candidates = ranked.topk(ctc_pre_beam, dim=1).indices
            last = prefixes[:, -1].cpu() if step > 0 else torch.full((M,), -1, dtype=torch.int64)
            candidate_scores, candidate_states = ctc.extend(ctc_states, last, candidates)
            ctc_scores = torch.full((M, V), _NEG_INF, dtype=torch.float64).scatter(1, candidates, candidate_scores)
            ctc_scores[:, eos] = ctc.final_scores(ctc_states)
            slot = torch.zeros(M, V, dtype=torch.int64).scatter(
                1, candidates, torch.arange(candidates.size(1)).expand_as(candidates)
            )
            added += ctc_weight * (ctc_scores - ctc_prefix.unsqueeze(1))
        total = scores.unsqueeze(1) + added  # (M, V)
        for m in range(M):
            raw = float(total[m, eos])
            if raw > _NEG_INF:
                tokens = prefixes[m, 1:].tolist()
                ranking = raw / (len(tokens) + 1) if length_normalize else raw
                finished.append((ranking, tokens))
        if step == max_len:
            break
        total[:, eos] = _NEG_INF
        k = min(beam, total.numel())
        best, flat = total.flatten().topk(k)
        keep = best > _NEG_INF
        best, flat = best[keep], flat[keep]
        if best.numel() == 0:
            break
        if exact_stop and finished and max(f[0] for f in finished) >= float(best[0]):
            break
        rows, tokens = flat // V, flat % V
        prefixes = torch.cat([prefixes[rows.to(device)], tokens.to(device).unsqueeze(1)], dim=1)
        scores = best
        if ctc is not None:
            ctc_states = candidate_states[rows, slot[rows, tokens]]
            ctc_prefix = ctc_scores[rows, tokens]
        scorer_states = [
            [scorer.advance(state, int(token)) for scorer, state in zip(scorers, scorer_states[int(row)])]
            for row, token in zip(rows, tokens)
        ]
    if not finished:  # every way to end was forbidden (a scorer or CTC gave -inf)
        return Hypothesis(tokens=[], timestamps=[], score=_NEG_INF)
    ranking, tokens = max(finished, key=lambda f: f[0])
    return Hypothesis(tokens=tokens, timestamps=[], score=ranking)


@torch.no_grad()
def attention_beam_search(
    decoder: AttentionDecoder,
    memory: Tensor,
    memory_lens: Tensor,
    beam: int = 4,
    max_len: int | None = None,
    length_normalize: bool = False,
    ctc_log_probs: Tensor | None = None,
    ctc_weight: float = 0.0,
    ctc_pre_beam: int | None = None,
    scorers: Sequence[Scorer] = (),
    blank_id: int = 0,
) -> list[Hypothesis]:
    """Beam search with the attention decoder, optionally joint with CTC and fused with scorers.

    A hypothesis ranks by ``(1 - λ)·Σ log p_att + λ·log P_ctc(prefix) + Σ scorer terms`` (``λ = ctc_weight``;
    without ``ctc_log_probs`` just the attention term). ``<sos/eos>`` ends a hypothesis: its attention
    log-probability, the CTC log-likelihood of the whole labelling and each scorer's ``final`` are added.
    Blank is never emitted. Each step keeps the ``beam`` best unfinished extensions of all hypotheses;
    the best finished hypothesis is returned. Without length normalisation and scorers the search stops
    as soon as a finished hypothesis beats every unfinished one (no later extension can overtake it);
    otherwise it runs to ``max_len`` tokens.

    Args:
        decoder: the model's attention decoder (``model.attention_decoder``).
        memory: ``(N, T, C)`` encoder output; memory_lens: ``(N,)`` valid frames.
        beam: hypotheses kept per step.
        max_len: most tokens per hypothesis (default: the utterance's valid encoder frames).
        length_normalize: rank finished hypotheses by score / (tokens + 1).
        ctc_log_probs: ``(N, T, V)`` CTC log-probabilities (``model.ctc_log_probs(memory)``) for joint scoring.
        ctc_weight: λ in ``[0, 1]``; needs ``ctc_log_probs`` when > 0.
        ctc_pre_beam: tokens per hypothesis that get a CTC prefix score, the best by the other terms;
            the rest leave the search (default ``int(1.5 * beam)``, ESPnet's; the vocabulary size or more:
            every token, exact but ``O(T·V)`` per hypothesis and step).
        scorers: shallow fusion terms (e.g. :class:`asr.decoding.scorers.TokenLmScorer`).
        blank_id: blank id (never emitted).
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is its ranking score (``-inf``, no tokens, when no
        hypothesis could end), ``timestamps`` empty.
    """
    _check_batch(memory, memory_lens)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if not 0.0 <= ctc_weight <= 1.0:
        raise ValueError(f"ctc_weight must be in [0, 1], got {ctc_weight}")
    if ctc_weight > 0 and ctc_log_probs is None:
        raise ValueError("ctc_weight > 0 needs ctc_log_probs (a model with a CTC head)")
    if ctc_pre_beam is not None and ctc_pre_beam < 1:
        raise ValueError(f"ctc_pre_beam must be >= 1, got {ctc_pre_beam}")
    if max_len is not None and max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    if ctc_log_probs is not None and ctc_log_probs.shape[:2] != memory.shape[:2]:
        raise ValueError(f"ctc_log_probs {tuple(ctc_log_probs.shape)} do not match memory {tuple(memory.shape)}")
    hyps = []
    for i, length in enumerate(memory_lens.tolist()):
        ctc = None
        if ctc_log_probs is not None and ctc_weight > 0:
            ctc = CtcPrefixScorer(ctc_log_probs[i, :length].cpu(), blank_id=blank_id)
        hyps.append(
            _search_one(
                decoder,
                memory[i],
                int(length),
                beam,
                int(length) if max_len is None else max_len,
                length_normalize,
                ctc,
                ctc_weight,
                max(1, int(1.5 * beam)) if ctc_pre_beam is None else ctc_pre_beam,
                scorers,
                blank_id,
            )
        )
    return hyps


@torch.no_grad()
def attention_rescore(
    decoder: AttentionDecoder,
    memory: Tensor,
    memory_lens: Tensor,
    nbest: Sequence[Sequence[Hypothesis]],
    ctc_log_probs: Tensor | None = None,
    ctc_weight: float = 0.0,
    first_pass_weight: float = 0.0,
    length_normalize: bool = False,
    blank_id: int = 0,
) -> list[Hypothesis]:
    """Attention rescoring: the hypothesis of each n-best list with the highest
    ``att + ctc_weight·log P_ctc(y | x) + first_pass_weight·first-pass score``.

    Args:
        decoder: the model's attention decoder.
        memory: ``(N, T, C)`` encoder output; memory_lens: ``(N,)``.
        nbest: per utterance, the first pass's hypotheses (CTC prefix or transducer beam search).
        ctc_log_probs: ``(N, T, V)``; needed when ``ctc_weight`` > 0.
        ctc_weight: weight of the CTC log-likelihood of the whole hypothesis.
        first_pass_weight: weight of each hypothesis's ``score``.
        length_normalize: divide the attention term by tokens + 1.
    Returns:
        per utterance the chosen hypothesis (its tokens and timestamps), ``score`` the rescoring score.
    """
    _check_batch(memory, memory_lens)
    if len(nbest) != memory.size(0):
        raise ValueError(f"{memory.size(0)} utterances but {len(nbest)} n-best lists")
    if ctc_weight != 0 and ctc_log_probs is None:
        raise ValueError("ctc_weight needs ctc_log_probs (a model with a CTC head)")
    chosen = []
    for i, (hyps, length) in enumerate(zip(nbest, memory_lens.tolist())):
        if not hyps:
            raise ValueError(f"utterance {i}: empty n-best list")
        att = attention_sequence_scores(decoder, memory[i], int(length), [h.tokens for h in hyps])
        if length_normalize:
            att = att / torch.tensor([len(h.tokens) + 1 for h in hyps], dtype=torch.float64)
        totals = []
        for j, hyp in enumerate(hyps):
            total = float(att[j]) + first_pass_weight * hyp.score
            if ctc_weight != 0:
                total += ctc_weight * ctc_sequence_log_prob(ctc_log_probs[i, :length], hyp.tokens, blank_id)
            totals.append(total)
        best = max(range(len(hyps)), key=totals.__getitem__)
        chosen.append(Hypothesis(list(hyps[best].tokens), list(hyps[best].timestamps), totals[best]))
    return chosen
