"""Speech encoders. ``build_encoder(name, causal=False, **overrides)`` builds one by preset name."""

from __future__ import annotations

from torch import nn

from asr.encoders.zipformer import PRESETS as ZIPFORMER_PRESETS
from asr.encoders.zipformer import ZipformerEncoder, build_zipformer

# name -> builder(causal, **overrides); other encoder families register here.
_BUILDERS = {name: (lambda causal=False, _name=name, **kw: build_zipformer(_name, causal=causal, **kw))
             for name in ZIPFORMER_PRESETS}


def encoder_names() -> list[str]:
    """Every name ``build_encoder`` accepts."""
    return sorted(_BUILDERS)


def build_encoder(name: str, causal: bool = False, **overrides) -> nn.Module:
    """An encoder mapping fbank ``(N, T, 80)`` and lengths ``(N,)`` to ``(N, T', C)`` and lengths, with an
    ``output_dim`` attribute. ``overrides`` replace preset fields (e.g. ``num_encoder_layers=(1,) * 6``)
    or set streaming options (``chunk_size``, ``left_context_frames``, ...)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {encoder_names()}")
    return _BUILDERS[name](causal=causal, **overrides)


__all__ = ["ZipformerEncoder", "build_encoder", "encoder_names"]
