"""asr: a speech-recognition toolkit."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy, so `import asr` (and `asr --help`) does not import torch.
    if name == "load_model":
        from asr.models.build import load_model

        return load_model
    raise AttributeError(f"module 'asr' has no attribute {name!r}")
