"""Simulated streaming: chunk-by-chunk encoding of whole, padded batches."""

import pytest
import torch

from asr.encoders import build_encoder
from asr.streaming import simulate_streaming
from asr.streaming.simulate import LOG_EPS


def tiny_causal(chunk_size: int, left_context_frames: int):
    torch.manual_seed(0)
    return build_encoder(
        "zipformer-xs",
        causal=True,
        chunk_size=chunk_size,
        left_context_frames=left_context_frames,
        num_encoder_layers=(1, 1, 1, 1, 1, 1),
    ).eval()


@pytest.mark.parametrize("chunk_size, left_context_frames", [(16, 64), (32, 64)])
def test_chunk_by_chunk_equals_masked_full_forward_away_from_the_end(chunk_size, left_context_frames):
    encoder = tiny_causal(chunk_size, left_context_frames)
    lens = torch.tensor([301, 250, 97])
    x = torch.randn(3, 301, 80)
    for i, n in enumerate(lens):
        x[i, n:] = LOG_EPS  # how the data pipeline pads
    with torch.no_grad():
        full, full_lens = encoder(x, lens)
    streamed, streamed_lens = simulate_streaming(encoder, x, lens)
    assert torch.equal(streamed_lens, full_lens)
    for i, n in enumerate(lens.tolist()):
        # Outputs of the chunks that lie wholly inside the utterance are the masked forward's; the last,
        # partial chunk sees end-of-input padding as a live stream does, so it may differ.
        complete = (n - 13) // (2 * chunk_size) * (chunk_size // 2)
        assert complete > 0
        torch.testing.assert_close(streamed[i, :complete], full[i, :complete], atol=1e-4, rtol=0)
        assert torch.isfinite(streamed[i, : streamed_lens[i]]).all()


def test_batch_and_single_utterance_agree():
    encoder = tiny_causal(16, 64)
    lens = torch.tensor([200, 123])
    x = torch.randn(2, 200, 80)
    x[1, 123:] = LOG_EPS
    batched, batched_lens = simulate_streaming(encoder, x, lens)
    alone, alone_lens = simulate_streaming(encoder, x[1:, :123], lens[1:])
    assert batched_lens[1] == alone_lens[0]
    torch.testing.assert_close(batched[1, : alone_lens[0]], alone[0, : alone_lens[0]], atol=1e-5, rtol=0)


def test_offline_encoder_is_rejected():
    encoder = build_encoder("zipformer-xs", num_encoder_layers=(1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="causal=True"):
        simulate_streaming(encoder, torch.zeros(1, 100, 80), torch.tensor([100]))


# Each family's own attribute values for attention with no chunk and no context limit, set by hand below as
# the reference for `encoder.full_context()`.
FULL_CONTEXT_BY_HAND = {
    "zipformer-xs": {"chunk_size": -1, "left_context_frames": -1},
    "conformer-xs": {"chunk_size": -1, "left_context_frames": -1},
    "transformer-transducer-small": {"chunk_size": 0, "left_context": -1, "right_context": -1},
}


@pytest.mark.parametrize(
    "encoder_name, kwargs",
    [
        ("zipformer-xs", {"num_encoder_layers": (1, 1, 1, 1, 1, 1), "chunk_size": 16, "left_context_frames": 64}),
        ("conformer-xs", {"num_layers": 2, "chunk_size": 4, "left_context_frames": 8}),
        ("transformer-transducer-small", {"num_layers": 2}),
    ],
)
def test_decode_without_chunk_size_runs_a_causal_model_with_full_context(encoder_name, kwargs):
    """`asr decode` without --chunk-size: a causal model attends to everything (equal to the same weights
    built non-causal where the architecture is then identical), and its streaming settings survive."""
    from asr.inference.offline import encode
    from asr.models import build_model

    torch.manual_seed(0)
    causal = build_model(encoder_name, 40, heads=("ctc",), causal=True, encoder_kwargs=kwargs).eval()
    by_hand = FULL_CONTEXT_BY_HAND[encoder_name]
    before = {name: getattr(causal.encoder, name) for name in causal.encoder.context_attributes}
    assert set(by_hand) <= set(before)
    x = torch.randn(2, 157, 80)
    lens = torch.tensor([157, 120])
    x[1, 120:] = LOG_EPS
    with torch.no_grad():
        full, full_lens = encode(causal, x, lens, None, None)
        masked, _ = causal.encode(x, lens)  # the encoder's own (limited) context
    assert {name: getattr(causal.encoder, name) for name in before} == before
    # Reference: the same computation with the limits lifted by hand.
    for name, value in by_hand.items():
        setattr(causal.encoder, name, value)
    with torch.no_grad():
        reference, reference_lens = causal.encode(x, lens)
    assert torch.equal(full_lens, reference_lens)
    torch.testing.assert_close(full, reference, atol=0, rtol=0)
    assert not torch.allclose(full[0, : full_lens[0]], masked[0, : full_lens[0]], atol=1e-4)
