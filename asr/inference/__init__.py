"""Offline recognition: :class:`Recognizer` (files, arrays, long audio) and the one-call :func:`transcribe`."""

from asr.inference.offline import (
    DecodeResult,
    Utterance,
    scoring_unit,
    transcribe,
    utterances_from_cuts,
    utterances_from_files,
)
from asr.inference.options import METHODS, DecodingOptions
from asr.inference.recognizer import Recognizer
from asr.inference.result import Result, WordTiming

__all__ = [
    "METHODS",
    "DecodeResult",
    "DecodingOptions",
    "Recognizer",
    "Result",
    "Utterance",
    "WordTiming",
    "scoring_unit",
    "transcribe",
    "utterances_from_cuts",
    "utterances_from_files",
]
