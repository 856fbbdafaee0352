"""CTC prefix beam search."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from asr.decoding.greedy import check_encoder_output
from asr.decoding.hypothesis import Hypothesis

_NEG_INF = -math.inf


def _log_add(a: float, b: float) -> float:
    return float(np.logaddexp(a, b))


@dataclass
class _Prefix:
    """Log-probabilities of the alignments of a prefix that end in blank / in its last token, and the
    timestamps of the most probable way it was reached."""

    blank: float = _NEG_INF
    non_blank: float = _NEG_INF
    timestamps: tuple[int, ...] = ()
    best_contribution: float = _NEG_INF

    @property
    def total(self) -> float:
        return _log_add(self.blank, self.non_blank)

    def add(self, log_prob: float, ends_in_blank: bool, timestamps: tuple[int, ...]) -> None:
        if ends_in_blank:
            self.blank = _log_add(self.blank, log_prob)
        else:
            self.non_blank = _log_add(self.non_blank, log_prob)
        if log_prob > self.best_contribution:
            self.best_contribution, self.timestamps = log_prob, timestamps


def _search_one(log_probs: np.ndarray, beam: int, tokens_per_frame: int, blank_id: int) -> Hypothesis:
    prefixes: dict[tuple[int, ...], _Prefix] = {(): _Prefix(blank=0.0)}
    for t, frame in enumerate(log_probs):
        candidates = [int(c) for c in np.argsort(-frame, kind="stable")[:tokens_per_frame] if c != blank_id]
        extended: dict[tuple[int, ...], _Prefix] = {}

        def entry(prefix: tuple[int, ...]) -> _Prefix:
            return extended.setdefault(prefix, _Prefix())  # noqa: B023 (called only in this iteration)

        for prefix, state in prefixes.items():
            total = state.total
            # Blank: the labelling stays, now ending in blank.
            entry(prefix).add(total + frame[blank_id], True, state.timestamps)
            last = prefix[-1] if prefix else None
            for token in candidates:
                p = float(frame[token])
                if token == last:
                    # A repeat without blank in between collapses into the same labelling ...
                    entry(prefix).add(state.non_blank + p, False, state.timestamps)
                    # ... and after a blank it is a new token.
                    entry(prefix + (token,)).add(state.blank + p, False, state.timestamps + (t,))
                else:
                    entry(prefix + (token,)).add(total + p, False, state.timestamps + (t,))
        ranked = sorted(extended.items(), key=lambda item: item[1].total, reverse=True)
        prefixes = dict(ranked[:beam])
    best_prefix, best_state = max(prefixes.items(), key=lambda item: item[1].total)
    return Hypothesis(list(best_prefix), list(best_state.timestamps), best_state.total)


@torch.no_grad()
def ctc_prefix_beam_search(
    log_probs: torch.Tensor,
    lens: torch.Tensor,
    beam: int = 4,
    blank_id: int = 0,
    tokens_per_frame: int | None = None,
) -> list[Hypothesis]:
    """CTC prefix beam search: keeps the ``beam`` labellings (prefixes) of highest probability, each
    summed over all its alignments, tracking separately the alignments ending in blank and in the last
    token so that repeats are merged correctly.

    Args:
        log_probs: ``(N, T, V)`` CTC log-probabilities; lens: ``(N,)`` valid frames.
        beam: prefixes kept per frame.
        blank_id: blank symbol id.
        tokens_per_frame: only the this many most probable symbols of a frame extend prefixes
            (default ``beam``; ``V`` makes the search exact whenever ``beam`` covers every prefix).
    Returns:
        one :class:`Hypothesis` per utterance; ``score`` is the log-probability of its labelling summed
        over the alignments kept; a token's timestamp is the frame at which the most probable way to
        the prefix emitted it.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    frame_lens = check_encoder_output(log_probs, lens)
    tokens_per_frame = beam if tokens_per_frame is None else tokens_per_frame
    if tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    per_frame = log_probs.detach().double().cpu().numpy()
    return [_search_one(per_frame[i, :length], beam, tokens_per_frame, blank_id) for i, length in enumerate(frame_lens)]
