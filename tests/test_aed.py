"""The attention-decoder head: its loss against an explicit label-smoothing reference, its cross-attention
weights, attention beam search against exhaustive search (alone, joint with CTC, fused with a scorer),
CTC prefix scores against sums over every CTC path, n-best rescoring, and training with three heads."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import asr
from asr.decoding.attention import (
    CtcPrefixScorer,
    attention_beam_search,
    attention_rescore,
    attention_sequence_scores,
    ctc_sequence_log_prob,
)
from asr.decoding.hypothesis import Hypothesis
from asr.decoding.scorers import Scorer
from asr.models import AsrModel, build_model
from asr.training.losses import combine_losses

from helpers.aed_reference import ctc_labelling_probs, explicit_attention_score, tiny_decoder
from helpers.tiny_models import FEATURES, VOCAB, TinyEncoder, make_task

EOS = 1
TOKENS = (2, 3, 4)  # the tiny decoders' labels (vocab 5: blank 0, <sos/eos> 1)


# -- loss -------------------------------------------------------------------------------------------------
def reference_loss(decoder, memory, memory_lens, labels, smoothing):
    """Each utterance alone (no padding anywhere), the smoothed cross-entropy written out token by token."""
    V = decoder.vocab_size
    total = 0.0
    for n, seq in enumerate(labels):
        T = int(memory_lens[n])
        inputs = torch.tensor([[EOS, *seq]])
        with torch.no_grad():
            logits = decoder(inputs, torch.tensor([len(seq) + 1]), memory[n : n + 1, :T], torch.tensor([T])).logits[0]
        for position, target in enumerate([*seq, EOS]):
            row = logits[position].tolist()
            log_z = math.log(sum(math.exp(v) for v in row))
            for v in range(V):
                weight = (1 - smoothing) * (v == target) + smoothing / V
                total -= weight * (row[v] - log_z)
    return total


@pytest.mark.parametrize("smoothing", [0.1, 0.0])
def test_loss_equals_explicit_label_smoothing_on_each_utterance_alone(smoothing):
    decoder = tiny_decoder(seed=1)
    decoder.label_smoothing = smoothing
    labels = [[2, 3, 4, 2], [4], [3, 3]]
    memory_lens = torch.tensor([6, 3, 5])
    memory = torch.randn(3, 6, 8, dtype=torch.float64)
    memory[1, 3:] = 1e3  # padding must not matter
    targets = torch.zeros(3, 4, dtype=torch.int64)
    for n, seq in enumerate(labels):
        targets[n, : len(seq)] = torch.tensor(seq)
    got = decoder.loss(memory, memory_lens, targets, torch.tensor([len(s) for s in labels]))
    assert got.item() == pytest.approx(reference_loss(decoder, memory, memory_lens, labels, smoothing), rel=1e-9)


def test_decoder_is_causal_and_labels_must_not_hold_sos_eos():
    decoder = tiny_decoder(seed=2)
    memory, lens = torch.randn(1, 4, 8, dtype=torch.float64), torch.tensor([4])
    a = decoder(torch.tensor([[EOS, 2, 3, 4]]), torch.tensor([4]), memory, lens).logits
    b = decoder(torch.tensor([[EOS, 2, 4, 2]]), torch.tensor([4]), memory, lens).logits
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.allclose(a[:, 2:], b[:, 2:])
    with pytest.raises(ValueError, match="<sos/eos>"):
        decoder.loss(memory, lens, torch.tensor([[2, EOS]]), torch.tensor([2]))


def test_cross_attention_weights_per_layer_and_head_ignore_padded_frames():
    decoder = tiny_decoder(seed=3)
    memory, lens = torch.randn(2, 6, 8, dtype=torch.float64), torch.tensor([6, 4])
    tokens = torch.tensor([[EOS, 2, 3], [EOS, 4, 0]])
    out = decoder(tokens, torch.tensor([3, 2]), memory, lens, need_weights=True)
    assert out.logits.shape == (2, 3, 5)
    assert len(out.cross_weights) == 2
    for weights in out.cross_weights:
        assert weights.shape == (2, 2, 3, 6)  # (N, H, U, T)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 3, dtype=torch.float64))
        assert torch.all(weights[1, :, :, 4:] == 0)
    assert decoder(tokens, torch.tensor([3, 2]), memory, lens).cross_weights is None


def test_asr_model_returns_the_raw_aed_loss_and_combine_losses_weights_it():
    torch.manual_seed(0)
    model = AsrModel(
        TinyEncoder(FEATURES, 16),
        vocab_size=8,
        heads=("ctc", "aed"),
        aed_dim=16,
        aed_layers=1,
        aed_heads=2,
        aed_feedforward_dim=32,
        aed_dropout=0.0,
        ctc_dropout=0.0,
    ).eval()
    x, x_lens, tokens = torch.randn(2, 12, FEATURES), torch.tensor([12, 9]), [[2, 3, 4], [5]]
    losses = model(x, x_lens, tokens)
    assert losses.simple is None and losses.pruned is None
    enc, enc_lens = model.encode(x, x_lens)
    targets = torch.tensor([[2, 3, 4], [5, 0, 0]])
    expected = model.attention_decoder.loss(enc, enc_lens, targets, torch.tensor([3, 1]))
    assert losses.aed.item() == pytest.approx(expected.item())
    combined = combine_losses(*losses, ctc_loss_scale=0.1, aed_loss_scale=0.9)
    assert combined.item() == pytest.approx(0.1 * losses.ctc.item() + 0.9 * losses.aed.item())
    assert combine_losses(None, None, None, losses.aed).item() == pytest.approx(0.8 * losses.aed.item())


def test_build_model_sizes_the_aed_by_preset_and_rebuilds_it_from_its_config():
    small = build_model("zipformer-xs", 40, heads=("transducer", "aed"), encoder_kwargs={"num_encoder_layers": 1})
    decoder = small.attention_decoder
    assert (decoder.dim, decoder.num_layers, len(decoder.layers[0].cross_attn.q_proj.weight)) == (192, 4, 192)
    assert (
        "aed_dim"
        not in build_model("zipformer-xs", 40, encoder_kwargs={"num_encoder_layers": 1}).build_config["model_kwargs"]
    )
    with torch.device("meta"):
        big = build_model("conformer-small", 500, heads=("ctc", "aed"))
    assert (big.attention_decoder.dim, big.attention_decoder.num_layers) == (512, 6)
    assert big.attention_decoder.layers[0].feed_forward[0].out_features == 2048
    assert big.attention_decoder.layers[0].self_attn.num_heads == 8


# -- search -----------------------------------------------------------------------------------------------
class BigramScorer(Scorer):
    """A fixed random table of added scores per (previous token, token) and per last token at the end."""

    def __init__(self, vocab_size: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab_size + 1, vocab_size, generator=g, dtype=torch.float64)  # row -1: start
        self.end = torch.randn(vocab_size + 1, generator=g, dtype=torch.float64)

    def init_state(self) -> int:
        return -1

    def score(self, states):
        return self.table[list(states)].numpy()

    def advance(self, state: int, token: int) -> int:
        return token

    def final(self, state: int) -> float:
        return float(self.end[state])


def explicit_bigram(scorer: BigramScorer, tokens) -> float:
    total, previous = 0.0, -1
    for token in tokens:
        total += float(scorer.table[previous, token])
        previous = token
    return total + float(scorer.end[previous])


def setup_search(seed: int, frames: int = 4):
    decoder = tiny_decoder(seed=seed)
    g = torch.Generator().manual_seed(seed)
    memory = torch.randn(1, frames, 8, generator=g, dtype=torch.float64)
    ctc_log_probs = (2 * torch.randn(1, frames, 5, generator=g, dtype=torch.float64)).log_softmax(-1)
    return decoder, memory, ctc_log_probs


@pytest.mark.parametrize(
    "length_normalize, ctc_weight, fused",
    [(False, 0.0, False), (True, 0.0, False), (False, 0.4, False), (False, 0.0, True), (True, 0.3, True)],
)
@pytest.mark.parametrize("seed", [4, 5, 10])  # decoders whose best hypothesis has two tokens
def test_beam_search_with_a_wide_beam_equals_exhaustive_search(seed, length_normalize, ctc_weight, fused):
    max_len = 3
    decoder, memory, ctc_log_probs = setup_search(seed)
    scorer = BigramScorer(5, seed) if fused else None
    labellings = ctc_labelling_probs(ctc_log_probs[0])
    candidates = {}
    for length in range(max_len + 1):
        for tokens in itertools.product(TOKENS, repeat=length):
            score = explicit_attention_score(decoder, memory[0], tokens)
            if ctc_weight:
                p = labellings.get(tokens, 0.0)
                score = (1 - ctc_weight) * score + ctc_weight * (math.log(p) if p > 0 else -math.inf)
            if fused:
                score += explicit_bigram(scorer, tokens)
            if length_normalize:
                score /= length + 1
            candidates[tokens] = score
    best = max(candidates, key=candidates.get)
    assert best, "the exhaustive best should not be the empty hypothesis"
    (hyp,) = attention_beam_search(
        decoder,
        memory,
        torch.tensor([4]),
        beam=27,
        max_len=max_len,
        length_normalize=length_normalize,
        ctc_log_probs=ctc_log_probs if ctc_weight else None,
        ctc_weight=ctc_weight,
        ctc_pre_beam=5,  # every token
        scorers=[scorer] if fused else (),
    )
    assert tuple(hyp.tokens) == best
    assert hyp.score == pytest.approx(candidates[best], rel=1e-9)


def test_beam_search_decodes_each_utterance_of_a_padded_batch_as_alone():
    decoder, _, _ = setup_search(5)
    memory = torch.randn(2, 6, 8, dtype=torch.float64)
    lens = torch.tensor([6, 3])
    batch = attention_beam_search(decoder, memory, lens, beam=3, max_len=4)
    for n in range(2):
        (alone,) = attention_beam_search(decoder, memory[n : n + 1, : lens[n]], lens[n : n + 1], beam=3, max_len=4)
        assert batch[n].tokens == alone.tokens and batch[n].score == pytest.approx(alone.score)


@pytest.mark.parametrize("pre_beam", [1, 2])
def test_joint_search_with_a_ctc_pre_beam_scores_its_result_exactly(pre_beam):
    """With only the best tokens CTC-scored the search may miss the best sequence, but the score of what it
    returns is still the joint score of those tokens: the CTC prefix deltas add up to log P_ctc(y | x)."""
    decoder, memory, ctc_log_probs = setup_search(4, frames=5)
    labellings = ctc_labelling_probs(ctc_log_probs[0])
    (hyp,) = attention_beam_search(
        decoder, memory, torch.tensor([5]), beam=2, ctc_log_probs=ctc_log_probs, ctc_weight=0.5, ctc_pre_beam=pre_beam
    )
    expected = 0.5 * explicit_attention_score(decoder, memory[0], hyp.tokens)
    expected += 0.5 * math.log(labellings[tuple(hyp.tokens)])
    assert hyp.tokens and hyp.score == pytest.approx(expected, rel=1e-9)


def test_ctc_prefix_scores_equal_sums_over_every_path():
    g = torch.Generator().manual_seed(7)
    log_probs = (2 * torch.randn(5, 4, generator=g, dtype=torch.float64)).log_softmax(-1)  # T=5, blank + 1..3
    labellings = ctc_labelling_probs(log_probs)
    scorer = CtcPrefixScorer(log_probs)
    states = {(): scorer.initial_state()}
    for length in range(3):
        for prefix in itertools.product((1, 2, 3), repeat=length):
            state = states[prefix]
            last = torch.tensor([prefix[-1] if prefix else -1])
            scores, new_states = scorer.extend(state.unsqueeze(0), last, torch.tensor([[1, 2, 3]]))
            for k, c in enumerate((1, 2, 3)):
                extended = (*prefix, c)
                expected = sum(p for lab, p in labellings.items() if lab[: len(extended)] == extended)
                assert scores[0, k].exp().item() == pytest.approx(expected, rel=1e-9, abs=1e-300)
                states[extended] = new_states[0, k]
            full = labellings.get(prefix, 0.0)
            assert scorer.final_scores(state.unsqueeze(0)).exp().item() == pytest.approx(full, rel=1e-9, abs=1e-300)
            if full > 0:
                assert ctc_sequence_log_prob(log_probs, prefix) == pytest.approx(math.log(full), rel=1e-9)


def test_rescoring_picks_what_an_explicit_score_picks():
    decoder, memory, ctc_log_probs = setup_search(3, frames=5)
    sequences = [(2,), (3, 4), (2, 3, 2), (4, 4), (3,)]
    labellings = ctc_labelling_probs(ctc_log_probs[0])
    att = [explicit_attention_score(decoder, memory[0], s) for s in sequences]
    torch.testing.assert_close(
        attention_sequence_scores(decoder, memory[0], 5, sequences), torch.tensor(att, dtype=torch.float64)
    )
    # First-pass scores ranked against the attention scores, so the weights decide which one wins.
    nbest = [Hypothesis(list(s), list(range(len(s))), -a) for s, a in zip(sequences, att)]
    picks = set()
    for ctc_weight, first_pass_weight, normalize in [(0, 0, False), (0, 3, False), (0.5, 0.5, False), (1, 0, True)]:
        totals = []
        for s, a, h in zip(sequences, att, nbest):
            total = a / (len(s) + 1) if normalize else a
            total += first_pass_weight * h.score + ctc_weight * math.log(labellings[s])
            totals.append(total)
        best = max(range(len(sequences)), key=totals.__getitem__)
        (chosen,) = attention_rescore(
            decoder,
            memory,
            torch.tensor([5]),
            [nbest],
            ctc_log_probs=ctc_log_probs,
            ctc_weight=ctc_weight,
            first_pass_weight=first_pass_weight,
            length_normalize=normalize,
        )
        assert tuple(chosen.tokens) == sequences[best] and chosen.timestamps == nbest[best].timestamps
        assert chosen.score == pytest.approx(totals[best], rel=1e-9)
        picks.add(sequences[best])
    assert len(picks) > 1


def test_search_arguments_are_checked():
    decoder, memory, _ = setup_search(0)
    with pytest.raises(ValueError, match="ctc_log_probs"):
        attention_beam_search(decoder, memory, torch.tensor([4]), ctc_weight=0.3)
    with pytest.raises(ValueError, match="beam"):
        attention_beam_search(decoder, memory, torch.tensor([4]), beam=0)
    with pytest.raises(ValueError, match="n-best"):
        attention_rescore(decoder, memory, torch.tensor([4]), [[Hypothesis([2])], [Hypothesis([3])]])


# -- training ---------------------------------------------------------------------------------------------
def test_tiny_model_with_three_heads_learns():
    """Transducer + CTC + AED on the tiny task: every raw loss falls. The labels use ids 1..5, so the
    AED's <sos/eos> is an extra id 6."""
    torch.manual_seed(0)
    model = AsrModel(
        TinyEncoder(FEATURES, 32),
        vocab_size=VOCAB + 1,
        heads=("transducer", "ctc", "aed"),
        decoder_dim=16,
        joiner_dim=32,
        ctc_dropout=0.0,
        aed_dim=32,
        aed_layers=2,
        aed_heads=2,
        aed_feedforward_dim=64,
        aed_dropout=0.0,
        relax_cross=0.2,
        sos_eos_id=VOCAB,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    held_out = make_task(8, torch.Generator().manual_seed(99))

    def held_out_losses():
        with torch.no_grad():
            return {k: v.item() for k, v in model.eval()(*held_out)._asdict().items()}

    before = held_out_losses()
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(100):
        x, x_lens, tokens = make_task(16, generator)
        loss = combine_losses(*model(x, x_lens, tokens), batch_idx_train=step, warm_step=30) / len(tokens)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.train()
    after = held_out_losses()
    for name in ("simple", "pruned", "ctc", "aed"):
        assert after[name] < 0.8 * before[name], (name, before[name], after[name])


def test_trainer_with_three_heads_and_relaxation_lowers_the_loss_and_its_checkpoint_loads(corpus, tmp_path):
    from asr.cli.train import build_parser, resolve_config
    from asr.training.trainer import Trainer

    from helpers.training import train_argv

    argv = train_argv(corpus, tmp_path / "exp", "--heads", "transducer", "ctc", "aed")
    argv += ["--relax-cross", "0.2", "--relax-self", "0.1", "--aed-loss-scale", "0.9"]
    config = resolve_config(build_parser().parse_args(argv[1:]))
    assert config.heads == ("transducer", "ctc", "aed") and config.aed_loss_scale == 0.9
    assert config.model_kwargs["relax_cross"] == 0.2 and config.encoder_kwargs["relaxed_attention_gamma"] == 0.1
    torch.manual_seed(0)
    trainer = Trainer(config)
    batch = next(iter(trainer.data.train_batches(1)))
    trainer.model.eval()
    with torch.no_grad():
        first, first_stats = trainer.compute_loss(batch, training=False)
    for _ in range(6):
        assert trainer.train_step(batch) is not None
        trainer.state.batch_idx_train += 1
    trainer.model.eval()
    with torch.no_grad():
        last, last_stats = trainer.compute_loss(batch, training=False)
    assert last_stats["aed_loss"] < first_stats["aed_loss"] and last.item() < first.item()
    trainer.save("checkpoint-6.pt")

    model = asr.load_model(tmp_path / "exp" / "checkpoint-6.pt")
    assert model.heads == ("transducer", "ctc", "aed") and model.attention_decoder.layers[0].cross_attn.relax == 0.2
    assert model.encoder.config.relaxed_attention_gamma == 0.1
    saved = trainer.model.state_dict()
    assert all(torch.equal(value, saved[key]) for key, value in model.state_dict().items())
    features = batch["features"][:2]
    enc, enc_lens = model.encode(features, batch["feature_lens"][:2])
    hyps = attention_beam_search(model.attention_decoder, enc, enc_lens, beam=2, max_len=3)
    assert len(hyps) == 2


def test_train_cli_prints_the_aed_options_and_rejects_a_bad_gamma(capsys):
    from asr.cli.train import main

    base = ["--print-config", "--heads", "ctc", "aed"]
    assert main([*base, "--relax-cross", "0.35", "--relax-self", "0.05"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["heads"] == ["ctc", "aed"] and config["aed_loss_scale"] == 0.8
    assert config["model_kwargs"] == {"relax_cross": 0.35}
    assert config["encoder_kwargs"] == {"relaxed_attention_gamma": 0.05}
    with pytest.raises(SystemExit, match=r"--relax-cross must be in \[0, 1\)"):
        main([*base, "--relax-cross", "1.5"])
