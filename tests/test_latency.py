"""Latency metrics: hand-computed cases from the papers' formulas, bad input, and equality with
SimulEval 1.1.4's own scorer classes on random delay sequences."""

from __future__ import annotations

import importlib.metadata
import json
import random
import statistics

import numpy as np
import pytest

from asr.metrics import (
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

# Oracles written straight from the papers' formulas (1-based i as printed), with SimulEval's choices:
# τ is the first word whose delay reaches |X| (or the last word), |Y| is given by the caller.


def oracle_al(d: list[float], x: float, y: int) -> float:
    tau = next((i for i in range(1, len(d) + 1) if d[i - 1] >= x), len(d))
    return sum(d[i - 1] - (i - 1) * x / y for i in range(1, tau + 1)) / tau


def oracle_ap(d: list[float], x: float, y: int) -> float:
    return sum(d) / (x * y)


def oracle_dal(d: list[float], x: float) -> float:
    y = len(d)
    g = [d[0]]
    for i in range(2, y + 1):
        g.append(max(d[i - 1], g[-1] + x / y))
    return sum(g[i - 1] - (i - 1) * x / y for i in range(1, y + 1)) / y


DELAYS = [1000, 1600, 2200, 3400, 4000]


def test_al_hand_case() -> None:
    expected = oracle_al(DELAYS, 4000, 5)
    assert expected == pytest.approx(840)
    assert average_lagging(DELAYS, 4000, 5) == pytest.approx(expected)
    assert latency_scores(DELAYS, 4000, 5)["AL"] == pytest.approx(840)


def test_all_metrics_hand_case() -> None:
    scores = latency_scores(DELAYS, 4000, 5)
    assert scores == pytest.approx(
        {"AL": oracle_al(DELAYS, 4000, 5), "LAAL": oracle_al(DELAYS, 4000, 5), "AP": 12200 / 20000, "DAL": 1000.0}
    )
    assert oracle_dal(DELAYS, 4000) == pytest.approx(1000)
    assert average_proportion(DELAYS, 4000, 5) == pytest.approx(oracle_ap(DELAYS, 4000, 5))
    assert differentiable_average_lagging(DELAYS, 4000) == pytest.approx(oracle_dal(DELAYS, 4000))


def test_reference_length_conventions() -> None:
    # A short reference (3 words) makes the ideal policy slower: AL rewards the 5-word over-generation,
    # LAAL keeps |Y| = max(5, 3) = 5, AP divides by the reference, DAL ignores it.
    assert average_lagging(DELAYS, 4000, 3) == pytest.approx(oracle_al(DELAYS, 4000, 3))
    assert average_lagging(DELAYS, 4000, 3) < average_lagging(DELAYS, 4000, 5)
    assert length_adaptive_average_lagging(DELAYS, 4000, 3) == pytest.approx(oracle_al(DELAYS, 4000, 5))
    assert length_adaptive_average_lagging(DELAYS, 4000, 8) == pytest.approx(oracle_al(DELAYS, 4000, 8))
    assert average_proportion(DELAYS, 4000, 3) == pytest.approx(12200 / 12000)
    assert latency_scores(DELAYS, 4000, 3)["DAL"] == latency_scores(DELAYS, 4000, 9)["DAL"]
    # No reference: the hypothesis length stands in for |Y|.
    assert latency_scores(DELAYS, 4000) == latency_scores(DELAYS, 4000, 5)


def test_cut_off_and_delays_beyond_the_source() -> None:
    # AL stops at the first word that reaches the source end; later words do not count.
    assert average_lagging([500, 2000, 2000, 2000], 2000, 4) == pytest.approx((500 + 1500) / 2)
    # A first word after the whole source scores its own delay.
    assert average_lagging([2500, 2600], 2000, 2) == 2500
    assert length_adaptive_average_lagging([2500, 2600], 2000, 1) == 2500
    # DAL and AP use every word, also those past the source.
    assert differentiable_average_lagging([500, 2000, 2400], 2000) == pytest.approx(oracle_dal([500, 2000, 2400], 2000))
    assert average_proportion([500, 2000, 2400], 2000, 3) == pytest.approx(4900 / 6000)


def test_computation_aware() -> None:
    elapsed = [1300, 1900, 2500, 3700, 4300]
    scores = latency_scores(DELAYS, 4000, 5, elapsed_ms=elapsed)
    assert scores["AL"] == pytest.approx(840)
    assert scores["AL_CA"] == pytest.approx(oracle_al(elapsed, 4000, 5))
    assert scores["AL_CA"] == pytest.approx(840 + 300)
    assert scores["LAAL_CA"] == pytest.approx(oracle_al(elapsed, 4000, 5))
    assert scores["AP_CA"] == pytest.approx(oracle_ap(elapsed, 4000, 5))
    assert scores["DAL_CA"] == pytest.approx(oracle_dal(elapsed, 4000))
    assert set(latency_scores(DELAYS, 4000, 5)) == {"AL", "LAAL", "AP", "DAL"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delays_ms": []}, "delays_ms is empty"),
        ({"delays_ms": [100, 50]}, "non-decreasing"),
        ({"delays_ms": [-5, 50]}, "non-negative"),
        ({"delays_ms": [float("nan")]}, "finite"),
        ({"source_length_ms": 0}, "source duration must be positive"),
        ({"reference_length": 0}, "at least one word"),
        ({"elapsed_ms": [200, 300]}, "one per word"),
        ({"elapsed_ms": [50, 300, 400]}, "elapsed_ms\\[0\\] = 50.0 < delays_ms\\[0\\]"),
        ({"elapsed_ms": [300, 200, 400]}, "elapsed_ms must be non-decreasing"),
    ],
)
def test_bad_input(kwargs: dict, message: str) -> None:
    args = {"delays_ms": [100, 200, 300], "source_length_ms": 1000, "reference_length": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        latency_scores(**args)


def test_bad_reference_length_type() -> None:
    with pytest.raises(TypeError, match="word count"):
        average_lagging([100], 1000, 2.5)
    with pytest.raises(TypeError, match="word count"):
        average_proportion([100], 1000, True)


def test_corpus_mean_skips_silent_utterances() -> None:
    a = UtteranceTiming(DELAYS, 4000, 5, [1300, 1900, 2500, 3700, 4300])
    b = UtteranceTiming([200, 900], 1000, 3, [250, 1000])
    silent = UtteranceTiming([], 3000, 4, [])
    got = corpus_latency_scores([a, silent, b])
    sa = latency_scores(a.delays_ms, 4000, 5, a.elapsed_ms)
    sb = latency_scores(b.delays_ms, 1000, 3, b.elapsed_ms)
    assert got == pytest.approx({k: (sa[k] + sb[k]) / 2 for k in sa})
    with pytest.raises(ValueError, match="all or none"):
        corpus_latency_scores([a, UtteranceTiming([100], 1000, 1)])
    with pytest.raises(ValueError, match="none of the 1 utterances"):
        corpus_latency_scores([silent])


def test_first_word_latency() -> None:
    assert first_word_latency([640, 900, 1500]) == 640
    assert first_word_latency([640, 900, 1500], [480, 800]) == 160
    assert first_word_latency([400], [480, 800]) == -80
    with pytest.raises(ValueError, match="emission_ms is empty"):
        first_word_latency([])


def test_word_emission_delays_over_the_alignment() -> None:
    ref = "the cat sat on the mat".split()
    ends = [200, 500, 800, 950, 1100, 1500]
    # "cat" → "hat" substituted, "on" deleted, "now" inserted: only the, sat, the, mat are correct.
    hyp = "the hat sat the mat now".split()
    emitted = [320, 640, 960, 1280, 1600, 1920]
    assert word_emission_delays(hyp, emitted, ref, ends) == pytest.approx([120, 160, 180, 100])
    assert word_emission_delays([], [], ref, ends) == []
    with pytest.raises(ValueError, match="one per word"):
        word_emission_delays(hyp, emitted[:-1], ref, ends)
    with pytest.raises(ValueError, match="non-empty strings"):
        word_emission_delays(["the", ""], [1, 2], ref, ends)
    with pytest.raises(ValueError, match="reference_end_ms must be non-decreasing"):
        word_emission_delays(hyp, emitted, ref, [200, 100, 800, 950, 1100, 1500])


def test_delay_summary_against_numpy() -> None:
    rng = random.Random(3)
    for n in (1, 2, 7, 100):
        values = [rng.uniform(-200, 1500) for _ in range(n)]
        summary = delay_summary(values)
        assert summary["mean"] == pytest.approx(statistics.fmean(values))
        assert summary["median"] == pytest.approx(statistics.median(values))
        assert summary["p95"] == pytest.approx(np.percentile(values, 95))
        assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)
    with pytest.raises(ValueError, match="no word delays"):
        delay_summary([])


# --- SimulEval 1.1.4 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simuleval_scorers():
    reason = (
        "simuleval 1.1.4 is not installed: pip install --no-deps simuleval==1.1.4 && "
        "pip install textgrid pandas sacrebleu requests (what its scorer module imports)"
    )
    scorers = pytest.importorskip("simuleval.evaluator.scorers.latency_scorer", reason=reason)
    instance = pytest.importorskip("simuleval.evaluator.instance", reason=reason)
    version = importlib.metadata.version("simuleval")
    if version != "1.1.4":
        pytest.skip(f"simuleval {version} is installed; these comparisons are against 1.1.4")
    classes = {"AL": scorers.ALScorer, "LAAL": scorers.LAALScorer, "AP": scorers.APScorer, "DAL": scorers.DALScorer}
    return classes, instance.LogInstance


def log_instance(log_instance_cls, index: int, u: UtteranceTiming):
    """A SimulEval instance as its score-only mode reads one line of ``instances.log``."""
    reference = None if u.reference_length is None else " ".join(f"w{i}" for i in range(u.reference_length))
    line = {
        "index": index,
        "prediction": " ".join("h" for _ in u.delays_ms),
        "delays": list(u.delays_ms),
        "elapsed": list(u.elapsed_ms or []),
        "reference": reference,
        "source_length": u.source_length_ms,
    }
    return log_instance_cls(json.dumps(line))


def simuleval_scores(simuleval_scorers, utterances: list[UtteranceTiming], computation_aware: bool) -> dict:
    classes, log_instance_cls = simuleval_scorers
    scores = {}
    for name, cls in classes.items():
        instances = {i: log_instance(log_instance_cls, i, u) for i, u in enumerate(utterances)}
        scorer = cls(computation_aware=computation_aware, use_ref_len=True)
        scores[name + ("_CA" if computation_aware else "")] = scorer(instances)
    return scores


def random_utterance(rng: random.Random, with_elapsed: bool) -> UtteranceTiming:
    source_ms = rng.choice([rng.randint(200, 20000), rng.uniform(200.0, 20000.0)])
    words = rng.randint(1, 25)
    step = rng.choice([0, 40, 160, 320])
    delays = []
    for _ in range(words):
        d = rng.uniform(0, source_ms * 1.2)
        if step:  # emitted at chunk boundaries, as the streaming policies do
            d = float(step * round(d / step))
        delays.append(d)
    delays.sort()
    if rng.random() < 0.3:  # the tail flushed at the end of input
        tail = rng.randint(0, words)
        delays = [min(d, source_ms) for d in delays[: words - tail]] + [source_ms] * tail
    if rng.random() < 0.1:  # nothing before the source ended
        delays = [source_ms + d for d in delays]
    if rng.random() < 0.3:
        delays = [int(d) for d in delays]
    reference = rng.choice([None, words, max(1, words - rng.randint(1, 10)), words + rng.randint(1, 10)])
    elapsed = None
    if with_elapsed:
        spent, elapsed = 0.0, []
        for d in delays:
            spent += rng.expovariate(1 / 60)
            elapsed.append(d + spent)
    return UtteranceTiming(delays, source_ms, reference, elapsed)


def test_equals_simuleval_on_random_sequences(simuleval_scorers) -> None:
    rng = random.Random(2024)
    worst = 0.0
    for case in range(300):
        u = random_utterance(rng, with_elapsed=case % 2 == 1)
        ours = latency_scores(u.delays_ms, u.source_length_ms, u.reference_length, u.elapsed_ms)
        theirs = simuleval_scores(simuleval_scorers, [u], computation_aware=False)
        if u.elapsed_ms is not None:
            theirs |= simuleval_scores(simuleval_scorers, [u], computation_aware=True)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-9), (case, key, u)
            worst = max(worst, abs(ours[key] - theirs[key]))
    assert worst < 1e-9


@pytest.mark.filterwarnings("ignore:The 'warn' method is deprecated:DeprecationWarning")  # its skip notice
def test_corpus_equals_simuleval(simuleval_scorers) -> None:
    rng = random.Random(7)
    for with_elapsed in (False, True):
        utterances = [random_utterance(rng, with_elapsed) for _ in range(40)]
        utterances.insert(5, UtteranceTiming([], 3000.0, 4, [] if with_elapsed else None))
        theirs = simuleval_scores(simuleval_scorers, utterances, computation_aware=False)
        if with_elapsed:
            theirs |= simuleval_scores(simuleval_scorers, utterances, computation_aware=True)
        assert corpus_latency_scores(utterances) == pytest.approx(theirs, rel=1e-12)
