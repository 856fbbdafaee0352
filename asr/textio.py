"""Text files, plain or gzip-compressed (a ``.gz`` name means gzip), read and written as UTF-8."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def open_text(path: str | os.PathLike, mode: str = "r") -> IO[str]:
    """``open(path, mode)`` in text mode, UTF-8; through gzip when the name ends in ``.gz``."""
    if str(path).endswith(".gz"):
        return gzip.open(path, mode.replace("t", "") + "t", encoding="utf-8", compresslevel=6)
    return open(path, mode, encoding="utf-8")


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """The non-empty lines of ``path``, stripped."""
    with open_text(Path(path)) as f:
        for line in f:
            line = line.strip()
            if line:
                yield line
