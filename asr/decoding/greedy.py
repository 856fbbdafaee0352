"""Greedy search for transducers (batched) and CTC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import nn

from asr.decoding.hypothesis import Hypothesis


class TransducerModel(Protocol):
    """What transducer search needs of a model: a stateless ``decoder`` (with ``blank_id`` and
    ``context_size``) and a ``joiner`` with ``encoder_proj``/``decoder_proj``, as in :class:`asr.models.AsrModel`."""

    decoder: nn.Module
    joiner: nn.Module


def check_encoder_output(enc_out: torch.Tensor, enc_lens: torch.Tensor) -> list[int]:
    """Validate ``enc_out (N, T, C)`` / ``enc_lens (N,)`` and return the lengths as a list."""
    if enc_out.ndim != 3 or enc_lens.ndim != 1 or enc_out.size(0) != enc_lens.size(0):
        raise ValueError(
            f"expected enc_out (N, T, C) and enc_lens (N,), got {tuple(enc_out.shape)} and {tuple(enc_lens.shape)}"
        )
    lens = enc_lens.tolist()
    bad = [i for i, n in enumerate(lens) if not 0 <= n <= enc_out.size(1)]
    if bad:
        raise ValueError(f"utterances {bad}: lengths {[lens[i] for i in bad]} outside [0, {enc_out.size(1)}]")
    return lens


def start_context(batch_size: int, context_size: int, blank_id: int, device: torch.device) -> torch.Tensor:
    """Decoder context before any token: ``context_size - 1`` "no token" ids (-1) then blank, ``(N, context_size)``."""
    context = torch.full((batch_size, context_size), -1, dtype=torch.int64, device=device)
    context[:, -1] = blank_id
    return context


@torch.no_grad()
def greedy_search(
    model: TransducerModel, enc_out: torch.Tensor, enc_lens: torch.Tensor, max_sym_per_frame: int = 1
) -> list[Hypothesis]:
    """Transducer greedy search, batched over utterances of different lengths.

    At each frame the most probable symbol is taken; a non-blank symbol is emitted and the same frame
    is scored again with the updated decoder, until blank or ``max_sym_per_frame`` symbols (then the
    frame ends without a blank, as icefall's ``greedy_search``).

    Args:
        model: has ``decoder`` and ``joiner`` (see :class:`TransducerModel`).
        enc_out: ``(N, T, C)`` encoder output; enc_lens: ``(N,)`` valid frames.
        max_sym_per_frame: most symbols emitted per frame (>= 1).
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is the log-probability of the path taken.
    """
    hyps = [Hypothesis() for _ in range(enc_out.size(0))]
    greedy_advance(model, hyps, enc_out, enc_lens, max_sym_per_frame=max_sym_per_frame)
    return hyps


@torch.no_grad()
def greedy_advance(
    model: TransducerModel,
    hyps: list[Hypothesis],
    enc_out: torch.Tensor,
    enc_lens: torch.Tensor,
    frame_offsets: Sequence[int] | None = None,
    max_sym_per_frame: int = 1,
) -> None:
    """Continue greedy search (:func:`greedy_search`) of ``hyps`` over their utterances' next frames, in place.

    Args:
        hyps: one per utterance: empty, or from an earlier call (their tokens are the decoder's context).
        enc_out: ``(N, T, C)`` the next encoder frames; enc_lens: ``(N,)`` how many are valid.
        frame_offsets: per utterance, the index of its first frame here in the whole utterance (the
            timestamps); 0 for all when omitted.
    """
    if max_sym_per_frame < 1:
        raise ValueError(f"max_sym_per_frame must be >= 1, got {max_sym_per_frame}")
    lens = check_encoder_output(enc_out, enc_lens)
    if len(hyps) != len(lens):
        raise ValueError(f"{len(hyps)} hypotheses for {len(lens)} utterances")
    offsets = torch.as_tensor(list(frame_offsets) if frame_offsets is not None else [0] * len(lens))
    decoder, joiner = model.decoder, model.joiner
    blank, context_size = decoder.blank_id, decoder.context_size
    batch_size, device = enc_out.size(0), enc_out.device

    enc_proj = joiner.encoder_proj(enc_out)  # (N, T, J)
    context = start_context(batch_size, context_size, blank, device)
    for row, hyp in enumerate(hyps):
        previous = hyp.tokens[-context_size:]
        if previous:
            context[row, context_size - len(previous) :] = torch.tensor(previous)
    dec_proj = joiner.decoder_proj(decoder(context, need_pad=False)).squeeze(1)  # (N, J)
    scores = torch.tensor([hyp.score for hyp in hyps], dtype=torch.float64, device=device)
    lens_tensor = torch.as_tensor(lens, device=device)

    for t in range(max(lens, default=0)):
        rows = torch.nonzero(lens_tensor > t).flatten()
        for _ in range(max_sym_per_frame):
            log_probs = joiner(enc_proj[rows, t], dec_proj[rows], project_input=False).log_softmax(dim=-1)
            best_log_prob, best = log_probs.max(dim=-1)
            scores[rows] += best_log_prob.double()
            emitted = best != blank
            rows, new_tokens = rows[emitted], best[emitted]
            if rows.numel() == 0:
                break
            for row, token in zip(rows.tolist(), new_tokens.tolist()):
                hyps[row].tokens.append(token)
                hyps[row].timestamps.append(int(offsets[row]) + t)
            context[rows] = torch.cat([context[rows, 1:], new_tokens.unsqueeze(1)], dim=1)
            dec_proj[rows] = joiner.decoder_proj(decoder(context[rows], need_pad=False)).squeeze(1)
    for hyp, score in zip(hyps, scores.tolist()):
        hyp.score = score


@torch.no_grad()
def ctc_greedy_search(log_probs: torch.Tensor, lens: torch.Tensor, blank_id: int = 0) -> list[Hypothesis]:
    """Best path decoding: the most probable symbol per frame, repeats merged, blanks removed.

    Args:
        log_probs: ``(N, T, V)`` CTC log-probabilities; lens: ``(N,)`` valid frames.
        blank_id: blank symbol id.
    Returns:
        one :class:`Hypothesis` per utterance; a token's timestamp is the first frame of its run;
        ``score`` is the log-probability of the best path.
    """
    frame_lens = check_encoder_output(log_probs, lens)
    best_log_probs, best = log_probs.max(dim=-1)  # (N, T)
    hyps = []
    for i, length in enumerate(frame_lens):
        path = best[i, :length].tolist()
        tokens, timestamps = [], []
        previous = blank_id
        for t, symbol in enumerate(path):
            if symbol != blank_id and symbol != previous:
                tokens.append(symbol)
                timestamps.append(t)
            previous = symbol
        hyps.append(Hypothesis(tokens, timestamps, float(best_log_probs[i, :length].double().sum())))
    return hyps
