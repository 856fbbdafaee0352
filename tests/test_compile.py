"""torch.compile of the encoders (``AsrModel.compile_encoder``, ``asr train --compile``,
``Recognizer(compile=True)``): compiled and eager forwards give the same output, training steps give the
same output and gradients, and a new batch shape reuses the compiled code (dynamic shapes) instead of
recompiling."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch._dynamo
import torch._inductor.config

from asr.encoders import build_encoder
from asr.inference import Recognizer
from asr.models import AsrModel
from asr.models.asr_model import encode_checked
from asr.training.trainer import scheduled_modules, set_batch_count

from helpers.tiny_models import save_tiny_char_transducer

pytestmark = pytest.mark.slow


def _batch(seed: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fbank-like ``(N, max(lengths), 80)`` and lengths ``(N,)``, padded with zeros."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), 80, generator=generator)
    for i, length in enumerate(lengths):
        x[i, length:] = 0.0
    return x, torch.tensor(lengths)


@pytest.mark.parametrize("name", ["zipformer-xs", "conformer-xs"])
def test_compiled_encoder_equals_eager_and_does_not_recompile_for_new_shapes(name):
    torch.manual_seed(0)
    model = AsrModel(build_encoder(name), vocab_size=20).eval()
    eager = [_batch(1, [400, 331]), _batch(2, [523, 523, 260])]
    with torch.no_grad():
        expected = [model.encode(x, x_lens) for x, x_lens in eager]
        model.compile_encoder()
        torch._dynamo.reset()
        y, y_lens = model.encode(*eager[0])
        torch.testing.assert_close(y, expected[0][0], rtol=0, atol=1e-4)
        assert torch.equal(y_lens, expected[0][1])
        # Another batch size, length and padding: the same compiled graph.
        with torch._dynamo.config.patch(error_on_recompile=True):
            y, y_lens = model.encode(*eager[1])
        torch.testing.assert_close(y, expected[1][0], rtol=0, atol=1e-4)
        assert torch.equal(y_lens, expected[1][1])


@pytest.mark.parametrize("name", ["zipformer-xs", "conformer-xs", "efficient-conformer-xs"])
def test_compiled_training_step_equals_eager(name):
    """Train mode: dropout, layer skipping and the Zipformer's randomly applied balancers draw the same
    values in both runs (the same seeds; inductor told to use eager's random ops), so outputs and every
    parameter's gradient must agree."""
    torch.manual_seed(0)
    encoder = build_encoder(name).train()
    set_batch_count(scheduled_modules(encoder), 1000.0)
    x, x_lens = _batch(3, [300, 250])

    def step(seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        random.seed(seed)
        torch.manual_seed(seed)
        encoder.zero_grad(set_to_none=True)
        y, _ = encode_checked(encoder, x, x_lens)
        y.square().mean().backward()
        return y.detach(), {n: p.grad for n, p in encoder.named_parameters() if p.grad is not None}

    eager = [step(seed) for seed in (1, 2)]
    encoder.compile(dynamic=True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = [step(seed) for seed in (1, 2)]
    for (y, grads), (y_compiled, grads_compiled) in zip(eager, compiled):
        torch.testing.assert_close(y_compiled, y, rtol=0, atol=1e-4)
        assert grads_compiled.keys() == grads.keys()
        # Some gradients are ~1e-14 (a bias before a norm): compare on the scale of the largest one.
        scale = max(g.abs().max().item() for g in grads.values())
        for key, grad in grads.items():
            torch.testing.assert_close(grads_compiled[key], grad, rtol=1e-3, atol=1e-4 * scale, msg=key)


def test_recognizer_with_compiled_encoder_decodes_as_the_eager_one(tmp_path):
    path = save_tiny_char_transducer(tmp_path)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(16000 * seconds)).astype(np.float32) for seconds in (2, 3)]
    eager = Recognizer.from_checkpoint(path).transcribe_batch(clips, 16000)
    compiled = Recognizer.from_checkpoint(path, compile=True).transcribe_batch(clips, 16000)
    assert [r.text for r in compiled] == [r.text for r in eager]
    assert any(r.text for r in eager)


def test_online_recognizer_with_compiled_streaming_forward_decodes_as_the_eager_one(tmp_path):
    from asr.data.tokenizer import build_char_tokenizer
    from asr.streaming import OnlineRecognizer

    from helpers.streaming_models import streaming_options, tiny_causal_model

    build_char_tokenizer(["abcdefghij"], tmp_path / "lang")
    model = tiny_causal_model("zipformer-xs", tmp_path / "lang")
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32) for seconds in (2.3, 1.7, 3.1)]

    def decode(rec: OnlineRecognizer) -> list:
        # One stream alone, then three together at different positions: batch sizes 1, 3, 2 and 1.
        results = []
        for group in ([clips[0]], clips):
            streams = [rec.create_stream() for _ in group]
            for stream, clip in zip(streams, group):
                stream.accept_waveform(16000, clip)
                stream.input_finished()
            rec.decode_to_end(streams)
            results += [rec.get_result(s) for s in streams]
        return results

    options = streaming_options("zipformer-xs", "greedy")
    eager = decode(OnlineRecognizer(model, options, endpoint=None))
    compiled = decode(OnlineRecognizer(model, options, endpoint=None, compile=True))
    assert [r.token_ids for r in compiled] == [r.token_ids for r in eager]
    assert [r.timestamps for r in compiled] == [r.timestamps for r in eager]
    assert all(r.token_ids for r in eager)
