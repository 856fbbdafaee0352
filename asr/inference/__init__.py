"""Offline recognition: :func:`transcribe` one file, :func:`decode` many utterances in batches."""

from asr.inference.offline import (
    METHODS,
    DecodeResult,
    Utterance,
    decode,
    scoring_unit,
    transcribe,
    utterances_from_cuts,
    utterances_from_files,
)

__all__ = [
    "METHODS",
    "DecodeResult",
    "Utterance",
    "decode",
    "scoring_unit",
    "transcribe",
    "utterances_from_cuts",
    "utterances_from_files",
]
