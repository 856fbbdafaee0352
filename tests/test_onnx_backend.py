"""The Recognizers' onnxruntime backend (``backend="onnxruntime"`` on an ``asr export onnx`` directory) against
the torch backend on the checkpoint the export came from, and its refusals of exports that do not fit.

The models are tiny Zipformer transducers with the synth corpus's BPE tokens and noisy decoder and joiner
weights (varied output), so equal texts mean equal decoding; the export side knows only ``tokens.txt``, so
its text also checks sherpa-onnx's piece-joining rule against sentencepiece's own decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lhotse import load_manifest

pytest.importorskip("onnx", reason="the export extra (onnx) is not installed")
pytest.importorskip("onnxruntime", reason="the export extra (onnxruntime) is not installed")

from asr.checkpoint import save_model  # noqa: E402
from asr.data.audio import load_audio  # noqa: E402
from asr.data.tokenizer import build_char_tokenizer, load_tokenizer  # noqa: E402
from asr.export import export_onnx  # noqa: E402
from asr.export.backend import TokenTableTokenizer, export_tokenizer, load_onnx_model  # noqa: E402
from asr.inference import DecodingOptions, Recognizer  # noqa: E402
from asr.models import build_model  # noqa: E402
from asr.streaming import OnlineRecognizer  # noqa: E402

from helpers.streaming_models import FAMILIES, TINY_ZIPFORMER, tiny_causal_model  # noqa: E402

_, CHUNK, LEFT = FAMILIES["zipformer-xs"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_full_context_model(lang_dir: Path) -> torch.nn.Module:
    """As :func:`tiny_causal_model`, built with ``causal=False``."""
    tokenizer = load_tokenizer(lang_dir)
    torch.manual_seed(0)
    model = build_model(
        "zipformer-xs",
        tokenizer.vocab_size,
        heads=("transducer",),
        encoder_kwargs=TINY_ZIPFORMER,
        decoder_dim=16,
        joiner_dim=32,
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("encoder."):
                parameter.add_(torch.randn_like(parameter))
    model.tokenizer = tokenizer
    return model


@pytest.fixture(scope="module")
def clips(corpus) -> list[np.ndarray]:
    """The synth test and dev utterances and three of train, 16 kHz samples."""
    cuts = [*load_manifest(corpus["test"]), *load_manifest(corpus["dev"]), *list(load_manifest(corpus["train"]))[:3]]
    return [load_audio(cut.recording.sources[0].source, 16000) for cut in cuts]


@pytest.fixture(scope="module")
def models(corpus, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, export dir): "streaming" (a causal model, streaming export at chunk 16, left
    context 64), "offline-causal" (the same model, offline export) and "offline" (a full-context model)."""
    root = tmp_path_factory.mktemp("onnx-backend")
    extra = {"tokenizer": {"bpe.model": (corpus["lang"] / "bpe.model").read_bytes()}}
    causal = tiny_causal_model("zipformer-xs", corpus["lang"])
    full = tiny_full_context_model(corpus["lang"])
    out = {}
    for name, model, streaming in (
        ("streaming", causal, True),
        ("offline-causal", causal, False),
        ("offline", full, False),
    ):
        checkpoint = save_model(root / f"{name}.pt", model, extra=extra)
        export_onnx(
            model,
            root / name,
            streaming=streaming,
            chunk_size=CHUNK if streaming else None,
            left_context_frames=LEFT if streaming else None,
        )
        out[name] = (checkpoint, root / name)
    return out


def stream_in_pieces(rec: OnlineRecognizer, clips: list[np.ndarray], seed: int) -> list:
    """Every clip its own stream, fed in random pieces of 10-700 ms round robin, whatever is ready decoded
    after each round (streams at different positions batched together); the final results."""
    rng = np.random.default_rng(seed)
    streams = [rec.create_stream() for _ in clips]
    positions = [0] * len(clips)
    while not all(s.input_done for s in streams):
        for i, (stream, clip) in enumerate(zip(streams, clips)):
            if stream.input_done:
                continue
            size = int(rng.integers(160, 11201))
            stream.accept_waveform(16000, clip[positions[i] : positions[i] + size])
            positions[i] += size
            if positions[i] >= clip.size:
                stream.input_finished()
        rec.decode_streams(streams)
    rec.decode_to_end(streams)
    return [rec.get_result(s) for s in streams]


# ---- the same text as torch ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["offline", "offline-causal"])
@pytest.mark.parametrize("method", ["greedy", "modified_beam_search"])
def test_offline_recognizer_onnxruntime_gives_the_torch_results(models, clips, name, method):
    checkpoint, export_dir = models[name]
    torch_rec = Recognizer.from_checkpoint(checkpoint, method=method, beam=4)
    onnx_rec = Recognizer.from_checkpoint(export_dir, method=method, beam=4, backend="onnxruntime")
    assert isinstance(onnx_rec.tokenizer, TokenTableTokenizer)  # tokens.txt only: sentencepiece's text rule
    expected = torch_rec.transcribe_batch(clips, 16000)
    got = onnx_rec.transcribe_batch(clips, 16000)
    assert all(len(r.token_ids) >= 5 for r in expected), [r.text for r in expected]
    assert [r.text for r in got] == [r.text for r in expected]
    assert [r.token_ids for r in got] == [r.token_ids for r in expected]
    assert [r.timestamps for r in got] == [r.timestamps for r in expected]


@pytest.mark.parametrize("method", ["greedy", "modified_beam_search"])
def test_online_recognizer_onnxruntime_gives_the_torch_results(models, clips, method):
    checkpoint, export_dir = models["streaming"]
    torch_rec = OnlineRecognizer.from_checkpoint(
        checkpoint, method=method, beam=4, chunk_size=CHUNK, left_context_frames=LEFT, endpoint=None
    )
    # The chunk and left context come from the export.
    onnx_rec = OnlineRecognizer.from_checkpoint(export_dir, method=method, beam=4, endpoint=None, backend="onnxruntime")
    assert (onnx_rec.chunk_size, onnx_rec.left_context_frames) == (CHUNK, LEFT)
    expected = stream_in_pieces(torch_rec, clips, seed=0)
    assert all(len(r.token_ids) >= 5 for r in expected), [r.text for r in expected]
    for seed in (0, 1):  # the pieces' sizes do not matter
        got = stream_in_pieces(onnx_rec, clips, seed)
        assert [r.text for r in got] == [r.text for r in expected]
        assert [r.token_ids for r in got] == [r.token_ids for r in expected]
        assert [r.timestamps for r in got] == [r.timestamps for r in expected]


# ---- the tokenizer of tokens.txt ------------------------------------------------------------------------------
def test_token_table_decodes_as_sentencepiece(corpus, models):
    _, export_dir = models["offline"]
    bpe = load_tokenizer(corpus["lang"])
    table = export_tokenizer(export_dir)
    assert isinstance(table, TokenTableTokenizer) and table.vocab_size == bpe.vocab_size
    rng = np.random.default_rng(0)
    for _ in range(500):  # any ids, <unk> and bare "▁" included
        ids = rng.integers(0, bpe.vocab_size, int(rng.integers(0, 12))).tolist()
        assert table.decode(ids) == bpe.decode(ids), [bpe.id_to_token(i) for i in ids]
    texts = [c.supervisions[0].text for c in load_manifest(corpus["train"])]
    for text in texts:
        ids = bpe.encode(text)
        assert table.decode(ids) == bpe.decode(ids)
        assert table.decode(table.encode(text)) == bpe.decode(bpe.encode(text))
    assert export_tokenizer(export_dir, corpus["lang"]).decode(ids) == bpe.decode(ids)


def test_a_character_table_export_decodes_with_the_char_tokenizer(tmp_path):
    from asr.data.tokenizer import CharTokenizer

    chars = build_char_tokenizer(["abcdef"], tmp_path / "lang")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "tokens.txt").write_bytes((tmp_path / "lang" / "tokens.txt").read_bytes())
    table = export_tokenizer(tmp_path / "export")
    assert isinstance(table, CharTokenizer) and table.decode([3, 4, 0, 5]) == chars.decode([3, 4, 0, 5]) == "abc"


# ---- bad input ----------------------------------------------------------------------------------------------
def test_a_directory_without_the_export_is_refused(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such export directory"):
        Recognizer.from_checkpoint(tmp_path / "nowhere", backend="onnxruntime")
    _, export_dir = models["offline"]
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("encoder.onnx", "tokens.txt"):
        (partial / name).write_bytes((export_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match=r"partial: no decoder\.onnx, joiner\.onnx"):
        Recognizer.from_checkpoint(partial, backend="onnxruntime")
    with pytest.raises(FileNotFoundError, match=r"no encoder\.int8\.onnx"):
        load_onnx_model(export_dir, int8=True)


def test_the_wrong_kind_of_export_is_refused(models):
    _, streaming_dir = models["streaming"]
    _, offline_dir = models["offline"]
    with pytest.raises(ValueError, match="holds a streaming export; asr.Recognizer needs an offline one"):
        Recognizer.from_checkpoint(streaming_dir, backend="onnxruntime")
    with pytest.raises(ValueError, match="holds an offline export; asr.OnlineRecognizer needs a streaming one"):
        OnlineRecognizer.from_checkpoint(offline_dir, backend="onnxruntime")
    # Given directly, the streaming graphs refuse the full-context decode and the offline ones chunking.
    with pytest.raises(ValueError, match="streaming export .*cannot attend with full context"):
        Recognizer(load_onnx_model(streaming_dir)).transcribe(np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="chunk_size needs a causal"):
        Recognizer(load_onnx_model(offline_dir), DecodingOptions(chunk_size=CHUNK))


def test_a_chunk_other_than_the_exported_one_is_refused(models):
    _, streaming_dir = models["streaming"]
    with pytest.raises(ValueError, match="exported with chunk_size 16 and left_context_frames 64.*got chunk_size 32"):
        OnlineRecognizer.from_checkpoint(streaming_dir, backend="onnxruntime", chunk_size=32, left_context_frames=64)
    with pytest.raises(ValueError, match="left_context_frames 64.*got chunk_size 16 and left_context_frames 128"):
        OnlineRecognizer.from_checkpoint(streaming_dir, backend="onnxruntime", chunk_size=16, left_context_frames=128)


def test_an_unknown_backend_or_a_mismatched_lang_dir_is_refused(models, tmp_path):
    checkpoint, export_dir = models["offline"]
    with pytest.raises(ValueError, match="backend must be one of torch, onnxruntime, got 'tensorrt'"):
        Recognizer.from_checkpoint(checkpoint, backend="tensorrt")
    other = build_char_tokenizer(["xyz"], tmp_path / "lang")
    assert other.vocab_size != load_onnx_model(export_dir).vocab_size
    with pytest.raises(ValueError, match="its tokens differ from .*tokens.txt"):
        Recognizer.from_checkpoint(export_dir, lang_dir=tmp_path / "lang", backend="onnxruntime")
