"""Efficient Conformer encoder (Burchi & Vielzeuf, 2021): a Conformer in three stages of growing width
and shrinking frame rate.

A one-layer Conv2d front end halves the frame rate (100 -> 50 Hz); the last block of stages 1 and 2
downsamples by 2 inside its conv module (strided depthwise conv, widening to the next stage's width,
residual projected by a strided 1x1 conv), giving 8x in total (80 ms frames). Stage 1, where sequences
are longest, uses grouped attention (group 3). ``downsampling="attention"`` instead decimates the
queries of that block's attention (strided MHSA) and keeps its conv module unstrided.

Sizes follow the reference configs (``burchim/EfficientConformer`` ``configs/EfficientConformerCTC*``):
small 15 blocks, widths 120/168/240, 4 heads; medium 16 blocks, 180/256/360; large 16 blocks,
360/512/720, 8 heads; feedforward ratio 4, kernel 15. Small with a CTC head for the paper's 256 BPE
units has 13.2M parameters, as the paper reports.

With ``attention_backend="triton"`` (or ``"auto"`` on CUDA) the attention of every block except the
strided-MHSA ones (``downsampling="attention"``) runs on the fused kernels of
:mod:`asr.nn.fused_attention` in eval (and in training when dropout is 0), grouped attention included
(head dim ``3 * 120 / 4 = 90`` in stage 1 of small); see :mod:`asr.nn.attention`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor, nn

from asr.encoders.base import Encoder
from asr.encoders.conformer import ConformerLayer
from asr.nn.attention import set_attention_backend
from asr.nn.conv import Conv2dSubsampling2
from asr.nn.masks import padding_mask

__all__ = ["PRESETS", "EfficientConformerConfig", "EfficientConformerEncoder", "build_efficient_conformer"]


@dataclass(frozen=True)
class EfficientConformerConfig:
    """Architecture of an Efficient Conformer; per-stage tuples have 3 entries."""

    stage_dims: tuple[int, ...]
    stage_layers: tuple[int, ...]
    num_heads: int
    attention_group_sizes: tuple[int, ...] = (3, 1, 1)
    feedforward_ratio: int = 4
    kernel_size: int = 15
    downsampling: str = "conv"  # or "attention" (strided MHSA)
    feature_dim: int = 80
    dropout: float = 0.1
    relaxed_attention_gamma: float = 0.0


PRESETS: dict[str, EfficientConformerConfig] = {
    # ~5.3M parameters: zipformer-xs's size, for the CPU recipe's encoder comparison.
    "efficient-conformer-xs": EfficientConformerConfig((96, 144, 192), (2, 3, 3), num_heads=4),
    "efficient-conformer-small": EfficientConformerConfig((120, 168, 240), (5, 5, 5), num_heads=4),
    "efficient-conformer-medium": EfficientConformerConfig((180, 256, 360), (5, 6, 5), num_heads=4),
    "efficient-conformer-large": EfficientConformerConfig((360, 512, 720), (5, 6, 5), num_heads=8),
}


class EfficientConformerEncoder(Encoder):
    """Fbank ``(N, T, F)`` -> ``(N, T', stage_dims[-1])`` with ``T'`` = ``T`` halved (rounding up) three
    times, for ``len(stage_dims) - 1`` downsampling blocks after the x2 front end. Full context only: the
    family has no causal variant, so it is an :class:`asr.encoders.base.Encoder`, not a streaming one.

    Args:
        config: architecture (see ``PRESETS``).
        attention_backend: "torch" (PyTorch attention), "triton" (fused kernels where they apply) or
            "auto" (Triton on CUDA when available); see :mod:`asr.nn.fused_attention`.
    """

    def __init__(self, config: EfficientConformerConfig, attention_backend: str = "torch") -> None:
        super().__init__()
        dims, layers, groups = config.stage_dims, config.stage_layers, config.attention_group_sizes
        if not len(dims) == len(layers) == len(groups):
            raise ValueError(
                f"stage_dims, stage_layers, attention_group_sizes need one entry per stage, got "
                f"{dims}, {layers}, {groups}"
            )
        if config.downsampling not in ("conv", "attention"):
            raise ValueError(f"downsampling must be 'conv' or 'attention', got {config.downsampling!r}")
        self.config = config
        self.output_dim = dims[-1]
        self.encoder_embed = Conv2dSubsampling2(config.feature_dim, dims[0], channels=dims[0])
        self.embed_dropout = nn.Dropout(config.dropout)
        blocks = []
        for stage, (dim, count, group) in enumerate(zip(dims, layers, groups)):
            for i in range(count):
                last = i == count - 1 and stage < len(dims) - 1
                stride = 2 if last else 1
                blocks.append(
                    ConformerLayer(
                        dim,
                        config.num_heads,
                        config.feedforward_ratio * dim,
                        config.kernel_size,
                        out_dim=dims[stage + 1] if last else dim,
                        conv_stride=stride if config.downsampling == "conv" else 1,
                        attention_stride=stride if config.downsampling == "attention" else 1,
                        # Strided queries cannot be grouped (nor can they in the reference).
                        attention_group_size=1 if last and config.downsampling == "attention" else group,
                        dropout=config.dropout,
                        relaxed_attention_gamma=config.relaxed_attention_gamma,
                    )
                )
        self.layers = nn.ModuleList(blocks)
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        """Compute the attention of every block with ``backend`` ("torch", "triton" or "auto")."""
        set_attention_backend(self, backend)

    def output_lengths(self, x_lens: Tensor) -> Tensor:
        """Encoder frames for ``x_lens`` feature frames."""
        lens = Conv2dSubsampling2.output_lengths(x_lens)
        for layer in self.layers:
            if layer.stride > 1:
                lens = (lens - 1) // layer.stride + 1
        return lens

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)``, ``x_lens`` ``(N,)``; returns ``(N, T', D)`` and ``(N,)``."""
        x, lens = self.encoder_embed(x, x_lens)
        x = self.embed_dropout(x)
        for layer in self.layers:
            x = layer(x, None, padding_mask(lens, x.size(1)))
            if layer.stride > 1:
                lens = (lens - 1) // layer.stride + 1
        return x, lens


def efficient_conformer_config(name: str, **overrides) -> EfficientConformerConfig:
    """The preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown Efficient Conformer preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_efficient_conformer(name: str, causal: bool = False, **overrides) -> EfficientConformerEncoder:
    """An ``EfficientConformerEncoder`` from a preset; overrides replace config fields or set
    ``attention_backend``. Only the full-context (non-streaming) model exists: ``causal=True`` is
    rejected."""
    if causal:
        raise ValueError(
            f"{name}: the Efficient Conformer has no causal/streaming variant here; "
            "use conformer-* or zipformer-* with causal=True"
        )
    encoder_args = {k: overrides.pop(k) for k in ("attention_backend",) if k in overrides}
    return EfficientConformerEncoder(efficient_conformer_config(name, **overrides), **encoder_args)
