"""Optimizers and learning-rate schedules: ScaledAdam and Eden (Zipformer's training recipe)."""

from asr.optim.eden import Eden
from asr.optim.scaled_adam import ScaledAdam

__all__ = ["Eden", "ScaledAdam"]
