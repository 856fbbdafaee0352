"""N-gram language models: estimation (interpolated modified Kneser-Ney), ARPA I/O and LM text."""

from asr.lm.ngram import NgramLM, adjusted_counts, modified_kn_discounts, ngram_counts
from asr.lm.text import DEFAULT_MIN_COUNT, default_min_counts, train_lm, train_word_lm, write_lm_text

__all__ = [
    "DEFAULT_MIN_COUNT",
    "NgramLM",
    "adjusted_counts",
    "default_min_counts",
    "modified_kn_discounts",
    "ngram_counts",
    "train_lm",
    "train_word_lm",
    "write_lm_text",
]
