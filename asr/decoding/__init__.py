"""Search: transducer greedy and modified beam search, CTC greedy and prefix beam search."""

from asr.decoding.beam_search import modified_beam_search
from asr.decoding.ctc_prefix import ctc_prefix_beam_search
from asr.decoding.greedy import ctc_greedy_search, greedy_search
from asr.decoding.hypothesis import Hypothesis

__all__ = [
    "Hypothesis",
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "greedy_search",
    "modified_beam_search",
]
