"""Transducer modified beam search (icefall semantics), batched over utterances."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from asr.decoding.greedy import TransducerModel, check_encoder_output, start_context
from asr.decoding.hypothesis import Hypothesis


@dataclass
class _BeamEntry:
    tokens: tuple[int, ...]
    timestamps: tuple[int, ...]
    log_prob: float


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
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is its (merged) total log-probability.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    lens = check_encoder_output(enc_out, enc_lens)
    decoder, joiner = model.decoder, model.joiner
    blank, context_size = decoder.blank_id, decoder.context_size
    batch_size, device = enc_out.size(0), enc_out.device
    start = start_context(1, context_size, blank, device)[0].tolist()

    enc_proj = joiner.encoder_proj(enc_out)  # (N, T, J)
    beams: list[dict[tuple[int, ...], _BeamEntry]] = [
        {(): _BeamEntry((), (), 0.0)} for _ in range(batch_size)
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

        offset = 0
        for i in active:
            entries = list(beams[i].values())
            candidates = log_probs[offset : offset + len(entries)].flatten()
            offset += len(entries)
            top_log_probs, top_indices = candidates.topk(min(beam, candidates.numel()))
            next_beam: dict[tuple[int, ...], _BeamEntry] = {}
            for log_prob, index in zip(top_log_probs.tolist(), top_indices.tolist()):
                source, token = entries[index // vocab_size], index % vocab_size
                if token == blank:
                    _add_merging(next_beam, _BeamEntry(source.tokens, source.timestamps, log_prob))
                else:
                    _add_merging(
                        next_beam, _BeamEntry(source.tokens + (token,), source.timestamps + (t,), log_prob)
                    )
            beams[i] = next_beam

    hyps = []
    for entries in beams:
        if length_norm:
            best = max(entries.values(), key=lambda e: e.log_prob / (len(e.tokens) + context_size))
        else:
            best = max(entries.values(), key=lambda e: e.log_prob)
        hyps.append(Hypothesis(list(best.tokens), list(best.timestamps), best.log_prob))
    return hyps
