"""Evaluation metrics beyond word error rate (which lives in :mod:`asr.wer`)."""

from asr.metrics.latency import (
    UtteranceTiming,
    average_lagging,
    average_proportion,
    corpus_latency_scores,
    delay_summary,
    differentiable_average_lagging,
    first_word_latency,
    latency_scores,
    length_adaptive_average_lagging,
    percentile,
    word_emission_delays,
)

__all__ = [
    "UtteranceTiming",
    "average_lagging",
    "average_proportion",
    "corpus_latency_scores",
    "delay_summary",
    "differentiable_average_lagging",
    "first_word_latency",
    "latency_scores",
    "length_adaptive_average_lagging",
    "percentile",
    "word_emission_delays",
]
