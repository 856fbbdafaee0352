"""Reading and writing CutSet files (lhotse ``.jsonl.gz`` / ``.jsonl``) with errors a user can act on.

lhotse's own reader lets a torn or foreign file surface as ``EOFError``, ``BadGzipFile``,
``JSONDecodeError`` or, for an empty file, a ``TypeError`` far from the cause. :func:`load_cuts` reads
the whole file first and raises :class:`ManifestError` naming the file (and the line, for a bad line);
:func:`save_manifest` writes all or nothing, so an interrupted command never leaves half a manifest.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
import zlib
from pathlib import Path

from lhotse import CutSet
from lhotse.cut import Cut

__all__ = ["ManifestError", "load_cuts", "save_manifest"]

_GZIP_MAGIC = b"\x1f\x8b"


class ManifestError(ValueError):
    """A cuts file that cannot be used; the message names the file (and line) and what is wrong."""


def load_cuts(path: str | os.PathLike) -> CutSet:
    """The cuts of a ``.jsonl.gz`` (gzip) or ``.jsonl`` (plain) CutSet file, read eagerly.

    Raises:
        ManifestError: the file is missing, not gzip although named ``.gz``, truncated or corrupt,
            not UTF-8, has a line that is not a JSON object of a cut (named by its number), or holds no cuts.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such cuts file" + (" (it is a directory)" if path.is_dir() else ""))
    gzipped = path.name.endswith(".gz")
    if gzipped:
        with open(path, "rb") as f:
            magic = f.read(2)
        if magic and magic != _GZIP_MAGIC:
            raise ManifestError(f"{path}: not a gzip file although its name ends in .gz")
    cuts: list[Cut] = []
    line_no = 0
    try:
        with gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    cuts.append(_parse_cut(path, line_no, line))
    except EOFError:
        raise ManifestError(f"{path}: truncated gzip file (it ends inside line {line_no + 1})") from None
    except (zlib.error, gzip.BadGzipFile) as error:
        raise ManifestError(f"{path}: corrupt gzip data after line {line_no}: {error}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}:{line_no + 1}: not UTF-8 text (is it a cuts file?)") from None
    if not cuts:
        raise ManifestError(f"{path} holds no cuts (empty file)")
    return CutSet.from_cuts(cuts)


def _parse_cut(path: Path, line_no: int, line: str) -> Cut:
    from lhotse.serialization import deserialize_item

    try:
        data = json.loads(line)
    except json.JSONDecodeError as error:
        raise ManifestError(f"{path}:{line_no}: malformed JSON: {error.msg} at column {error.colno}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}:{line_no}: expected a JSON object (one cut per line), got {type(data).__name__}")
    try:
        item = deserialize_item(data)
    except Exception as error:  # lhotse raises KeyError/TypeError/ValueError for a dict of the wrong shape
        raise ManifestError(f"{path}:{line_no}: not a lhotse cut: {type(error).__name__}: {error}") from None
    if not isinstance(item, Cut):
        raise ManifestError(
            f"{path}:{line_no}: holds a {type(item).__name__}, not a cut (give a CutSet file, e.g. *_cuts_*.jsonl.gz)"
        )
    return item


def save_manifest(manifest, path: str | os.PathLike) -> Path:
    """``manifest.to_file(path)`` (a CutSet, RecordingSet or SupervisionSet), atomically: written to a
    temporary file in the same directory, then renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the full suffix (.jsonl.gz), which is how lhotse picks the format.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix="".join(path.suffixes[-2:]), dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the manifest private
        manifest.to_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
