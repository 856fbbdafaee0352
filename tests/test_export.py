"""ONNX export (`asr export onnx`): onnxruntime against torch on the exported graphs, the layout sherpa-onnx
reads, bad input refused before any file is written, and sherpa-onnx itself (the deployment runtime, run in
a child process) decoding the exports to what our own decode gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from asr.checkpoint import save_model  # noqa: E402
from asr.cli import main  # noqa: E402
from asr.data.tokenizer import build_char_tokenizer  # noqa: E402
from asr.decoding import greedy_search  # noqa: E402
from asr.export import ExportError, export_onnx  # noqa: E402
from asr.export.onnx import read_metadata  # noqa: E402
from asr.export.onnxruntime import OnnxTransducer  # noqa: E402
from asr.models import build_model  # noqa: E402

from helpers.export_sherpa import sherpa_decode  # noqa: E402
from helpers.tiny_models import TINY_ZIPFORMER

CHUNK, LEFT = 16, 64  # 50 Hz frames
SHERPA_FRAME_SECONDS = 0.04  # one encoder output frame (25 Hz)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_char_tokenizer(["abcdefghijklmnop"], tmp_path_factory.mktemp("lang"))


def make_model(tokenizer, causal: bool, convnext: bool = True, preset_dims: bool = False, heads=("transducer",)):
    """A random model whose greedy search emits varied tokens: its weights moved from their initial values,
    a little in the encoder (enough to vary, not so much that float rounding explodes through the layers)
    and more in the shallow decoder and joiner."""
    torch.manual_seed(0)
    encoder_kwargs = {} if preset_dims else {**TINY_ZIPFORMER, "embed_convnext": convnext}
    head_dims = {} if preset_dims else {"decoder_dim": 16, "joiner_dim": 32}
    model = build_model(
        "zipformer-xs",
        tokenizer.vocab_size,
        heads=heads,
        causal=causal,
        encoder_kwargs={**encoder_kwargs, "chunk_size": CHUNK, "left_context_frames": LEFT}
        if causal
        else encoder_kwargs,
        **head_dims,
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(
                (0.03 if preset_dims else 0.1) * torch.randn_like(p)
                if name.startswith("encoder.")
                else 0.5 * torch.randn_like(p)
            )
        # The encoder's output varies little around a constant: the first linear layer of each head on it is
        # standardised on random input (x3), so that the head's choice follows the audio.
        x = torch.randn(4, 300, 80, generator=torch.Generator().manual_seed(0)) * 2.0 - 8.0
        with model.encoder.full_context():
            encoded = model.encoder(x, torch.full((4,), 300))[0]
        heads = {"transducer": ("joiner", "encoder_proj"), "ctc": ("ctc_output", "1")}
        for head in model.heads:
            module, name = heads[head]
            standardise(getattr(getattr(model, module), name), encoded)
        # <sos/eos> and <unk> never win, as in a trained model (sherpa-onnx reads <unk> as blank).
        output = model.joiner.output_linear if model.has_transducer else model.ctc_output[1]
        output.bias[1:3] = -100.0
    model.tokenizer = tokenizer
    return model


def standardise(linear: torch.nn.Linear, inputs: torch.Tensor) -> None:
    outputs = linear(inputs).flatten(0, -2)
    mean, std = outputs.mean(0), outputs.std(0) / 3.0
    linear.weight.div_(std.unsqueeze(1))
    linear.bias.sub_(mean).div_(std)


def saved(model, tokenizer, path: Path) -> Path:
    tokens = Path(tokenizer.source).read_bytes()
    return save_model(path, model, extra={"tokenizer": {"tokens.txt": tokens}})


def noise_wav(path: Path, seconds: float, seed: int) -> Path:
    """Noise in 50 ms segments of random colour and loudness, so the fbank frames vary along the file."""
    rng = np.random.default_rng(seed)
    segments = []
    for _ in range(int(seconds * 20)):
        width = int(rng.integers(1, 12))
        noise = np.convolve(rng.standard_normal(800), np.ones(width) / np.sqrt(width), mode="same")
        segments.append(noise * 10 ** rng.uniform(-2.5, -0.5))
    soundfile.write(path, np.concatenate(segments).astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("wavs")
    return [noise_wav(root / f"noise{i}.wav", seconds, seed=i) for i, seconds in enumerate((1.6, 1.1))]


@pytest.fixture(scope="module")
def exports(tokenizer, tmp_path_factory) -> dict[str, tuple]:
    """(model, export dir) for: a streaming export of a tiny causal model with the front end's ConvNeXt
    (its cache in sherpa's slot) and int8 files; one without the ConvNeXt (zipformer-xs's front end, a
    pass-through slot); an offline export of a tiny full-context model and of the causal one."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for name, causal, convnext, streaming in (
        ("streaming", True, True, True),
        ("streaming-no-convnext", True, False, True),
        ("offline", False, True, False),
        ("offline-causal", True, True, False),
    ):
        model = make_model(tokenizer, causal, convnext)
        export_onnx(model, root / name, streaming=streaming, int8=name == "streaming")
        out[name] = (model, root / name)
    return out


def random_features(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 2.0 - 8.0


# ---- torch against onnxruntime -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["streaming", "streaming-no-convnext"])
def test_streaming_encoder_equals_torch_over_10_chunks_with_caches(exports, name):
    model, export_dir = exports[name]
    ort_model = OnnxTransducer(export_dir)
    encoder = model.encoder
    generator = torch.Generator().manual_seed(1)
    batch_size = 3  # the graph was traced at 2: the batch axis is dynamic
    onnx_states = ort_model.init_states(batch_size)
    embed_channels, embed_frames = encoder.encoder_embed.layer3_channels, encoder.encoder_embed.convnext_lookahead
    assert onnx_states[-2].shape == (batch_size, 128, 3, 19)  # what sherpa-onnx allocates
    with encoder.streaming(CHUNK, LEFT), torch.no_grad():
        states = encoder.init_states(batch_size)
        window = encoder.streaming_feature_frames
        assert ort_model.window_frames == window == 2 * CHUNK + (13 if embed_frames else 7)
        for _ in range(10):
            x = random_features(generator, batch_size, window, 80)
            y, _, states = encoder.streaming_forward(x, torch.full((batch_size,), window), states)
            expected = model.joiner.encoder_proj(y)
            out, onnx_states = ort_model.streaming_forward(x.numpy(), onnx_states)
            assert np.abs(out - expected.numpy()).max() < 1e-4
            for ours, theirs in zip(states[:-2], onnx_states[:-2]):
                assert np.abs(ours.numpy() - theirs).max() < 1e-4
            slot = onnx_states[-2]
            cache = slot[:, :embed_channels, :embed_frames]
            assert cache.shape == states[-2].shape and np.allclose(cache, states[-2].numpy(), rtol=0, atol=1e-4)
            assert not slot[:, embed_channels:].any() and not slot[:, :, embed_frames:].any()
            assert np.array_equal(onnx_states[-1], states[-1].numpy())


@pytest.mark.parametrize("name", ["offline", "offline-causal"])
def test_offline_encoder_equals_torch_over_20_random_lengths(exports, name):
    model, export_dir = exports[name]
    ort_model = OnnxTransducer(export_dir)
    generator = torch.Generator().manual_seed(2)
    lengths = torch.randint(20, 700, (20,), generator=generator)
    x = random_features(generator, 20, int(lengths.max()), 80)
    for rows in (list(range(0, 10)), list(range(10, 20))):  # padded batches of 10
        batch, batch_lengths = x[rows, : int(lengths[rows].max())], lengths[rows]
        with model.encoder.full_context(), torch.no_grad():
            y, y_lens = model.encoder(batch, batch_lengths)
            expected = model.joiner.encoder_proj(y)
        out, out_lens = ort_model.encode(batch.numpy(), batch_lengths.numpy())
        assert out_lens.tolist() == y_lens.tolist()
        for i, n in enumerate(y_lens.tolist()):
            assert np.abs(out[i, :n] - expected[i, :n].numpy()).max() < 1e-4


def test_decoder_and_joiner_equal_torch(exports):
    model, export_dir = exports["offline"]
    ort_model = OnnxTransducer(export_dir)
    generator = torch.Generator().manual_seed(3)
    y = torch.randint(0, model.vocab_size, (6, model.decoder.context_size), generator=generator)
    y[0] = torch.tensor(ort_model.start_context())  # -1 then blank: what sherpa-onnx feeds first
    with torch.no_grad():
        expected = model.joiner.decoder_proj(model.decoder(y, need_pad=False).squeeze(1))
        e, d = torch.randn(7, 32, generator=generator), torch.randn(7, 32, generator=generator)
        logits = model.joiner(e, d, project_input=False)
    assert np.abs(ort_model.decoder_out(y.numpy()) - expected.numpy()).max() < 1e-5
    assert np.abs(ort_model.logits(e.numpy(), d.numpy()) - logits.numpy()).max() < 1e-5


# ---- layout ---------------------------------------------------------------------------------------------------
def test_streaming_layout_is_what_sherpa_reads(exports, tokenizer):
    import onnxruntime as ort

    model, export_dir = exports["streaming"]
    meta = read_metadata(export_dir / "encoder.onnx")
    # Per stack: dims 32, one layer, 2 heads, kernels 7; left context 64 frames at 50 Hz over ds 1,2,4,8,4,2.
    assert {k: meta[k] for k in meta if k not in ("version", "model_author", "comment")} == {
        "model_type": "zipformer2",
        "decode_chunk_len": "32",
        "T": "45",
        "num_encoder_layers": "1,1,1,1,1,1",
        "encoder_dims": "32,32,32,32,32,32",
        "cnn_module_kernels": "7,7,7,7,7,7",
        "left_context_len": "64,32,16,8,16,32",
        "query_head_dims": "8,8,8,8,8,8",
        "value_head_dims": "4,4,4,4,4,4",
        "num_heads": "2,2,2,2,2,2",
        "chunk_size": "16",
        "left_context_frames": "64",
    }
    assert read_metadata(export_dir / "encoder.int8.onnx").items() >= meta.items()  # quantization keeps it
    assert read_metadata(export_dir / "decoder.onnx") == {"context_size": "2", "vocab_size": str(tokenizer.vocab_size)}
    session = ort.InferenceSession(str(export_dir / "encoder.onnx"), providers=["CPUExecutionProvider"])
    inputs = [(i.name, i.shape, i.type) for i in session.get_inputs()]
    assert inputs[0] == ("x", ["N", 45, 80], "tensor(float)")
    assert [name for name, _, _ in inputs[1:7]] == [
        "cached_key_0",
        "cached_nonlin_attn_0",
        "cached_val1_0",
        "cached_val2_0",
        "cached_conv1_0",
        "cached_conv2_0",
    ]
    assert inputs[1][1] == [64, "N", 16] and inputs[2][1] == [1, "N", 64, 24] and inputs[5][1] == ["N", 32, 3]
    assert inputs[-2] == ("embed_states", ["N", 128, 3, 19], "tensor(float)")
    assert inputs[-1] == ("processed_lens", ["N"], "tensor(int64)")
    assert len(inputs) == 1 + 6 * 6 + 2
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["encoder_out"] + [f"new_{name}" for name, _, _ in inputs[1:]]
    lines = (export_dir / "tokens.txt").read_text().splitlines()
    assert lines == [f"{tokenizer.id_to_token(i)} {i}" for i in range(tokenizer.vocab_size)]
    assert lines[0] == "<blk> 0"


# ---- the command and bad input ----------------------------------------------------------------------------------
def test_cli_exports_the_demo_preset_streaming_with_int8(tokenizer, tmp_path, capsys):
    """zipformer-xs as the demo builds it (no ConvNeXt in its front end): written by `asr export onnx`."""
    model = make_model(tokenizer, causal=True, preset_dims=True)
    checkpoint = saved(model, tokenizer, tmp_path / "model.pt")
    status = main(
        ["export", "onnx", "--checkpoint", str(checkpoint), "--out-dir", str(tmp_path / "onnx"), "--streaming"]
        + ["--chunk-size", "32", "--left-context-frames", "128", "--int8"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert names == sorted(
        ["tokens.txt"] + [f"{g}{s}" for g in ("encoder", "decoder", "joiner") for s in (".onnx", ".int8.onnx")]
    )
    assert "torch vs onnxruntime" in printed
    meta = read_metadata(tmp_path / "onnx" / "encoder.onnx")
    assert (meta["T"], meta["decode_chunk_len"], meta["left_context_len"]) == ("71", "64", "128,64,32,16,32,64")
    fp32, int8 = ((tmp_path / "onnx" / f"encoder{s}").stat().st_size for s in (".onnx", ".int8.onnx"))
    assert int8 < fp32 / 2


def _cli_error(argv: list[str], capsys) -> str:
    status = main(argv)
    assert status != 0
    return capsys.readouterr().err.strip()


def test_bad_input_is_refused_before_any_file_is_written(tokenizer, tmp_path, capsys):
    offline = saved(make_model(tokenizer, causal=False), tokenizer, tmp_path / "offline.pt")
    out = tmp_path / "never"
    message = _cli_error(["export", "onnx", "--checkpoint", str(offline), "--out-dir", str(out), "--streaming"], capsys)
    assert "causal" in message and "--streaming" in message
    torch.manual_seed(0)
    conformer = build_model(
        "conformer-xs",
        tokenizer.vocab_size,
        heads=("transducer",),
        decoder_dim=16,
        joiner_dim=32,
        encoder_kwargs=dict(encoder_dim=32, num_layers=1, num_heads=4, feedforward_dim=64, kernel_size=7),
    )
    conformer_path = saved(conformer, tokenizer, tmp_path / "conformer.pt")
    message = _cli_error(["export", "onnx", "--checkpoint", str(conformer_path), "--out-dir", str(out)], capsys)
    assert "conformer-xs" in message and "Zipformer" in message
    no_tokenizer = save_model(tmp_path / "bare.pt", make_model(tokenizer, causal=False))
    message = _cli_error(["export", "onnx", "--checkpoint", str(no_tokenizer), "--out-dir", str(out)], capsys)
    assert "tokenizer" in message
    causal = saved(make_model(tokenizer, causal=True), tokenizer, tmp_path / "causal.pt")
    message = _cli_error(
        ["export", "onnx", "--checkpoint", str(causal), "--out-dir", str(out), "--streaming", "--chunk-size", "12"],
        capsys,
    )
    assert "--chunk-size 12" in message
    ctc = saved(make_model(tokenizer, causal=True, heads=("ctc",)), tokenizer, tmp_path / "ctc.pt")
    message = _cli_error(["export", "onnx", "--checkpoint", str(ctc), "--out-dir", str(out), "--streaming"], capsys)
    assert "CTC" in message and "offline" in message
    assert not out.exists()


def test_a_failed_check_leaves_nothing(tokenizer, tmp_path):
    model = make_model(tokenizer, causal=False)
    with pytest.raises(ExportError, match="export check failed, nothing written: encoder_out"):
        export_onnx(model, tmp_path / "out", tolerance=0.0)
    assert list((tmp_path / "out").iterdir()) == []


# ---- sherpa-onnx as the client ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sherpa_onnx_installed():
    try:
        import sherpa_onnx  # noqa: F401
    except ImportError:
        pytest.skip("sherpa-onnx is not installed (pip install 'asr[export]')")


def torch_stream_tokens(model, frames: np.ndarray, calls: int) -> tuple[list[str], list[int]]:
    """Our streaming decode of sherpa's own feature frames, window by window as sherpa ran them."""
    encoder = model.encoder
    with encoder.streaming(CHUNK, LEFT), torch.no_grad():
        window, shift = encoder.streaming_feature_frames, encoder.streaming_feature_shift
        states, outputs = encoder.init_states(1), []
        for k in range(calls):
            x = torch.from_numpy(frames[k * shift : k * shift + window]).unsqueeze(0)
            y, _, states = encoder.streaming_forward(x, torch.tensor([window]), states)
            outputs.append(y)
        encoder_out = torch.cat(outputs, dim=1)
        hyp = greedy_search(model, encoder_out, torch.tensor([encoder_out.size(1)]))[0]
    return [model.tokenizer.id_to_token(t) for t in hyp.tokens], hyp.timestamps


def sherpa_frames(result: dict) -> list[int]:
    return [round(t / SHERPA_FRAME_SECONDS) for t in result["timestamps"]]


@pytest.mark.parametrize("name", ["streaming", "streaming-no-convnext"])
def test_sherpa_online_recognizer_decodes_the_streaming_export_as_we_do(
    exports, name, wavs, tmp_path, sherpa_onnx_installed
):
    from asr.data.audio import load_audio
    from asr.data.features import compute_fbank
    from asr.inference.offline import encode

    model, export_dir = exports[name]
    results = sherpa_decode(export_dir, wavs, tmp_path, "online")
    for i, (wav, result) in enumerate(zip(wavs, results)):
        frames = np.load(tmp_path / f"frames_{i}.npy")
        tokens, timestamps = torch_stream_tokens(model, frames, result["encoder_calls"])
        assert len(set(tokens)) >= 3, tokens  # a varied output, so equality means something
        assert result["tokens"] == tokens
        assert sherpa_frames(result) == timestamps
        # Against our own features and streaming decode (what `asr decode --chunk-size` runs), on the output
        # frames whose windows lie inside the file (past its end the two pad differently).
        features = compute_fbank(load_audio(wav, 16000), 16000)
        # The same fbank, but for the last frames, which reach into sherpa's zero tail.
        assert np.abs(frames[: len(features) - 2] - features[:-2].numpy()).max() < 1e-3
        with torch.no_grad():
            encoder_out, lens = encode(model, features[None], torch.tensor([len(features)]), CHUNK, LEFT)
            ours = greedy_search(model, encoder_out, lens)[0]
        inside = (len(features) - model.encoder.encoder_embed.streaming_lookahead) // (2 * CHUNK) * (CHUNK // 2)
        assert inside >= 10
        ours_inside = [(model.tokenizer.id_to_token(t), f) for t, f in zip(ours.tokens, ours.timestamps) if f < inside]
        theirs_inside = [(t, f) for t, f in zip(result["tokens"], sherpa_frames(result)) if f < inside]
        assert ours_inside == theirs_inside and len(ours_inside) >= 5


@pytest.mark.parametrize("name", ["offline", "offline-causal"])
def test_sherpa_offline_recognizer_decodes_the_offline_export_as_asr_decode(
    exports, name, tokenizer, wavs, tmp_path, capsys, sherpa_onnx_installed
):
    model, export_dir = exports[name]
    checkpoint = saved(model, tokenizer, tmp_path / "model.pt")
    capsys.readouterr()
    assert main(["decode", "--checkpoint", str(checkpoint), "--num-threads", "1", *map(str, wavs)]) == 0
    ours = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)
    results = sherpa_decode(export_dir, wavs, tmp_path / "sherpa", "offline")
    assert all(len(set(text)) >= 3 for text in ours.values()), ours
    assert {wav.stem: result["text"].strip() for wav, result in zip(wavs, results)} == ours


def test_sherpa_runs_the_int8_export_as_onnxruntime_does(exports, wavs, tmp_path, sherpa_onnx_installed):
    _, export_dir = exports["streaming"]
    results = sherpa_decode(export_dir, wavs, tmp_path, "online", int8=True)
    ort_model = OnnxTransducer(export_dir, int8=True)
    for i, result in enumerate(results):
        frames = np.load(tmp_path / f"frames_{i}.npy")
        tokens = ort_model.decode_streaming(frames, num_windows=result["encoder_calls"])
        assert result["tokens"] == [ort_model.tokens[t] for t in tokens]
        assert len(tokens) >= 5


def test_sherpa_decodes_the_ctc_export_as_asr_decode(tokenizer, wavs, tmp_path, capsys, sherpa_onnx_installed):
    model = make_model(tokenizer, causal=False, heads=("ctc",))
    checkpoint = saved(model, tokenizer, tmp_path / "model.pt")
    capsys.readouterr()
    argv = ["export", "onnx", "--checkpoint", str(checkpoint), "--out-dir", str(tmp_path / "onnx")]
    assert main(argv) == 0
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == ["model.onnx", "tokens.txt"]
    assert read_metadata(tmp_path / "onnx" / "model.onnx")["model_type"] == "zipformer2_ctc"
    argv = ["decode", "--checkpoint", str(checkpoint), "--method", "ctc_greedy", "--num-threads", "1"]
    assert main([*argv, *map(str, wavs)]) == 0
    ours = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)
    results = sherpa_decode(tmp_path / "onnx", wavs, tmp_path / "sherpa", "ctc")
    assert all(len(set(text)) >= 3 for text in ours.values()), ours
    assert {wav.stem: result["text"].strip() for wav, result in zip(wavs, results)} == ours
