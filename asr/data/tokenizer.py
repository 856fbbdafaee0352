"""Tokenizers with icefall's id layout: ``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2.

Two kinds share one interface (``encode``, ``encode_batch``, ``decode``, ``vocab_size``, ``blank_id``,
``unk_id``, ``sos_id``, ``eos_id``, ``id_to_token``):

* ``BpeTokenizer``: a sentencepiece model (``LANG/bpe.model``), trained like icefall's
  ``local/train_bpe_model.py`` so that icefall ``bpe.model`` files load unchanged.
* ``CharTokenizer``: one token per character, for Mandarin (``LANG/tokens.txt``); spaces are dropped.

Symbols a tokenizer cannot represent become ``<unk>``; each distinct symbol is warned about once and
every occurrence is counted in ``unknown_counts``.

CLI: ``asr data tokenizer bpe (--text FILE | --cuts CUTS) --vocab-size N --out-dir LANG`` and
``asr data tokenizer chars (--text FILE | --cuts CUTS) --out-dir LANG``.
"""

from __future__ import annotations

import abc
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

__all__ = [
    "BLANK",
    "SOS_EOS",
    "UNK",
    "Tokenizer",
    "BpeTokenizer",
    "CharTokenizer",
    "train_bpe",
    "build_char_tokenizer",
    "load_tokenizer",
    "read_tokens",
    "write_tokens",
    "cut_texts",
]

BLANK, SOS_EOS, UNK = "<blk>", "<sos/eos>", "<unk>"
SPECIAL_SYMBOLS = (BLANK, SOS_EOS, UNK)  # at ids 0, 1, 2
_WORD_BOUNDARY = "\u2581"  # sentencepiece's "▁"

log = logging.getLogger(__name__)


class Tokenizer(abc.ABC):
    """Shared part of the tokenizers: the special ids and the count of unknown symbols."""

    blank_id: int = 0
    sos_id: int = 1
    eos_id: int = 1
    unk_id: int = 2

    def __init__(self, source: str) -> None:
        self.source = source  # the file the table came from, named in warnings
        self.unknown_counts: Counter[str] = Counter()

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, specials included."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; symbols outside the vocabulary become ``unk_id`` and are counted."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; blank and ``<sos/eos>`` ids are left out."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str:
        """The symbol of one id (IndexError outside ``[0, vocab_size)``)."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int:
        """The id of one symbol (``unk_id`` when it is not in the vocabulary)."""

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    @property
    def num_unknown(self) -> int:
        """How many symbols have been mapped to ``<unk>`` so far."""
        return sum(self.unknown_counts.values())

    def _count_unknown(self, symbols: Iterable[str]) -> None:
        for symbol in symbols:
            if symbol not in self.unknown_counts:
                code_point = f" (U+{ord(symbol):04X})" if len(symbol) == 1 else ""
                log.warning(
                    "symbol %r%s is not in %s; mapped to %s (%d unknown symbols so far)",
                    symbol,
                    code_point,
                    self.source,
                    UNK,
                    self.num_unknown + 1,
                )
            self.unknown_counts[symbol] += 1


class BpeTokenizer(Tokenizer):
    """A sentencepiece model laid out like icefall's: ``<blk>`` 0, ``<sos/eos>`` 1, ``<unk>`` 2."""

    def __init__(self, model_path: str | Path) -> None:
        model_path = Path(model_path)
        super().__init__(str(model_path))
        if not model_path.is_file():
            raise FileNotFoundError(f"{model_path}: no such sentencepiece model")
        self.sp = spm.SentencePieceProcessor(model_file=str(model_path))
        layout = [self.sp.id_to_piece(i) for i in range(min(3, self.sp.get_piece_size()))]
        if tuple(layout) != SPECIAL_SYMBOLS:
            raise ValueError(
                f"{model_path}: ids 0,1,2 are {layout}, expected {list(SPECIAL_SYMBOLS)} "
                "(train with `asr data tokenizer bpe` or icefall's train_bpe_model.py)"
            )
        pieces = (self.sp.id_to_piece(i) for i in range(3, self.sp.get_piece_size()))
        self._known_chars = {ch for piece in pieces for ch in piece if ch != _WORD_BOUNDARY}

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        ids = self.sp.encode(text)
        if self.unk_id in ids:
            self._note_unknown(text)
        return ids

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        texts = list(texts)
        batch = self.sp.encode(texts)
        for text, ids in zip(texts, batch):
            if self.unk_id in ids:
                self._note_unknown(text)
        return batch

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([i for i in ids if i not in (self.blank_id, self.sos_id)])

    def id_to_token(self, token_id: int) -> str:
        if not 0 <= token_id < self.vocab_size:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size}) of {self.source}")
        return self.sp.id_to_piece(token_id)

    def token_to_id(self, token: str) -> int:
        return self.sp.piece_to_id(token)

    def _note_unknown(self, text: str) -> None:
        normalized = self.sp.normalize(text)
        unknown = [ch for ch in normalized if not ch.isspace() and ch != _WORD_BOUNDARY and ch not in self._known_chars]
        self._count_unknown(unknown or [UNK])


class CharTokenizer(Tokenizer):
    """One token per character; whitespace is dropped (Mandarin transcripts)."""

    def __init__(self, tokens: dict[str, int], source: str = "the character table") -> None:
        super().__init__(source)
        _check_layout(tokens, source)
        self._token_to_id = dict(tokens)
        self._id_to_token = {i: t for t, i in tokens.items()}

    @classmethod
    def from_file(cls, tokens_txt: str | Path) -> CharTokenizer:
        return cls(read_tokens(tokens_txt), source=str(tokens_txt))

    @property
    def vocab_size(self) -> int:
        return len(self._token_to_id)

    def encode(self, text: str) -> list[int]:
        ids = []
        unknown = []
        for ch in text:
            if ch.isspace():
                continue
            token_id = self._token_to_id.get(ch)
            if token_id is None:
                unknown.append(ch)
                token_id = self.unk_id
            ids.append(token_id)
        if unknown:
            self._count_unknown(unknown)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._id_to_token[i] for i in ids if i not in (self.blank_id, self.sos_id))

    def id_to_token(self, token_id: int) -> str:
        if token_id not in self._id_to_token:
            raise IndexError(f"token id {token_id} out of range [0, {self.vocab_size}) of {self.source}")
        return self._id_to_token[token_id]

    def token_to_id(self, token: str) -> int:
        return self._token_to_id.get(token, self.unk_id)


def _check_layout(tokens: dict[str, int], source: str) -> None:
    ids = sorted(tokens.values())
    if ids != list(range(len(ids))):
        raise ValueError(f"{source}: token ids must be 0..{len(ids) - 1} without gaps or repeats")
    for expected_id, symbol in enumerate(SPECIAL_SYMBOLS):
        if tokens.get(symbol) != expected_id:
            raise ValueError(f"{source}: {symbol} must have id {expected_id}, found {tokens.get(symbol)}")


def read_tokens(path: str | Path) -> dict[str, int]:
    """Read a ``tokens.txt`` of ``<symbol> <id>`` lines."""
    tokens: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.rstrip("\n").rsplit(maxsplit=1)
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                raise ValueError(f"{path}:{line_no}: expected '<symbol> <id>', got {line.rstrip()!r}")
            if fields[0] in tokens:
                raise ValueError(f"{path}:{line_no}: symbol {fields[0]!r} listed twice")
            tokens[fields[0]] = int(fields[1])
    return tokens


def write_tokens(path: str | Path, tokens: Iterable[str]) -> None:
    """Write ``tokens.txt`` with the i-th symbol at id i."""
    with open(path, "w", encoding="utf-8") as f:
        for token_id, symbol in enumerate(tokens):
            f.write(f"{symbol} {token_id}\n")


def train_bpe(text_file: str | Path, out_dir: str | Path, vocab_size: int, model_type: str = "unigram") -> BpeTokenizer:
    """Train a sentencepiece model on ``text_file`` (one sentence a line) into ``out_dir/bpe.model``.

    Settings follow icefall: ``<blk>`` and ``<sos/eos>`` as user-defined symbols (ids 0, 1), ``<unk>``
    id 2, no bos/eos, full character coverage, and the unigram model type icefall uses for its
    "bpe" lang dirs. Also writes ``out_dir/tokens.txt``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as work_dir:
        prefix = Path(work_dir) / f"{model_type}_{vocab_size}"
        try:
            spm.SentencePieceTrainer.train(
                input=str(text_file),
                model_prefix=str(prefix),
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=1.0,
                input_sentence_size=100_000_000,
                user_defined_symbols=[BLANK, SOS_EOS],
                unk_id=2,
                bos_id=-1,
                eos_id=-1,
                minloglevel=1,
                num_threads=min(16, os.cpu_count() or 1),
            )
        except RuntimeError as error:
            raise ValueError(
                f"training a {vocab_size}-token {model_type} model on {text_file} failed: {error}"
            ) from error
        os.replace(f"{prefix}.model", out_dir / "bpe.model")
    tokenizer = BpeTokenizer(out_dir / "bpe.model")
    write_tokens(out_dir / "tokens.txt", (tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)))
    return tokenizer


def build_char_tokenizer(texts: Iterable[str], out_dir: str | Path) -> CharTokenizer:
    """Collect every non-space character of ``texts`` into ``out_dir/tokens.txt`` (sorted after the specials)."""
    chars = sorted({ch for text in texts for ch in text if not ch.isspace()} - set(SPECIAL_SYMBOLS))
    if not chars:
        raise ValueError("no characters found in the transcripts")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokens(out_dir / "tokens.txt", [*SPECIAL_SYMBOLS, *chars])
    return CharTokenizer.from_file(out_dir / "tokens.txt")


def load_tokenizer(lang_dir: str | Path) -> Tokenizer:
    """The tokenizer of a lang dir: ``bpe.model`` when present, else the character table ``tokens.txt``."""
    lang_dir = Path(lang_dir)
    if (lang_dir / "bpe.model").is_file():
        return BpeTokenizer(lang_dir / "bpe.model")
    if (lang_dir / "tokens.txt").is_file():
        return CharTokenizer.from_file(lang_dir / "tokens.txt")
    raise FileNotFoundError(f"{lang_dir}: no bpe.model or tokens.txt (make one with `asr data tokenizer`)")


def cut_texts(cuts_path: str | Path) -> Iterator[str]:
    """Supervision texts of a CutSet manifest, one per supervision, read lazily."""
    from lhotse import CutSet

    for cut in CutSet.from_file(cuts_path):
        for supervision in cut.supervisions:
            if supervision.text:
                yield supervision.text
