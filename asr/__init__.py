"""asr: a speech-recognition toolkit.

import asr
model = asr.load_model("exp/synth")          # a checkpoint, a model file, or an experiment dir
print(asr.transcribe(model, "speech.wav"))
"""

__version__ = "0.1.0"

__all__ = ["load_model", "transcribe"]


def __getattr__(name: str):
    # Lazy, so `import asr` (and `asr --help`) does not import torch.
    if name == "load_model":
        from asr.checkpoint import load_model

        return load_model
    if name == "transcribe":
        from asr.inference import transcribe

        return transcribe
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
