"""Transducer modified beam search (icefall semantics), batched over utterances."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from asr.decoding.greedy import TransducerModel, check_encoder_output, start_context
from asr.decoding.hypothesis import Hypothesis
from asr.decoding.lexicon import Lexicon
from asr.lm import NgramLM


@dataclass
class _BeamEntry:
    tokens: tuple[int, ...]
    timestamps: tuple[int, ...]
    log_prob: float  # transducer log-probability, merged over alignments
    lm_state: tuple[int, ...] = ()
    lm_log_prob: float = 0.0  # LM log-probability of ``tokens`` (a function of them, so merging keeps it)
    partial_word: str = ""  # with a lexicon: the text's unfinished last word
    unknown_words: int = 0  # with a lexicon: words of the text not in it (see asr.decoding.lexicon)
    word_lm_state: tuple[int, ...] = ()  # with a word LM: its state after the finished words
    word_score: float = 0.0  # with a word LM: its scaled log-probability of the finished words, plus bonuses


def _add_merging(beam: dict[tuple[int, ...], _BeamEntry], entry: _BeamEntry) -> None:
    """Insert ``entry``; an entry with the same token sequence absorbs it by log-add (its own
    timestamps, those of the first alignment that reached the sequence, are kept)."""
    existing = beam.get(entry.tokens)
    if existing is None:
        beam[entry.tokens] = entry
    else:
        existing.log_prob = float(np.logaddexp(existing.log_prob, entry.log_prob))


@torch.no_grad()
def modified_beam_search(
    model: TransducerModel,
    enc_out: torch.Tensor,
    enc_lens: torch.Tensor,
    beam: int = 4,
    length_norm: bool = True,
    lm: NgramLM | None = None,
    lm_scale: float = 0.0,
    lm_final: bool = True,
    lm_bonus: float = 0.0,
    lexicon: Lexicon | None = None,
    oov_penalty: float = 0.0,
    word_lm: NgramLM | None = None,
    word_lm_scale: float = 0.0,
    word_bonus: float = 0.0,
) -> list[Hypothesis]:
    """Modified beam search: at most one symbol per frame.

    At each frame every hypothesis is extended by every symbol (blank keeps the token sequence), the
    ``beam`` best extensions of the utterance are kept, and extensions with the same token sequence
    are merged by adding their probabilities. All hypotheses of all active utterances go through the
    decoder and joiner in one batch per frame.

    Args:
        model: has ``decoder`` and ``joiner`` (see :class:`asr.decoding.greedy.TransducerModel`).
        enc_out: ``(N, T, C)`` encoder output; enc_lens: ``(N,)`` valid frames.
        beam: hypotheses kept per utterance.
        length_norm: pick the final hypothesis by log-prob divided by the length of its decoder history
            (tokens plus the ``context_size`` start symbols), as icefall does; False picks by log-prob.
        lm, lm_scale: shallow fusion with an n-gram LM over the same token ids: a hypothesis is ranked by
            ``log_prob + lm_scale * lm_log_prob``, where a token ``v`` adds ``ln p_LM(v | state)`` and blank
            adds nothing. Without ``lm`` or with ``lm_scale == 0`` the search is the plain one.
        lm_final: with an LM, add ``lm_scale * ln p_LM(</s> | state)`` to each final hypothesis before
            picking the best (the fused score is what ``length_norm`` divides).
        lm_bonus: with an LM, a reward added to the fused score per emitted token; it offsets the LM's
            cost of every token, which blank does not pay, and so the deletions that fusion causes.
        lexicon, oov_penalty: subtract ``oov_penalty`` from the ranking score per word of the hypothesis
            that is not in ``lexicon`` (an unfinished last word counts once no listed word starts with it;
            see :mod:`asr.decoding.lexicon`); the final pick includes it too.
        word_lm, word_lm_scale: an n-gram LM over words (``asr lm train --words``): when a token starts a
            new word, the finished word's ``word_lm_scale * ln p(word | previous words)`` is added (a word
            outside the LM's vocabulary is its ``<unk>``), and ``ln p(</s> | ...)`` with the last word at
            the end. Needs ``lexicon`` (it tells where words end; ``oov_penalty`` may be 0).
        word_bonus: with a word LM, a reward per finished word, against the deletions its cost per word causes.
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is its (merged) total transducer log-probability,
        without the LM or the lexicon penalty.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    if lm_scale < 0:
        raise ValueError(f"lm_scale must be >= 0, got {lm_scale}")
    if oov_penalty < 0:
        raise ValueError(f"oov_penalty must be >= 0, got {oov_penalty}")
    fusion = lm is not None and lm_scale > 0
    constrained = lexicon is not None and oov_penalty > 0
    word_fusion = word_lm is not None and word_lm_scale > 0
    if word_fusion and lexicon is None:
        raise ValueError("a word LM needs a lexicon: it tells where the words of a hypothesis end")
    if word_lm_scale < 0:
        raise ValueError(f"word_lm_scale must be >= 0, got {word_lm_scale}")
    track_words = constrained or word_fusion
    if word_fusion:
        word_ids = {symbol: i for i, symbol in enumerate(word_lm.symbols) if i > 2}
        finished_cache: dict[tuple[tuple[int, ...], str], tuple[float, tuple[int, ...]]] = {}

        def finish_word(state: tuple[int, ...], word: str) -> tuple[float, tuple[int, ...]]:
            """The word LM's score of finishing ``word`` in ``state`` (``word_lm_scale * ln p`` plus the
            bonus) and the state after it; an empty word (no text yet) scores nothing."""
            if not word:
                return 0.0, state
            key = (state, word)
            found = finished_cache.get(key)
            if found is None:
                word_id = word_ids.get(word, 2)  # <unk>
                found = (
                    word_lm_scale * word_lm.token_log_prob(state, word_id) + word_bonus,
                    word_lm.next_state(state, word_id),
                )
                finished_cache[key] = found
            return found

    lens = check_encoder_output(enc_out, enc_lens)
    decoder, joiner = model.decoder, model.joiner
    blank, context_size = decoder.blank_id, decoder.context_size
    batch_size, device = enc_out.size(0), enc_out.device
    start = start_context(1, context_size, blank, device)[0].tolist()

    enc_proj = joiner.encoder_proj(enc_out)  # (N, T, J)
    start_lm_state = lm.start_state if fusion else ()
    start_word_state = word_lm.start_state if word_fusion else ()
    beams: list[dict[tuple[int, ...], _BeamEntry]] = [
        {(): _BeamEntry((), (), 0.0, start_lm_state, word_lm_state=start_word_state)} for _ in range(batch_size)
    ]

    for t in range(max(lens, default=0)):
        active = [i for i in range(batch_size) if lens[i] > t]
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
        if fusion:
            lm_log_probs = torch.from_numpy(np.stack([lm.log_probs(entry.lm_state) for _, entry in flat])).double()
            if lm_log_probs.size(1) != vocab_size:
                raise ValueError(f"the LM has {lm_log_probs.size(1)} token ids, the model {vocab_size}")
            lm_log_probs[:, blank] = 0.0  # blank leaves the LM state and score unchanged
            lm_prior = torch.tensor([entry.lm_log_prob for _, entry in flat], dtype=torch.float64)
            lm_log_probs = (lm_log_probs + lm_prior.unsqueeze(1)).to(device)  # (M, V)
            num_tokens = torch.tensor([len(entry.tokens) for _, entry in flat], dtype=torch.float64, device=device)
            bonus = lm_bonus * (num_tokens.unsqueeze(1) + (torch.arange(vocab_size, device=device) != blank))
            ranked = log_probs + lm_scale * lm_log_probs + bonus
        else:
            ranked = log_probs
        if constrained:
            unknown = torch.from_numpy(np.stack([lexicon.deltas(entry.partial_word) for _, entry in flat])).double()
            if unknown.size(1) != vocab_size:
                raise ValueError(f"the lexicon has {unknown.size(1)} token ids, the model {vocab_size}")
            unknown[:, blank] = 0.0
            unknown_prior = torch.tensor([float(entry.unknown_words) for _, entry in flat], dtype=torch.float64)
            unknown = (unknown + unknown_prior.unsqueeze(1)).to(device)  # (M, V)
            ranked = ranked - oov_penalty * unknown
        if word_fusion:
            starts_word = torch.tensor(lexicon.starts_word, dtype=torch.float64, device=device)
            finished = [finish_word(entry.word_lm_state, entry.partial_word)[0] for _, entry in flat]
            word_prior = torch.tensor([entry.word_score for _, entry in flat], dtype=torch.float64, device=device)
            finished_t = torch.tensor(finished, dtype=torch.float64, device=device)
            # (M, V): every token keeps the finished words' score; a word-start token adds the word it ends.
            word_scores = word_prior.unsqueeze(1) + finished_t.unsqueeze(1) * starts_word.unsqueeze(0)
            ranked = ranked + word_scores

        offset = 0
        for i in active:
            entries = list(beams[i].values())
            rows = slice(offset, offset + len(entries))
            offset += len(entries)
            candidates = ranked[rows].flatten()
            top_scores, top_indices = candidates.topk(min(beam, candidates.numel()))
            top_log_probs = log_probs[rows].flatten()[top_indices].tolist()
            top_lm = lm_log_probs[rows].flatten()[top_indices].tolist() if fusion else [0.0] * len(top_log_probs)
            top_unknown = (
                unknown[rows].flatten()[top_indices].round().long().tolist()
                if constrained
                else [0] * len(top_log_probs)
            )
            next_beam: dict[tuple[int, ...], _BeamEntry] = {}
            for score, log_prob, lm_log_prob, num_unknown, index in zip(
                top_scores.tolist(), top_log_probs, top_lm, top_unknown, top_indices.tolist()
            ):
                source, token = entries[index // vocab_size], index % vocab_size
                if token == blank:
                    entry = _BeamEntry(
                        source.tokens,
                        source.timestamps,
                        log_prob,
                        source.lm_state,
                        lm_log_prob,
                        source.partial_word,
                        num_unknown,
                        source.word_lm_state,
                        source.word_score,
                    )
                elif fusion and score == -math.inf:  # a token the LM gives no probability (<sos/eos>)
                    continue
                else:
                    lm_state = lm.next_state(source.lm_state, token) if fusion else ()
                    partial_word = lexicon.next_partial(source.partial_word, token) if track_words else ""
                    word_state, word_score = source.word_lm_state, source.word_score
                    if word_fusion and lexicon.starts_word[token]:
                        finished_score, word_state = finish_word(word_state, source.partial_word)
                        word_score += finished_score
                    entry = _BeamEntry(
                        source.tokens + (token,),
                        source.timestamps + (t,),
                        log_prob,
                        lm_state,
                        lm_log_prob,
                        partial_word,
                        num_unknown,
                        word_state,
                        word_score,
                    )
                _add_merging(next_beam, entry)
            beams[i] = next_beam

    def final_score(entry: _BeamEntry) -> float:
        score = entry.log_prob
        if fusion:
            lm_log_prob = entry.lm_log_prob + (lm.final_log_prob(entry.lm_state) if lm_final else 0.0)
            score += lm_scale * lm_log_prob + lm_bonus * len(entry.tokens)
        if constrained:
            score -= oov_penalty * (entry.unknown_words + lexicon.final_delta(entry.partial_word))
        if word_fusion:
            last_score, state = finish_word(entry.word_lm_state, entry.partial_word)
            score += entry.word_score + last_score + word_lm_scale * word_lm.token_log_prob(state, 1)  # </s>
        return score / (len(entry.tokens) + context_size) if length_norm else score

    hyps = []
    for entries in beams:
        best = max(entries.values(), key=final_score)
        hyps.append(Hypothesis(list(best.tokens), list(best.timestamps), best.log_prob))
    return hyps
