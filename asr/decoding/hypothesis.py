"""The result type of every search in :mod:`asr.decoding`."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Hypothesis:
    """One decoded utterance.

    Attributes:
        tokens: output token ids, blanks removed.
        timestamps: for each token, the encoder frame index at which it was emitted (non-decreasing;
            strictly increasing for CTC and for transducer search with one symbol per frame).
        score: log-probability of the hypothesis under the search's topology. For transducer search
            that is icefall's: a frame that emits its last allowed symbol ends without a blank, so with
            one symbol per frame an emission consumes the frame. Greedy searches score their single
            path; beam searches the alignments merged into the hypothesis while it was in the beam.
    """

    tokens: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)
    score: float = 0.0
