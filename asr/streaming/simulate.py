"""Run a streaming encoder chunk by chunk over whole utterances (simulated streaming).

This is what a streaming server does, minus the network: the encoder sees one chunk of features at a
time and carries its caches from chunk to chunk. Decoding its output measures what streaming costs
in accuracy against the full-utterance forward.
"""

from __future__ import annotations

import math

import torch

from asr.encoders.base import StreamingEncoder

# Feature value used to pad past the end of an utterance: log of a tiny energy, as fbank of silence.
LOG_EPS = math.log(1e-10)


def is_streaming_encoder(encoder: torch.nn.Module) -> bool:
    """Whether ``encoder`` can stream: a :class:`StreamingEncoder` built causal (``causal=True``)."""
    return isinstance(encoder, StreamingEncoder) and encoder.causal


@torch.no_grad()
def simulate_streaming(
    encoder: StreamingEncoder, features: torch.Tensor, feature_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode a padded batch chunk by chunk through ``encoder.streaming_forward``, with the chunk and left
    context the encoder is set to (:meth:`StreamingEncoder.set_streaming`).

    Args:
        encoder: a causal :class:`StreamingEncoder`.
        features: ``(N, T, F)``; feature_lens: ``(N,)``.
    Returns:
        ``(N, T', C)`` encoder output and valid lengths ``(N,)``, as the full forward returns them.
    """
    if not is_streaming_encoder(encoder):
        raise ValueError(f"{type(encoder).__name__} is not a streaming encoder (build it with causal=True)")
    window, shift = encoder.streaming_feature_frames, encoder.streaming_feature_shift
    batch_size, num_frames, _ = features.shape
    # Like a live stream at end of input, each utterance is followed by a window of silence-level
    # padding, processed as input, so its last frames get the look-ahead they would get in a longer
    # utterance; outputs past the full forward's length are then cut off.
    padded_lens = feature_lens + window
    padded = torch.full(
        (batch_size, num_frames + 2 * window, features.size(2)), LOG_EPS, dtype=features.dtype, device=features.device
    )
    padded[:, :num_frames] = features
    positions = torch.arange(num_frames, device=features.device)
    padded[:, :num_frames][positions.expand(batch_size, -1) >= feature_lens.unsqueeze(1)] = LOG_EPS
    states = encoder.init_states(batch_size, device=features.device)
    outputs, output_lens = [], torch.zeros_like(feature_lens)
    for start in range(0, int(padded_lens.max()) - (window - shift), shift):
        chunk = padded[:, start : start + window]
        chunk_lens = (padded_lens - start).clamp(min=0, max=window)
        y, y_lens, states = encoder.streaming_forward(chunk, chunk_lens, states)
        outputs.append(y)
        output_lens += y_lens
    full_lens = encoder.output_lengths(feature_lens)
    return torch.cat(outputs, dim=1), torch.minimum(output_lens, full_lens)
