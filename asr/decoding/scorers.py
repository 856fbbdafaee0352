"""Scorers: terms that beam search adds to a hypothesis's ranking score.

A scorer gives every hypothesis a score that is a function of its token sequence, built up one token at a
time: a state per hypothesis, the added score of each possible next token in that state, the state after
a token, and a last term when the text ends. Modified beam search (:mod:`asr.decoding.beam_search`) ranks
hypotheses by their transducer log-probability plus the sum of their scorers' scores; since the scores
depend on the token sequence only, hypotheses merged by the search share them.

- :class:`TokenLmScorer`: shallow fusion with an n-gram LM over the model's tokens.
- :class:`LexiconScorer`: a penalty per word that is not in a word list.
- :class:`WordLmScorer`: an n-gram LM over words, scored as words end.
"""

from __future__ import annotations

import abc
from collections.abc import Hashable, Sequence

import numpy as np

from asr.decoding.lexicon import Lexicon
from asr.lm import NgramLM

__all__ = ["Scorer", "TokenLmScorer", "LexiconScorer", "WordLmScorer"]

SENTENCE_END = 1  # ``</s>`` (``<sos/eos>``) in the n-gram LMs' symbol tables


class Scorer(abc.ABC):
    """One term of the ranking score. States are hashable values that depend on the tokens only."""

    @abc.abstractmethod
    def init_state(self) -> Hashable:
        """The state before any token."""

    @abc.abstractmethod
    def score(self, states: Sequence[Hashable]) -> np.ndarray:
        """``(M, V)`` float64: the score added by appending each token id to each of ``M`` hypotheses in
        ``states`` (-inf forbids a token). The search ignores the blank column."""

    @abc.abstractmethod
    def advance(self, state: Hashable, token: int) -> Hashable:
        """The state after appending ``token`` (not blank)."""

    def final(self, state: Hashable) -> float:
        """The score added when the text ends in ``state``."""
        return 0.0


def _check_scale(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


class TokenLmScorer(Scorer):
    """Shallow fusion with an n-gram LM over the model's token ids.

    A token ``v`` adds ``lm_scale * ln p_LM(v | state) + lm_bonus``; the text's end adds
    ``lm_scale * ln p_LM(</s> | state)`` when ``lm_final``. The bonus offsets the LM's cost of every token,
    which blank does not pay, and so the deletions that fusion causes. ``lm_scale == 0`` adds only the bonus.

    Args:
        lm: an :class:`asr.lm.NgramLM` whose symbols are the model's tokens (same ids).
        lm_scale: weight of the LM log-probability (>= 0).
        lm_bonus: reward per emitted token.
        lm_final: score the end of sentence when the text ends.
    """

    def __init__(self, lm: NgramLM, lm_scale: float, lm_bonus: float = 0.0, lm_final: bool = True):
        _check_scale("lm_scale", lm_scale)
        self.lm, self.lm_scale, self.lm_bonus, self.lm_final = lm, lm_scale, lm_bonus, lm_final
        self.vocab_size = len(lm.symbols)

    def init_state(self) -> tuple[int, ...]:
        return self.lm.start_state if self.lm_scale > 0 else ()

    def score(self, states: Sequence[tuple[int, ...]]) -> np.ndarray:
        if self.lm_scale == 0:
            return np.full((len(states), self.vocab_size), self.lm_bonus)
        return self.lm_scale * np.stack([self.lm.log_probs(state) for state in states]) + self.lm_bonus

    def advance(self, state: tuple[int, ...], token: int) -> tuple[int, ...]:
        return self.lm.next_state(state, token) if self.lm_scale > 0 else ()

    def final(self, state: tuple[int, ...]) -> float:
        if self.lm_scale == 0 or not self.lm_final:
            return 0.0
        return self.lm_scale * self.lm.final_log_prob(state)


class LexiconScorer(Scorer):
    """``-oov_penalty`` per word of the text that is not in ``lexicon``; the unfinished last word counts as
    soon as no listed word starts with it (:mod:`asr.decoding.lexicon`). The state is that unfinished word.
    """

    def __init__(self, lexicon: Lexicon, oov_penalty: float):
        _check_scale("oov_penalty", oov_penalty)
        self.lexicon, self.oov_penalty = lexicon, oov_penalty

    def init_state(self) -> str:
        return ""

    def score(self, states: Sequence[str]) -> np.ndarray:
        return -self.oov_penalty * np.stack([self.lexicon.deltas(partial) for partial in states]).astype(np.float64)

    def advance(self, state: str, token: int) -> str:
        return self.lexicon.next_partial(state, token)

    def final(self, state: str) -> float:
        return -self.oov_penalty * self.lexicon.final_delta(state)


class WordLmScorer(Scorer):
    """An n-gram LM over words (``asr lm train --words``), scored as words end.

    When a token starts a new word, the word it finishes adds ``word_lm_scale * ln p(word | previous words)
    + word_bonus`` (a word outside the LM's vocabulary is its ``<unk>``); the text's end finishes the last
    word and adds ``word_lm_scale * ln p(</s> | ...)``. The lexicon's pieces tell where words start.
    The state is the LM's state after the finished words and the unfinished last word.

    Args:
        word_lm: the word LM (symbols are words; ids 0-2 are ``<blk>``, ``<sos/eos>``, ``<unk>``).
        lexicon: the model's word pieces (:class:`asr.decoding.lexicon.Lexicon`).
        word_lm_scale: weight of the word LM (>= 0).
        word_bonus: reward per finished word, against the deletions the LM's cost per word causes.
    """

    def __init__(self, word_lm: NgramLM, lexicon: Lexicon | None, word_lm_scale: float, word_bonus: float = 0.0):
        if lexicon is None:
            raise ValueError("a word LM needs a lexicon: it tells where the words of a hypothesis end")
        _check_scale("word_lm_scale", word_lm_scale)
        self.word_lm, self.lexicon = word_lm, lexicon
        self.word_lm_scale, self.word_bonus = word_lm_scale, word_bonus
        self._word_ids = {symbol: i for i, symbol in enumerate(word_lm.symbols) if i > 2}
        self._starts_word = np.asarray(lexicon.starts_word, dtype=np.float64)
        self._finished: dict[tuple[tuple[int, ...], str], tuple[float, tuple[int, ...]]] = {}

    def _finish(self, lm_state: tuple[int, ...], word: str) -> tuple[float, tuple[int, ...]]:
        """The score of finishing ``word`` in ``lm_state`` and the LM state after it; no word scores nothing."""
        if not word:
            return 0.0, lm_state
        key = (lm_state, word)
        found = self._finished.get(key)
        if found is None:
            word_id = self._word_ids.get(word, 2)  # <unk>
            found = (
                self.word_lm_scale * self.word_lm.token_log_prob(lm_state, word_id) + self.word_bonus,
                self.word_lm.next_state(lm_state, word_id),
            )
            self._finished[key] = found
        return found

    def init_state(self) -> tuple[tuple[int, ...], str]:
        return self.word_lm.start_state, ""

    def score(self, states: Sequence[tuple[tuple[int, ...], str]]) -> np.ndarray:
        finished = np.array([self._finish(lm_state, partial)[0] for lm_state, partial in states])
        return finished[:, None] * self._starts_word[None, :]

    def advance(self, state: tuple[tuple[int, ...], str], token: int) -> tuple[tuple[int, ...], str]:
        lm_state, partial = state
        if self.lexicon.starts_word[token]:
            lm_state = self._finish(lm_state, partial)[1]
        return lm_state, self.lexicon.next_partial(partial, token)

    def final(self, state: tuple[tuple[int, ...], str]) -> float:
        last_score, lm_state = self._finish(*state)
        return last_score + self.word_lm_scale * self.word_lm.token_log_prob(lm_state, SENTENCE_END)
