"""Tiny causal transducers with the synth corpus's BPE tokens, for streaming tests.

Noise on the decoder and joiner makes them emit varied tokens, so that equal token sequences mean equal
decoding, not two empty outputs (noise on the encoder too would make it chaotic: float rounding of a
different batch shape then changes tokens).
"""

from __future__ import annotations

from pathlib import Path

import torch

from asr.data.tokenizer import load_tokenizer
from asr.inference import DecodingOptions
from asr.models import build_model

from helpers.tiny_models import TINY_CONFORMER, TINY_ZIPFORMER

# family -> (encoder kwargs, chunk, left context), in the family's encoder frames
FAMILIES = {"zipformer-xs": (TINY_ZIPFORMER, 16, 64), "conformer-xs": (TINY_CONFORMER, 4, 16)}


def tiny_causal_model(name: str, lang_dir: Path) -> torch.nn.Module:
    """A causal ``name`` transducer of tiny size, seeded, with noisy decoder and joiner weights."""
    encoder_kwargs, _, _ = FAMILIES[name]
    tokenizer = load_tokenizer(lang_dir)
    torch.manual_seed(0)
    model = build_model(
        name,
        tokenizer.vocab_size,
        heads=("transducer",),
        causal=True,
        encoder_kwargs=encoder_kwargs,
        decoder_dim=16,
        joiner_dim=32,
    ).eval()
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if not parameter_name.startswith("encoder."):
                parameter.add_(torch.randn_like(parameter))
    model.tokenizer = tokenizer
    return model


def streaming_options(name: str, method: str = "greedy") -> DecodingOptions:
    """The family's chunk and left context."""
    _, chunk, left = FAMILIES[name]
    return DecodingOptions(method=method, beam=4, chunk_size=chunk, left_context_frames=left)
