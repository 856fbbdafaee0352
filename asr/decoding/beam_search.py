"""Transducer modified beam search (icefall semantics), batched over utterances, resumable chunk by chunk."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from asr.decoding.greedy import TransducerModel, check_encoder_output, start_context
from asr.decoding.hypothesis import Hypothesis
from asr.decoding.scorers import Scorer


@dataclass
class _BeamEntry:
    tokens: tuple[int, ...]
    timestamps: tuple[int, ...]
    log_prob: float  # transducer log-probability, merged over alignments
    scorer_states: tuple  # one state per scorer (functions of ``tokens``, so merging keeps them)
    scorer_score: float = 0.0  # the scorers' summed scores of ``tokens``


# One utterance's hypotheses, keyed by token sequence.
Beam = dict[tuple[int, ...], _BeamEntry]


def _add_merging(beam: Beam, entry: _BeamEntry) -> None:
    """Insert ``entry``; an entry with the same token sequence absorbs it by log-add (its own
    timestamps, those of the first alignment that reached the sequence, are kept)."""
    existing = beam.get(entry.tokens)
    if existing is None:
        beam[entry.tokens] = entry
    else:
        existing.log_prob = float(np.logaddexp(existing.log_prob, entry.log_prob))


class ModifiedBeamSearch:
    """Modified beam search: at most one symbol per frame.

    At each frame every hypothesis is extended by every symbol (blank keeps the token sequence), the
    ``beam`` best extensions of the utterance are kept, and extensions with the same token sequence are
    merged by adding their probabilities. Hypotheses are ranked by their transducer log-probability plus
    the scores of ``scorers`` (:mod:`asr.decoding.scorers`). All hypotheses of all active utterances go
    through the decoder and joiner in one batch per frame.

    The search is resumable: :meth:`advance` takes any run of encoder frames for a batch of beams and
    continues each where it stopped, so a stream decoded chunk by chunk ends with the beam a single call
    over all its frames gives.

    Args:
        model: has ``decoder`` and ``joiner`` (see :class:`asr.decoding.greedy.TransducerModel`).
        beam: hypotheses kept per utterance.
        scorers: terms added to the ranking score (LM fusion, lexicon penalty, word LM).
        length_norm: pick the final hypothesis by its score divided by the length of its decoder history
            (tokens plus the ``context_size`` start symbols), as icefall does; False picks by the score.
    """

    def __init__(self, model: TransducerModel, beam: int = 4, scorers: Sequence[Scorer] = (), length_norm: bool = True):
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.model, self.beam, self.scorers, self.length_norm = model, beam, tuple(scorers), length_norm

    def initial(self) -> Beam:
        """The beam of an utterance before any frame."""
        return {(): _BeamEntry((), (), 0.0, tuple(s.init_state() for s in self.scorers))}

    @torch.no_grad()
    def advance(
        self,
        beams: list[Beam],
        enc_out: torch.Tensor,
        enc_lens: torch.Tensor,
        frame_offsets: Sequence[int] | None = None,
    ) -> None:
        """Extend ``beams`` (one per utterance, replaced in place) over their next encoder frames.

        Args:
            beams: from :meth:`initial` or an earlier call.
            enc_out: ``(N, T, C)`` the utterances' next frames; enc_lens: ``(N,)`` how many are valid.
            frame_offsets: per utterance, the index of its first frame here in the whole utterance (the
                tokens' timestamps); 0 for all when omitted.
        """
        lens = check_encoder_output(enc_out, enc_lens)
        if len(beams) != len(lens):
            raise ValueError(f"{len(beams)} beams for {len(lens)} utterances")
        offsets = list(frame_offsets) if frame_offsets is not None else [0] * len(lens)
        decoder, joiner = self.model.decoder, self.model.joiner
        blank, context_size = decoder.blank_id, decoder.context_size
        device = enc_out.device
        start = start_context(1, context_size, blank, device)[0].tolist()
        enc_proj = joiner.encoder_proj(enc_out)  # (N, T, J)

        for t in range(max(lens, default=0)):
            active = [i for i in range(len(beams)) if lens[i] > t]
            flat = [(i, entry) for i in active for entry in beams[i].values()]
            contexts = torch.tensor(
                [(start + list(entry.tokens))[-context_size:] for _, entry in flat], dtype=torch.int64, device=device
            )
            dec_proj = joiner.decoder_proj(decoder(contexts, need_pad=False)).squeeze(1)  # (M, J)
            utt_rows = torch.tensor([i for i, _ in flat], dtype=torch.int64, device=device)
            log_probs = joiner(enc_proj[utt_rows, t], dec_proj, project_input=False).log_softmax(dim=-1)
            prior = torch.tensor([entry.log_prob for _, entry in flat], dtype=torch.float64, device=device)
            log_probs = log_probs.double() + prior.unsqueeze(1)  # (M, V)
            vocab_size = log_probs.size(1)
            added = self._scorer_scores([entry for _, entry in flat], vocab_size, blank)  # (M, V) or None
            ranked = log_probs if added is None else log_probs + added.to(device)

            offset = 0
            for i in active:
                entries = list(beams[i].values())
                rows = slice(offset, offset + len(entries))
                offset += len(entries)
                candidates = ranked[rows].flatten()
                top_scores, top_indices = candidates.topk(min(self.beam, candidates.numel()))
                top_log_probs = log_probs[rows].flatten()[top_indices].tolist()
                top_added = added[rows].flatten()[top_indices].tolist() if added is not None else None
                next_beam: Beam = {}
                for k, (score, index) in enumerate(zip(top_scores.tolist(), top_indices.tolist())):
                    source, token = entries[index // vocab_size], index % vocab_size
                    scorer_score = top_added[k] if top_added is not None else 0.0
                    if token == blank:
                        entry = _BeamEntry(
                            source.tokens, source.timestamps, top_log_probs[k], source.scorer_states, scorer_score
                        )
                    elif score == -math.inf:  # a token a scorer forbids (an LM's <sos/eos>)
                        continue
                    else:
                        entry = _BeamEntry(
                            source.tokens + (token,),
                            source.timestamps + (offsets[i] + t,),
                            top_log_probs[k],
                            tuple(s.advance(state, token) for s, state in zip(self.scorers, source.scorer_states)),
                            scorer_score,
                        )
                    _add_merging(next_beam, entry)
                beams[i] = next_beam

    def _scorer_scores(self, entries: list[_BeamEntry], vocab_size: int, blank: int) -> torch.Tensor | None:
        """``(M, V)`` float64: each hypothesis's scorer score after appending each token (blank appends
        nothing); None without scorers."""
        if not self.scorers:
            return None
        added = np.zeros((len(entries), vocab_size))
        for k, scorer in enumerate(self.scorers):
            scores = scorer.score([entry.scorer_states[k] for entry in entries])
            if scores.shape[1] != vocab_size:
                raise ValueError(
                    f"{type(scorer).__name__} scores {scores.shape[1]} token ids, the model has {vocab_size}"
                )
            added += scores
        added[:, blank] = 0.0
        added += np.array([entry.scorer_score for entry in entries])[:, None]
        return torch.from_numpy(added)

    def final_score(self, entry: _BeamEntry) -> float:
        """What the final pick ranks by: log-probability, scorer scores and their end-of-text terms,
        normalised by length when ``length_norm``."""
        score = entry.log_prob + entry.scorer_score
        score += sum(s.final(state) for s, state in zip(self.scorers, entry.scorer_states))
        context_size = self.model.decoder.context_size
        return score / (len(entry.tokens) + context_size) if self.length_norm else score

    def nbest(self, beam: Beam) -> list[Hypothesis]:
        """Every hypothesis of ``beam``, best first by :meth:`final_score`; ``score`` as in :meth:`best`."""
        entries = sorted(beam.values(), key=self.final_score, reverse=True)
        return [Hypothesis(list(e.tokens), list(e.timestamps), e.log_prob) for e in entries]

    def best(self, beam: Beam) -> Hypothesis:
        """The best hypothesis of ``beam`` as if its utterance ended here; ``score`` is its (merged)
        transducer log-probability, without the scorers."""
        best = max(beam.values(), key=self.final_score)
        return Hypothesis(list(best.tokens), list(best.timestamps), best.log_prob)


@torch.no_grad()
def modified_beam_search(
    model: TransducerModel,
    enc_out: torch.Tensor,
    enc_lens: torch.Tensor,
    beam: int = 4,
    length_norm: bool = True,
    scorers: Sequence[Scorer] = (),
) -> list[Hypothesis]:
    """Modified beam search over whole utterances (:class:`ModifiedBeamSearch`).

    Args:
        model: has ``decoder`` and ``joiner``.
        enc_out: ``(N, T, C)`` encoder output; enc_lens: ``(N,)`` valid frames.
        beam, length_norm, scorers: see :class:`ModifiedBeamSearch`.
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is its (merged) total transducer log-probability,
        without the scorers.
    """
    search = ModifiedBeamSearch(model, beam, scorers, length_norm)
    beams = [search.initial() for _ in range(enc_out.size(0))]
    search.advance(beams, enc_out, enc_lens)
    return [search.best(b) for b in beams]
