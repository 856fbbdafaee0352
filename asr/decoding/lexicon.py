"""A word list for modified beam search over word pieces: hypotheses that spell words outside it pay a penalty.

A small transducer trained on little data spells many words that do not exist ("taking" -> "chicking"):
on the synth test set, about a third of the substitutions of the 22k-batch model were such non-words whose
reference is an ordinary word. The search counts, for every hypothesis, the words of its text that are not
in the list, the last (unfinished) word counting as soon as no listed word starts with it; the count times
``oov_penalty`` is subtracted from the hypothesis's ranking score (:func:`asr.decoding.modified_beam_search`).
The count is a function of the token sequence, so merging hypotheses keeps it. Unlike a hard constraint
(icefall's LG graph), a word missing from the list still wins when the audio is clear enough.

Words are told apart by the tokenizer's word-start marker ``▁`` (SentencePiece), so this needs a BPE
tokenizer; a character table (Mandarin) has no word boundaries and is refused.
"""

from __future__ import annotations

import bisect
import gzip
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

WORD_START = "\u2581"  # SentencePiece's "▁"


class Lexicon:
    """Known words and, for the token inventory ``pieces`` (id -> piece), what each token does to a count
    of unknown words.

    Args:
        words: the known words, in the case of the transcripts.
        pieces: every token id's piece; a piece starting with ``▁`` starts a word. Special symbols
            (``<blk>``, ``<unk>``) are never part of a known word.
    """

    def __init__(self, words: Iterable[str], pieces: Sequence[str]):
        self.words = frozenset(w for w in words if w)
        if not self.words:
            raise ValueError("the lexicon has no words")
        if not any(p.startswith(WORD_START) for p in pieces):
            raise ValueError(f"no token starts with the word marker {WORD_START!r}: a lexicon needs word pieces")
        self._sorted = sorted(self.words)
        self.starts_word = [p.startswith(WORD_START) for p in pieces]
        self.body = [p[1:] if s else p for p, s in zip(pieces, self.starts_word)]
        # A word-start token's own contribution does not depend on the previous word.
        self._start_bad = np.array(
            [s and not self.is_prefix(b) for s, b in zip(self.starts_word, self.body)], dtype=np.int8
        )
        self._continues = [v for v, s in enumerate(self.starts_word) if not s]
        self._deltas: dict[str, np.ndarray] = {}

    @classmethod
    def from_files(cls, paths: Iterable[str | Path], pieces: Sequence[str]) -> Lexicon:
        """Every whitespace-separated token of the files (word lists or plain text, ``.gz`` read as gzip),
        put in the case the pieces use: lowercased when the pieces have no upper-case letter, uppercased
        when they have no lower-case letter (a word the tokens cannot spell would never be matched)."""
        letters = "".join(pieces)
        has_upper = any(c.isupper() for c in letters)
        has_lower = any(c.islower() for c in letters)
        words: set[str] = set()
        for path in paths:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"lexicon {path}: no such file")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8", errors="replace") as f:
                for line in f:
                    words.update(line.split())
        if not has_upper:
            words = {w.lower() for w in words}
        elif not has_lower:
            words = {w.upper() for w in words}
        return cls(words, pieces)

    def __len__(self) -> int:
        return len(self.words)

    def is_prefix(self, text: str) -> bool:
        """Whether some known word starts with ``text`` (the empty string is a prefix of every word)."""
        i = bisect.bisect_left(self._sorted, text)
        return i < len(self._sorted) and self._sorted[i].startswith(text)

    def next_partial(self, partial: str, token: int) -> str:
        """The unfinished last word after appending ``token`` (not blank) to a text ending in ``partial``."""
        return self.body[token] if self.starts_word[token] else partial + self.body[token]

    def deltas(self, partial: str) -> np.ndarray:
        """``(V,)`` int8: how appending each token changes the unknown-word count of a text whose unfinished
        last word is ``partial`` (the caller zeroes blank's column). Cached per ``partial``."""
        cached = self._deltas.get(partial)
        if cached is not None:
            return cached
        partial_bad = not self.is_prefix(partial)
        # A word-start token finishes ``partial``: it now counts as a word, no longer as a prefix.
        finished_bad = bool(partial) and partial not in self.words
        out = self._start_bad + np.int8(int(finished_bad) - int(partial_bad))
        out[self._continues] = 0
        if not partial_bad:  # a bad prefix stays bad, and is already counted
            for v in self._continues:
                out[v] = not self.is_prefix(partial + self.body[v])
        self._deltas[partial] = out
        return out

    def final_delta(self, partial: str) -> int:
        """The change in the count when the text ends: its unfinished last word becomes a word."""
        return int(bool(partial) and partial not in self.words) - int(not self.is_prefix(partial))
