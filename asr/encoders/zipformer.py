"""Zipformer encoder (Yao et al., "Zipformer: A faster and better encoder for ASR", ICLR 2024).

``ZipformerEncoder`` maps 80-dim fbank ``(N, T, 80)`` at 100 Hz to ``(N, T', C)`` at 25 Hz with
``T' = ((T - 7) // 2 + 1) // 2``:

* ``encoder_embed`` (:class:`asr.nn.subsampling.Conv2dSubsampling`): 100 Hz -> 50 Hz.
* ``encoder`` (:class:`Zipformer2`): stacks of layers, each stack run at 50 Hz / ``ds`` for
  ``ds`` in ``downsampling_factor`` (1, 2, 4, 8, 4, 2): softmax-weighted downsampling in, repeat
  upsampling out, a learned per-channel bypass to the stack input. The output takes, per channel, the
  last stack that has that channel, and is downsampled x2 to 25 Hz.

Each layer computes its relative-position attention weights once and shares them between the
NonlinAttention module and two SelfAttention modules; it has three feedforwards (3/4, 1, 5/4 of the
feedforward dim), two convolution modules, a mid-layer bypass, BiasNorm and a final bypass.

Training-only behaviour (all inactive in ``eval()``): per-utterance feature masking of the channels above
``encoder_unmasked_dim``, layer and sub-module skipping on ScheduledFloat schedules (call
``set_batch_count`` every batch), Balancer / Whiten gradient constraints, positional-score skipping,
dropout. (icefall's layer also has a "const attention" branch; it can only fire in eval mode with a rate
whose eval value is 0, so it never runs, and it is left out here.)

Streaming (``causal=True``): convolutions become chunk-causal and attention is limited to the current
chunk plus ``left_context_frames``. In training the chunk size and left context are drawn per batch from
``train_chunk_sizes`` / ``train_left_context_frames``; in eval the attributes ``chunk_size`` and
``left_context_frames`` are used (both in 50 Hz frames, after the conv subsampling, as in icefall), set
through :meth:`ZipformerEncoder.set_streaming` (see :class:`asr.encoders.base.StreamingEncoder`).
``init_states`` / ``streaming_forward`` run one chunk at a time with cached keys, values, nonlin-attention
inputs, conv left contexts and the front end's ConvNeXt frames; chunk by chunk they give the same output
as the chunk-masked full forward.

Parameter names equal icefall's ``egs/librispeech/ASR/zipformer`` model (``encoder_embed.*``,
``encoder.*``), so converted icefall checkpoints load 1:1 (``asr convert icefall``, :mod:`asr.models.icefall`),
and in eval mode the outputs equal icefall's on unpadded input. On padded batches we fill each utterance's padding with
its last valid frame before every downsampling (icefall mixes padding into the last downsampled frame), so
a padded utterance gets exactly the output it gets alone.

Internally the stacks work time-first, ``(T, N, C)``, like the reference; the public API is batch-first.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from asr.encoders.base import StreamingEncoder
from asr.nn.attention import relax_attention_weights
from asr.nn.depthwise import DepthwiseConv1d
from asr.nn.fused_attention import (
    BACKENDS,
    RelPosAttentionInputs,
    apply_attention,
    attention_weights,
    chunk_params_from_mask,
    resolve_backend,
)
from asr.nn.positional import CompactRelPositionalEncoding
from asr.nn.scaling import (
    ActivationDropoutAndLinear,
    Balancer,
    BiasNorm,
    ChunkCausalDepthwiseConv1d,
    FloatLike,
    Identity,
    ScaledLinear,
    ScheduledFloat,
    Whiten,
    convert_num_channels,
    limit_param_value,
    penalize_abs_values_gt,
    softmax,
)
from asr.nn.subsampling import Conv2dSubsampling

# States per layer in streaming_forward: key, nonlin-attention input, value 1, value 2, conv 1, conv 2.
STATES_PER_LAYER = 6


def _per_stack(value: int | tuple[int, ...], num_stacks: int, name: str) -> tuple[int, ...]:
    """An int or a 1-tuple repeated for every stack; a longer tuple must have one entry per stack."""
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(values) == 1:
        return values * num_stacks
    if len(values) != num_stacks:
        raise ValueError(f"{name} has {len(values)} entries for {num_stacks} stacks")
    return values


@dataclass(frozen=True)
class ZipformerConfig:
    """Architecture of a Zipformer; per-stack fields take an int (same for all stacks) or a tuple."""

    num_encoder_layers: int | tuple[int, ...]
    encoder_dim: int | tuple[int, ...]
    feedforward_dim: int | tuple[int, ...]
    encoder_unmasked_dim: int | tuple[int, ...]
    num_heads: int | tuple[int, ...] = (4, 4, 4, 8, 4, 4)
    downsampling_factor: tuple[int, ...] = (1, 2, 4, 8, 4, 2)
    query_head_dim: int | tuple[int, ...] = 32
    pos_head_dim: int | tuple[int, ...] = 4
    value_head_dim: int | tuple[int, ...] = 12
    pos_dim: int = 48
    cnn_module_kernel: int | tuple[int, ...] = (31, 31, 15, 15, 15, 31)
    feature_dim: int = 80
    output_downsampling_factor: int = 2
    warmup_batches: float = 4000.0
    # Channels of the conv front end's three Conv2d layers (the last one is also the ConvNeXt's).
    embed_channels: tuple[int, int, int] = (8, 32, 128)
    # The front end's ConvNeXt block (icefall has it; zipformer-xs drops it, see its preset).
    embed_convnext: bool = True
    # γ of relaxed self-attention (training only; 0 = off), see asr.nn.attention.relax_attention_weights.
    relaxed_attention_gamma: float = 0.0


# icefall's documented LibriSpeech recipes (egs/librispeech/ASR/zipformer, README / RESULTS).
PRESETS: dict[str, ZipformerConfig] = {
    "zipformer-small": ZipformerConfig(
        num_encoder_layers=(2, 2, 2, 2, 2, 2),
        encoder_dim=(192, 256, 256, 256, 256, 256),
        feedforward_dim=(512, 768, 768, 768, 768, 768),
        encoder_unmasked_dim=(192, 192, 192, 192, 192, 192),
    ),
    "zipformer-medium": ZipformerConfig(
        num_encoder_layers=(2, 2, 3, 4, 3, 2),
        encoder_dim=(192, 256, 384, 512, 384, 256),
        feedforward_dim=(512, 768, 1024, 1536, 1024, 768),
        encoder_unmasked_dim=(192, 192, 256, 256, 256, 192),
    ),
    "zipformer-large": ZipformerConfig(
        num_encoder_layers=(2, 2, 4, 5, 4, 2),
        encoder_dim=(192, 256, 512, 768, 512, 256),
        feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
    ),
    # Ours, for CPU recipes (5.1M parameters, 0.2M of them in the conv front end): the same six stacks
    # and downsampling factors, so chunk sizes and streaming behave as in the big models, but one layer
    # per stack, narrower stacks (128-192), half-size feedforwards and 4 heads everywhere, and a front
    # end of half the channels and no ConvNeXt block: at full width it costs three times as much as all
    # six stacks on a CPU, and even at half width the ConvNeXt alone made a training batch 1.4x slower
    # while giving the same loss per batch on the offline recipe.
    "zipformer-xs": ZipformerConfig(
        num_encoder_layers=(1, 1, 1, 1, 1, 1),
        encoder_dim=(128, 160, 192, 192, 192, 160),
        feedforward_dim=(256, 384, 512, 512, 512, 384),
        encoder_unmasked_dim=(128, 128, 128, 128, 128, 128),
        num_heads=(4, 4, 4, 4, 4, 4),
        embed_channels=(8, 32, 64),
        embed_convnext=False,
    ),
}


def _whitening_schedule(limit: float, ratio: float = 2.0) -> ScheduledFloat:
    return ScheduledFloat((0.0, limit), (20000.0, ratio * limit), default=limit)


def _fill_past_end(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Replace frames ``t >= lengths[n]`` of ``x`` ``(T, N, C)`` by frame ``lengths[n] - 1``, which is
    what downsampling an utterance alone pads with."""
    if lengths is None:
        return x
    num_frames = x.size(0)
    # (A host sync, spared in a compiled graph: there the masked copy below is the same.)
    if not torch.compiler.is_compiling() and bool((lengths >= num_frames).all()):
        return x
    last = (lengths.clamp(min=1, max=num_frames) - 1).to(x.device)
    last_frame = x.gather(0, last.view(1, -1, 1).expand(1, x.size(1), x.size(2)))
    past_end = torch.arange(num_frames, device=x.device).unsqueeze(1) >= lengths.to(x.device).unsqueeze(0)
    return torch.where(past_end.unsqueeze(-1), last_frame, x)


class BypassModule(nn.Module):
    """``orig + (new - orig) * bypass_scale`` with a learned per-channel scale. In training the scale is
    kept in ``[scale_min, scale_max]`` and is zeroed per utterance with ``skip_rate`` (layer skipping)."""

    def __init__(
        self,
        embed_dim: int,
        skip_rate: FloatLike = 0.0,
        straight_through_rate: FloatLike = 0.0,
        scale_min: FloatLike | None = None,
        scale_max: FloatLike = 1.0,
    ) -> None:
        super().__init__()
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0) if scale_min is None else scale_min
        self.scale_max = copy.deepcopy(scale_max)

    def _scale(self, batch_size: int) -> Tensor:
        if not self.training:
            return self.bypass_scale
        scale = limit_param_value(self.bypass_scale, min=float(self.scale_min), max=float(self.scale_max))
        skip_rate = float(self.skip_rate)
        if skip_rate != 0.0:
            scale = scale * (torch.rand(batch_size, 1, device=scale.device) > skip_rate)
        straight_through_rate = float(self.straight_through_rate)
        if straight_through_rate != 0.0:
            through = torch.rand(batch_size, 1, device=scale.device) < straight_through_rate
            scale = torch.maximum(scale, through.to(scale.dtype))
        return scale

    def forward(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """Both ``(T, N, C)``."""
        # lerp is orig + (src - orig) * scale in one pass (three passes and allocations otherwise).
        return torch.lerp(src_orig, src, self._scale(src.shape[1]))


class SimpleDownsample(nn.Module):
    """``(T, N, C)`` -> ``(ceil(T / ds), N, C)``: a softmax-weighted average of each group of ``ds``
    frames (learned weights, one per position in the group); the end is padded with the last frame."""

    def __init__(self, channels: int, downsample: int, dropout: FloatLike) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.dropout = copy.deepcopy(dropout)
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        num_frames, batch_size, channels = src.shape
        ds = self.downsample
        out_frames = (num_frames + ds - 1) // ds
        # Pad with the last frame by clamped indices: nothing depends on the pad's size, so a traced (ONNX)
        # graph pads whatever the length, and torch.compile does not specialise on it (expanding the last
        # frame to `pad` rows would recompile for pad == 1).
        frames = torch.arange(out_frames * ds, device=src.device).clamp(max=num_frames - 1)
        src = src.index_select(0, frames).reshape(out_frames, ds, batch_size, channels)
        weights = self.bias.softmax(dim=0).view(1, ds, 1, 1)
        return (src * weights).sum(dim=1)


class SimpleUpsample(nn.Module):
    """``(T, N, C)`` -> ``(T * upsample, N, C)`` by repeating each frame."""

    def __init__(self, num_channels: int, upsample: int) -> None:
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor) -> Tensor:
        num_frames, batch_size, channels = src.shape
        src = src.unsqueeze(1).expand(num_frames, self.upsample, batch_size, channels)
        return src.reshape(num_frames * self.upsample, batch_size, channels)


class RelPositionMultiheadAttentionWeights(nn.Module):
    """Attention weights ``(H, N, T_q, T_k)`` from query/key dot products plus relative-position scores
    (a small per-head positional query against projected CompactRelPositionalEncoding vectors)."""

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        dropout: float = 0.0,
        pos_emb_skip_rate: FloatLike | None = None,
        relaxed_attention_gamma: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= relaxed_attention_gamma < 1.0:
            raise ValueError(f"relaxed_attention_gamma must be in [0, 1), got {relaxed_attention_gamma}")
        self.embed_dim = embed_dim
        self.relaxed_attention_gamma = relaxed_attention_gamma
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = (
            ScheduledFloat((0.0, 0.5), (4000.0, 0.0)) if pos_emb_skip_rate is None else pos_emb_skip_rate
        )
        self.name: str | None = None
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        # No 1/sqrt(d) in forward: the initial scale d^-0.25 on both query and key stands in for it.
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True, initial_scale=query_head_dim**-0.25)
        self.whiten_keys = Whiten(
            num_groups=num_heads, whitening_limit=_whitening_schedule(3.0), prob=(0.025, 0.25), grad_scale=0.025
        )
        # Scores ignore a constant added to keys, so numerical noise can drift the key bias; this rarely
        # applied balancer keeps key means near zero.
        self.balance_keys = Balancer(
            query_head_dim * num_heads,
            channel_dim=-1,
            min_positive=0.4,
            max_positive=0.6,
            min_abs=0.0,
            max_abs=100.0,
            prob=0.025,
        )
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)
        self.copy_pos_query = Identity()
        self.copy_query = Identity()
        # "torch": materialise the weights here; "triton" / "auto": see asr.nn.fused_attention.
        self.attention_backend = "torch"

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Projected ``(T, N, *)`` -> query ``(H, N, T, d)``, key ``(T, N, H*d)``, pos query ``(H, N, T, p)``."""
        num_frames, batch_size, _ = x.shape
        h, d = self.num_heads, self.query_head_dim
        q = x[..., : h * d]
        k = x[..., h * d : 2 * h * d]
        p = x[..., 2 * h * d :]
        q = self.copy_query(q).reshape(num_frames, batch_size, h, d).permute(2, 1, 0, 3)
        p = self.copy_pos_query(p).reshape(num_frames, batch_size, h, self.pos_head_dim).permute(2, 1, 0, 3)
        return q, k, p

    def _pos_scores(self, p: Tensor, pos_emb: Tensor, num_keys: int) -> Tensor:
        """Relative-position scores ``(H, N, T_q, T_k)``; ``pos_emb`` is ``(1, T_k + T_q - 1, pos_dim)``, one
        row per relative offset as CompactRelPositionalEncoding lays them out (the last ``T_q`` queries
        and ``T_k`` keys of the window share a time axis)."""
        h, batch_size, num_queries, _ = p.shape
        # One zero row past the last offset: the view below needs it, the matmul takes one column more.
        pos = nn.functional.pad(self.linear_pos(pos_emb), (0, 0, 0, 1))
        num_offsets = pos.shape[1]
        pos = pos.reshape(-1, num_offsets, h, self.pos_head_dim).permute(2, 0, 3, 1)
        scores = torch.matmul(p, pos)  # (H, N, T_q, num_offsets)
        # Query i against key j needs offset column (T_q - 1 - i) + j.
        if torch.jit.is_tracing():
            # The exported graph (asr.export) gathers the columns: ONNX has no strided views.
            rows = torch.arange(num_queries - 1, -1, -1, device=p.device).unsqueeze(-1)
            columns = (rows + torch.arange(num_keys, device=p.device)).expand(h, batch_size, num_queries, num_keys)
            return scores.gather(3, columns)
        # Flattened, (i, j) is element (T_q - 1) + i (num_offsets - 1) + j: from element T_q - 1 on, rows
        # of num_offsets - 1 hold the keys first. A view, so no copy (and plain slicing, which
        # torch.compile traces, unlike as_strided with a storage offset).
        flat = scores.reshape(h, batch_size, num_queries * num_offsets)
        rows = flat[..., num_queries - 1 : num_queries - 1 + num_queries * (num_offsets - 1)]
        return rows.reshape(h, batch_size, num_queries, num_offsets - 1)[..., :num_keys]

    def forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        key_padding_mask: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor | RelPosAttentionInputs:
        """``x`` ``(T, N, C)``, ``pos_emb`` ``(1, 2T - 1, pos_dim)``, ``key_padding_mask`` ``(N, T)`` and
        ``attn_mask`` ``(T, T)`` (True = masked). Returns weights ``(H, N, T, T)``, or, where
        ``attention_backend`` resolves to Triton, a :class:`RelPosAttentionInputs` standing for them."""
        num_frames, batch_size, _ = x.shape
        q, k, p = self._split(self.in_proj(x))
        k = self.whiten_keys(self.balance_keys(k))
        use_pos = not self.training or random.random() >= float(self.pos_emb_skip_rate)
        penalize = self.training and random.random() < 0.1
        relax = self.training and self.relaxed_attention_gamma > 0.0
        fused = (
            self.attention_backend != "torch"
            and not penalize
            and not relax
            and not (self.training and self.dropout > 0)
            and resolve_backend(self.attention_backend, x.device) == "triton"
        )
        chunking = (-1, -1) if attn_mask is None or not fused else chunk_params_from_mask(attn_mask)
        if fused and chunking is not None:
            # Each consumer recomputes the scores (see asr.nn.fused_attention). Rows that see no key at
            # all (padded frames of a chunk past the end) get zeros here, uniform weights below.
            k = k.reshape(num_frames, batch_size, self.num_heads, self.query_head_dim).permute(2, 1, 0, 3)
            pos_table = self.linear_pos(pos_emb)[0].reshape(-1, self.num_heads, self.pos_head_dim).permute(1, 0, 2)
            return RelPosAttentionInputs(
                q,
                k,
                p if use_pos else None,
                pos_table if use_pos else None,
                key_padding_mask,
                *chunking,
                backend="triton",
            )
        k = k.reshape(num_frames, batch_size, self.num_heads, self.query_head_dim).permute(2, 1, 3, 0)
        # The matmul's output is fresh and its backward reads only q and k: update it in place, so the
        # (H, N, T, T) scores are not copied for each term and mask (the penalty's output is an alias
        # that autograd does not let us modify, so after it the masks copy).
        scores = torch.matmul(q, k)
        if use_pos:
            scores.add_(self._pos_scores(p, pos_emb, num_frames))
        if penalize:
            # Fail-safe against implausibly large scores (a penalty in backprop only).
            scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04, name=self.name)
        masked_fill = Tensor.masked_fill if penalize else Tensor.masked_fill_
        # -1000, not -inf: fully masked rows stay finite, and exp(-1000) is exactly 0.
        if attn_mask is not None:
            scores = masked_fill(scores, attn_mask, -1000)
        if key_padding_mask is not None:
            scores = masked_fill(scores, key_padding_mask.unsqueeze(1), -1000)
        weights = softmax(scores, dim=-1)
        if relax:
            mask = attn_mask
            if key_padding_mask is not None:
                padding = key_padding_mask.unsqueeze(1)  # (N, 1, T)
                mask = padding if mask is None else mask | padding
            weights = relax_attention_weights(weights, mask, self.relaxed_attention_gamma)
        return nn.functional.dropout(weights, p=self.dropout, training=self.training)

    def streaming_forward(
        self,
        x: Tensor,
        pos_emb: Tensor,
        cached_key: Tensor,
        left_context_len: int,
        key_padding_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``x`` ``(T, N, C)``, ``cached_key`` ``(L, N, H*d)``, ``key_padding_mask`` ``(N, L + T)``.
        Returns weights ``(H, N, T, L + T)`` and the new key cache."""
        num_frames, batch_size, _ = x.shape
        q, k, p = self._split(self.in_proj(x))
        k = torch.cat([cached_key, k], dim=0)
        new_cached_key = k[-left_context_len:]
        num_keys = k.shape[0]
        k = k.reshape(num_keys, batch_size, self.num_heads, self.query_head_dim).permute(2, 1, 3, 0)
        scores = torch.matmul(q, k) + self._pos_scores(p, pos_emb, num_keys)
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), -1000)
        return scores.softmax(dim=-1), new_cached_key


class SelfAttention(nn.Module):
    """Applies precomputed attention weights to projected values; ``(T, N, C)`` in and out."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True, initial_scale=0.05)
        self.whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(7.5, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )

    @staticmethod
    def _attend(weights: Tensor | RelPosAttentionInputs, values: Tensor, num_queries: int) -> Tensor:
        num_keys, batch_size, _ = values.shape
        num_heads = weights.shape[0]
        values = values.reshape(num_keys, batch_size, num_heads, -1).permute(2, 1, 0, 3)
        out = apply_attention(weights, values)  # (H, N, T_q, d_v)
        return out.permute(2, 1, 0, 3).reshape(num_queries, batch_size, -1)

    def forward(self, x: Tensor, attn_weights: Tensor | RelPosAttentionInputs) -> Tensor:
        out = self._attend(attn_weights, self.in_proj(x), x.shape[0])
        return self.whiten(self.out_proj(out))

    def streaming_forward(
        self, x: Tensor, attn_weights: Tensor, cached_val: Tensor, left_context_len: int
    ) -> tuple[Tensor, Tensor]:
        """``cached_val`` ``(L, N, H*d_v)``; returns the output and the new value cache."""
        values = torch.cat([cached_val, self.in_proj(x)], dim=0)
        out = self._attend(attn_weights, values, x.shape[0])
        return self.out_proj(out), values[-left_context_len:]


class FeedforwardModule(nn.Module):
    """Linear -> SwooshL -> dropout (shared over time) -> linear; ``(T, N, C)`` in and out."""

    def __init__(self, embed_dim: int, feedforward_dim: int, dropout: FloatLike) -> None:
        super().__init__()
        self.in_proj = nn.Linear(embed_dim, feedforward_dim)
        self.hidden_balancer = Balancer(
            feedforward_dim, channel_dim=-1, min_positive=0.3, max_positive=1.0, min_abs=0.75, max_abs=5.0
        )
        self.out_proj = ActivationDropoutAndLinear(
            feedforward_dim,
            embed_dim,
            activation="SwooshL",
            dropout_p=dropout,
            dropout_shared_dim=0,
            bias=True,
            initial_scale=0.1,
        )
        self.out_whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.hidden_balancer(self.in_proj(x))
        return self.out_whiten(self.out_proj(x))


class NonlinAttention(nn.Module):
    """A convolution-module-like block whose "convolution" is multiplication by the first head's attention
    weights: ``out_proj((A @ (x * tanh(s))) * y)`` with ``s, x, y`` from one input projection."""

    def __init__(self, channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        # Well-trained instances have pre-tanh magnitudes of ~3; keep them away from tiny values.
        self.balancer = Balancer(
            hidden_channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
            max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
            min_abs=0.5,
            max_abs=5.0,
        )
        self.tanh = nn.Tanh()
        self.identity1 = Identity()
        self.identity2 = Identity()
        self.identity3 = Identity()
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(5.0), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.whiten2 = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(5.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )

    @staticmethod
    def _to_heads(x: Tensor, num_heads: int) -> Tensor:
        num_frames, batch_size, _ = x.shape
        return x.reshape(num_frames, batch_size, num_heads, -1).permute(2, 1, 0, 3)

    def forward(self, x: Tensor, attn_weights: Tensor) -> Tensor:
        """``x`` ``(T, N, C)``, ``attn_weights`` ``(H', N, T, T)`` (usually the first head only)."""
        num_frames, batch_size, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        s = self.tanh(self.balancer(s))
        x = self.identity1(self.whiten1(x) * s)
        x = torch.matmul(attn_weights, self._to_heads(x, attn_weights.shape[0]))
        x = x.permute(2, 1, 0, 3).reshape(num_frames, batch_size, -1)
        x = self.identity3(x * self.identity2(y))
        return self.whiten2(self.out_proj(x))

    def streaming_forward(
        self, x: Tensor, attn_weights: Tensor, cached_x: Tensor, left_context_len: int
    ) -> tuple[Tensor, Tensor]:
        """``cached_x`` ``(H', N, L, hidden / H')``; returns the output and the new cache."""
        num_frames, batch_size, _ = x.shape
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = x * self.tanh(s)
        x = torch.cat([cached_x, self._to_heads(x, attn_weights.shape[0])], dim=2)
        new_cached_x = x[:, :, -left_context_len:]
        x = torch.matmul(attn_weights, x)
        x = x.permute(2, 1, 0, 3).reshape(num_frames, batch_size, -1)
        return self.out_proj(x * y), new_cached_x


class ConvolutionModule(nn.Module):
    """Linear -> GLU-style sigmoid gate -> depthwise conv (chunk-causal when ``causal``) -> SwooshR ->
    linear; ``(T, N, C)`` in and out. Padded frames are zeroed before the depthwise conv."""

    def __init__(self, channels: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv kernel size must be odd, got {kernel_size}")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        # Keeps the gate input in a range where the sigmoid still has useful derivatives.
        self.balancer1 = Balancer(
            channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)),
            max_positive=1.0,
            min_abs=1.5,
            max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0),
        )
        self.activation1 = Identity()
        self.sigmoid = nn.Sigmoid()
        self.activation2 = Identity()
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels=channels, kernel_size=kernel_size)
        else:
            self.depthwise_conv = DepthwiseConv1d(channels, kernel_size=kernel_size, padding=kernel_size // 2)
        self.balancer2 = Balancer(
            channels,
            channel_dim=-1,
            min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)),
            max_positive=1.0,
            min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)),
            max_abs=10.0,
        )
        self.whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(7.5), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.out_proj = ActivationDropoutAndLinear(
            channels, channels, activation="SwooshR", dropout_p=0.0, initial_scale=0.05
        )

    def _gate(self, x: Tensor, key_padding_mask: Tensor | None, balance: bool) -> Tensor:
        """``(T, N, C)`` -> gated ``(N, T, C)``, zero on padded frames."""
        x, s = self.in_proj(x).chunk(2, dim=-1)
        if balance:
            s = self.balancer1(s)
        x = self.activation2(self.activation1(x) * self.sigmoid(s))
        x = x.transpose(0, 1)
        if key_padding_mask is not None:
            x = x.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
        return x

    def _chunked_conv(self, x: Tensor, chunk_size: int) -> Tensor:
        """The chunk-causal depthwise conv, ``(N, C, T)`` in and out."""
        if chunk_size < 0:
            return self.depthwise_conv(x)
        num_frames = x.shape[-1]
        if 0 < num_frames < chunk_size:
            # A sequence shorter than one chunk is a partial chunk, as it is in a longer padded batch and
            # in streaming: zero-pad it to a full chunk so the within-chunk position scales are the same
            # (the conv alone would shrink the chunk to the sequence).
            x = nn.functional.pad(x, (0, chunk_size - num_frames))
        return self.depthwise_conv(x, chunk_size=chunk_size)[..., :num_frames]

    def forward(self, x: Tensor, src_key_padding_mask: Tensor | None = None, chunk_size: int = -1) -> Tensor:
        x = self._gate(x, src_key_padding_mask, balance=True)  # (N, T, C)
        if self.causal:
            x = self._chunked_conv(x.transpose(1, 2), chunk_size).transpose(1, 2)
        elif chunk_size >= 0:
            raise ValueError("chunked convolution needs a model built with causal=True")
        else:
            x = self.depthwise_conv.forward_channels_last(x)
        # Frame-wise from here: stay batch-first (a time-first view would make out_proj copy its input).
        return self.out_proj(self.whiten(self.balancer2(x))).transpose(0, 1)

    def streaming_forward(self, x: Tensor, cache: Tensor, src_key_padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``cache`` ``(N, C, kernel // 2)``; returns the output and the new cache."""
        x = self._gate(x, src_key_padding_mask, balance=False)
        x, cache = self.depthwise_conv.streaming_forward(x.transpose(1, 2), cache=cache)
        return self.out_proj(x.permute(2, 0, 1)), cache


class Zipformer2EncoderLayer(nn.Module):
    """One Zipformer layer; ``(T, N, C)`` in and out."""

    def __init__(
        self,
        embed_dim: int,
        pos_dim: int,
        num_heads: int,
        query_head_dim: int,
        pos_head_dim: int,
        value_head_dim: int,
        feedforward_dim: int,
        dropout: FloatLike = 0.1,
        cnn_module_kernel: int = 31,
        causal: bool = False,
        relaxed_attention_gamma: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.bypass = BypassModule(
            embed_dim, skip_rate=ScheduledFloat((0.0, 0.5), (4000.0, 0.02), default=0), straight_through_rate=0
        )
        self.bypass_mid = BypassModule(embed_dim, straight_through_rate=0)
        # Skip probabilities (training only) of the attention-like modules, the conv modules and the
        # second/third feedforwards, per utterance.
        self.attention_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.conv_skip_rate = ScheduledFloat((0.0, 0.2), (4000.0, 0.05), (16000, 0.0), default=0)
        self.ff2_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = ScheduledFloat((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))

        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim,
            pos_dim=pos_dim,
            num_heads=num_heads,
            query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim,
            dropout=0.0,
            relaxed_attention_gamma=relaxed_attention_gamma,
        )
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused by the computation; kept because icefall checkpoints (and its parameter counts) have it.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)
        self.balancer1 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.2, max_abs=4.0
        )
        self.balancer_na = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)),
            prob=0.05,
        )
        # Rarely applied: stops the feedforward outputs from staying too small.
        self.balancer_ff2 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.1), default=0.0),
            max_abs=2.0,
            prob=0.05,
        )
        self.balancer_ff3 = Balancer(
            embed_dim,
            channel_dim=-1,
            min_positive=0.3,
            max_positive=0.7,
            min_abs=ScheduledFloat((0.0, 0.0), (4000.0, 0.2), default=0.0),
            max_abs=4.0,
            prob=0.05,
        )
        self.whiten = Whiten(
            num_groups=1, whitening_limit=_whitening_schedule(4.0, ratio=3.0), prob=(0.025, 0.25), grad_scale=0.01
        )
        self.balancer2 = Balancer(
            embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55, min_abs=0.1, max_abs=4.0
        )

    def _skip_mask(self, x: Tensor, rate: FloatLike) -> Tensor | None:
        """Per-utterance keep mask ``(N, 1)`` in training, None when nothing is skipped."""
        if not self.training:
            return None
        rate = float(rate)
        if rate == 0.0:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > rate).to(x.dtype)

    @staticmethod
    def _add(src: Tensor, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """``src + x * keep`` (``keep`` a per-utterance ``(N, 1)`` mask, None = keep all). Without an autograd
        graph ``src`` must be the layer's own tensor: it is updated in place, sparing a copy of the stream."""
        if keep is not None:
            return torch.addcmul(src, x, keep)
        if torch.is_grad_enabled() and (src.requires_grad or x.requires_grad):
            return src + x
        return src.add_(x)

    def forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        chunk_size: int = -1,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """``src`` ``(T, N, C)``, ``pos_emb`` ``(1, 2T - 1, pos_dim)``, ``attn_mask`` ``(T, T)`` and
        ``src_key_padding_mask`` ``(N, T)`` with True = masked; ``chunk_size`` -1 = no chunking."""
        src_orig = src
        attn_weights = self.self_attn_weights(
            src, pos_emb=pos_emb, attn_mask=attn_mask, key_padding_mask=src_key_padding_mask
        )
        src = src + self.feed_forward1(src)  # a new tensor: `_add` may update it in place from here

        attention_keep = self._skip_mask(src, self.attention_skip_rate)
        na = self.nonlin_attention(src, attention_weights(attn_weights, slice(0, 1)))
        src = self._add(src, self.balancer_na(na), attention_keep)
        src = self._add(src, self.self_attn1(src, attn_weights), attention_keep)
        conv_keep = self._skip_mask(src, self.conv_skip_rate)
        conv = self.conv_module1(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = self._add(src, conv, conv_keep)
        ff2_keep = self._skip_mask(src, self.ff2_skip_rate)
        src = self._add(src, self.balancer_ff2(self.feed_forward2(src)), ff2_keep)

        src = self.bypass_mid(src_orig, src)

        src = self._add(src, self.self_attn2(src, attn_weights), attention_keep)
        conv_keep = self._skip_mask(src, self.conv_skip_rate)
        conv = self.conv_module2(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = self._add(src, conv, conv_keep)
        ff3_keep = self._skip_mask(src, self.ff3_skip_rate)
        src = self._add(src, self.balancer_ff3(self.feed_forward3(src)), ff3_keep)

        src = self.norm(self.balancer1(src))
        src = self.bypass(src_orig, src)
        return self.whiten(self.balancer2(src))

    def streaming_forward(
        self,
        src: Tensor,
        pos_emb: Tensor,
        states: list[Tensor],
        left_context_len: int,
        src_key_padding_mask: Tensor,
    ) -> tuple[Tensor, list[Tensor]]:
        """One chunk. ``states`` = [key ``(L, N, H*d)``, nonlin ``(1, N, L, 3C/4)``, value1 and value2
        ``(L, N, H*d_v)``, conv1 and conv2 ``(N, C, k // 2)``]; ``src_key_padding_mask`` ``(N, L + T)``."""
        cached_key, cached_nonlin, cached_val1, cached_val2, cached_conv1, cached_conv2 = states
        chunk_mask = src_key_padding_mask[:, left_context_len:]
        src_orig = src
        attn_weights, cached_key = self.self_attn_weights.streaming_forward(
            src,
            pos_emb=pos_emb,
            cached_key=cached_key,
            left_context_len=left_context_len,
            key_padding_mask=src_key_padding_mask,
        )
        src = src + self.feed_forward1(src)
        na, cached_nonlin = self.nonlin_attention.streaming_forward(
            src, attn_weights[0:1], cached_x=cached_nonlin, left_context_len=left_context_len
        )
        src = src + na
        attn, cached_val1 = self.self_attn1.streaming_forward(src, attn_weights, cached_val1, left_context_len)
        src = src + attn
        conv, cached_conv1 = self.conv_module1.streaming_forward(src, cached_conv1, chunk_mask)
        src = src + conv
        src = src + self.feed_forward2(src)

        src = self.bypass_mid(src_orig, src)

        attn, cached_val2 = self.self_attn2.streaming_forward(src, attn_weights, cached_val2, left_context_len)
        src = src + attn
        conv, cached_conv2 = self.conv_module2.streaming_forward(src, cached_conv2, chunk_mask)
        src = src + conv
        src = src + self.feed_forward3(src)
        src = self.bypass(src_orig, self.norm(src))
        return src, [cached_key, cached_nonlin, cached_val1, cached_val2, cached_conv1, cached_conv2]


class Zipformer2Encoder(nn.Module):
    """A stack of ``num_layers`` copies of a layer at one frame rate, sharing one positional encoding.
    Layer ``i``'s skip rate decays from 0.5 to ``final_layerdrop_rate`` over its share of
    ``[warmup_begin, warmup_end]`` batches."""

    def __init__(
        self,
        encoder_layer: Zipformer2EncoderLayer,
        num_layers: int,
        pos_dim: int,
        dropout: FloatLike,
        warmup_begin: float,
        warmup_end: float,
        initial_layerdrop_rate: float = 0.5,
        final_layerdrop_rate: float = 0.05,
    ) -> None:
        super().__init__()
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15, length_factor=1.0)
        # Copies of one layer: icefall starts every layer of a stack from the same initial values.
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        step = (warmup_end - warmup_begin) / num_layers
        for i, layer in enumerate(self.layers):
            begin = warmup_begin + i * step
            layer.bypass.skip_rate = ScheduledFloat(
                (begin, initial_layerdrop_rate), (begin + step, final_layerdrop_rate), default=0.0
            )

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Tensor | float = 1.0,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """``src`` ``(T, N, C)``; ``feature_mask`` multiplies the input and every layer's output.
        ``lengths`` is accepted so every stack has one signature; at full rate nothing is downsampled."""
        pos_emb = self.encoder_pos(src)
        # The mask is the float 1.0 outside training: skip the multiplications (each a copy of the stream).
        masked = isinstance(feature_mask, Tensor)
        out = src * feature_mask if masked else src
        for layer in self.layers:
            out = layer(
                out, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask, src_key_padding_mask=src_key_padding_mask
            )
            if masked:
                out = out * feature_mask
        return out

    def streaming_forward(
        self, src: Tensor, states: list[Tensor], left_context_len: int, src_key_padding_mask: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        pos_emb = self.encoder_pos(src, left_context_len)
        new_states: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            layer_states = states[i * STATES_PER_LAYER : (i + 1) * STATES_PER_LAYER]
            src, layer_states = layer.streaming_forward(
                src, pos_emb, layer_states, left_context_len, src_key_padding_mask
            )
            new_states += layer_states
        return src, new_states


class DownsampledZipformer2Encoder(nn.Module):
    """Runs a stack at ``1/downsample`` of its input frame rate: downsample, stack, repeat-upsample,
    then a learned bypass from the input."""

    def __init__(self, encoder: Zipformer2Encoder, dim: int, downsample: int, dropout: FloatLike) -> None:
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)

    def forward(
        self,
        src: Tensor,
        chunk_size: int = -1,
        feature_mask: Tensor | float = 1.0,
        attn_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        lengths: Tensor | None = None,
    ) -> Tensor:
        """``src`` ``(T, N, C)`` at the input rate; ``attn_mask`` at the input rate, ``src_key_padding_mask``
        at the downsampled rate, ``lengths`` (valid input frames per utterance) at the input rate."""
        ds = self.downsample_factor
        x = self.downsample(_fill_past_end(src, lengths))
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        x = self.encoder(
            x,
            chunk_size=chunk_size // ds,
            feature_mask=feature_mask,
            attn_mask=attn_mask,
            src_key_padding_mask=src_key_padding_mask,
        )
        x = self.upsample(x)[: src.shape[0]]
        return self.out_combiner(src, x)

    def streaming_forward(
        self, src: Tensor, states: list[Tensor], left_context_len: int, src_key_padding_mask: Tensor
    ) -> tuple[Tensor, list[Tensor]]:
        x, new_states = self.encoder.streaming_forward(
            self.downsample(src), states, left_context_len, src_key_padding_mask
        )
        x = self.upsample(x)[: src.shape[0]]
        return self.out_combiner(src, x), new_states


class Zipformer2(nn.Module):
    """The Zipformer stacks (icefall's ``Zipformer2``): ``(T, N, encoder_dim[0])`` at 50 Hz in,
    ``((T + 1) // 2, N, max(encoder_dim))`` at 25 Hz out."""

    def __init__(self, config: ZipformerConfig, causal: bool = False, dropout: FloatLike | None = None) -> None:
        super().__init__()
        if config.output_downsampling_factor != 2:
            raise ValueError("only output_downsampling_factor=2 is supported (output lengths are (T+1)//2)")
        self.downsampling_factor = tuple(config.downsampling_factor)
        num_stacks = len(self.downsampling_factor)

        def stacked(name: str) -> tuple[int, ...]:
            return _per_stack(getattr(config, name), num_stacks, name)

        self.encoder_dim = stacked("encoder_dim")
        self.encoder_unmasked_dim = stacked("encoder_unmasked_dim")
        self.num_encoder_layers = stacked("num_encoder_layers")
        self.query_head_dim = stacked("query_head_dim")
        self.value_head_dim = stacked("value_head_dim")
        self.num_heads = stacked("num_heads")
        self.cnn_module_kernel = stacked("cnn_module_kernel")
        pos_head_dim = stacked("pos_head_dim")
        feedforward_dim = stacked("feedforward_dim")
        for unmasked, dim in zip(self.encoder_unmasked_dim, self.encoder_dim):
            if unmasked > dim:
                raise ValueError(f"encoder_unmasked_dim {unmasked} exceeds encoder_dim {dim}")
        self.causal = causal
        self.output_downsampling_factor = config.output_downsampling_factor
        if dropout is None:
            dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))

        stacks = []
        for i, ds in enumerate(self.downsampling_factor):
            layer = Zipformer2EncoderLayer(
                embed_dim=self.encoder_dim[i],
                pos_dim=config.pos_dim,
                num_heads=self.num_heads[i],
                query_head_dim=self.query_head_dim[i],
                pos_head_dim=pos_head_dim[i],
                value_head_dim=self.value_head_dim[i],
                feedforward_dim=feedforward_dim[i],
                dropout=dropout,
                cnn_module_kernel=self.cnn_module_kernel[i],
                causal=causal,
                relaxed_attention_gamma=config.relaxed_attention_gamma,
            )
            # Stacks warm up one after another (layer skipping decays later for later stacks).
            stack: nn.Module = Zipformer2Encoder(
                layer,
                self.num_encoder_layers[i],
                pos_dim=config.pos_dim,
                dropout=dropout,
                warmup_begin=config.warmup_batches * (i + 1) / (num_stacks + 1),
                warmup_end=config.warmup_batches * (i + 2) / (num_stacks + 1),
                final_layerdrop_rate=0.035 * (ds**0.5),
            )
            if ds != 1:
                stack = DownsampledZipformer2Encoder(stack, dim=self.encoder_dim[i], downsample=ds, dropout=dropout)
            stacks.append(stack)
        self.encoders = nn.ModuleList(stacks)
        self.downsample_output = SimpleDownsample(
            max(self.encoder_dim), downsample=config.output_downsampling_factor, dropout=dropout
        )

    def _feature_masks(self, x: Tensor) -> list[Tensor | float]:
        """Training only: on ~12.5% of utterances zero the channels above ``encoder_unmasked_dim`` (upper
        half), on ~23% all of them, consistently in every stack."""
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        batch_size = x.shape[1]
        drop_prob = 0.125
        keep1 = (torch.rand(1, batch_size, 1, device=x.device) > drop_prob).to(x.dtype)
        keep2 = torch.logical_and(keep1, torch.rand(1, batch_size, 1, device=x.device) > drop_prob).to(x.dtype)
        masks: list[Tensor | float] = []
        for dim, unmasked in zip(self.encoder_dim, self.encoder_unmasked_dim):
            mask = torch.ones(1, batch_size, dim, dtype=x.dtype, device=x.device)
            middle = unmasked + (dim - unmasked) // 2
            mask[:, :, unmasked:middle] *= keep1
            mask[:, :, middle:] *= keep2
            masks.append(mask)
        return masks

    def attention_mask(
        self, num_frames: int, chunk_size: int, left_context_chunks: int, device: torch.device | str = "cpu"
    ) -> Tensor | None:
        """``(T, T)`` bool, True where query frame ``i`` may not see key frame ``j``: ``j`` in a later chunk,
        or more than ``left_context_chunks`` chunks earlier (-1 = unlimited). None without chunking."""
        if chunk_size <= 0:
            return None
        if any(chunk_size % ds for ds in self.downsampling_factor):
            raise ValueError(
                f"chunk_size {chunk_size} must be a multiple of every downsampling factor {self.downsampling_factor}"
            )
        if left_context_chunks >= 0:
            for kernel, ds in zip(self.cnn_module_kernel, self.downsampling_factor):
                if chunk_size * left_context_chunks < (kernel // 2) * ds:
                    raise ValueError(
                        f"left context of {chunk_size * left_context_chunks} frames is shorter "
                        f"than a conv kernel's reach ({kernel // 2} x {ds} frames)"
                    )
        else:
            left_context_chunks = num_frames
        chunk = torch.arange(num_frames, device=device) // chunk_size
        query_chunk = chunk.unsqueeze(-1)
        return (chunk > query_chunk) | (chunk < query_chunk - left_context_chunks)

    def _full_dim_output(self, outputs: list[Tensor]) -> Tensor:
        """Each channel from the last stack that has it."""
        pieces = [outputs[-1]]
        have = self.encoder_dim[-1]
        for i in range(len(outputs) - 2, -1, -1):
            if self.encoder_dim[i] > have:
                pieces.append(outputs[i][..., have : self.encoder_dim[i]])
                have = self.encoder_dim[i]
        return torch.cat(pieces, dim=-1)

    def forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        src_key_padding_mask: Tensor | None = None,
        chunk_size: int = -1,
        left_context_chunks: int = -1,
    ) -> tuple[Tensor, Tensor]:
        """``x`` ``(T, N, C0)``, ``x_lens`` ``(N,)``, ``src_key_padding_mask`` ``(N, T)`` (True = padding).
        Returns ``((T + 1) // 2, N, max(encoder_dim))`` and lengths ``(x_lens + 1) // 2``."""
        feature_masks = self._feature_masks(x)
        attn_mask = self.attention_mask(x.shape[0], chunk_size, left_context_chunks, x.device)
        lengths = None if src_key_padding_mask is None else x_lens
        outputs = []
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x = stack(
                x,
                chunk_size=chunk_size,
                feature_mask=feature_masks[i],
                attn_mask=attn_mask,
                src_key_padding_mask=None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds],
                lengths=lengths,
            )
            outputs.append(x)
        x = self.downsample_output(_fill_past_end(self._full_dim_output(outputs), lengths))
        return x, (x_lens + 1) // 2

    def streaming_forward(
        self,
        x: Tensor,
        x_lens: Tensor,
        states: list[Tensor],
        src_key_padding_mask: Tensor,
        left_context_frames: int,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """One chunk ``x`` ``(T, N, C0)``; ``src_key_padding_mask`` ``(N, left_context_frames + T)``."""
        outputs = []
        new_states: list[Tensor] = []
        offset = 0
        for i, stack in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            count = stack.num_layers * STATES_PER_LAYER
            x = convert_num_channels(x, self.encoder_dim[i])
            x, stack_states = stack.streaming_forward(
                x, states[offset : offset + count], left_context_frames // ds, src_key_padding_mask[..., ::ds]
            )
            offset += count
            outputs.append(x)
            new_states += stack_states
        x = self.downsample_output(self._full_dim_output(outputs))
        return x, (x_lens + 1) // 2, new_states

    def init_states(
        self, batch_size: int, left_context_frames: int, device: torch.device | str = "cpu"
    ) -> list[Tensor]:
        states: list[Tensor] = []
        for i, stack in enumerate(self.encoders):
            dim = self.encoder_dim[i]
            heads = self.num_heads[i]
            left = left_context_frames // self.downsampling_factor[i]
            conv_pad = self.cnn_module_kernel[i] // 2
            for _ in range(stack.num_layers):
                states += [
                    torch.zeros(left, batch_size, self.query_head_dim[i] * heads, device=device),
                    torch.zeros(1, batch_size, left, 3 * dim // 4, device=device),
                    torch.zeros(left, batch_size, self.value_head_dim[i] * heads, device=device),
                    torch.zeros(left, batch_size, self.value_head_dim[i] * heads, device=device),
                    torch.zeros(batch_size, dim, conv_pad, device=device),
                    torch.zeros(batch_size, dim, conv_pad, device=device),
                ]
        return states


class ZipformerEncoder(StreamingEncoder):
    """Conv2dSubsampling + Zipformer stacks: fbank ``(N, T, F)`` -> ``(N, ((T - 7) // 2 + 1) // 2, output_dim)``.

    Chunk sizes and left contexts count 50 Hz frames (20 ms, after the front end); a chunk must be a
    multiple of every stack's downsampling factor, and one call of ``streaming_forward`` yields
    ``chunk_size // 2`` output frames at 25 Hz.

    Args:
        config: architecture (see ``PRESETS``).
        causal: build chunk-causal convolutions and use chunked attention (streaming models).
        chunk_size: chunk size in 50 Hz frames used in eval and streaming (-1 = whole utterance).
        left_context_frames: left context in 50 Hz frames used in eval and streaming (-1 = all).
        train_chunk_sizes / train_left_context_frames: drawn per batch in training (causal only).
        attention_backend: "torch" (materialised weights), "triton" (fused kernels) or "auto" (Triton on
            CUDA when available); see :mod:`asr.nn.fused_attention`. Streaming always uses "torch".
    """

    chunk_frame_ms = 20
    context_attributes = ("chunk_size", "left_context_frames")

    def __init__(
        self,
        config: ZipformerConfig,
        causal: bool = False,
        chunk_size: int = 16,
        left_context_frames: int = 128,
        train_chunk_sizes: tuple[int, ...] = (16, 32, 64, -1),
        train_left_context_frames: tuple[int, ...] = (64, 128, 256, -1),
        attention_backend: str = "torch",
    ) -> None:
        super().__init__()
        self.config = config
        self.causal = causal
        self.chunk_size = chunk_size if causal else -1
        self.left_context_frames = left_context_frames if causal else -1
        self.train_chunk_sizes = tuple(train_chunk_sizes) if causal else (-1,)
        self.train_left_context_frames = tuple(train_left_context_frames) if causal else (-1,)
        dropout = ScheduledFloat((0.0, 0.3), (20000.0, 0.1))
        first_dim = _per_stack(config.encoder_dim, len(config.downsampling_factor), "encoder_dim")[0]
        layer1, layer2, layer3 = config.embed_channels
        self.encoder_embed = Conv2dSubsampling(
            config.feature_dim,
            first_dim,
            layer1_channels=layer1,
            layer2_channels=layer2,
            layer3_channels=layer3,
            dropout=dropout,
            convnext=config.embed_convnext,
        )
        self.encoder = Zipformer2(config, causal=causal, dropout=dropout)
        self.output_dim = max(self.encoder.encoder_dim)
        self.set_attention_backend(attention_backend)

    def set_attention_backend(self, backend: str) -> None:
        """Compute the attention of every layer with ``backend`` ("torch", "triton" or "auto")."""
        if backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, RelPositionMultiheadAttentionWeights):
                module.attention_backend = backend

    @staticmethod
    def output_lengths(x_lens: Tensor) -> Tensor:
        """Output frames for ``x_lens`` feature frames: ``((x_lens - 7) // 2 + 1) // 2``."""
        return (Conv2dSubsampling.output_lengths(x_lens) + 1) // 2

    def _chunking(self) -> tuple[int, int]:
        """(chunk_size, left_context_chunks) for this forward: random per batch in causal training, the
        configured attributes otherwise."""
        if not self.causal:
            return -1, -1
        if self.training:
            chunk_size = random.choice(self.train_chunk_sizes)
            left_frames = random.choice(self.train_left_context_frames)
        else:
            chunk_size, left_frames = self.chunk_size, self.left_context_frames
        if chunk_size <= 0:
            return -1, -1
        # -1 // chunk_size stays -1 (unlimited); otherwise at least one chunk of left context.
        return chunk_size, max(left_frames // chunk_size, 1) if left_frames >= 0 else -1

    def streaming_context(self) -> tuple[int, int]:
        """``(chunk_size, left_context_frames)`` in 50 Hz frames; -1 = no chunk mask / unlimited."""
        chunk_size = self.chunk_size if self.chunk_size > 0 else -1
        return chunk_size, self.left_context_frames if self.left_context_frames >= 0 else -1

    def _check_context(self, chunk_size: int, left_context_frames: int) -> None:
        # Raises ValueError for a chunk that some stack's downsampling does not divide, or a left context
        # shorter than a convolution's reach.
        self.encoder.attention_mask(1, chunk_size, left_context_frames // chunk_size)

    def _store_streaming(self, chunk_size: int, left_context_frames: int) -> None:
        self.chunk_size, self.left_context_frames = chunk_size, left_context_frames

    def _store_full_context(self) -> None:
        self.chunk_size, self.left_context_frames = -1, -1

    def forward(self, x: Tensor, x_lens: Tensor) -> tuple[Tensor, Tensor]:
        """``x`` ``(N, T, F)`` fbank, ``x_lens`` ``(N,)``; returns ``(N, T', output_dim)`` and ``(N,)``."""
        x, x_lens = self.encoder_embed(x, x_lens)
        padding_mask = torch.arange(x.shape[1], device=x.device) >= x_lens.unsqueeze(-1)
        if not torch.compiler.is_compiling() and not bool(padding_mask.any()):
            # Nothing to mask: spare every layer its masking passes. (A host sync; a compiled graph keeps
            # the mask instead of branching on data.)
            padding_mask = None
        chunk_size, left_context_chunks = self._chunking()
        # Time-first and contiguous: with a transposed view every linear layer of the first stack would copy.
        x = x.transpose(0, 1).contiguous()
        y, y_lens = self.encoder(x, x_lens, padding_mask, chunk_size, left_context_chunks)
        return y.transpose(0, 1), y_lens

    # -- streaming -----------------------------------------------------------------------------------
    @property
    def streaming_feature_frames(self) -> int:
        """Feature frames ``streaming_forward`` takes per call: ``2 * chunk_size + 13`` (``+ 7`` without
        the front end's ConvNeXt)."""
        return 2 * self.chunk_size + self.encoder_embed.streaming_lookahead

    @property
    def streaming_feature_shift(self) -> int:
        """Feature frames to advance between calls (consecutive windows overlap by the look-ahead)."""
        return 2 * self.chunk_size

    def _check_streaming(self) -> None:
        if not self.causal:
            raise RuntimeError("streaming needs a model built with causal=True")
        if self.chunk_size <= 0 or self.left_context_frames <= 0:
            raise ValueError(
                f"streaming needs chunk_size > 0 and left_context_frames > 0, got "
                f"{self.chunk_size} and {self.left_context_frames}"
            )
        if self.left_context_frames % self.chunk_size:
            raise ValueError(
                f"left_context_frames {self.left_context_frames} must be a multiple of chunk_size {self.chunk_size}"
            )
        self.encoder.attention_mask(1, self.chunk_size, self.left_context_frames // self.chunk_size)

    def init_states(self, batch_size: int = 1, device: torch.device | str = "cpu") -> list[Tensor]:
        """Zero states for ``batch_size`` new streams, laid out as icefall's: per layer (key, nonlin
        attention, value1, value2, conv1, conv2), then the ConvNeXt cache and processed frame counts."""
        self._check_streaming()
        states = self.encoder.init_states(batch_size, self.left_context_frames, device)
        states.append(self.encoder_embed.init_states(batch_size, device))
        states.append(torch.zeros(batch_size, dtype=torch.int64, device=device))
        return states

    def state_batch_dims(self) -> list[int]:
        """The batch axis of each entry of ``init_states()``, for stacking/splitting streams."""
        num_layers = sum(self.encoder.num_encoder_layers)
        return [1, 1, 1, 1, 0, 0] * num_layers + [0, 0]

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Encode one chunk.

        Args:
            x: ``(N, streaming_feature_frames, F)``, features ``[2 c k, 2 c (k + 1) + 13)`` of chunk ``k``
               (pad the end of an utterance, as icefall does with log(1e-10)).
            x_lens: ``(N,)`` valid frames of ``x``.
            states: from ``init_states`` or the previous call.
        Returns:
            ``(N, chunk_size // 2, output_dim)``, valid lengths ``(N,)`` and the new states.
        """
        self._check_streaming()
        if x.shape[1] != self.streaming_feature_frames:
            raise ValueError(
                f"streaming chunk has {x.shape[1]} feature frames, expected "
                f"{self.streaming_feature_frames} "
                f"(2 * chunk_size + {self.encoder_embed.streaming_lookahead})"
            )
        expected = len(self.state_batch_dims())
        if len(states) != expected:
            raise ValueError(f"got {len(states)} state tensors, expected {expected}")
        left = self.left_context_frames
        x, x_lens, embed_cache = self.encoder_embed.streaming_forward(x, x_lens, states[-2])
        processed = states[-1]
        chunk_padding = torch.arange(x.shape[1], device=x.device) >= x_lens.unsqueeze(-1)
        # Cache slots not yet filled (fewer than `left` frames processed) are masked; the cache is
        # right-aligned, so the valid slots are the last `processed` ones.
        unfilled = (processed.unsqueeze(-1) <= torch.arange(left, device=x.device)).flip(-1)
        padding_mask = torch.cat([unfilled, chunk_padding], dim=-1)
        y, y_lens, layer_states = self.encoder.streaming_forward(
            x.transpose(0, 1), x_lens, states[:-2], padding_mask, left
        )
        return y.transpose(0, 1), y_lens, layer_states + [embed_cache, processed + x_lens]

    def set_batch_count(self, batch_count: float) -> None:
        """Set the training batch count that drives every ScheduledFloat schedule in this model."""
        for module in self.modules():
            if hasattr(module, "batch_count"):
                module.batch_count = batch_count


def zipformer_config(name: str, **overrides) -> ZipformerConfig:
    """The preset ``name`` with fields replaced by ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown Zipformer preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def build_zipformer(name: str, causal: bool = False, **overrides) -> ZipformerEncoder:
    """A ``ZipformerEncoder`` from a preset name; overrides go to the config or to ``ZipformerEncoder``
    (``chunk_size``, ``left_context_frames``, ``train_chunk_sizes``, ``train_left_context_frames``,
    ``attention_backend``)."""
    encoder_args = {
        k: overrides.pop(k)
        for k in (
            "chunk_size",
            "left_context_frames",
            "train_chunk_sizes",
            "train_left_context_frames",
            "attention_backend",
        )
        if k in overrides
    }
    config = zipformer_config(name, **overrides)
    return ZipformerEncoder(config, causal=causal, **encoder_args)


__all__ = ["PRESETS", "ZipformerConfig", "ZipformerEncoder", "Zipformer2", "build_zipformer", "zipformer_config"]
