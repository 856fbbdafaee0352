"""English sentences for the offline TTS corpus, from Debian's text packages
(and Mandarin ones for the secondary Mandarin corpus, see :func:`load_chinese_sentences`).

Sources: the fortune cookie files of ``fortunes``/``fortunes-min`` (``/usr/share/games/fortunes``)
and the example sentences in the glosses of ``wordnet-base`` (``/usr/share/wordnet/data.*``).
Every sentence is cleaned to what a recogniser should output: lowercase words of letters and
inner apostrophes, separated by single spaces. A sentence that would be spoken differently
from its cleaned text (digits, symbols, non-ASCII letters, stray markup) is dropped, never
rewritten, so the transcript always matches what the TTS engine says.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
# Modern Chinese fortunes of Debian's ``fortunes-zh`` (its tang300/song100 are classical poetry).
CHINESE_FORTUNES = FORTUNES_DIR / "chinese"
# fortunes-zh installs beside the English files; leaving it out keeps the English set the same
# whether or not it is installed.
_NON_ENGLISH_FORTUNES = frozenset({"chinese", "song100", "tang300"})
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

# Characters that are read aloud or mean the text is not prose: a sentence holding one is dropped.
_REJECT = re.compile(r"[^A-Za-z' \t\n.,;:!?\"()\-]")
# Sentence ends: terminal punctuation followed by space (a decimal point never gets here: digits are rejected).
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
# Punctuation a speaker does not pronounce; it becomes a word break.
_SILENT_PUNCT = re.compile(r"[.,;:!?\"()\-]+")
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")
# "e.g.", "i.e.", "Mr.", "St." and initials are read differently from their letters.
_ABBREVIATION = re.compile(r"\b(?:[A-Za-z]\.){2,}|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|Prof|Gen|Col|Lt|No)\.|\b[A-Z]\.\s")
# An all-caps word of 2+ letters is usually spelled out ("IBM") or shouted; both break the transcript.
_ACRONYM = re.compile(r"\b[A-Z]{2,}\b")
_QUOTED = re.compile(r'"([^"]+)"')


def clean_sentence(text: str, min_words: int = 5, max_words: int = 20) -> str | None:
    """The cleaned form of one sentence, or ``None`` where it must be dropped.

    ``"Don't panic -- it's only a test!"`` becomes ``"don't panic it's only a test"``;
    anything with digits, symbols, abbreviations, acronyms or a word count outside
    ``[min_words, max_words]`` gives ``None``.
    """
    if _REJECT.search(text) or _ABBREVIATION.search(text + " ") or _ACRONYM.search(text):
        return None
    words = []
    for token in _SILENT_PUNCT.sub(" ", text).lower().split():
        # Quotes around a word ('like this') are punctuation; inner ones ("don't") are spelling.
        token = token.strip("'")
        if not token:
            continue
        if not _WORD.fullmatch(token):
            return None
        words.append(token)
    if not min_words <= len(words) <= max_words:
        return None
    return " ".join(words)


def split_sentences(text: str) -> list[str]:
    """Split running text at sentence-final punctuation (``.!?;:``) followed by white space."""
    return [s for s in _SENTENCE_END.split(" ".join(text.split())) if s]


def fortune_texts(directory: Path = FORTUNES_DIR) -> Iterator[str]:
    """Raw sentences of every fortune file in ``directory`` (attribution lines removed)."""
    for path in sorted(directory.iterdir()):
        if path.suffix in (".dat", ".u8") or path.name in _NON_ENGLISH_FORTUNES or not path.is_file():
            continue
        raw = path.read_bytes().decode("utf-8", errors="replace")
        for fortune in raw.split("\n%\n"):
            # Lines starting with "--" name the author; "Q:"/"A:" riddles read fine as sentences.
            lines = [line for line in fortune.splitlines() if not line.lstrip().startswith("--")]
            yield from split_sentences(" ".join(lines))


def wordnet_texts(directory: Path = WORDNET_DIR) -> Iterator[str]:
    """The quoted example sentences of WordNet's glosses (the definitions themselves are fragments)."""
    for name in WORDNET_FILES:
        path = directory / name
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                # License header lines start with two spaces; a synset line is "offset ... | gloss".
                if line.startswith(" ") or "|" not in line:
                    continue
                for example in _QUOTED.findall(line.split("|", 1)[1]):
                    yield from split_sentences(example)


def clean_all(texts: Iterable[str], min_words: int = 5, max_words: int = 20) -> list[str]:
    """Clean ``texts`` and return the distinct survivors, sorted (so the result is reproducible)."""
    kept = {clean_sentence(t, min_words, max_words) for t in texts}
    kept.discard(None)
    return sorted(kept)


def load_sentences(
    min_words: int = 5,
    max_words: int = 20,
    fortunes_dir: Path = FORTUNES_DIR,
    wordnet_dir: Path = WORDNET_DIR,
) -> list[str]:
    """Every distinct cleaned sentence of the installed fortune and WordNet files, sorted.

    Raises ``FileNotFoundError`` naming the Debian packages when a source is missing.
    """
    missing = []
    if not fortunes_dir.is_dir():
        missing.append(f"{fortunes_dir} (Debian packages fortunes, fortunes-min)")
    if not all((wordnet_dir / n).is_file() for n in WORDNET_FILES):
        missing.append(f"{wordnet_dir}/data.* (Debian package wordnet-base)")
    if missing:
        raise FileNotFoundError(
            "sentence sources not found: "
            + "; ".join(missing)
            + ". Install them with `bash tools/install_system_deps.sh`."
        )

    def texts() -> Iterator[str]:
        yield from fortune_texts(fortunes_dir)
        yield from wordnet_texts(wordnet_dir)

    return clean_all(texts(), min_words, max_words)


# ----------------------------------------------------------------------------------------------
# Mandarin

_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_CHINESE_SENTENCE_END = re.compile(r"(?<=[。！？；])")


def _is_cjk_ideograph(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def clean_chinese_sentence(text: str, min_chars: int = 5, max_chars: int = 30) -> str | None:
    """The Chinese characters of ``text`` without punctuation or spaces, or ``None`` to drop it.

    ``"你好，世界！我们走吧。"`` becomes ``"你好世界我们走吧"``; Latin letters, digits or symbols
    (spoken in ways pinyin would not give) or a length outside ``[min_chars, max_chars]`` give ``None``.
    """
    kept = []
    for ch in text:
        if _is_cjk_ideograph(ch):
            kept.append(ch)
        elif not (ch.isspace() or unicodedata.category(ch)[0] in "PZ"):
            return None
    if not min_chars <= len(kept) <= max_chars:
        return None
    return "".join(kept)


def chinese_fortune_texts(path: Path = CHINESE_FORTUNES) -> Iterator[str]:
    """Raw sentences of a Chinese fortune file: colour escapes and attribution lines removed,
    wrapped lines of a paragraph joined without spaces (Chinese wraps inside words), split after
    。！？； and at paragraph ends (a title stands alone)."""
    raw = _ANSI_ESCAPE.sub("", path.read_text(encoding="utf-8", errors="replace"))
    for fortune in raw.split("\n%\n"):
        for paragraph in re.split(r"\n\s*\n", fortune):
            lines = [line.strip() for line in paragraph.splitlines() if not line.lstrip().startswith("--")]
            yield from (s for s in _CHINESE_SENTENCE_END.split("".join(lines)) if s)


def load_chinese_sentences(min_chars: int = 5, max_chars: int = 30, path: Path = CHINESE_FORTUNES) -> list[str]:
    """Every distinct cleaned sentence of Debian's Chinese fortunes, sorted (about 13k)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found (Debian package fortunes-zh). Install it with `bash tools/install_system_deps.sh`."
        )
    kept = {clean_chinese_sentence(t, min_chars, max_chars) for t in chinese_fortune_texts(path)}
    kept.discard(None)
    return sorted(kept)
