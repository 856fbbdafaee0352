"""Shared test helpers: oracles, tiny models, miniature corpora and the Triton case modules.

Test modules import these as ``from helpers.X import ...``: pytest puts ``tests/`` on ``sys.path`` (the
rootdir conftest lives there and ``tests/`` is not a package), so the import works from the repository root
and for a single ``pytest tests/test_x.py``. No test module imports another test module.
"""

from __future__ import annotations

from pathlib import Path

HELPERS = Path(__file__).resolve().parent
TESTS = HELPERS.parent
REPO = TESTS.parent
# Checked-in fixtures (reference outputs of icefall modules and the like).
DATA = TESTS / "data"
