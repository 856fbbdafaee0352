"""Token n-gram language model: interpolated modified Kneser-Ney, stored in ARPA backoff form.

The model works on token ids of our tokenizers (``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2, pieces
from 3). Id 1 plays both sentence symbols: as the first token of a context it is ``<s>``, as the
predicted token it is ``</s>``; blank never enters the model. The LM vocabulary is therefore every id
but 0: ``</s>``, ``<unk>`` and the pieces (``V - 1`` words for a tokenizer of ``V`` ids).

Estimation (Chen & Goodman's interpolated modified Kneser-Ney, as KenLM's ``lmplz`` does it):

* counts ``a``: the highest order uses raw counts; a lower-order n-gram its continuation count (the
  number of distinct tokens seen before it), except one starting with ``<s>``, which nothing can
  precede and which keeps its raw count;
* three discounts per order from the counts of counts ``t_k`` of ``a``:
  ``Y = t1 / (t1 + 2 t2)``, ``D_k = k - (k + 1) Y t_{k+1} / t_k`` for ``k = 1, 2, 3+``;
* ``p(w | h) = (a(hw) - D(a(hw))) / a(h·) + gamma(h) p(w | h')`` with
  ``gamma(h) = (D1 N1(h·) + D2 N2(h·) + D3 N3+(h·)) / a(h·)``, ``h'`` is ``h`` without its first
  token, and below the unigrams a uniform distribution over the ``V - 1`` words.

Optional pruning drops n-grams of order >= 2 whose raw count is below ``min_counts[order - 1]``; the
kept n-grams keep their interpolated probabilities and each backoff weight takes the mass of the
dropped ones, so that every context's distribution still sums to one.

Queries for decoding take a state, the tuple of the last ``order - 1`` ids (start state ``(1,)``, i.e.
``(<s>,)``), and return dense natural-log probabilities over all ids, cached per state.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
import os
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.textio import open_text

log = logging.getLogger(__name__)

__all__ = ["NgramLM", "adjusted_counts", "modified_kn_discounts", "ngram_counts"]

BLANK_ID = 0
SENTENCE_ID = 1  # <s> as the first token of a context, </s> as a predicted token
BOS, EOS = "<s>", "</s>"
UNK = "<unk>"  # id 2: a word LM's out-of-vocabulary word
LN10 = math.log(10.0)
ARPA_LOG10_ZERO = -99.0  # what ARPA files write for log10(0) (the unigram <s>)


# ------------------------------------------------------------------------------------- counting
def _check_code_range(vocab_size: int, order: int) -> None:
    if vocab_size**order >= 2**63:
        raise ValueError(f"an order-{order} model over {vocab_size} ids does not fit 64-bit n-gram codes")


def _encode(ids: Sequence[int], vocab_size: int) -> int:
    code = 0
    for i in ids:
        code = code * vocab_size + i
    return code


def _decode(code: int, n: int, vocab_size: int) -> tuple[int, ...]:
    ids = []
    for _ in range(n):
        code, i = divmod(code, vocab_size)
        ids.append(i)
    return tuple(reversed(ids))


def ngram_counts(
    sequences: Iterable[Sequence[int]], order: int, vocab_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raw counts of every n-gram, n = 1..order, in the sentences ``<s> ids </s>``.

    An n-gram is coded ``sum_j ids[j] V^(n-1-j)`` (id 1 is ``<s>`` first, ``</s>`` last); the lone
    unigram ``<s>`` is not counted. Returns per order ``(codes, counts)``, codes sorted.
    """
    _check_code_range(vocab_size, order)
    pieces, positions = [], []
    for index, ids in enumerate(sequences):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 2 or ids.max() >= vocab_size):
            bad = int(ids[(ids < 2) | (ids >= vocab_size)][0])
            raise ValueError(f"sequence {index}: token id {bad} is not a word id in [2, {vocab_size})")
        pieces.append(np.concatenate([[SENTENCE_ID], ids, [SENTENCE_ID]]))
        positions.append(np.arange(ids.size + 2)[::-1])  # tokens left in the sentence after this one
    if not pieces:
        raise ValueError("no sentences to count")
    tokens = np.concatenate(pieces)
    remaining = np.concatenate(positions)
    is_start = np.concatenate([np.arange(p.size) == 0 for p in pieces])
    result = []
    for n in range(1, order + 1):
        starts = np.flatnonzero(remaining >= n - 1)
        if n == 1:
            starts = starts[~is_start[starts]]
        codes = np.zeros(starts.size, dtype=np.int64)
        for j in range(n):
            codes = codes * vocab_size + tokens[starts + j]
        result.append(np.unique(codes, return_counts=True))
    return result


def adjusted_counts(raw: list[tuple[np.ndarray, np.ndarray]], vocab_size: int) -> list[np.ndarray]:
    """Kneser-Ney counts aligned with ``raw``'s codes: raw counts for the highest order and for
    n-grams starting with ``<s>``, continuation counts (distinct left neighbours) for the rest."""
    order = len(raw)
    result = []
    for n in range(1, order + 1):
        codes, counts = raw[n - 1]
        if n == order:
            result.append(counts.copy())
            continue
        suffixes, continuation = np.unique(raw[n][0] % vocab_size**n, return_counts=True)
        adjusted = np.zeros_like(counts)
        found = np.searchsorted(suffixes, codes)
        found = np.minimum(found, suffixes.size - 1)
        has_left = suffixes[found] == codes
        adjusted[has_left] = continuation[found[has_left]]
        if n >= 2:
            starts_sentence = codes // vocab_size ** (n - 1) == SENTENCE_ID
            adjusted[starts_sentence] = counts[starts_sentence]
        result.append(adjusted)
    return result


def modified_kn_discounts(counts_of_counts: Sequence[int]) -> tuple[float, float, float]:
    """``(D1, D2, D3+)`` from ``t1..t4`` (how many n-grams have count 1, 2, 3, 4).

    Where the counts of counts leave a discount undefined or outside ``(0, k]`` (tiny corpora), that
    discount falls back to Ney's single estimate ``Y = t1 / (t1 + 2 t2)`` (0.5 when ``t1 = 0``).
    """
    t = [float(c) for c in counts_of_counts[:4]] + [0.0] * (4 - len(counts_of_counts[:4]))
    y = t[0] / (t[0] + 2 * t[1]) if t[0] > 0 else 0.5
    discounts = []
    for k in (1, 2, 3):
        d = k - (k + 1) * y * t[k] / t[k - 1] if t[k - 1] > 0 else float("nan")
        if not 0 < d <= k:
            d = y
        discounts.append(d)
    return discounts[0], discounts[1], discounts[2]


# ------------------------------------------------------------------------------------- storage
@dataclass
class _Order:
    """The n-grams of one order ``n``, grouped by context (their first ``n - 1`` ids, coded)."""

    contexts: np.ndarray  # (C,) int64, sorted
    backoffs: np.ndarray  # (C,) float64: ln backoff weight of each context
    offsets: np.ndarray  # (C + 1,) int64: context i predicts words[offsets[i]:offsets[i + 1]]
    words: np.ndarray  # (E,) int64
    log_probs: np.ndarray  # (E,) float64: ln p(word | context)

    @classmethod
    def build(
        cls,
        contexts: np.ndarray,
        words: np.ndarray,
        log_probs: np.ndarray,
        backoff_contexts: np.ndarray,
        backoffs: np.ndarray,
    ) -> _Order:
        """From unsorted entries; a context with a backoff weight but no entries is kept too."""
        contexts, words = np.asarray(contexts, np.int64), np.asarray(words, np.int64)
        order = np.lexsort((words, contexts))
        contexts, words, log_probs = contexts[order], words[order], np.asarray(log_probs, np.float64)[order]
        backoff_contexts = np.asarray(backoff_contexts, np.int64)
        unique = np.union1d(contexts, backoff_contexts)
        offsets = np.append(np.searchsorted(contexts, unique), contexts.size).astype(np.int64)
        weights = np.zeros(unique.size)
        weights[np.searchsorted(unique, backoff_contexts)] = np.asarray(backoffs, np.float64)
        return cls(unique, weights, offsets, words, log_probs)

    def find(self, code: int) -> int:
        """Index of a context, -1 when absent."""
        i = int(np.searchsorted(self.contexts, code))
        return i if i < self.contexts.size and self.contexts[i] == code else -1

    @property
    def num_entries(self) -> int:
        return int(self.words.size)


class NgramLM:
    """A backoff n-gram model over token ids (see the module docstring for the conventions).

    Build one with :meth:`train` or :meth:`load_arpa`. ``symbols[i]`` is the string of id ``i`` (the
    tokenizer's pieces), used for ARPA files.
    """

    def __init__(self, order: int, symbols: Sequence[str], orders: list[_Order], cache_bytes: int = 256 << 20):
        self.order = order
        self.symbols = list(symbols)
        self.vocab_size = len(self.symbols)
        self._orders = orders  # _orders[k]: n-grams of order k + 1 (contexts of length k)
        # dense float32 distributions per state; the older half is dropped when full
        self._cache: dict[tuple[int, ...], tuple[np.ndarray, float]] = {}
        self.cache_size = max(2, cache_bytes // (4 * self.vocab_size))

    # ---------------------------------------------------------------- estimation
    @classmethod
    def train(
        cls,
        sequences: Iterable[Sequence[int]],
        symbols: Sequence[str],
        order: int = 4,
        min_counts: Sequence[int] | None = None,
        discounts: Sequence[tuple[float, float, float]] | None = None,
    ) -> NgramLM:
        """Estimate an interpolated modified Kneser-Ney model.

        Args:
            sequences: token-id sequences (ids in ``[2, len(symbols))``), one per sentence.
            symbols: the string of every id of the tokenizer.
            order: the n of the model.
            min_counts: per order, the raw count an n-gram needs to be kept (``min_counts[0]``, the
                unigrams, must be 1); non-decreasing, so that a kept n-gram's prefix and suffix are kept.
            discounts: per order ``(D1, D2, D3+)`` to use instead of the estimates from counts of counts.
        """
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        vocab_size = len(symbols)
        _check_symbols(symbols)
        min_counts = list(min_counts) if min_counts is not None else [1] * order
        if len(min_counts) != order or min_counts[0] != 1 or any(b < a for a, b in itertools.pairwise(min_counts)):
            raise ValueError(f"min_counts must list {order} non-decreasing counts starting with 1, got {min_counts}")
        if discounts is not None and len(discounts) != order:
            raise ValueError(f"discounts must give (D1, D2, D3+) for each of the {order} orders")

        raw = ngram_counts(sequences, order, vocab_size)
        adjusted = adjusted_counts(raw, vocab_size)
        num_words = vocab_size - 1  # </s>, <unk> and the pieces
        interpolated: list[np.ndarray] = []  # per order, ln p of every n-gram (before pruning)
        orders: list[_Order] = []
        for n in range(1, order + 1):
            codes, counts = raw[n - 1]
            a = adjusted[n - 1]
            if discounts is not None:
                d = np.asarray(discounts[n - 1], dtype=np.float64)
            else:
                d = np.asarray(modified_kn_discounts(np.bincount(a, minlength=5)[1:5].tolist()))
                log.info("order %d: %d n-grams, discounts %.4f %.4f %.4f", n, codes.size, *d)
            discount = d[np.minimum(a, 3) - 1]
            contexts, words = codes // vocab_size, codes % vocab_size
            unique_contexts, group = np.unique(contexts, return_inverse=True)
            totals = np.bincount(group, weights=a)
            left_over = np.bincount(group, weights=discount)  # = D1 N1 + D2 N2 + D3 N3+
            gamma = left_over / totals
            if n == 1:
                lower = np.full(codes.size, 1.0 / num_words)
            else:
                lower_codes = codes % vocab_size ** (n - 1)
                lower = np.exp(interpolated[-1][np.searchsorted(raw[n - 2][0], lower_codes)])
            probs = (a - discount) / totals[group] + gamma[group] * lower
            interpolated.append(np.log(probs))

            if n == 1:  # every word gets a unigram: the unseen ones their share of the uniform mass
                unigram = np.full(vocab_size, math.log(gamma[0] / num_words))
                unigram[words] = np.log(probs)
                all_words = np.arange(1, vocab_size)
                orders.append(_Order.build(np.zeros(num_words), all_words, unigram[1:], [], []))
                continue
            keep = counts >= min_counts[n - 1]
            # Backoff weight of each context: gamma plus the discounted mass of its dropped n-grams,
            # renormalised over the lower-order mass of the words it no longer predicts itself.
            dropped = np.bincount(
                group[~keep], weights=((a - discount) / totals[group])[~keep], minlength=unique_contexts.size
            )
            lower_kept = np.bincount(group[keep], weights=lower[keep], minlength=unique_contexts.size)
            has_kept = np.bincount(group[keep], minlength=unique_contexts.size) > 0
            backoff = gamma + dropped / np.maximum(1.0 - lower_kept, 1e-300)
            orders.append(
                _Order.build(
                    contexts[keep],
                    words[keep],
                    np.log(probs[keep]),
                    unique_contexts[has_kept],
                    np.log(backoff[has_kept]),
                )
            )
        return cls(order, symbols, orders)

    # ---------------------------------------------------------------- queries
    @property
    def start_state(self) -> tuple[int, ...]:
        return (SENTENCE_ID,) if self.order > 1 else ()

    def next_state(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        """The state after ``token`` (a word id, >= 2): the last ``order - 1`` ids."""
        if self.order == 1:
            return ()
        return (*state, token)[-(self.order - 1) :]

    def log_probs(self, state: tuple[int, ...]) -> np.ndarray:
        """``(V,)`` float32 natural-log ``p(id | state)`` for every id; ids 0 (blank) and 1
        (``</s>``, see :meth:`final_log_prob`) are ``-inf``. Cached per state."""
        return self._dense(state)[0]

    def final_log_prob(self, state: tuple[int, ...]) -> float:
        """Natural-log ``p(</s> | state)``."""
        return self._dense(state)[1]

    def token_log_prob(self, state: tuple[int, ...], token: int) -> float:
        """``ln p(token | state)`` by walking the backoff chain (token 1 means ``</s>``); the
        uncached reference of :meth:`log_probs`."""
        if token == BLANK_ID:
            return -math.inf
        context = tuple(state)[len(state) - min(len(state), self.order - 1) :]
        backoff = 0.0
        while True:
            level = self._orders[len(context)]
            i = level.find(_encode(context, self.vocab_size))
            if i >= 0:
                start, end = level.offsets[i], level.offsets[i + 1]
                j = start + int(np.searchsorted(level.words[start:end], token))
                if j < end and level.words[j] == token:
                    return backoff + float(level.log_probs[j])
                backoff += float(level.backoffs[i])
            if not context:
                return -math.inf
            context = context[1:]

    def sentence_log_prob(self, tokens: Sequence[int]) -> float:
        """``ln p(tokens </s> | <s>)``."""
        state, total = self.start_state, 0.0
        for token in tokens:
            total += self.token_log_prob(state, token)
            state = self.next_state(state, token)
        return total + self.token_log_prob(state, SENTENCE_ID)

    @property
    def num_ngrams(self) -> list[int]:
        """Entries per order as written to ARPA (the unigram ``<s>`` included)."""
        counts = [level.num_entries for level in self._orders]
        counts[0] += 1
        return counts

    def _dense(self, state: tuple[int, ...]) -> tuple[np.ndarray, float]:
        cached = self._cache.get(state)
        if cached is not None:
            return cached
        context = tuple(state)[len(state) - min(len(state), self.order - 1) :]
        index = self._orders[len(context)].find(_encode(context, self.vocab_size))
        if index < 0 and context:  # not a context of the model: same distribution as its suffix
            result = self._dense(context[1:])
        else:
            level = self._orders[len(context)]
            if context:
                lower, lower_final = self._dense(context[1:])
                backoff = level.backoffs[index]
                dense = lower.astype(np.float64) + backoff
                dense[SENTENCE_ID] = lower_final + backoff
            else:
                dense = np.full(self.vocab_size, -np.inf)
            start, end = level.offsets[index], level.offsets[index + 1]
            dense[level.words[start:end]] = level.log_probs[start:end]
            final = float(dense[SENTENCE_ID])
            dense[SENTENCE_ID] = -np.inf
            dense[BLANK_ID] = -np.inf
            result = (dense.astype(np.float32), final)
        if len(self._cache) >= self.cache_size:  # drop the older half (dicts keep insertion order)
            for key in list(self._cache)[: self.cache_size // 2]:
                del self._cache[key]
        self._cache[state] = result
        return result

    # ---------------------------------------------------------------- ARPA
    def save_arpa(self, path: str | Path) -> None:
        """Write the model as an ARPA file (gzip'ed when ``path`` ends in ``.gz``), all or nothing: log10
        probabilities and backoff weights, tokens as their symbol strings."""
        path = Path(path)
        # Written beside the target and renamed over it, so an interrupted run leaves no half file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" + (".gz" if path.name.endswith(".gz") else ""))
        try:
            with open_text(tmp, "w") as f:
                f.write("\n\\data\\\n")
                for n, count in enumerate(self.num_ngrams, start=1):
                    f.write(f"ngram {n}={count}\n")
                for n in range(1, self.order + 1):
                    f.write(f"\n\\{n}-grams:\n")
                    level = self._orders[n - 1]
                    higher = self._orders[n] if n < self.order else None
                    if n == 1 and higher is not None:
                        i = higher.find(SENTENCE_ID)
                        bow = higher.backoffs[i] / LN10 if i >= 0 else 0.0
                        f.write(f"{ARPA_LOG10_ZERO:.7g}\t{BOS}\t{bow:.7g}\n")
                    elif n == 1:
                        f.write(f"{ARPA_LOG10_ZERO:.7g}\t{BOS}\n")
                    codes = np.repeat(level.contexts, np.diff(level.offsets)) * self.vocab_size + level.words
                    backoffs = np.zeros(codes.size)
                    if (
                        higher is not None and higher.contexts.size
                    ):  # an n-gram's backoff weight is stored with the context it makes
                        found = np.minimum(np.searchsorted(higher.contexts, codes), higher.contexts.size - 1)
                        match = (higher.contexts[found] == codes) & (level.words != SENTENCE_ID)
                        backoffs[match] = higher.backoffs[found[match]] / LN10
                    for c, context in enumerate(level.contexts.tolist()):
                        names = " ".join(self._context_names(_decode(context, n - 1, self.vocab_size)) + [""])
                        start, end = level.offsets[c], level.offsets[c + 1]
                        for word, lp, bow in zip(
                            level.words[start:end].tolist(),
                            level.log_probs[start:end].tolist(),
                            backoffs[start:end].tolist(),
                        ):
                            name = EOS if word == SENTENCE_ID else self.symbols[word]
                            if bow != 0.0:
                                f.write(f"{lp / LN10:.7g}\t{names}{name}\t{bow:.7g}\n")
                            else:
                                f.write(f"{lp / LN10:.7g}\t{names}{name}\n")
                f.write("\n\\end\\\n")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _context_names(self, ids: tuple[int, ...]) -> list[str]:
        return [BOS if i == SENTENCE_ID else self.symbols[i] for i in ids]

    @classmethod
    def load_arpa_words(cls, path: str | Path) -> NgramLM:
        """Read an ARPA file over words (``asr lm train --words``): the symbol table is ``<blk>``,
        ``<sos/eos>``, ``<unk>`` and then the file's other unigrams in file order."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ARPA file")
        symbols = ["<blk>", "<sos/eos>", UNK]
        in_unigrams = False
        for line_no, line in _arpa_lines(path):
            if line.startswith("\\"):
                if in_unigrams:
                    break
                in_unigrams = line == "\\1-grams:"
                continue
            if in_unigrams:
                fields = line.split()
                if len(fields) < 2:
                    raise ValueError(f"{path}:{line_no}: expected a log10 prob and a word")
                if fields[1] not in (BOS, EOS, UNK):
                    symbols.append(fields[1])
        return cls.load_arpa(path, symbols)

    @classmethod
    def load_arpa(cls, path: str | Path, symbol_table: Sequence[str]) -> NgramLM:
        """Read an ARPA file (``.gz`` too) whose tokens are ``symbol_table``'s strings (``<s>`` and
        ``</s>`` map to id 1). A token missing from the table is an error naming the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such ARPA file")
        _check_symbols(symbol_table)
        started = time.perf_counter()
        vocab_size = len(symbol_table)
        ids = {s: i for i, s in enumerate(symbol_table) if i > SENTENCE_ID}
        declared: dict[int, int] = {}
        entries: list[tuple[list[int], list[int], list[float]]] = []  # per order: contexts, words, ln p
        backoffs: list[tuple[list[int], list[float]]] = []  # per order: n-gram code, ln bow
        n = 0
        section_lines: list[int] = []  # n-gram lines per section, against the header's counts
        ended = False
        for line_no, line in _arpa_lines(path):
            if line.startswith("\\"):
                if line == "\\end\\":
                    ended = True
                    break
                if line.endswith("-grams:"):
                    n = int(line[1:].split("-")[0])
                    if n != len(entries) + 1:
                        raise ValueError(f"{path}:{line_no}: section {line} out of order")
                    _check_code_range(vocab_size, n)
                    entries.append(([], [], []))
                    backoffs.append(([], []))
                    section_lines.append(0)
                continue
            if n == 0:
                if line.startswith("ngram "):
                    order, _, count = line[6:].partition("=")
                    if not (order.strip().isdigit() and count.strip().isdigit()):
                        raise ValueError(f"{path}:{line_no}: expected 'ngram N=count', got {line!r}")
                    declared[int(order)] = int(count)
                continue
            section_lines[-1] += 1
            fields = line.split()
            if len(fields) not in (n + 1, n + 2):
                raise ValueError(f"{path}:{line_no}: expected {n} tokens, a log10 prob and maybe a backoff")
            code = 0
            for position, name in enumerate(fields[1 : n + 1]):
                token = ids.get(name)
                if token is None:
                    if name == BOS and position == 0 or name == EOS and position == n - 1:
                        token = SENTENCE_ID
                    else:
                        raise ValueError(f"{path}:{line_no}: token {name!r} is not in the symbol table")
                code = code * vocab_size + token
            if len(fields) == n + 2 and fields[n] != EOS:  # </s> is never a context
                backoffs[-1][0].append(code)
                backoffs[-1][1].append(float(fields[n + 1]) * LN10)
            if n == 1 and fields[1] == BOS:
                continue  # <s> is never predicted: its line only carries its backoff weight
            contexts, words, log_probs = entries[-1]
            contexts.append(code // vocab_size)
            words.append(code % vocab_size)
            log_probs.append(float(fields[0]) * LN10)
        if not entries:
            raise ValueError(f"{path}: no n-gram sections (is it an ARPA file?)")
        if not ended:
            raise ValueError(f"{path}: ends without the \\end\\ line (truncated?)")
        _check_arpa_counts(path, declared, section_lines)
        orders = []
        for k, (contexts, words, log_probs) in enumerate(entries):
            # backoff weights of (k)-grams belong to the contexts of order k + 1
            lower_backoffs = backoffs[k - 1] if k > 0 else ([], [])
            orders.append(
                _Order.build(
                    np.array(contexts, np.int64),
                    np.array(words, np.int64),
                    np.array(log_probs),
                    np.array(lower_backoffs[0], np.int64),
                    np.array(lower_backoffs[1]),
                )
            )
        model = cls(len(entries), symbol_table, orders)
        log.info("loaded %s: %s n-grams in %.1f s", path, model.num_ngrams, time.perf_counter() - started)
        return model


def _arpa_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the non-empty lines of an ARPA file; a torn gzip or a file that
    is not text is a ValueError naming the file and the line where reading stopped."""
    line_no = 0
    try:
        with open_text(path, "r") as f:
            for line_no, line in enumerate(f, start=1):
                line = line.strip()
                if line:
                    yield line_no, line
    except EOFError:
        raise ValueError(f"{path}: truncated gzip file (it ends inside line {line_no + 1})") from None
    except (zlib.error, gzip.BadGzipFile) as error:
        raise ValueError(f"{path}: corrupt gzip data after line {line_no}: {error}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}:{line_no + 1}: not UTF-8 text (is it an ARPA file?)") from None


def _check_arpa_counts(path: Path, declared: dict[int, int], section_lines: list[int]) -> None:
    """The ``ngram N=count`` header must list exactly the file's sections, each with its line count:
    a mismatch means a torn or hand-edited file, which would otherwise decode with wrong probabilities
    or a lower order than the user asked for."""
    if not declared:
        raise ValueError(f"{path}: no 'ngram N=count' lines in the \\data\\ header")
    for order in sorted(set(declared) | set(range(1, len(section_lines) + 1))):
        count = declared.get(order)
        found = section_lines[order - 1] if order <= len(section_lines) else None
        if count is None:
            raise ValueError(
                f"{path}: the header declares no count of {order}-grams but the file has a section of {found}"
            )
        if found is None:
            raise ValueError(
                f"{path}: the header declares {count} {order}-grams but the file has no \\{order}-grams: section"
            )
        if found != count:
            raise ValueError(
                f"{path}: the header declares {count} {order}-grams, the \\{order}-grams: section has {found}"
            )


def _check_symbols(symbols: Sequence[str]) -> None:
    if len(symbols) < 3:
        raise ValueError(f"a symbol table needs <blk>, <sos/eos>, <unk> and tokens; got {len(symbols)} symbols")
    if len(set(symbols)) != len(symbols):
        raise ValueError("symbol table lists a symbol twice")
    for i, symbol in enumerate(symbols[2:], start=2):
        if not symbol or any(ch.isspace() for ch in symbol) or symbol in (BOS, EOS):
            raise ValueError(f"symbol {i} ({symbol!r}) cannot be written to ARPA (empty, space or <s>/</s>)")
