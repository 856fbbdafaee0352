"""`asr decode` with the attention-decoder methods: the command gives what the search functions give on the
same encoder output, and refuses models without the heads a method needs."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from asr import cli
from asr.checkpoint import save_model
from asr.data.features import compute_fbank
from asr.data.tokenizer import build_char_tokenizer
from asr.decoding import ModifiedBeamSearch
from asr.decoding.attention import attention_beam_search, attention_rescore
from asr.models import build_model

from helpers.tiny_models import TINY_ZIPFORMER


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("decode_attention")
    tokenizer = build_char_tokenizer(["abcdef"], root / "lang")
    torch.manual_seed(0)
    model = build_model(
        "zipformer-xs",
        tokenizer.vocab_size,
        heads=("transducer", "ctc", "aed"),
        encoder_kwargs=TINY_ZIPFORMER,
        decoder_dim=16,
        aed_dim=32,
        aed_layers=2,
        aed_heads=2,
        aed_feedforward_dim=64,
    ).eval()
    with torch.no_grad():  # heads far from their initial values: varied tokens
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder."):
                parameter.add_(0.5 * torch.randn_like(parameter))
        model.attention_decoder.output.bias[0] -= 6.0  # blank: never a target of the attention decoder
        model.attention_decoder.output.bias[1] -= 2.0  # <sos/eos>: a few tokens before the end
    extra = {"tokenizer": {"tokens.txt": (root / "lang" / "tokens.txt").read_bytes()}}
    path = save_model(root / "model.pt", model, extra=extra)
    rng = np.random.default_rng(0)
    wav = root / "noise.wav"
    sf.write(wav, (0.1 * rng.standard_normal(12000)).astype(np.float32), 16000, subtype="FLOAT")
    return {"model": model, "tokenizer": tokenizer, "checkpoint": path, "wav": wav}


def decode(setup, capsys, *options: str) -> str:
    capsys.readouterr()
    assert cli.main(["decode", "--checkpoint", str(setup["checkpoint"]), *options, str(setup["wav"])]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if "\t" in line]
    return line.split("\t", 1)[1]


@torch.no_grad()
def encoder_output(setup):
    features = compute_fbank(sf.read(setup["wav"], dtype="float32")[0], 16000).unsqueeze(0)
    return setup["model"].encode(features, torch.tensor([features.size(1)]))


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_attention_beam_search_through_asr_decode(setup, capsys, ctc_weight):
    model = setup["model"]
    enc_out, enc_lens = encoder_output(setup)
    ctc = model.ctc_log_probs(enc_out) if ctc_weight else None
    expected = attention_beam_search(
        model.attention_decoder, enc_out, enc_lens, 4, ctc_log_probs=ctc, ctc_weight=ctc_weight
    )[0]
    printed = decode(setup, capsys, "--method", "attention_beam_search", "--ctc-weight", str(ctc_weight))
    assert printed == setup["tokenizer"].decode(expected.tokens) and printed


def test_attention_rescoring_through_asr_decode(setup, capsys):
    model = setup["model"]
    enc_out, enc_lens = encoder_output(setup)
    search = ModifiedBeamSearch(model, beam=4)
    beams = [search.initial()]
    search.advance(beams, enc_out, enc_lens)
    nbest = search.nbest(beams[0])
    assert len(nbest) > 1
    expected = attention_rescore(model.attention_decoder, enc_out, enc_lens, [nbest], first_pass_weight=0.5)[0]
    printed = decode(setup, capsys, "--method", "attention_rescoring", "--first-pass-weight", "0.5")
    assert printed == setup["tokenizer"].decode(expected.tokens)


def test_a_method_without_its_head_is_a_clear_error(setup, tmp_path, capsys):
    tokenizer = setup["tokenizer"]
    model = build_model("zipformer-xs", tokenizer.vocab_size, heads=("transducer",), encoder_kwargs=TINY_ZIPFORMER)
    extra = {"tokenizer": {"tokens.txt": tokenizer.source and open(tokenizer.source, "rb").read()}}
    path = save_model(tmp_path / "transducer.pt", model, extra=extra)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["decode", "--checkpoint", str(path), "--method", "attention_beam_search", str(setup["wav"])])
    assert exit_info.value.code == 2
    assert "method attention_beam_search needs the aed heads; this model has" in capsys.readouterr().err


@pytest.mark.parametrize("method, options", [("edatt", ["--alpha", "0.3"]), ("alignatt", ["--align-frames", "3"])])
def test_simultaneous_methods_through_asr_decode(setup, capsys, method, options):
    from asr.decoding.simultaneous import AlignAttPolicy, EDAttPolicy, simultaneous_decode

    model = setup["model"]
    features = compute_fbank(sf.read(setup["wav"], dtype="float32")[0], 16000)
    layer = model.attention_decoder.num_layers - 1  # the 4th layer, or the last of a shallower decoder
    policy = EDAttPolicy(0.3, 2, layer) if method == "edatt" else AlignAttPolicy(3, layer)
    expected = simultaneous_decode(model, features, policy, 160.0, final_beam=4, tokenizer=setup["tokenizer"])
    capsys.readouterr()
    argv = ["decode", "--checkpoint", str(setup["checkpoint"]), "--method", method, "--step-ms", "160", *options]
    assert cli.main([*argv, str(setup["wav"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t", 1)[1] == expected.text and expected.text
    assert out[-1].startswith("latency (ms): AL ") and "LAAL_CA" in out[-1]
