"""Latency of simultaneous and streaming recognition, over words, in milliseconds.

Simultaneous-translation metrics, defined exactly as SimulEval 1.1.4's latency scorers compute them
(``simuleval.evaluator.scorers.latency_scorer``), so numbers here and there agree:

- AL (average lagging), LAAL (length-adaptive average lagging), DAL (differentiable average lagging),
  all in ms, and AP (average proportion), a fraction of the source.
- Their computation-aware variants (``*_CA``): the same formulas with each word's elapsed time (audio
  received when the word was emitted *plus* the wall-clock time spent so far, SimulEval's ``elapsed``)
  in place of its delay (the audio received, SimulEval's ``delays``).

The per-utterance inputs: ``delays_ms`` (one per hypothesis word, non-decreasing), the source duration
``source_length_ms``, and the number of reference words. SimulEval's conventions that matter:

- The target length ``|Y|`` of AL and AP is the reference length when one is given, otherwise the
  hypothesis length; LAAL uses ``max(hypothesis, reference)`` so over-generation is not rewarded; DAL
  always uses the hypothesis length.
- AL and LAAL sum up to and including the first word whose delay reaches the source length; if the
  first word comes after the whole source, the score is that word's delay. AP and DAL use every word,
  including those emitted after the source ended (possible with padding or, for ``*_CA``, always).
- A corpus score is the mean of the per-utterance scores over utterances with at least one word.

Streaming-ASR conventions against a reference word alignment (word end times): the first-word
latency and the per-word emission delay (emission time minus the reference word's end, over the
correctly recognised words), summarised by mean, median and 95th percentile.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import kaldialign

_GAP = ""  # kaldialign's gap symbol; words are checked to be non-empty


def _times(name: str, values: Sequence[float]) -> list[float]:
    """``values`` as floats, checked to be non-empty, finite, non-negative and non-decreasing."""
    times = [float(v) for v in values]
    if not times:
        raise ValueError(f"{name} is empty: latency needs at least one emitted word")
    for i, t in enumerate(times):
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"{name}[{i}] = {t}: times must be finite and non-negative (ms)")
        if i > 0 and t < times[i - 1]:
            raise ValueError(f"{name} must be non-decreasing: {name}[{i}] = {t} < {name}[{i - 1}] = {times[i - 1]}")
    return times


def _source(source_length_ms: float) -> float:
    source = float(source_length_ms)
    if not math.isfinite(source) or source <= 0:
        raise ValueError(f"source_length_ms = {source_length_ms}: the source duration must be positive (ms)")
    return source


def _target_length(reference_length: int | None, hypothesis_length: int) -> int:
    """|Y|: the reference length when given (SimulEval's default ``use_ref_len``), else the hypothesis's."""
    if reference_length is None:
        return hypothesis_length
    if isinstance(reference_length, bool) or not isinstance(reference_length, numbers.Integral):
        raise TypeError(f"reference_length = {reference_length!r}: expected a word count (int) or None")
    if reference_length < 1:
        raise ValueError(f"reference_length = {reference_length}: a reference needs at least one word")
    return int(reference_length)


def _lagging(times: list[float], source_ms: float, target_length: int) -> float:
    """Average lagging behind an ideal policy emitting ``target_length`` words evenly over the source.

    Words are counted up to the first one whose time reaches the source length (the cut-off τ), so a
    first word that comes after the whole source scores its own time (SimulEval special-cases that;
    the sum gives the same). The rate is kept as words per ms and divided by, as SimulEval does, so
    results agree to the last bit.
    """
    words_per_ms = target_length / source_ms
    total = 0.0
    counted = 0
    for i, t in enumerate(times):
        total += t - i / words_per_ms
        counted = i + 1
        if t >= source_ms:
            break
    return total / counted


def average_lagging(delays_ms: Sequence[float], source_length_ms: float, reference_length: int | None = None) -> float:
    """AL in ms (Ma et al. 2019, as SimulEval scores it). ``delays_ms``: one per hypothesis word;
    ``reference_length``: reference words (None: the hypothesis length is used)."""
    times = _times("delays_ms", delays_ms)
    return _lagging(times, _source(source_length_ms), _target_length(reference_length, len(times)))


def length_adaptive_average_lagging(
    delays_ms: Sequence[float], source_length_ms: float, reference_length: int | None = None
) -> float:
    """LAAL in ms (Papi et al. 2022): AL with ``|Y| = max(hypothesis words, reference words)``."""
    times = _times("delays_ms", delays_ms)
    target = max(len(times), _target_length(reference_length, len(times)))
    return _lagging(times, _source(source_length_ms), target)


def average_proportion(
    delays_ms: Sequence[float], source_length_ms: float, reference_length: int | None = None
) -> float:
    """AP (Cho and Esipova 2016), a fraction: ``sum(delays) / (|X| · |Y|)`` with |Y| the reference
    length when given. Over all words, so it exceeds 1 when a long hypothesis lags a short reference."""
    times = _times("delays_ms", delays_ms)
    target = _target_length(reference_length, len(times))
    return sum(times) / (_source(source_length_ms) * target)


def _differentiable_lagging(times: list[float], source_ms: float) -> float:
    """DAL over every hypothesis word: each word is taken to come at least one ideal word-interval
    (``|X| / |Y|``, |Y| the hypothesis length) after the previous one."""
    words_per_ms = len(times) / source_ms
    total = 0.0
    previous = 0.0
    for i, t in enumerate(times):
        adjusted = t if i == 0 else max(t, previous + 1 / words_per_ms)
        total += adjusted - i / words_per_ms
        previous = adjusted
    return total / len(times)


def differentiable_average_lagging(delays_ms: Sequence[float], source_length_ms: float) -> float:
    """DAL in ms (Arivazhagan et al. 2019). SimulEval's DAL ignores the reference length."""
    return _differentiable_lagging(_times("delays_ms", delays_ms), _source(source_length_ms))


def _scores(times: list[float], source_ms: float, reference_length: int | None) -> dict[str, float]:
    target = _target_length(reference_length, len(times))
    return {
        "AL": _lagging(times, source_ms, target),
        "LAAL": _lagging(times, source_ms, max(len(times), target)),
        "AP": sum(times) / (source_ms * target),
        "DAL": _differentiable_lagging(times, source_ms),
    }


def latency_scores(
    delays_ms: Sequence[float],
    source_length_ms: float,
    reference_length: int | None = None,
    elapsed_ms: Sequence[float] | None = None,
) -> dict[str, float]:
    """AL, LAAL, AP and DAL of one utterance, plus ``AL_CA`` … ``DAL_CA`` when ``elapsed_ms`` is given.

    ``delays_ms``: for each hypothesis word, the audio received when it was emitted (ms).
    ``elapsed_ms``: for each word, that delay plus the wall-clock computation time spent so far (ms),
    so ``elapsed_ms[i] >= delays_ms[i]``. ``reference_length``: reference words, or None to use the
    hypothesis length. All values in ms except AP (a fraction).
    """
    times = _times("delays_ms", delays_ms)
    source = _source(source_length_ms)
    scores = _scores(times, source, reference_length)
    if elapsed_ms is not None:
        elapsed = _times("elapsed_ms", elapsed_ms)
        if len(elapsed) != len(times):
            raise ValueError(f"elapsed_ms has {len(elapsed)} values but delays_ms has {len(times)}: one per word")
        for i, (d, e) in enumerate(zip(times, elapsed)):
            if e < d:
                raise ValueError(f"elapsed_ms[{i}] = {e} < delays_ms[{i}] = {d}: elapsed time includes the delay")
        scores.update({f"{k}_CA": v for k, v in _scores(elapsed, source, reference_length).items()})
    return scores


@dataclass(frozen=True)
class UtteranceTiming:
    """One utterance's input to :func:`corpus_latency_scores` (the arguments of :func:`latency_scores`);
    ``delays_ms`` may be empty (no words emitted), and such an utterance is left out of the means."""

    delays_ms: Sequence[float]
    source_length_ms: float
    reference_length: int | None = None
    elapsed_ms: Sequence[float] | None = None


def corpus_latency_scores(utterances: Iterable[UtteranceTiming]) -> dict[str, float]:
    """Mean of the per-utterance :func:`latency_scores` over utterances with at least one word, as
    SimulEval averages its instances. Either every utterance has ``elapsed_ms`` or none does."""
    utterances = list(utterances)
    with_elapsed = {u.elapsed_ms is not None for u in utterances}
    if len(with_elapsed) > 1:
        raise ValueError("elapsed_ms is given for some utterances but not others: give it for all or none")
    per_utterance = [
        latency_scores(u.delays_ms, u.source_length_ms, u.reference_length, u.elapsed_ms)
        for u in utterances
        if len(u.delays_ms) > 0
    ]
    if not per_utterance:
        raise ValueError(f"none of the {len(utterances)} utterances emitted a word: no latency to average")
    return {key: sum(s[key] for s in per_utterance) / len(per_utterance) for key in per_utterance[0]}


def first_word_latency(emission_ms: Sequence[float], reference_end_ms: Sequence[float] | None = None) -> float:
    """How long the user waits for the first word (ms): the first emission time, measured from the
    start of the audio, or, given the reference word end times, from the end of the first spoken word
    (negative if the recogniser emitted before that word ended)."""
    first = _times("emission_ms", emission_ms)[0]
    if reference_end_ms is None:
        return first
    return first - _times("reference_end_ms", reference_end_ms)[0]


def word_emission_delays(
    hyp_words: Sequence[str],
    emission_ms: Sequence[float],
    ref_words: Sequence[str],
    reference_end_ms: Sequence[float],
) -> list[float]:
    """Emission delay (ms) of every correctly recognised word: its emission time minus the end time of
    the reference word it matches in the Levenshtein alignment of hypothesis and reference (kaldialign,
    unit costs, as ``asr wer`` aligns). Inserted, deleted and substituted words have no delay."""
    if len(hyp_words) != len(emission_ms):
        raise ValueError(f"{len(hyp_words)} hypothesis words but {len(emission_ms)} emission times: one per word")
    if len(ref_words) != len(reference_end_ms):
        raise ValueError(f"{len(ref_words)} reference words but {len(reference_end_ms)} end times: one per word")
    if not hyp_words or not ref_words:
        return []
    for name, words in (("hyp_words", hyp_words), ("ref_words", ref_words)):
        if not all(isinstance(w, str) and w for w in words):
            raise ValueError(f"{name} must be non-empty strings (the empty string marks an alignment gap)")
    emitted = _times("emission_ms", emission_ms)
    ends = _times("reference_end_ms", reference_end_ms)
    delays: list[float] = []
    ref_index = hyp_index = 0
    for ref_word, hyp_word in kaldialign.align(list(ref_words), list(hyp_words), _GAP):
        if ref_word == hyp_word:  # never both gaps, so equal means a correct word
            delays.append(emitted[hyp_index] - ends[ref_index])
        ref_index += ref_word != _GAP
        hyp_index += hyp_word != _GAP
    return delays


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0 … 100), interpolating linearly between the closest ranks (NumPy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q = {q}: expected 0 … 100")
    ordered = sorted(float(v) for v in values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def delay_summary(delays_ms: Sequence[float]) -> dict[str, float]:
    """``mean``, ``median`` and ``p95`` (ms) of per-word emission delays, pooled over a test set."""
    if not delays_ms:
        raise ValueError("no word delays to summarise (no correctly recognised words)")
    return {
        "mean": sum(float(d) for d in delays_ms) / len(delays_ms),
        "median": percentile(delays_ms, 50),
        "p95": percentile(delays_ms, 95),
    }
