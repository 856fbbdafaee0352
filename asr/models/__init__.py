"""Models: encoder + transducer / CTC heads, built by name (checkpoints: :mod:`asr.checkpoint`)."""

from asr.models.asr_model import HEADS, AsrLosses, AsrModel, pad_tokens
from asr.models.build import HEAD_PRESETS, build_model, model_from_config
from asr.models.ctc import CtcHead
from asr.models.transducer import Decoder, Joiner, scaled_linear

__all__ = [
    "HEADS",
    "HEAD_PRESETS",
    "AsrLosses",
    "AsrModel",
    "CtcHead",
    "Decoder",
    "Joiner",
    "build_model",
    "model_from_config",
    "pad_tokens",
    "scaled_linear",
]
