"""Models: encoder + transducer / CTC heads, built by name and saved as self-describing checkpoints."""

from asr.models.asr_model import HEADS, AsrLosses, AsrModel, combine_losses, pad_tokens
from asr.models.build import HEAD_PRESETS, build_model, load_model, model_from_config, read_checkpoint, save_model
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
    "combine_losses",
    "load_model",
    "model_from_config",
    "pad_tokens",
    "read_checkpoint",
    "save_model",
    "scaled_linear",
]
