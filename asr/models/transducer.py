"""Transducer prediction network (stateless decoder) and joiner.

Parameter names follow icefall's zipformer recipe (``decoder.embedding``, ``decoder.conv``,
``joiner.encoder_proj``, ``joiner.decoder_proj``, ``joiner.output_linear``) so converted icefall
checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled_linear(in_features: int, out_features: int, initial_scale: float = 1.0, bias: bool = True) -> nn.Linear:
    """An ``nn.Linear`` whose initial weight is multiplied by ``initial_scale`` and whose bias is drawn
    from ``U(-0.1·s, 0.1·s)`` (icefall's ScaledLinear initialisation; the module is a plain Linear)."""
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(initial_scale)
        if linear.bias is not None:
            nn.init.uniform_(linear.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return linear


class Decoder(nn.Module):
    """Stateless prediction network: token embedding followed by a grouped 1-D convolution over the
    last ``context_size`` tokens (no recurrence), then ReLU.

    Negative token ids embed to zeros; search uses ``-1`` to fill the context before the first
    token, which matches the zero left-padding used in training.

    Args:
        vocab_size: number of output symbols including blank.
        decoder_dim: embedding and output dimension (divisible by 4: the convolution groups hold 4 channels).
        blank_id: id of the blank symbol, also the start-of-sequence symbol.
        context_size: number of previous tokens the output depends on (2 = trigram-like).
    """

    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size must be >= 1, got {context_size}")
        if context_size > 1 and decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim must be divisible by 4 (conv group size), got {decoder_dim}")
        self.vocab_size = vocab_size
        self.decoder_dim = decoder_dim
        self.blank_id = blank_id
        self.context_size = context_size
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        if context_size > 1:
            self.conv = nn.Conv1d(
                decoder_dim, decoder_dim, kernel_size=context_size, groups=decoder_dim // 4, bias=False
            )
        else:
            self.conv = nn.Identity()

    def forward(self, tokens: torch.Tensor, need_pad: bool = True) -> torch.Tensor:
        """
        Args:
            tokens: ``(N, U)`` token ids; negative ids mean "no token" (zero embedding).
            need_pad: True (training) left-pads with ``context_size - 1`` zero frames so the output has
                one vector per input position. False (search) expects exactly ``U == context_size``
                and returns one vector.
        Returns:
            ``(N, U, decoder_dim)`` when ``need_pad``, else ``(N, 1, decoder_dim)``.
        """
        tokens = tokens.to(torch.int64)
        emb = self.embedding(tokens.clamp(min=0)) * (tokens >= 0).unsqueeze(-1)
        if self.context_size == 1:
            return emb
        if not need_pad and tokens.size(1) != self.context_size:
            raise ValueError(
                f"without padding the decoder needs exactly context_size={self.context_size} tokens, "
                f"got {tokens.size(1)}"
            )
        emb = emb.permute(0, 2, 1)  # (N, C, U) for Conv1d
        if need_pad:
            emb = F.pad(emb, (self.context_size - 1, 0))
        return F.relu(self.conv(emb).permute(0, 2, 1))


class Joiner(nn.Module):
    """Combines encoder and decoder vectors: ``output_linear(tanh(encoder_proj(e) + decoder_proj(d)))``.

    Args:
        encoder_dim: encoder output dimension.
        decoder_dim: decoder output dimension.
        joiner_dim: hidden dimension of the joiner.
        vocab_size: number of output symbols including blank.
    """

    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = scaled_linear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = scaled_linear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor, project_input: bool = True) -> torch.Tensor:
        """
        Args:
            encoder_out: ``(..., encoder_dim)``, or ``(..., joiner_dim)`` already projected.
            decoder_out: ``(..., decoder_dim)``, or ``(..., joiner_dim)`` already projected; same number
                of dimensions as ``encoder_out`` (broadcast over the leading ones).
            project_input: False when the caller already applied ``encoder_proj``/``decoder_proj``
                (pruned training and search project once and reuse).
        Returns:
            Unnormalised logits ``(..., vocab_size)``.
        """
        if encoder_out.ndim != decoder_out.ndim:
            raise ValueError(
                f"joiner inputs need the same number of dims, got {tuple(encoder_out.shape)} "
                f"and {tuple(decoder_out.shape)}"
            )
        if project_input:
            hidden = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            hidden = encoder_out + decoder_out
        return self.output_linear(torch.tanh(hidden))
