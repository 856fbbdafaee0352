"""icefall-format state dicts from the Zipformer fixtures (``data/zipformer_icefall_tiny*.pt``).

The fixtures' encoders are icefall's own (their outputs are recorded in ``zipformer_icefall_tiny_io.pt``),
but their transducer is a small stand-in that does not have icefall's shapes: ``decoder.embedding`` with no
``decoder.conv``, and a ``joiner`` with only ``output_linear`` (icefall's Joiner also has ``encoder_proj``
and ``decoder_proj``). :func:`icefall_state` keeps the fixture's encoder and ``ctc_output`` (which has
icefall's shape) and replaces the transducer with tensors shaped as icefall's ``Decoder`` / ``Joiner`` /
``simple_*_proj`` of the given sizes.
"""

from __future__ import annotations

import torch

from helpers import DATA

FIXTURE_VOCAB = 10  # rows of the fixtures' ctc_output.1.weight
ENCODER_DIM = 48  # the fixtures' output dim


def fixture_config() -> dict:
    """The tiny encoder config the fixtures were trained with (``--set`` fields)."""
    return torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)["config"]


def set_options() -> list[str]:
    """:func:`fixture_config` as ``asr convert icefall --set`` options."""
    return [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in fixture_config().items()]


def transducer_tensors(
    vocab_size: int = FIXTURE_VOCAB,
    encoder_dim: int = ENCODER_DIM,
    decoder_dim: int = 16,
    joiner_dim: int = 12,
    context_size: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """icefall's transducer entries: ``Decoder`` (embedding ``(V, D)``; for context > 1 a grouped
    ``Conv1d`` with 4 channels a group, weight ``(D, 4, context)``, no bias), ``Joiner`` (``encoder_proj``
    ``(J, C)``, ``decoder_proj`` ``(J, D)``, ``output_linear`` ``(V, J)``), ``simple_am_proj`` ``(V, C)``,
    ``simple_lm_proj`` ``(V, D)``; random values (seeded), so that no head acts as an identity."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=g)

    tensors = {"decoder.embedding.weight": rand(vocab_size, decoder_dim, scale=1.0)}
    if context_size > 1:
        tensors["decoder.conv.weight"] = rand(decoder_dim, 4, context_size)
    tensors.update(
        {
            "joiner.encoder_proj.weight": rand(joiner_dim, encoder_dim),
            "joiner.encoder_proj.bias": rand(joiner_dim, scale=0.1),
            "joiner.decoder_proj.weight": rand(joiner_dim, decoder_dim),
            "joiner.decoder_proj.bias": rand(joiner_dim, scale=0.1),
            "joiner.output_linear.weight": rand(vocab_size, joiner_dim, scale=2.0),
            "joiner.output_linear.bias": rand(vocab_size, scale=0.1),
            "simple_am_proj.weight": rand(vocab_size, encoder_dim),
            "simple_am_proj.bias": rand(vocab_size, scale=0.1),
            "simple_lm_proj.weight": rand(vocab_size, decoder_dim),
            "simple_lm_proj.bias": rand(vocab_size, scale=0.1),
        }
    )
    return tensors


def icefall_state(name: str = "zipformer_icefall_tiny.pt", **transducer: int) -> dict[str, torch.Tensor]:
    """The fixture ``name``'s encoder and ``ctc_output`` entries plus :func:`transducer_tensors`
    (``transducer`` are its keyword arguments), as icefall's ``model`` state dict."""
    fixture = torch.load(DATA / name, weights_only=True)["model"]
    kept = {k: v for k, v in fixture.items() if k.startswith(("encoder_embed.", "encoder.", "ctc_output."))}
    return {**kept, **transducer_tensors(**transducer)}
