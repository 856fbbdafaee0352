"""Encoder + transducer, CTC and/or attention-decoder heads, trained with the pruned RNN-T loss (k2 semantics),
CTC and the label-smoothed attention-decoder loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

import asr.losses as asr_losses
from asr.encoders.base import Encoder
from asr.models.aed import SOS_EOS_ID, AttentionDecoder
from asr.models.ctc import CtcHead
from asr.models.label_encoder import LabelEncoder
from asr.models.transducer import Decoder, Joiner, scaled_linear

HEADS = ("transducer", "ctc", "aed")
# What a model gets when no heads are named.
DEFAULT_HEADS = ("transducer", "ctc")
DECODER_TYPES = ("stateless", "label_encoder")


def _full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half/bfloat16 (autocast) to float32 for the loss recursions; float32/64 unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class AsrLosses(NamedTuple):
    """Raw losses of one batch, each summed over utterances (``reduction="sum"``, as icefall); a head
    the model lacks gives ``None``. Training weights them with :func:`asr.training.losses.combine_losses`."""

    simple: torch.Tensor | None
    pruned: torch.Tensor | None
    ctc: torch.Tensor | None
    aed: torch.Tensor | None = None


def pad_tokens(
    tokens: Sequence[Sequence[int]], vocab_size: int, blank_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists to a zero-padded ``(N, S)`` int64 tensor and lengths ``(N,)``.

    Raises ``ValueError`` naming the utterance for ids outside ``[0, vocab_size)`` or equal to blank.
    """
    lengths = [len(seq) for seq in tokens]
    padded = torch.zeros(len(tokens), max(lengths, default=0), dtype=torch.int64)
    for i, seq in enumerate(tokens):
        bad = [t for t in seq if not 0 <= t < vocab_size or t == blank_id]
        if bad:
            raise ValueError(f"utterance {i}: token ids {bad[:5]} are blank ({blank_id}) or outside [0, {vocab_size})")
        padded[i, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.int64)
    return padded, torch.tensor(lengths, dtype=torch.int64)


def encode_checked(encoder: nn.Module, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``encoder(x, x_lens)`` for features ``(N, T, F)`` and lengths ``(N,)``, with clear errors for bad shapes
    and for utterances too short to give an output frame."""
    if x.ndim != 3 or x_lens.ndim != 1 or x.size(0) != x_lens.size(0):
        raise ValueError(f"expected x (N, T, F) and x_lens (N,), got {tuple(x.shape)}, {tuple(x_lens.shape)}")
    # F is fixed by the model: a compiled encoder (dynamic batch and length) specialises on it. With a
    # symbolic F, inductor cannot order the strides of the front end's (N, 1, T, F) conv input in the
    # training graph and fails. Marking a tensor costs nothing outside torch.compile.
    torch._dynamo.mark_static(x, 2)
    enc_out, enc_lens = encoder(x, x_lens)
    if torch.any(enc_lens <= 0):
        short = torch.nonzero(enc_lens <= 0).flatten().tolist()
        raise ValueError(f"utterances {short} are too short for the encoder (input lengths {x_lens[short].tolist()})")
    return enc_out, enc_lens


class AsrModel(nn.Module):
    """An encoder with any of: a pruned-RNN-T transducer head, a CTC head, an attention decoder (AED).

    Args:
        encoder: an :class:`asr.encoders.Encoder`: ``forward(x, x_lens) -> (y, y_lens)`` on
            ``(N, T, F) -> (N, T', C)``, ``output_lengths`` and ``output_dim`` equal to ``C``.
        vocab_size: output symbols including blank (id ``blank_id``).
        heads: any non-empty subset of ``("transducer", "ctc", "aed")``.
        decoder_dim: stateless decoder dimension.
        joiner_dim: joiner hidden dimension.
        context_size: decoder context (previous tokens).
        blank_id: blank symbol id (0 in this project).
        ctc_dropout: dropout before the CTC projection.
        decoder_type: the transducer's prediction network: ``"stateless"`` (icefall's embedding + conv)
            or ``"label_encoder"`` (Transformer-Transducer's transformer over the last labels).
        aed_dim / aed_layers / aed_heads / aed_feedforward_dim / aed_dropout: the attention decoder
            (:class:`asr.models.aed.AttentionDecoder`; icefall's default sizes).
        label_smoothing: ε of the attention-decoder loss.
        relax_cross: γ of the attention decoder's relaxed cross-attention (training only).
        sos_eos_id: the attention decoder's start/end id (the tokenizers' ``<sos/eos>``, 1).
    """

    def __init__(
        self,
        encoder: Encoder,
        vocab_size: int,
        heads: Sequence[str] = DEFAULT_HEADS,
        decoder_dim: int = 512,
        joiner_dim: int = 512,
        context_size: int = 2,
        blank_id: int = 0,
        ctc_dropout: float = 0.1,
        decoder_type: str = "stateless",
        aed_dim: int = 512,
        aed_layers: int = 6,
        aed_heads: int = 8,
        aed_feedforward_dim: int = 2048,
        aed_dropout: float = 0.1,
        label_smoothing: float = 0.1,
        relax_cross: float = 0.0,
        sos_eos_id: int = SOS_EOS_ID,
    ):
        super().__init__()
        heads = tuple(heads)
        unknown = [h for h in heads if h not in HEADS]
        if unknown or not heads:
            raise ValueError(f"heads must be a non-empty subset of {HEADS}, got {heads}")
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder must be an asr.encoders.Encoder, got {type(encoder).__name__}")
        encoder_dim = int(encoder.output_dim)
        self.encoder = encoder
        self.encoder_dim = encoder_dim
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self.heads = heads
        # Set by build_model: what save_model stores so that load_model can rebuild the model.
        self.build_config: dict | None = None
        if "transducer" in heads:
            if decoder_type not in DECODER_TYPES:
                raise ValueError(f"decoder_type must be one of {DECODER_TYPES}, got {decoder_type!r}")
            decoder_class = Decoder if decoder_type == "stateless" else LabelEncoder
            self.decoder = decoder_class(vocab_size, decoder_dim, blank_id=blank_id, context_size=context_size)
            self.joiner = Joiner(encoder_dim, decoder_dim, joiner_dim, vocab_size)
            self.simple_am_proj = scaled_linear(encoder_dim, vocab_size, initial_scale=0.25)
            self.simple_lm_proj = scaled_linear(decoder_dim, vocab_size, initial_scale=0.25)
        if "ctc" in heads:
            self.ctc_output = CtcHead(encoder_dim, vocab_size, dropout=ctc_dropout)
        if "aed" in heads:
            self.attention_decoder = AttentionDecoder(
                vocab_size,
                encoder_dim,
                dim=aed_dim,
                num_layers=aed_layers,
                num_heads=aed_heads,
                feedforward_dim=aed_feedforward_dim,
                dropout=aed_dropout,
                sos_eos_id=sos_eos_id,
                label_smoothing=label_smoothing,
                relax_cross=relax_cross,
            )

    @property
    def has_transducer(self) -> bool:
        return "transducer" in self.heads

    @property
    def has_ctc(self) -> bool:
        return "ctc" in self.heads

    @property
    def has_aed(self) -> bool:
        return "aed" in self.heads

    def compile_encoder(self) -> None:
        """Run the encoder's forward through ``torch.compile``, in place: parameters, their names and
        checkpoints stay as they are. Shapes are dynamic, so new batch sizes and lengths reuse the compiled
        code (the first call compiles: a minute or more on a CPU). ``streaming_forward`` stays eager."""
        self.encoder.compile(dynamic=True)

    def encode(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features ``(N, T, F)``, lengths ``(N,)`` -> encoder output ``(N, T', C)``, lengths ``(N,)``."""
        return encode_checked(self.encoder, x, x_lens)

    def encoder_output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        """Encoder output lengths ``(N,)`` for input lengths ``(N,)``, without running the encoder."""
        return self.encoder.output_lengths(x_lens)

    def ctc_log_probs(self, enc_out: torch.Tensor) -> torch.Tensor:
        """``(N, T, C)`` encoder output -> ``(N, T, vocab_size)`` CTC log-probabilities."""
        if not self.has_ctc:
            raise RuntimeError("this model has no CTC head")
        return self.ctc_output(enc_out)

    def forward_transducer(
        self,
        enc_out: torch.Tensor,
        enc_lens: torch.Tensor,
        targets: torch.Tensor,
        target_lens: torch.Tensor,
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.25,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Simple (smoothed) and pruned RNN-T losses, each summed over the batch.

        Args:
            enc_out: ``(N, T, C)``; enc_lens: ``(N,)``.
            targets: ``(N, S)`` zero-padded token ids; target_lens: ``(N,)``.
        """
        blank = self.blank_id
        # The decoder sees blank as start-of-sequence, then the labels: (N, S+1, decoder_dim).
        sos_targets = torch.cat([targets.new_full((targets.size(0), 1), blank), targets], dim=1)
        dec_out = self.decoder(sos_targets)
        boundary = torch.zeros(targets.size(0), 4, dtype=torch.int64, device=enc_out.device)
        boundary[:, 2] = target_lens
        boundary[:, 3] = enc_lens
        lm = self.simple_lm_proj(dec_out)
        am = self.simple_am_proj(enc_out)
        with torch.autocast(device_type=enc_out.device.type, enabled=False):
            simple_loss, (px_grad, py_grad) = asr_losses.rnnt_loss_smoothed(
                lm=_full_precision(lm),
                am=_full_precision(am),
                symbols=targets,
                termination_symbol=blank,
                lm_only_scale=lm_scale,
                am_only_scale=am_scale,
                boundary=boundary,
                reduction="sum",
                return_grad=True,
            )
        ranges = asr_losses.get_rnnt_prune_ranges(
            px_grad=px_grad, py_grad=py_grad, boundary=boundary, s_range=prune_range
        )
        # Project before pruning so the projections run on (N, T, C), not (N, T, prune_range, C).
        am_pruned, lm_pruned = asr_losses.do_rnnt_pruning(
            am=self.joiner.encoder_proj(enc_out), lm=self.joiner.decoder_proj(dec_out), ranges=ranges
        )
        logits = self.joiner(am_pruned, lm_pruned, project_input=False)  # (N, T, prune_range, V)
        with torch.autocast(device_type=enc_out.device.type, enabled=False):
            pruned_loss = asr_losses.rnnt_loss_pruned(
                logits=_full_precision(logits),
                symbols=targets,
                ranges=ranges,
                termination_symbol=blank,
                boundary=boundary,
                reduction="sum",
            )
        return simple_loss, pruned_loss

    def forward_ctc(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor
    ) -> torch.Tensor:
        """CTC loss summed over the batch; targets ``(N, S)`` zero-padded."""
        return asr_losses.ctc_loss(self.ctc_log_probs(enc_out), targets, enc_lens, target_lens, reduction="sum")

    def forward_aed(
        self, enc_out: torch.Tensor, enc_lens: torch.Tensor, targets: torch.Tensor, target_lens: torch.Tensor
    ) -> torch.Tensor:
        """Label-smoothed attention-decoder loss summed over the batch; targets ``(N, S)`` zero-padded."""
        return self.attention_decoder.loss(enc_out, enc_lens, targets, target_lens)

    def forward(
        self,
        x: torch.Tensor,
        x_lens: torch.Tensor,
        tokens: Sequence[Sequence[int]],
        prune_range: int = 5,
        am_scale: float = 0.0,
        lm_scale: float = 0.25,
    ) -> AsrLosses:
        """The raw losses of a batch (0-dim sums over the utterances), unweighted.

        Args:
            x: features ``(N, T, F)``; x_lens: ``(N,)``.
            tokens: the label ids of each utterance (no blanks).
            prune_range, am_scale, lm_scale: pruned RNN-T settings (icefall's defaults).
        """
        if len(tokens) != x.size(0):
            raise ValueError(f"{x.size(0)} utterances of features but {len(tokens)} token sequences")
        enc_out, enc_lens = self.encode(x, x_lens)
        targets, target_lens = pad_tokens(tokens, self.vocab_size, self.blank_id)
        targets, target_lens = targets.to(x.device), target_lens.to(x.device)
        simple = pruned = ctc = aed = None
        if self.has_transducer:
            simple, pruned = self.forward_transducer(
                enc_out, enc_lens, targets, target_lens, prune_range, am_scale, lm_scale
            )
        if self.has_ctc:
            ctc = self.forward_ctc(enc_out, enc_lens, targets, target_lens)
        if self.has_aed:
            aed = self.forward_aed(enc_out, enc_lens, targets, target_lens)
        return AsrLosses(simple, pruned, ctc, aed)
