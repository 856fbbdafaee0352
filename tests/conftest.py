"""Fixtures shared by several test modules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Shared oracles under tests/helpers/ may assert; rewrite them like test modules so failures show values.
pytest.register_assert_rewrite("helpers")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A 40-utterance espeak corpus (36 train, 2 dev, 2 test cuts, ~2 min of audio) and a 40-token BPE.

    Session-scoped because synthesis is the slow part and the training tests only read it. Modules that
    need a different corpus (test_synth, test_data_pipeline) define their own ``corpus``, which wins.
    """
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    from asr.data.synth import synthesize_corpus
    from asr.data.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("corpus")
    cuts = synthesize_corpus(root, num_utts=40, seed=5, engines=["espeak"], progress=False)
    text = root / "train.txt"
    text.write_text("".join(c.supervisions[0].text + "\n" for c in cuts["train"]))
    train_bpe(text, root / "lang", vocab_size=40)
    return {
        "train": root / "synth_cuts_train.jsonl.gz",
        "dev": root / "synth_cuts_dev.jsonl.gz",
        "test": root / "synth_cuts_test.jsonl.gz",
        "lang": root / "lang",
    }
