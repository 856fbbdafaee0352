"""Speech encoders. ``build_encoder(name, causal=False, **overrides)`` builds one by preset name.

Every encoder is an :class:`Encoder`; the families with a causal variant (Zipformer, Conformer,
Transformer) are :class:`StreamingEncoder` s (see :mod:`asr.encoders.base` for the contract).
"""

from __future__ import annotations

from asr.encoders.base import Encoder, StreamingEncoder
from asr.encoders.conformer import PRESETS as CONFORMER_PRESETS
from asr.encoders.conformer import ConformerEncoder, build_conformer
from asr.encoders.efficient_conformer import PRESETS as EFFICIENT_CONFORMER_PRESETS
from asr.encoders.efficient_conformer import EfficientConformerEncoder, build_efficient_conformer
from asr.encoders.transformer import PRESETS as TRANSFORMER_PRESETS
from asr.encoders.transformer import TransformerEncoder, build_transformer
from asr.encoders.zipformer import PRESETS as ZIPFORMER_PRESETS
from asr.encoders.zipformer import ZipformerEncoder, build_zipformer

# name -> builder(causal, **overrides); other encoder families register here.
_BUILDERS = {}
for _presets, _build in (
    (ZIPFORMER_PRESETS, build_zipformer),
    (CONFORMER_PRESETS, build_conformer),
    (EFFICIENT_CONFORMER_PRESETS, build_efficient_conformer),
    (TRANSFORMER_PRESETS, build_transformer),
):
    for _name in _presets:
        _BUILDERS[_name] = lambda causal=False, _name=_name, _build=_build, **kw: _build(_name, causal=causal, **kw)


def encoder_names() -> list[str]:
    """Every name ``build_encoder`` accepts."""
    return sorted(_BUILDERS)


def build_encoder(name: str, causal: bool = False, **overrides) -> Encoder:
    """An :class:`Encoder` mapping fbank ``(N, T, 80)`` and lengths ``(N,)`` to ``(N, T', output_dim)`` and
    lengths. ``overrides`` replace preset fields (e.g. ``num_encoder_layers=(1,) * 6``) or set streaming
    options (``chunk_size``, ``left_context_frames``, ...); ``causal=True`` needs a
    :class:`StreamingEncoder` family."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {encoder_names()}")
    return _BUILDERS[name](causal=causal, **overrides)


__all__ = [
    "ConformerEncoder",
    "EfficientConformerEncoder",
    "Encoder",
    "StreamingEncoder",
    "TransformerEncoder",
    "ZipformerEncoder",
    "build_encoder",
    "encoder_names",
]
