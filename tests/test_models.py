"""Models: stateless decoder, joiner, CTC head, AsrModel losses, build_model presets and checkpoints.

Loss references (full RNN-T lattice recursion, torch's CTC) and the tiny stand-in encoder and
synthetic task come from tests/helpers/.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import asr.encoders
from asr.checkpoint import load_model, read_checkpoint, save_model
from asr.decoding import greedy_search
from asr.models import (
    AsrModel,
    Decoder,
    Joiner,
    build_model,
    pad_tokens,
)
from asr.training.losses import combine_losses

from helpers.rnnt_reference import full_lattice_logits, reference_losses, reference_rnnt_log_prob
from helpers.tiny_models import FEATURES, VOCAB, TinyEncoder, make_task, tiny_model


# ----------------------------------------------------------------------------- decoder and joiner
def test_decoder_shapes_and_context():
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=7, decoder_dim=16, blank_id=0, context_size=2)
    assert decoder.conv.weight.shape == (16, 4, 2)  # groups of 4 channels
    tokens = torch.randint(0, 7, (3, 5))
    out = decoder(tokens)
    assert out.shape == (3, 5, 16)
    # Position u depends on tokens u-1 and u only, and matches the unpadded one-step call of search.
    for u in range(1, 5):
        step = decoder(tokens[:, u - 1 : u + 1], need_pad=False)
        assert step.shape == (3, 1, 16)
        torch.testing.assert_close(step[:, 0], out[:, u])
    changed = tokens.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 7
    torch.testing.assert_close(decoder(changed)[:, 2:], out[:, 2:])
    assert not torch.allclose(decoder(changed)[:, :2], out[:, :2])
    # A negative id is "no token": the same as the zero left-padding of training.
    torch.testing.assert_close(
        decoder(torch.tensor([[-1, 3]]), need_pad=False)[:, 0], decoder(torch.tensor([[3]]))[:, 0]
    )
    with pytest.raises(ValueError, match="context_size=2"):
        decoder(tokens[:, :3], need_pad=False)
    unigram = Decoder(vocab_size=7, decoder_dim=16, context_size=1)
    torch.testing.assert_close(unigram(tokens), unigram.embedding(tokens))


def test_joiner_shapes_and_formula():
    torch.manual_seed(0)
    joiner = Joiner(encoder_dim=12, decoder_dim=16, joiner_dim=20, vocab_size=7)
    enc, dec = torch.randn(2, 5, 1, 12), torch.randn(2, 1, 4, 16)
    logits = joiner(enc, dec)
    assert logits.shape == (2, 5, 4, 7)
    hidden = torch.tanh(
        enc @ joiner.encoder_proj.weight.T
        + joiner.encoder_proj.bias
        + dec @ joiner.decoder_proj.weight.T
        + joiner.decoder_proj.bias
    )
    torch.testing.assert_close(logits, hidden @ joiner.output_linear.weight.T + joiner.output_linear.bias)
    projected = joiner(joiner.encoder_proj(enc), joiner.decoder_proj(dec), project_input=False)
    torch.testing.assert_close(projected, logits)
    with pytest.raises(ValueError, match="same number of dims"):
        joiner(enc[:, :, 0], dec)


def test_parameter_names_and_count_match_icefall_layout():
    encoder_dim, vocab, dec_dim, join_dim = 32, VOCAB, 16, 32
    model = tiny_model()
    heads = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    assert heads == {
        "decoder.embedding.weight": (vocab, dec_dim),
        "decoder.conv.weight": (dec_dim, 4, 2),
        "joiner.encoder_proj.weight": (join_dim, encoder_dim),
        "joiner.encoder_proj.bias": (join_dim,),
        "joiner.decoder_proj.weight": (join_dim, dec_dim),
        "joiner.decoder_proj.bias": (join_dim,),
        "joiner.output_linear.weight": (vocab, join_dim),
        "joiner.output_linear.bias": (vocab,),
        "simple_am_proj.weight": (vocab, encoder_dim),
        "simple_am_proj.bias": (vocab,),
        "simple_lm_proj.weight": (vocab, dec_dim),
        "simple_lm_proj.bias": (vocab,),
        "ctc_output.1.weight": (vocab, encoder_dim),
        "ctc_output.1.bias": (vocab,),
    }


@pytest.mark.parametrize(
    "name, causal, expected",
    [
        ("zipformer-small", False, 23_285_615),
        ("zipformer-medium", False, 65_549_011),
        ("zipformer-large", False, 148_439_574),
        ("zipformer-medium", True, 66_110_931),
    ],
)
def test_transducer_parameter_counts_equal_icefall(name, causal, expected):
    """icefall's counts (vocab 500, decoder 512, joiner 512); built on the meta device, no memory."""
    with torch.device("meta"):
        model = build_model(name, 500, heads=("transducer",), causal=causal)
    assert sum(p.numel() for p in model.parameters()) == expected


# ----------------------------------------------------------------------------- losses
def test_losses_equal_independent_references():
    """With a band covering every label the pruned loss is the full RNN-T loss; with zero smoothing the
    simple loss is the full loss of the lattice whose logits are am[t] + lm[u]; CTC is torch's."""
    model = tiny_model(seed=1).double().eval()
    x, x_lens, tokens = make_task(4, torch.Generator().manual_seed(2))
    x = x.double()
    max_labels = max(len(t) for t in tokens)
    losses = model(x, x_lens, tokens, prune_range=max_labels + 1, am_scale=0.0, lm_scale=0.0)
    with torch.no_grad():
        ref_rnnt, ref_ctc = reference_losses(model, x, x_lens, tokens)
        enc_out, enc_lens = model.encode(x, x_lens)
        targets, target_lens = pad_tokens(tokens, VOCAB)
        lm = model.simple_lm_proj(model.decoder(F.pad(targets, (1, 0))))
        am = model.simple_am_proj(enc_out)
        ref_simple = -reference_rnnt_log_prob(am.unsqueeze(2) + lm.unsqueeze(1), targets, enc_lens, target_lens).sum()
    assert losses.pruned.item() == pytest.approx(ref_rnnt.item(), rel=1e-9)
    assert losses.simple.item() == pytest.approx(ref_simple.item(), rel=1e-9)
    assert losses.ctc.item() == pytest.approx(ref_ctc.item(), rel=1e-6)  # asr.losses.ctc_loss runs in float32
    total = combine_losses(*losses)
    assert total.item() == pytest.approx((0.5 * ref_simple + ref_rnnt + 0.2 * ref_ctc).item(), rel=1e-7)
    # The default prune_range (5 > any label count here) still matches; a narrow band is an upper bound.
    narrow = model(x, x_lens, tokens, prune_range=2, lm_scale=0.0)
    assert narrow.pruned.item() >= ref_rnnt.item() - 1e-9


def test_single_heads():
    x, x_lens, tokens = make_task(3, torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    transducer = AsrModel(TinyEncoder(FEATURES, 32), VOCAB, heads=("transducer",), decoder_dim=16, joiner_dim=32)
    assert not any(k.startswith("ctc_output") for k in transducer.state_dict())
    out = transducer(x, x_lens, tokens)
    assert out.ctc is None and out.simple is not None
    assert combine_losses(*out, batch_idx_train=0).item() == pytest.approx((out.simple + 0.1 * out.pruned).item())
    ctc_only = AsrModel(TinyEncoder(FEATURES, 32), VOCAB, heads=("ctc",)).eval()
    assert not any(k.startswith(("decoder", "joiner", "simple_")) for k in ctc_only.state_dict())
    out = ctc_only(x, x_lens, tokens)
    assert out.simple is None and out.pruned is None
    assert combine_losses(*out).item() == pytest.approx(0.2 * out.ctc.item())
    with pytest.raises(ValueError, match="heads"):
        AsrModel(TinyEncoder(FEATURES, 32), VOCAB, heads=("attention",))


def test_loss_decreases_on_tiny_task():
    torch.manual_seed(0)
    model = AsrModel(TinyEncoder(FEATURES, 32, subsampling=2), VOCAB, decoder_dim=16, joiner_dim=32)
    generator = torch.Generator().manual_seed(0)
    held_out = make_task(16, torch.Generator().manual_seed(77))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            loss = combine_losses(*model(*held_out)).item()
        model.train()
        return loss

    before = held_out_loss()
    for step in range(60):
        x, x_lens, tokens = make_task(16, generator)
        loss = combine_losses(*model(x, x_lens, tokens), batch_idx_train=step, warm_step=30) / len(tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)


def test_bad_tokens_and_inputs_raise():
    model = tiny_model()
    x, x_lens, tokens = make_task(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="utterance 1"):
        model(x, x_lens, [tokens[0], [1, 0, 2]])
    with pytest.raises(ValueError, match="utterance 0"):
        model(x, x_lens, [[VOCAB], tokens[1]])
    with pytest.raises(ValueError, match="3 token sequences"):
        model(x, x_lens, tokens + [[1]])
    with pytest.raises(ValueError, match="too short"):
        AsrModel(TinyEncoder(FEATURES, 32, subsampling=2), VOCAB).encode(x, torch.tensor([0, 3]))


# ----------------------------------------------------------------------------- build and checkpoints
@pytest.fixture
def tiny_encoder_registered(monkeypatch):
    """build_model resolves encoders through asr.encoders.build_encoder; add a tiny one by name."""
    real = asr.encoders.build_encoder

    def build_encoder(name: str, causal: bool = False, **overrides):
        if name == "tiny":
            return TinyEncoder(FEATURES, overrides.get("output_dim", 32), subsampling=2)
        return real(name, causal=causal, **overrides)

    monkeypatch.setattr(asr.encoders, "build_encoder", build_encoder)


def assert_same_outputs(model_a: AsrModel, model_b: AsrModel, x, x_lens):
    with torch.no_grad():
        enc_a, lens_a = model_a.encode(x, x_lens)
        enc_b, lens_b = model_b.encode(x, x_lens)
        assert torch.equal(enc_a, enc_b) and torch.equal(lens_a, lens_b)
        assert torch.equal(model_a.ctc_log_probs(enc_a), model_b.ctc_log_probs(enc_b))
        targets, _ = pad_tokens([[1, 2, 3]] * x.size(0), model_a.vocab_size)
        assert torch.equal(full_lattice_logits(model_a, enc_a, targets), full_lattice_logits(model_b, enc_b, targets))
    assert greedy_search(model_a, enc_a, lens_a) == greedy_search(model_b, enc_b, lens_b)


def test_save_load_round_trip(tmp_path, tiny_encoder_registered):
    torch.manual_seed(0)
    model = build_model("tiny", VOCAB, decoder_dim=16, joiner_dim=24, encoder_kwargs={"output_dim": 20}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # weights that differ from any fresh init
    path = tmp_path / "sub" / "model.pt"
    save_model(path, model, extra={"epoch": 3, "tokens": ["<blk>", "a"]})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]  # no temporary file left
    loaded = load_model(path)
    assert not loaded.training and loaded.build_config == model.build_config
    assert loaded.joiner.encoder_proj.in_features == 20 and loaded.decoder.decoder_dim == 16
    x, x_lens, _ = make_task(3, torch.Generator().manual_seed(1))
    assert_same_outputs(model, loaded, x, x_lens)
    assert read_checkpoint(path)["extra"] == {"epoch": 3, "tokens": ["<blk>", "a"]}
    # Overwriting replaces the file whole.
    save_model(path, loaded, extra={"epoch": 4})
    assert read_checkpoint(path)["extra"] == {"epoch": 4}


def test_checkpoint_errors(tmp_path, tiny_encoder_registered):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_model(tmp_path / "missing.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not an asr model checkpoint"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="build_model"):
        save_model(tmp_path / "x.pt", tiny_model())
    with pytest.raises(TypeError, match="unknown model options"):
        build_model("tiny", VOCAB, decoder_size=3)


def test_save_load_round_trip_zipformer_xs(tmp_path):
    torch.manual_seed(0)
    model = build_model("zipformer-xs", 50, decoder_dim=32, joiner_dim=32).eval()
    save_model(tmp_path / "xs.pt", model)
    loaded = load_model(tmp_path / "xs.pt")
    x = torch.randn(2, 60, 80)
    x_lens = torch.tensor([60, 45])
    assert_same_outputs(model, loaded, x, x_lens)


def test_transformer_transducer_uses_its_label_encoder_and_trains_and_decodes():
    from asr.decoding import greedy_search, modified_beam_search
    from asr.models import build_model
    from asr.models.label_encoder import LabelEncoder

    torch.manual_seed(0)
    model = build_model("transformer-transducer-small", vocab_size=20)
    assert isinstance(model.decoder, LabelEncoder)
    x, x_lens = torch.randn(2, 120, 80), torch.tensor([120, 90])
    total = combine_losses(*model(x, x_lens, [[3, 4, 5], [7]]))
    total.backward()
    assert torch.isfinite(total) and model.decoder.embedding.weight.grad is not None
    model.eval()
    with torch.no_grad():
        enc_out, enc_lens = model.encode(x, x_lens)
        greedy = greedy_search(model, enc_out, enc_lens)
        beam1 = modified_beam_search(model, enc_out, enc_lens, beam=1)
    assert [h.tokens for h in greedy] == [h.tokens for h in beam1]


def test_zipformer_xs_saved_with_its_former_convnext_still_loads(tmp_path):
    # Checkpoints written before zipformer-xs dropped the front-end ConvNeXt store an empty
    # encoder_kwargs and the ConvNeXt weights; they are rebuilt with it and give the saved outputs.
    torch.manual_seed(0)
    old = build_model("zipformer-xs", 20, encoder_kwargs={"embed_convnext": True}).eval()
    old.build_config = {**old.build_config, "encoder_kwargs": {}}
    path = tmp_path / "old.pt"
    save_model(path, old)
    loaded = load_model(path)
    assert loaded.encoder.encoder_embed.convnext is not None
    x, lens = torch.randn(1, 100, 80), torch.tensor([100])
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x, lens)[0], old.encode(x, lens)[0])
    assert build_model("zipformer-xs", 20).encoder.encoder_embed.convnext is None
