"""Conformer, Efficient Conformer and Transformer-Transducer encoders, and the T-T label encoder:
padding invariance, streaming == masked full forward, output lengths, preset sizes."""

import pytest
import torch
import torch.nn.functional as F

from asr.encoders.conformer import PRESETS as CONFORMER_PRESETS
from asr.encoders.conformer import build_conformer
from asr.encoders.efficient_conformer import build_efficient_conformer
from asr.encoders.transformer import build_transformer
from asr.models.label_encoder import LabelEncoder

TINY_CONFORMER = dict(encoder_dim=32, num_layers=2, num_heads=4, feedforward_dim=64, kernel_size=7)
TINY_EFFICIENT = dict(stage_dims=(24, 36, 48), stage_layers=(2, 2, 1), num_heads=4, kernel_size=5)
TINY_TRANSFORMER = dict(encoder_dim=32, num_layers=3, num_heads=4, feedforward_dim=64)

# Zipformer encoder-only parameter counts (subsampling + encoder), from the Zipformer presets.
ZIPFORMER_PARAMS = {"small": 21_989_779, "medium": 63_994_103, "large": 146_625_594}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check_padding_invariance(encoder, lengths=(61, 45)):
    torch.manual_seed(0)
    encoder.eval()
    T = max(lengths)
    x = torch.randn(len(lengths), T, 80)
    for n, length in enumerate(lengths):
        x[n, length:] = 100.0 * torch.randn(T - length, 80)  # padding must not matter
    x_lens = torch.tensor(lengths)
    with torch.no_grad():
        y, y_lens = encoder(x, x_lens)
        assert y.shape == (len(lengths), int(y_lens.max()), encoder.output_dim)
        assert torch.equal(y_lens, encoder.output_lengths(x_lens))
        for n, length in enumerate(lengths):
            alone, alone_lens = encoder(x[n : n + 1, :length], x_lens[n : n + 1])
            assert alone_lens.item() == y_lens[n].item()
            torch.testing.assert_close(y[n, : y_lens[n]], alone[0], atol=1e-4, rtol=1e-4)


def stream(encoder, x, x_lens):
    """Feed overlapping feature windows chunk by chunk; concatenate the outputs."""
    states = encoder.init_states(x.size(0))
    window, shift = encoder.streaming_feature_frames, encoder.streaming_feature_shift
    chunk = shift // 4
    total = int(encoder.output_lengths(torch.tensor(x.size(1))))
    outputs = []
    for k in range(-(-total // chunk)):
        piece = x[:, shift * k : shift * k + window]
        valid = (x_lens - shift * k).clamp(min=0, max=window)
        piece = F.pad(piece, (0, 0, 0, window - piece.size(1)))
        y, y_lens, states = encoder.streaming_forward(piece, valid, states)
        assert y.shape[1] == chunk
        outputs.append(y)
    return torch.cat(outputs, dim=1)


def check_streaming(encoder, T=90, lengths=(90, 67)):
    torch.manual_seed(1)
    encoder.eval()
    x = torch.randn(len(lengths), T, 80)
    x_lens = torch.tensor(lengths)
    with torch.no_grad():
        full, full_lens = encoder(x, x_lens)
        streamed = stream(encoder, x, x_lens)
    for n in range(len(lengths)):
        valid = int(full_lens[n])
        torch.testing.assert_close(streamed[n, :valid], full[n, :valid], atol=1e-4, rtol=1e-4)


# -- Conformer ------------------------------------------------------------------------------------------
def test_conformer_padding_invariance():
    check_padding_invariance(build_conformer("conformer-small", **TINY_CONFORMER))


def test_causal_conformer_streaming_equals_masked_forward():
    encoder = build_conformer("conformer-small", causal=True, chunk_size=4, left_context_frames=8, **TINY_CONFORMER)
    check_streaming(encoder)
    # and the chunk mask really limits context: a different left context changes the output
    encoder.eval()
    x, x_lens = torch.randn(1, 90, 80), torch.tensor([90])
    with torch.no_grad():
        limited = encoder(x, x_lens)[0]
        encoder.left_context_frames = 16
        wider = encoder(x, x_lens)[0]
    assert torch.allclose(limited[:, :12], wider[:, :12], atol=1e-5)  # frames that see < 8 left frames
    assert not torch.allclose(limited, wider, atol=1e-3)


def test_causal_conformer_future_does_not_leak():
    encoder = build_conformer(
        "conformer-small", causal=True, chunk_size=4, left_context_frames=8, **TINY_CONFORMER
    ).eval()
    x = torch.randn(1, 90, 80)
    changed = x.clone()
    changed[:, 60:] += 1.0  # feature frames >= 60 reach encoder frames >= 14 (chunk 3, frames 12..15)
    with torch.no_grad():
        a, _ = encoder(x, torch.tensor([90]))
        b, _ = encoder(changed, torch.tensor([90]))
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("size", ["small", "medium", "large"])
def test_conformer_presets_match_zipformer_size(size):
    with torch.device("meta"):
        encoder = build_conformer(f"conformer-{size}")
    assert abs(count(encoder) / ZIPFORMER_PARAMS[size] - 1) < 0.03
    assert CONFORMER_PRESETS[f"conformer-{size}"].kernel_size == 31


# -- Efficient Conformer --------------------------------------------------------------------------------
@pytest.mark.parametrize("downsampling", ["conv", "attention"])
def test_efficient_conformer_padding_invariance_and_lengths(downsampling):
    encoder = build_efficient_conformer("efficient-conformer-small", downsampling=downsampling, **TINY_EFFICIENT)
    # x2 front end, two stride-2 blocks: 61 -> 31 -> 16 -> 8
    assert encoder.output_lengths(torch.tensor([61, 45])).tolist() == [8, 6]
    assert encoder.layers[0].attention.group_size == 3 and encoder.layers[2].attention.group_size == 1
    check_padding_invariance(encoder)


def test_efficient_conformer_small_matches_paper_size():
    with torch.device("meta"):
        encoder = build_efficient_conformer("efficient-conformer-small")
    ctc_head = encoder.output_dim * 256 + 256  # paper's 256 BPE units
    total = count(encoder) + ctc_head
    assert abs(total / 13.2e6 - 1) < 0.01, total
    assert [layer.stride for layer in encoder.layers].count(2) == 2
    assert encoder.output_dim == 240


def test_efficient_conformer_rejects_causal():
    with pytest.raises(ValueError, match="no causal"):
        build_efficient_conformer("efficient-conformer-small", causal=True)


# -- Transformer-Transducer ---------------------------------------------------------------------------
def test_transformer_padding_invariance():
    check_padding_invariance(
        build_transformer("transformer-transducer-small", left_context=6, right_context=2, **TINY_TRANSFORMER)
    )


@pytest.mark.parametrize(
    "context", [dict(left_context=6, right_context=1, stream_chunk_size=4), dict(left_context=8, chunk_size=4)]
)
def test_transformer_streaming_equals_masked_forward(context):
    encoder = build_transformer("transformer-transducer-small", causal=True, **context, **TINY_TRANSFORMER)
    check_streaming(encoder)


def test_transformer_training_samples_context():
    encoder = build_transformer(
        "transformer-transducer-small",
        causal=True,
        train_left_contexts=(2, 5),
        train_right_contexts=(0, 3),
        **TINY_TRANSFORMER,
    ).train()
    seen = set()
    for _ in range(40):
        mask = encoder.attention_mask(12)
        row = (~mask[6]).nonzero().flatten()
        seen.add((6 - int(row.min()), int(row.max()) - 6))
    assert seen == {(2, 0), (2, 3), (5, 0), (5, 3)}
    encoder.eval()
    assert torch.equal(encoder.attention_mask(12), encoder.attention_mask(12))


def test_transformer_large_preset():
    with torch.device("meta"):
        encoder = build_transformer("transformer-transducer-large")
    assert len(encoder.layers) == 18 and encoder.output_dim == 512
    assert encoder.layers[0].attention.num_heads == 8
    assert encoder.layers[0].feed_forward[1].out_features == 2048


def test_relaxed_attention_only_changes_training():
    torch.manual_seed(3)
    plain = build_conformer("conformer-small", **TINY_CONFORMER)
    relaxed = build_conformer("conformer-small", relaxed_attention_gamma=0.3, **TINY_CONFORMER)
    relaxed.load_state_dict(plain.state_dict())
    x, x_lens = torch.randn(2, 40, 80), torch.tensor([40, 33])
    plain.eval(), relaxed.eval()
    with torch.no_grad():
        assert torch.equal(plain(x, x_lens)[0], relaxed(x, x_lens)[0])
    for model in (plain, relaxed):
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    with torch.no_grad():
        assert not torch.allclose(plain(x, x_lens)[0], relaxed(x, x_lens)[0], atol=1e-4)


# -- label encoder ----------------------------------------------------------------------------------------
def test_label_encoder_search_matches_training_positions():
    torch.manual_seed(4)
    encoder = LabelEncoder(vocab_size=11, decoder_dim=16, context_size=3, num_heads=2).eval()
    tokens = torch.tensor([[0, 5, 7, 2, 9, 4]])  # blank (start) then labels, as the transducer feeds it
    with torch.no_grad():
        training = encoder(tokens)
        assert training.shape == (1, 6, 16)
        history = [-1, -1] + tokens[0].tolist()  # search's start context: "no token" ids then blank
        for u in range(6):
            context = torch.tensor([history[u : u + 3]])
            torch.testing.assert_close(encoder(context, need_pad=False)[:, 0], training[:, u])


def test_label_encoder_context_is_limited():
    torch.manual_seed(5)
    encoder = LabelEncoder(vocab_size=11, decoder_dim=16, context_size=2, num_heads=2).eval()
    a = torch.tensor([[0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 8, 9, 5, 6]])  # differs only more than 2 labels back from positions 4
    with torch.no_grad():
        ya, yb = encoder(a), encoder(b)
    torch.testing.assert_close(ya[:, 4], yb[:, 4])
    assert not torch.allclose(ya[:, 2], yb[:, 2])
    assert (encoder.vocab_size, encoder.blank_id, encoder.context_size) == (11, 0, 2)
    with pytest.raises(ValueError, match="context_size=2"):
        encoder(a, need_pad=False)


def test_registered_in_build_encoder():
    from asr.encoders import build_encoder, encoder_names

    names = set(encoder_names())
    assert {
        "conformer-small",
        "conformer-medium",
        "conformer-large",
        "efficient-conformer-small",
        "efficient-conformer-medium",
        "efficient-conformer-large",
        "transformer-transducer-small",
        "transformer-transducer-large",
    } <= names
    encoder = build_encoder("conformer-small", causal=True, chunk_size=4, **TINY_CONFORMER)
    assert encoder.causal and encoder.chunk_size == 4 and encoder.output_dim == 32
    assert build_encoder("transformer-transducer-small", **TINY_TRANSFORMER).left_context == -1
    with pytest.raises(ValueError, match="unknown Conformer preset"):
        build_conformer("conformer-huge")
