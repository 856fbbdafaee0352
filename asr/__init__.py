"""asr: a speech-recognition toolkit.

import asr
model = asr.load_model("exp/synth")          # a checkpoint, a model file, or an experiment dir
print(asr.transcribe(model, "speech.wav"))

rec = asr.Recognizer(model, asr.DecodingOptions(method="modified_beam_search"))
result = rec.transcribe("speech.wav")        # text, tokens, token and word times

online = asr.OnlineRecognizer(model)         # a causal model: streams, partial results, endpoints
"""

__version__ = "0.1.0"

__all__ = ["DecodingOptions", "OnlineRecognizer", "Recognizer", "load_model", "transcribe"]

# name -> module; imported on first use, so `import asr` (and `asr --help`) does not import torch.
_LAZY = {
    "load_model": "asr.checkpoint",
    "transcribe": "asr.inference",
    "Recognizer": "asr.inference",
    "DecodingOptions": "asr.inference",
    "OnlineRecognizer": "asr.streaming",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
