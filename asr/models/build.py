"""Build models by encoder name; :func:`model_from_config` rebuilds one from the config a checkpoint stores.

``model.build_config`` holds the arguments of :func:`build_model` (``encoder_name``, ``vocab_size``,
``heads``, ``causal``, ``model_kwargs``, ``encoder_kwargs``); :mod:`asr.checkpoint` saves it beside the
weights, so a checkpoint needs only its path to be loaded. ``model_kwargs`` holds the attention decoder's
sizes (``aed_*``) whenever the model has that head, so a checkpoint rebuilds it at the size it was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asr.encoders as asr_encoders
from asr.models.aed import AED_PRESETS
from asr.models.asr_model import DEFAULT_HEADS, AsrModel

# Head sizes per encoder preset. icefall's recipes use decoder 512 / joiner 512 for every Zipformer
# size; zipformer-xs is ours (CPU recipes) and gets smaller heads to match its smaller encoder.
HEAD_PRESETS: dict[str, dict[str, int]] = {
    "zipformer-xs": {"decoder_dim": 256, "joiner_dim": 256},
    "zipformer-small": {"decoder_dim": 512, "joiner_dim": 512},
    "zipformer-medium": {"decoder_dim": 512, "joiner_dim": 512},
    "zipformer-large": {"decoder_dim": 512, "joiner_dim": 512},
    "conformer-small": {"decoder_dim": 512, "joiner_dim": 512},
    "conformer-medium": {"decoder_dim": 512, "joiner_dim": 512},
    "conformer-large": {"decoder_dim": 512, "joiner_dim": 512},
    # The Transformer-Transducer's prediction network is its transformer label encoder.
    "transformer-transducer-small": {"decoder_dim": 256, "joiner_dim": 256, "decoder_type": "label_encoder"},
    "transformer-transducer-large": {"decoder_dim": 512, "joiner_dim": 512, "decoder_type": "label_encoder"},
}

_MODEL_KWARGS = (
    "decoder_dim",
    "joiner_dim",
    "context_size",
    "blank_id",
    "ctc_dropout",
    "decoder_type",
    "aed_dim",
    "aed_layers",
    "aed_heads",
    "aed_feedforward_dim",
    "aed_dropout",
    "label_smoothing",
    "relax_cross",
    "sos_eos_id",
)


def build_model(
    encoder_name: str,
    vocab_size: int,
    heads: Sequence[str] = DEFAULT_HEADS,
    causal: bool = False,
    encoder_kwargs: dict[str, Any] | None = None,
    **model_kwargs: Any,
) -> AsrModel:
    """An :class:`AsrModel` on ``asr.encoders.build_encoder(encoder_name, causal, **encoder_kwargs)``.

    Args:
        encoder_name: an encoder preset name, e.g. ``"zipformer-small"``.
        vocab_size: output symbols including blank.
        heads: non-empty subset of ``("transducer", "ctc", "aed")``.
        causal: streaming (chunk-causal) encoder.
        encoder_kwargs: overrides passed to ``build_encoder``.
        **model_kwargs: ``decoder_dim``, ``joiner_dim``, ``context_size``, ``blank_id``, ``ctc_dropout``,
            ``decoder_type``, and for the attention decoder ``aed_dim``, ``aed_layers``, ``aed_heads``,
            ``aed_feedforward_dim``, ``aed_dropout``, ``label_smoothing``, ``relax_cross``, ``sos_eos_id``;
            unset head sizes come from :data:`HEAD_PRESETS` and, with an ``"aed"`` head,
            :data:`asr.models.aed.AED_PRESETS` (else :class:`AsrModel`'s defaults).
    """
    unknown = sorted(set(model_kwargs) - set(_MODEL_KWARGS))
    if unknown:
        raise TypeError(f"build_model: unknown model options {unknown}; known: {list(_MODEL_KWARGS)}")
    encoder_kwargs = dict(encoder_kwargs or {})
    # The -xs encoders (CPU recipes) get the small attention decoder, the others icefall's.
    aed_preset = AED_PRESETS["xs" if encoder_name.endswith("-xs") else "default"] if "aed" in heads else {}
    model_kwargs = {**HEAD_PRESETS.get(encoder_name, {}), **aed_preset, **model_kwargs}
    encoder = asr_encoders.build_encoder(encoder_name, causal=causal, **encoder_kwargs)
    model = AsrModel(encoder, vocab_size, heads=heads, **model_kwargs)
    model.build_config = {
        "encoder_name": encoder_name,
        "vocab_size": int(vocab_size),
        "heads": list(model.heads),
        "causal": bool(causal),
        "model_kwargs": model_kwargs,
        "encoder_kwargs": encoder_kwargs,
    }
    return model


def model_from_config(config: dict[str, Any], state_dict: dict[str, Any] | None = None) -> AsrModel:
    """A freshly initialised model from a checkpoint's ``config`` (what :func:`build_model` stored).

    Given the checkpoint's ``state_dict``, a zipformer-xs saved before the preset dropped its front-end
    ConvNeXt (the weights hold ``encoder.encoder_embed.convnext.*``) is rebuilt with it.
    """
    encoder_kwargs = dict(config["encoder_kwargs"])
    if (
        config["encoder_name"] == "zipformer-xs"
        and "embed_convnext" not in encoder_kwargs
        and state_dict is not None
        and any(key.startswith("encoder.encoder_embed.convnext.") for key in state_dict)
    ):
        encoder_kwargs["embed_convnext"] = True
    return build_model(
        config["encoder_name"],
        config["vocab_size"],
        heads=config["heads"],
        causal=config["causal"],
        encoder_kwargs=encoder_kwargs,
        **config["model_kwargs"],
    )
