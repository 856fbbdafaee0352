"""Word (or character) error rate of hypotheses against references: ``asr wer REF HYP``.

Both files hold one utterance a line, ``<id><TAB><text>`` or Kaldi's ``<id> <text>``. Each pair is
aligned with kaldialign (Levenshtein, unit costs); the totals, per-utterance alignments and the most
frequent errors are reported, ending with a Kaldi/icefall-like line::

    WER 12.50% [3 / 24, 1 ins, 1 del, 1 sub]

An id present in REF but not in HYP is scored as all-deletions (with a warning naming it); an id only
in HYP cannot be scored and is reported. With ``--utt2spk`` (Kaldi's ``<id> <speaker>`` lines) the
error rate of each speaker is listed too, worst first, with its share of all errors. ``compute_wer``,
``write_error_stats`` and ``wer_by_group`` are the Python API that ``asr decode`` uses.
"""

from __future__ import annotations

import codecs
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import kaldialign

EPS = ""  # the gap in alignments: never a unit, as splitting yields no empty strings
SHOWN_EPS = "*"  # how a gap is printed


@dataclass
class UtteranceAlignment:
    """One scored utterance: its alignment as ``(ref_word, hyp_word)`` pairs, ``EPS`` (``""``) marking a gap."""

    id: str
    ref: list[str]
    hyp: list[str]
    alignment: list[tuple[str, str]]
    insertions: int
    deletions: int
    substitutions: int

    @property
    def errors(self) -> int:
        return self.insertions + self.deletions + self.substitutions

    def markup(self) -> str:
        """The reference with each error inline: ``THE (CAT->HAT) SAT (*->DOWN) (ON->*)``."""
        return " ".join(r if r == h else f"({r or SHOWN_EPS}->{h or SHOWN_EPS})" for r, h in self.alignment)


@dataclass
class WerResult:
    """Totals over a test set, the per-utterance alignments, and the ids that did not pair up."""

    utterances: list[UtteranceAlignment] = field(default_factory=list)
    ref_words: int = 0
    insertions: int = 0
    deletions: int = 0
    substitutions: int = 0
    missing_hyp: list[str] = field(default_factory=list)  # in REF only: scored as all-deletions
    extra_hyp: list[str] = field(default_factory=list)  # in HYP only: not scored
    unit: str = "word"

    @property
    def errors(self) -> int:
        return self.insertions + self.deletions + self.substitutions

    @property
    def wer(self) -> float:
        """Errors divided by reference words (a fraction, not a percentage); inf if an empty
        reference set received words, 0 if both are empty."""
        if self.ref_words == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_words

    def summary_line(self) -> str:
        name = "CER" if self.unit == "char" else "WER"
        return (
            f"{name} {100 * self.wer:.2f}% [{self.errors} / {self.ref_words}, "
            f"{self.insertions} ins, {self.deletions} del, {self.substitutions} sub]"
        )

    def error_counts(self) -> tuple[Counter, Counter, Counter]:
        """``(substitutions, insertions, deletions)``: Counters keyed by ``(ref, hyp)``, hyp word, ref word."""
        subs: Counter = Counter()
        ins: Counter = Counter()
        dels: Counter = Counter()
        for utt in self.utterances:
            for r, h in utt.alignment:
                if r == EPS:
                    ins[h] += 1
                elif h == EPS:
                    dels[r] += 1
                elif r != h:
                    subs[(r, h)] += 1
        return subs, ins, dels


def split_units(text: str, unit: str = "word") -> list[str]:
    """Words split on whitespace, or (``unit="char"``) every non-space character (CER for Mandarin)."""
    if unit == "char":
        return [c for c in text if not c.isspace()]
    if unit != "word":
        raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")
    return text.split()


def align_utterance(utt_id: str, ref: list[str], hyp: list[str]) -> UtteranceAlignment:
    alignment = [tuple(pair) for pair in kaldialign.align(ref, hyp, EPS)]
    ins = sum(r == EPS for r, _ in alignment)
    dels = sum(h == EPS for _, h in alignment)
    subs = sum(r != h and EPS not in (r, h) for r, h in alignment)
    return UtteranceAlignment(utt_id, ref, hyp, alignment, ins, dels, subs)


def compute_wer(refs: dict[str, str], hyps: dict[str, str], unit: str = "word") -> WerResult:
    """Score ``hyps`` against ``refs`` (both ``id -> text``), utterances in the order of ``refs``.

    Ids missing from ``hyps`` are scored against an empty hypothesis and warned about; ids only in
    ``hyps`` are listed in ``extra_hyp`` and warned about.
    """
    result = WerResult(unit=unit)
    for utt_id, ref_text in refs.items():
        if utt_id not in hyps:
            result.missing_hyp.append(utt_id)
        utt = align_utterance(utt_id, split_units(ref_text, unit), split_units(hyps.get(utt_id, ""), unit))
        result.utterances.append(utt)
        result.ref_words += len(utt.ref)
        result.insertions += utt.insertions
        result.deletions += utt.deletions
        result.substitutions += utt.substitutions
    result.extra_hyp = [utt_id for utt_id in hyps if utt_id not in refs]
    if result.missing_hyp:
        warnings.warn(
            f"{len(result.missing_hyp)} reference id(s) have no hypothesis, scored as all-deletions: "
            + _some(result.missing_hyp),
            stacklevel=2,
        )
    if result.extra_hyp:
        warnings.warn(
            f"{len(result.extra_hyp)} hypothesis id(s) have no reference, not scored: " + _some(result.extra_hyp),
            stacklevel=2,
        )
    return result


def _some(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids) - limit} more)" if len(ids) > limit else "")


def format_top_errors(result: WerResult, top: int = 10) -> str:
    """The ``top`` most frequent substitutions, insertions and deletions, with counts."""
    subs, ins, dels = result.error_counts()
    lines = []
    for title, counter, show in (
        ("substitutions", subs, lambda k: f"{k[0]} -> {k[1]}"),
        ("insertions", ins, lambda k: k),
        ("deletions", dels, lambda k: k),
    ):
        lines.append(f"most frequent {title} ({sum(counter.values())} in all):")
        # Most frequent first; ties broken alphabetically so the report is deterministic.
        for key, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:top]:
            lines.append(f"  {count:6d}  {show(key)}")
    return "\n".join(lines)


def format_per_utterance(result: WerResult, only_errors: bool = True) -> str:
    lines = []
    for utt in result.utterances:
        if only_errors and utt.errors == 0:
            continue
        lines.append(
            f"{utt.id}:\t{utt.errors} err / {len(utt.ref)} "
            f"({utt.insertions} ins, {utt.deletions} del, {utt.substitutions} sub)\t{utt.markup()}"
        )
    return "\n".join(lines)


def wer_by_group(result: WerResult, group_of: dict[str, str], unknown: str = "<none>") -> dict[str, WerResult]:
    """Split ``result`` into one :class:`WerResult` per group (a speaker, say): ``group_of`` maps an
    utterance id to its group; an id it lacks goes to ``unknown``. Groups come in first-seen order."""
    groups: dict[str, WerResult] = {}
    for utt in result.utterances:
        group = groups.setdefault(group_of.get(utt.id, unknown), WerResult(unit=result.unit))
        group.utterances.append(utt)
        group.ref_words += len(utt.ref)
        group.insertions += utt.insertions
        group.deletions += utt.deletions
        group.substitutions += utt.substitutions
    return groups


def format_group_table(groups: dict[str, WerResult], title: str = "speaker") -> str:
    """One line per group, worst first: utterances, reference words, errors, error rate and the
    group's share of all errors (where a test set's errors come from)."""
    name = "CER" if any(g.unit == "char" for g in groups.values()) else "WER"
    total_errors = sum(g.errors for g in groups.values())
    width = max([len(title)] + [len(key) for key in groups])
    lines = [f"{title:<{width}}  {'utts':>5}  {'words':>6}  {'errors':>6}  {name:>7}  {'share':>6}"]
    for key, group in sorted(groups.items(), key=lambda kv: (-kv[1].wer, kv[0])):
        share = 100 * group.errors / total_errors if total_errors else 0.0
        lines.append(
            f"{key:<{width}}  {len(group.utterances):>5}  {group.ref_words:>6}  {group.errors:>6}  "
            f"{100 * group.wer:>6.2f}%  {share:>5.1f}%"
        )
    return "\n".join(lines)


def write_error_stats(path_or_file: str | Path | TextIO, result: WerResult, top: int | None = None) -> None:
    """Write the full report: summary, every utterance's alignment, and all error counts.

    ``top`` limits each error list (default: all).
    """
    if isinstance(path_or_file, (str, Path)):
        with open(path_or_file, "w", encoding="utf-8") as f:
            write_error_stats(f, result, top)
        return
    f = path_or_file
    subs, ins, dels = result.error_counts()
    n = top if top is not None else max(len(subs), len(ins), len(dels), 1)
    f.write(result.summary_line() + "\n")
    if result.missing_hyp:
        f.write(f"ids without hypothesis (scored as deletions): {' '.join(result.missing_hyp)}\n")
    if result.extra_hyp:
        f.write(f"ids without reference (not scored): {' '.join(result.extra_hyp)}\n")
    f.write("\nPER-UTTERANCE ALIGNMENTS (ref with (ref->hyp) errors):\n")
    f.write(format_per_utterance(result, only_errors=False) + "\n\n")
    f.write(format_top_errors(result, top=n) + "\n")


def read_text_file(path: str | Path) -> dict[str, str]:
    """Read ``<id>\\t<text>`` / ``<id> <text>`` lines into ``id -> text``. Blank lines are skipped; an
    id alone means an empty text; a repeated id is an error naming the file and line. The file is UTF-8;
    a leading byte-order mark (Windows editors write one) is dropped, and a line that is not UTF-8 is an
    error naming the file, line and byte."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    texts: dict[str, str] = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[error.start]:02x} at byte {error.start + 1} "
                    "of the line); convert the file to UTF-8"
                ) from None
            fields = line.strip().split(maxsplit=1)
            if not fields:
                continue
            utt_id = fields[0]
            if utt_id in texts:
                raise ValueError(f"{path}:{lineno}: id {utt_id!r} appears twice")
            texts[utt_id] = fields[1] if len(fields) > 1 else ""
    return texts
