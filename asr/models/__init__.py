"""Models: encoder + transducer / CTC / attention-decoder heads, built by name (checkpoints: :mod:`asr.checkpoint`)."""

from asr.models.aed import AED_PRESETS, AttentionDecoder
from asr.models.asr_model import DEFAULT_HEADS, HEADS, AsrLosses, AsrModel, pad_tokens
from asr.models.build import HEAD_PRESETS, build_model, model_from_config
from asr.models.ctc import CtcHead
from asr.models.transducer import Decoder, Joiner, scaled_linear

__all__ = [
    "AED_PRESETS",
    "DEFAULT_HEADS",
    "HEADS",
    "HEAD_PRESETS",
    "AsrLosses",
    "AsrModel",
    "AttentionDecoder",
    "CtcHead",
    "Decoder",
    "Joiner",
    "build_model",
    "model_from_config",
    "pad_tokens",
    "scaled_linear",
]
