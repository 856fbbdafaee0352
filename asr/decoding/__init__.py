"""Search: transducer greedy and modified beam search (with scorers), CTC greedy and prefix beam search."""

from asr.decoding.beam_search import ModifiedBeamSearch, modified_beam_search
from asr.decoding.ctc_prefix import ctc_prefix_beam_search
from asr.decoding.greedy import ctc_greedy_search, greedy_search
from asr.decoding.hypothesis import Hypothesis
from asr.decoding.scorers import LexiconScorer, Scorer, TokenLmScorer, WordLmScorer

__all__ = [
    "Hypothesis",
    "LexiconScorer",
    "ModifiedBeamSearch",
    "Scorer",
    "TokenLmScorer",
    "WordLmScorer",
    "ctc_greedy_search",
    "ctc_prefix_beam_search",
    "greedy_search",
    "modified_beam_search",
]
