"""LM training text and n-gram estimation from it.

:func:`write_lm_text` writes the sentence pool of the synthetic corpus minus every sentence spoken in
given cut sets (the evaluation splits); :func:`train_lm` tokenizes a text with a lang dir's tokenizer and
estimates an interpolated modified Kneser-Ney model (:class:`asr.lm.NgramLM`); :func:`train_word_lm`
does the same over the text's words (for word-LM fusion, read back with :meth:`NgramLM.load_arpa_words`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from asr.data.sentences import load_chinese_sentences, load_sentences
from asr.data.tokenizer import cut_texts, load_tokenizer
from asr.lm.ngram import NgramLM
from asr.textio import open_text, read_lines

log = logging.getLogger("asr.lm")

# Keep 1- and 2-grams, drop singleton 3-grams and up. On the synth LM text (47k sentences, BPE 256) this
# makes the 4-gram 3x smaller (782k -> 259k n-grams, load 1.4 -> 0.5 s) for a dev perplexity of 15.5
# instead of 15.0.
DEFAULT_MIN_COUNT = 2


def default_min_counts(order: int) -> list[int]:
    """1 for unigrams and bigrams, :data:`DEFAULT_MIN_COUNT` for the higher orders."""
    return [1 if n <= 2 else DEFAULT_MIN_COUNT for n in range(1, order + 1)]


def write_lm_text(out: Path, exclude_cuts: list[Path], language: str = "en") -> tuple[int, int]:
    """Write the sentence pool minus the texts of ``exclude_cuts``; returns (written, excluded)."""
    pool = load_chinese_sentences() if language == "cmn" else load_sentences()
    excluded_texts: set[str] = set()
    for path in exclude_cuts:
        if not path.is_file():
            raise FileNotFoundError(f"--exclude-cuts {path}: no such file")
        before = len(excluded_texts)
        excluded_texts.update(text.strip() for text in cut_texts(path))
        log.info("%s: %d distinct texts to exclude", path, len(excluded_texts) - before)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = excluded = 0
    with open_text(out, "w") as f:
        for sentence in pool:
            if sentence in excluded_texts:
                excluded += 1
                continue
            f.write(sentence + "\n")
            written += 1
    return written, excluded


def train_lm(
    lang_dir: Path, text: Path, order: int, min_counts: list[int] | None = None, show_progress: bool = True
) -> NgramLM:
    """Tokenize ``text`` (one sentence a line) with ``lang_dir``'s tokenizer and estimate the model."""
    from tqdm import tqdm

    if not text.is_file():
        raise FileNotFoundError(f"--text {text}: no such file")
    tokenizer = load_tokenizer(lang_dir)
    lines = tqdm(read_lines(text), desc=f"tokenizing {text.name}", unit=" lines", disable=not show_progress)
    sequences = [tokenizer.encode(line) for line in lines]
    if not sequences:
        raise ValueError(f"--text {text} holds no sentences")
    if tokenizer.num_unknown:
        log.warning("%d symbols of %s are not in the tokenizer and were mapped to <unk>", tokenizer.num_unknown, text)
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    return NgramLM.train(sequences, symbols, order=order, min_counts=min_counts)


def train_word_lm(text: Path, order: int, min_counts: list[int] | None = None) -> NgramLM:
    """An n-gram over the words of ``text`` (one sentence a line): its vocabulary is every word seen."""
    if not text.is_file():
        raise FileNotFoundError(f"--text {text}: no such file")
    sentences = [line.split() for line in read_lines(text)]
    if not sentences:
        raise ValueError(f"--text {text} holds no sentences")
    vocabulary = sorted({word for words in sentences for word in words})
    symbols = ["<blk>", "<sos/eos>", "<unk>", *vocabulary]
    ids = {word: i for i, word in enumerate(symbols)}
    return NgramLM.train([[ids[w] for w in words] for words in sentences], symbols, order=order, min_counts=min_counts)
