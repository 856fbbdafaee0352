"""Zipformer encoder: parameter counts, shapes, padding, streaming, state dicts, icefall checkpoints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from asr.encoders import build_encoder, encoder_names
from asr.encoders.zipformer import ZipformerEncoder
from asr.models import AsrModel
from asr.models.icefall import convert_icefall

from helpers.icefall import icefall_state

DATA = Path(__file__).parent / "data"


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def fixture_io() -> dict:
    return torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)


def _tiny(causal: bool = False, seed: int = 0, **kwargs) -> ZipformerEncoder:
    """The fixture's tiny config (on an icefall preset, so the conv front end is icefall's), randomly
    initialised, in eval mode."""
    config = torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)["config"]
    torch.manual_seed(seed)
    model = build_encoder("zipformer-small", causal=causal, **config, **kwargs)
    with torch.no_grad():  # move every parameter off its (often trivial) initial value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, causal, expected",
    [
        ("zipformer-small", False, 21_989_779),
        ("zipformer-medium", False, 63_994_103),
        ("zipformer-large", False, 146_625_594),
        # icefall's causal medium transducer has 66,110,931 - 65,549,011 = 561,920 more parameters.
        ("zipformer-medium", True, 63_994_103 + 561_920),
    ],
)
def test_parameter_counts_equal_icefall(name, causal, expected):
    with torch.device("meta"):  # count without allocating or running anything
        model = build_encoder(name, causal=causal)
    assert _num_params(model) == expected


def test_xs_preset_has_no_convnext_and_loads_its_own_state():
    model = build_encoder("zipformer-xs", causal=True)
    assert model.encoder_embed.convnext is None
    assert not any(name.startswith("encoder_embed.convnext") for name in model.state_dict())
    assert model.init_states(2)[-2].shape == (2, 64, 0, 19)
    with_convnext = build_encoder("zipformer-xs", causal=True, embed_convnext=True)
    assert with_convnext.init_states(2)[-2].shape == (2, 64, 3, 19)
    with pytest.raises(RuntimeError, match="convnext"):
        model.load_state_dict(with_convnext.state_dict())


def test_xs_preset_is_a_few_million_parameters():
    with torch.device("meta"):
        model = build_encoder("zipformer-xs")
    assert 2_000_000 < _num_params(model) < 8_000_000
    assert model.output_dim == 192


def test_build_encoder_names_and_errors():
    assert {"zipformer-xs", "zipformer-small", "zipformer-medium", "zipformer-large"} <= set(encoder_names())
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("zipformer-huge")
    with pytest.raises(ValueError, match="num_encoder_layers"):
        build_encoder("zipformer-xs", num_encoder_layers=(1, 1))
    with torch.device("meta"):
        model = build_encoder("zipformer-small", num_encoder_layers=1)
    assert model.encoder.num_encoder_layers == (1,) * 6


def test_submodule_names_follow_icefall():
    keys = set(_tiny().state_dict())
    for key in [
        "encoder_embed.conv.0.weight",
        "encoder_embed.conv.4.weight",
        "encoder_embed.conv.7.weight",
        "encoder_embed.convnext.pointwise_conv2.weight",
        "encoder_embed.out.weight",
        "encoder_embed.out_norm.log_scale",
        "encoder.encoders.0.layers.0.self_attn_weights.in_proj.weight",
        "encoder.encoders.0.layers.1.nonlin_attention.out_proj.bias",
        "encoder.encoders.1.downsample.bias",
        "encoder.encoders.1.out_combiner.bypass_scale",
        "encoder.encoders.1.encoder.layers.0.conv_module2.depthwise_conv.weight",
        "encoder.encoders.3.encoder.layers.0.feed_forward3.out_proj.weight",
        "encoder.encoders.5.encoder.layers.0.bypass_mid.bypass_scale",
        "encoder.downsample_output.bias",
    ]:
        assert key in keys, key


# -- offline behaviour ---------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames", [9, 10, 23, 64, 101])
def test_output_shapes_and_lengths(num_frames):
    model = _tiny()
    lengths = torch.tensor([num_frames, max(num_frames - 5, 9)])
    with torch.no_grad():
        y, y_lens = model(torch.randn(2, num_frames, 80), lengths)
    expected_frames = ((num_frames - 7) // 2 + 1) // 2
    assert y.shape == (2, expected_frames, model.output_dim)
    assert y_lens.tolist() == [((int(t) - 7) // 2 + 1) // 2 for t in lengths]
    assert y_lens.tolist() == ZipformerEncoder.output_lengths(lengths).tolist()
    assert torch.isfinite(y).all()


def test_too_short_input_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 9 input frames"):
        _tiny()(torch.randn(1, 8, 80), torch.tensor([8]))


@pytest.mark.parametrize("causal", [False, True])
def test_padding_does_not_change_valid_outputs(causal):
    """A padded batch gives every utterance what it gets alone (padding holds large garbage)."""
    model = _tiny(causal=causal, chunk_size=16, left_context_frames=32)
    lengths = [83, 61, 30, 47]
    batch = 100.0 * torch.randn(len(lengths), max(lengths), 80)
    singles = [torch.randn(1, n, 80) for n in lengths]
    for i, single in enumerate(singles):
        batch[i, : lengths[i]] = single[0]
    with torch.no_grad():
        y, y_lens = model(batch, torch.tensor(lengths))
        for i, single in enumerate(singles):
            y_alone, len_alone = model(single, torch.tensor([lengths[i]]))
            assert int(y_lens[i]) == int(len_alone[0]) == y_alone.shape[1]
            torch.testing.assert_close(y[i, : y_lens[i]], y_alone[0], atol=1e-5, rtol=0)


def test_eval_is_deterministic_and_training_is_random():
    model = _tiny()
    x, lengths = torch.randn(2, 70, 80), torch.tensor([70, 55])
    with torch.no_grad():
        first, _ = model(x, lengths)
        second, _ = model(x, lengths)
    assert torch.equal(first, second)
    model.train()
    model.set_batch_count(0)  # start of training: large skip and mask rates
    torch.manual_seed(1)
    with torch.no_grad():
        a, _ = model(x, lengths)
        b, _ = model(x, lengths)
    assert not torch.allclose(a, b)


def test_training_step_has_finite_gradients_everywhere():
    model = _tiny(causal=True).train()
    model.set_batch_count(100_000)  # past every warm-up: positional scores are always used
    torch.manual_seed(0)
    y, y_lens = model(torch.randn(3, 90, 80), torch.tensor([90, 71, 40]))
    y.pow(2).mean().backward()
    for name, p in model.named_parameters():
        if re.search(r"layers\.\d+\.bypass_scale$", name):
            continue  # icefall's per-layer bypass_scale is in checkpoints but never used
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_causal_training_draws_chunking_per_batch_and_eval_uses_attributes():
    model = _tiny(causal=True, train_chunk_sizes=(16, 32, -1), train_left_context_frames=(32, 64))
    model.train()
    drawn = {model._chunking() for _ in range(200)}
    assert drawn == {(16, 2), (16, 4), (32, 1), (32, 2), (-1, -1)}
    model.eval()
    model.chunk_size, model.left_context_frames = 32, 64
    assert {model._chunking() for _ in range(20)} == {(32, 2)}
    assert _tiny()._chunking() == (-1, -1)  # non-causal: never chunked


def test_state_dict_round_trip(tmp_path):
    model = _tiny(causal=True)
    torch.save(model.state_dict(), tmp_path / "enc.pt")
    fresh = build_encoder(
        "zipformer-small", causal=True, **torch.load(DATA / "zipformer_icefall_tiny_io.pt", weights_only=True)["config"]
    ).eval()
    fresh.load_state_dict(torch.load(tmp_path / "enc.pt", weights_only=True), strict=True)
    x, lengths = torch.randn(2, 77, 80), torch.tensor([77, 60])
    with torch.no_grad():
        assert torch.equal(model(x, lengths)[0], fresh(x, lengths)[0])


# -- streaming -----------------------------------------------------------------------------------


def _stream(model: ZipformerEncoder, x: torch.Tensor) -> torch.Tensor:
    """Feed ``x`` ``(N, T, 80)`` chunk by chunk; returns the concatenated outputs."""
    states = model.init_states(x.shape[0])
    outputs = []
    start = 0
    while start + model.streaming_feature_frames <= x.shape[1]:
        window = x[:, start : start + model.streaming_feature_frames]
        lengths = torch.full((x.shape[0],), window.shape[1])
        y, y_lens, states = model.streaming_forward(window, lengths, states)
        assert y.shape[1] == model.chunk_size // 2 and (y_lens == model.chunk_size // 2).all()
        outputs.append(y)
        start += model.streaming_feature_shift
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize(
    "chunk_size, left_context_frames, num_chunks, convnext",
    [(16, 32, 6, True), (32, 64, 3, True), (16, 64, 5, True), (16, 32, 6, False), (32, 64, 3, False)],
)
def test_streaming_equals_masked_full_forward(chunk_size, left_context_frames, num_chunks, convnext):
    model = _tiny(causal=True, chunk_size=chunk_size, left_context_frames=left_context_frames, embed_convnext=convnext)
    # The front end looks 7 feature frames ahead, plus 6 for the ConvNeXt's 3 frames at 50 Hz.
    assert model.streaming_feature_frames == 2 * chunk_size + (13 if convnext else 7)
    x = torch.randn(2, 2 * chunk_size * num_chunks + 13, 80)
    with torch.no_grad():
        full, _ = model(x, torch.full((2,), x.shape[1]))
        streamed = _stream(model, x)
    assert streamed.shape[1] == chunk_size * num_chunks // 2
    torch.testing.assert_close(streamed, full[:, : streamed.shape[1]], atol=1e-4, rtol=0)
    # The masked forward really limits the context: a longer left context changes the output.
    model.left_context_frames = left_context_frames * 4
    with torch.no_grad():
        wider, _ = model(x, torch.full((2,), x.shape[1]))
    assert not torch.allclose(wider, full, atol=1e-3)


def test_streaming_states_layout_and_errors():
    model = _tiny(causal=True, chunk_size=16, left_context_frames=32)
    states = model.init_states(3)
    assert len(states) == len(model.state_batch_dims()) == 6 * 7 + 2
    assert all(s.shape[d] == 3 for s, d in zip(states, model.state_batch_dims()))
    with pytest.raises(ValueError, match="feature frames"):
        model.streaming_forward(torch.randn(3, 40, 80), torch.full((3,), 40), states)
    model.left_context_frames = 40
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        model.init_states(1)
    with pytest.raises(RuntimeError, match="causal=True"):
        _tiny().init_states(1)


# -- icefall checkpoints -------------------------------------------------------------------------


def _converted(fixture_io, name: str, causal: bool) -> AsrModel:
    """The fixture as converted by ``convert_icefall``; its stand-in transducer is replaced by tensors of
    icefall's shapes (``helpers/icefall.py``), the encoder is the fixture's."""
    return convert_icefall(icefall_state(name), "zipformer-small", causal, fixture_io["config"], source=name)


def test_icefall_fixture_offline(fixture_io):
    converted = _converted(fixture_io, "zipformer_icefall_tiny.pt", causal=False)
    assert converted.build_config["encoder_name"] == "zipformer-small" and converted.build_config["causal"] is False
    assert sorted({k.split(".")[0] for k in converted.state_dict() if not k.startswith("encoder.")}) == [
        "ctc_output",
        "decoder",
        "joiner",
        "simple_am_proj",
        "simple_lm_proj",
    ]
    model = converted.encoder
    x = fixture_io["offline_x"]
    with torch.no_grad():
        y, y_lens = model(x, torch.tensor([61, 61]))
        torch.testing.assert_close(y, fixture_io["offline_y"], atol=1e-4, rtol=0)
        assert torch.equal(y_lens, fixture_io["offline_y_lens"])
        # Padded batch against icefall run on each utterance alone.
        y, y_lens = model(x, torch.tensor([61, 44]))
    torch.testing.assert_close(y[:1], fixture_io["alone_y0"], atol=1e-4, rtol=0)
    torch.testing.assert_close(y[1:, : y_lens[1]], fixture_io["alone_y1"], atol=1e-4, rtol=0)


def test_icefall_fixture_causal_masked_and_streaming(fixture_io):
    model = _converted(fixture_io, "zipformer_icefall_tiny_causal.pt", causal=True).encoder
    model.chunk_size, model.left_context_frames = fixture_io["chunk_size"], fixture_io["left_context_frames"]
    x = fixture_io["causal_x"]
    with torch.no_grad():
        y, y_lens = model(x, torch.tensor([x.shape[1]]))
        streamed = _stream(model, x)
    torch.testing.assert_close(y, fixture_io["causal_masked_y"], atol=1e-4, rtol=0)
    assert torch.equal(y_lens, fixture_io["causal_masked_y_lens"])
    torch.testing.assert_close(streamed, fixture_io["causal_streaming_y"], atol=1e-4, rtol=0)


def test_convert_rejects_wrong_causality(tmp_path, fixture_io, capsys):
    from asr.cli.convert import icefall

    overrides = [
        f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in fixture_io["config"].items()
    ]
    code = icefall(
        [
            str(DATA / "zipformer_icefall_tiny_causal.pt"),
            "--out",
            str(tmp_path / "o.pt"),
            "--encoder",
            "zipformer-small",
            *overrides,
        ]
    )
    assert code == 1
    assert "add --causal" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()
