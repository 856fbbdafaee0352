"""The streaming API (``asr.OnlineRecognizer``) against the chunked offline decode of the same model, and the
offline ``asr.Recognizer`` against ``asr decode``, on tiny causal models (:mod:`helpers.streaming_models`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from lhotse import load_manifest

from asr import cli
from asr.checkpoint import save_model
from asr.data.audio import load_audio, resample
from asr.data.features import compute_fbank
from asr.data.tokenizer import load_tokenizer
from asr.decoding import Hypothesis, TokenLmScorer
from asr.inference import DecodingOptions, Recognizer, Utterance
from asr.lm import NgramLM
from asr.models import build_model
from asr.streaming import EndpointConfig, EndpointRule, OnlineRecognizer
from asr.streaming.fbank import OnlineFbank
from asr.streaming.resample import StreamResampler

from helpers.streaming_models import FAMILIES, streaming_options, tiny_causal_model
from helpers.tiny_models import TINY_ZIPFORMER

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def audio(corpus) -> dict[str, np.ndarray]:
    """The synth test and dev utterances and four of train: id -> 16 kHz samples."""
    cuts = [*load_manifest(corpus["test"]), *load_manifest(corpus["dev"]), *list(load_manifest(corpus["train"]))[:4]]
    return {cut.id: load_audio(cut.recording.sources[0].source, 16000) for cut in cuts}


@pytest.fixture(scope="module")
def models(corpus) -> dict[str, torch.nn.Module]:
    return {name: tiny_causal_model(name, corpus["lang"]) for name in FAMILIES}


@pytest.fixture(scope="module")
def token_lm(corpus, models) -> NgramLM:
    tokenizer = models["zipformer-xs"].tokenizer
    texts = [c.supervisions[0].text for c in load_manifest(corpus["train"])]
    symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
    return NgramLM.train([tokenizer.encode(t) for t in texts], symbols, order=3)


def stream_in_pieces(rec: OnlineRecognizer, clips: list[np.ndarray], seed: int, sample_rate: int = 16000) -> list:
    """Feed every clip to its own stream in random pieces of 10-700 ms, round robin, decoding whatever is
    ready after each round (streams at different positions batched together); the final results."""
    rng = np.random.default_rng(seed)
    streams = [rec.create_stream() for _ in clips]
    positions = [0] * len(clips)
    while not all(s.input_done for s in streams):
        for i, (stream, clip) in enumerate(zip(streams, clips)):
            if stream.input_done:
                continue
            size = int(rng.integers(sample_rate // 100, sample_rate * 7 // 10 + 1))
            stream.accept_waveform(sample_rate, clip[positions[i] : positions[i] + size])
            positions[i] += size
            if positions[i] >= clip.size:
                stream.input_finished()
        rec.decode_streams(streams)
    rec.decode_to_end(streams)
    assert all(rec.is_finished(s) for s in streams)
    return [rec.get_result(s) for s in streams]


# -- equivalence with the chunked offline decode ---------------------------------------------------------
@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("method", ["greedy", "modified_beam_search"])
def test_streamed_pieces_give_the_tokens_of_the_chunked_decode(name, method, models, audio, token_lm):
    model = models[name]
    options = streaming_options(name, method)
    scorers = [TokenLmScorer(token_lm, 0.5, 1.0)] if method == "modified_beam_search" else []
    clips = list(audio.values())
    offline = Recognizer(model, options, scorers=scorers).transcribe_batch(clips, 16000)
    assert all(len(r.token_ids) >= 5 for r in offline), [r.text for r in offline]
    online = OnlineRecognizer(model, options, endpoint=None, scorers=scorers)
    for seed in (0, 1):
        results = stream_in_pieces(online, clips, seed)
        assert [r.token_ids for r in results] == [r.token_ids for r in offline]
        assert [r.timestamps for r in results] == [r.timestamps for r in offline]


def test_the_chunked_decode_is_asr_decode_chunk_size(models, audio, tmp_path, capsys):
    """The offline reference above is what `asr decode --chunk-size` prints."""
    model = models["zipformer-xs"]
    lang = Path(model.tokenizer.source).parent
    extra = {"tokenizer": {"bpe.model": (lang / "bpe.model").read_bytes()}}
    path = save_model(tmp_path / "model.pt", model, extra=extra)
    wavs = []
    for utt_id, samples in list(audio.items())[:3]:
        wavs.append(tmp_path / f"{utt_id}.wav")
        soundfile.write(wavs[-1], samples, 16000, subtype="FLOAT")
    capsys.readouterr()
    args = ["decode", "--checkpoint", str(path), "--chunk-size", "16", "--left-context-frames", "64"]
    assert cli.main([*args, *map(str, wavs)]) == 0
    printed = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)
    online = OnlineRecognizer(model, streaming_options("zipformer-xs", "greedy"), endpoint=None)
    results = stream_in_pieces(online, [load_audio(w, 16000) for w in wavs], seed=3)
    assert printed == {w.stem: r.text for w, r in zip(wavs, results)}


def test_streams_decoded_together_equal_each_alone(models, audio):
    model = models["zipformer-xs"]
    rec = OnlineRecognizer(model, streaming_options("zipformer-xs", "greedy"), endpoint=None)
    clips = list(audio.values())[:5]
    together = stream_in_pieces(rec, clips, seed=7)
    alone = [stream_in_pieces(rec, [clip], seed=7)[0] for clip in clips]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    assert len({clip.size for clip in clips}) == len(clips)  # different lengths


def test_partial_results_grow_and_timestamps_lie_inside_the_audio(models, audio):
    model = models["zipformer-xs"]
    rec = OnlineRecognizer(model, streaming_options("zipformer-xs", "greedy"), endpoint=None)
    clip = max(audio.values(), key=len)
    stream = rec.create_stream()
    partials = []
    for start in range(0, clip.size, 1600):  # 100 ms pieces
        stream.accept_waveform(16000, clip[start : start + 1600])
        while rec.is_ready(stream):
            rec.decode_streams([stream])
        partials.append(rec.get_result(stream).token_ids)
    stream.input_finished()
    rec.decode_to_end([stream])
    final = rec.get_result(stream)
    assert len(set(map(tuple, partials))) > 3  # partial results appear while audio arrives
    for partial in partials:  # greedy never revises: each partial is a prefix of the final
        assert final.token_ids[: len(partial)] == partial
    duration = clip.size / 16000
    assert final.timestamps == sorted(final.timestamps)
    assert all(0 <= t < duration for t in final.timestamps)
    assert all(w.start <= w.end <= duration + 0.04 for w in final.words)
    assert [w.start for w in final.words] == sorted(w.start for w in final.words)
    assert " ".join(w.word for w in final.words) == final.text


# -- features and resampling --------------------------------------------------------------------------------
def test_incremental_fbank_equals_the_offline_fbank(audio):
    rng = np.random.default_rng(0)
    worst = 0.0
    for samples in audio.values():
        fbank = OnlineFbank()
        frames, position = [], 0
        while position < samples.size:
            size = int(rng.integers(1, 4000))
            fbank.accept_waveform(samples[position : position + size])
            frames.append(fbank.pop_frames())
            position += size
        fbank.input_finished()
        frames.append(fbank.pop_frames())
        online, offline = torch.cat(frames), compute_fbank(samples, 16000)
        assert online.shape == offline.shape
        worst = max(worst, float((online - offline).abs().max()))
    print(f"incremental vs offline fbank: max abs difference {worst:.3g}")
    assert worst < 1e-4


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_stream_resampling_equals_resampling_the_whole_signal(rate):
    rng = np.random.default_rng(rate)
    signal = rng.standard_normal(int(rate * 1.7)).astype(np.float32) * 0.3
    resampler, pieces, position = StreamResampler(rate, 16000), [], 0
    while position < signal.size:
        size = int(rng.integers(1, rate // 5))
        pieces.append(resampler.accept(signal[position : position + size]))
        position += size
    pieces.append(resampler.finish())
    np.testing.assert_allclose(np.concatenate(pieces), resample(signal, rate, 16000), atol=1e-6)


def test_a_stream_at_another_sample_rate_decodes_as_the_resampled_audio(models, audio):
    model = models["conformer-xs"]
    options = streaming_options("conformer-xs", "greedy")
    clip = resample(next(iter(audio.values())), 16000, 8000)
    offline = Recognizer(model, options).transcribe(clip, 8000)
    online = stream_in_pieces(OnlineRecognizer(model, options, endpoint=None), [clip], seed=2, sample_rate=8000)[0]
    assert online.token_ids == offline.token_ids


# -- bad input ------------------------------------------------------------------------------------------------
def test_bad_input_is_refused_and_the_stream_stays_usable(models, audio):
    model = models["zipformer-xs"]
    rec = OnlineRecognizer(model, streaming_options("zipformer-xs", "greedy"), endpoint=None)
    clip = next(iter(audio.values()))
    stream = rec.create_stream()
    stream.accept_waveform(16000, clip[:4000])
    bad_calls = [
        ((16000, (clip[:800] * 32767).astype(np.int16)), TypeError, "floating point"),
        ((16000, np.array([0.1, np.nan, 0.2], dtype=np.float32)), ValueError, "NaN or infinite"),
        ((16000, np.array([0.1, np.inf], dtype=np.float32)), ValueError, "NaN or infinite"),
        ((-16000, clip[:800]), ValueError, "sample_rate"),
        ((10**9, clip[:800]), ValueError, "sample_rate"),
        ((8000, clip[:800]), ValueError, "differs from this stream's 16000"),
        ((16000, np.stack([clip[:800], clip[:800]])), ValueError, "one channel"),
    ]
    for args, error, message in bad_calls:
        with pytest.raises(error, match=message):
            stream.accept_waveform(*args)
    stream.accept_waveform(16000, clip[4000:])
    stream.input_finished()
    with pytest.raises(ValueError, match="after input_finished"):
        stream.accept_waveform(16000, clip[:800])
    rec.decode_to_end([stream])
    expected = Recognizer(model, streaming_options("zipformer-xs", "greedy")).transcribe(clip, 16000)
    assert rec.get_result(stream).token_ids == expected.token_ids


def test_a_model_that_cannot_stream_is_refused(corpus):
    tokenizer = load_tokenizer(corpus["lang"])
    model = build_model(
        "zipformer-xs", tokenizer.vocab_size, heads=("transducer",), encoder_kwargs=TINY_ZIPFORMER, decoder_dim=16
    )
    model.tokenizer = tokenizer
    with pytest.raises(ValueError, match="causal"):
        OnlineRecognizer(model)
    with pytest.raises(ValueError, match="greedy or modified_beam_search"):
        OnlineRecognizer(tiny_causal_model("zipformer-xs", corpus["lang"]), DecodingOptions(method="ctc_greedy"))


def test_offline_recognizer_refuses_bad_samples_with_clear_errors(models):
    rec = Recognizer(models["zipformer-xs"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        rec.transcribe(np.array([0.0, np.nan] * 8000, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        rec.transcribe(np.zeros(16000, dtype=np.float32), -5)
    with pytest.raises(TypeError, match="floating point"):
        rec.transcribe(np.zeros(16000, dtype=np.int16), 16000)
    with pytest.raises(ValueError, match="too short"):
        rec.transcribe(np.zeros(400, dtype=np.float32), 16000)
    assert rec.transcribe(np.zeros(16000, dtype=np.float32), 16000).text is not None  # still usable


# -- endpointing ------------------------------------------------------------------------------------------------
def test_endpoint_rules_follow_their_definition():
    rules = EndpointConfig()
    assert not rules.is_endpoint(trailing_silence=2.3, utterance_length=2.3, has_text=False)
    assert rules.is_endpoint(trailing_silence=2.4, utterance_length=2.4, has_text=False)  # rule 1
    assert not rules.is_endpoint(trailing_silence=1.1, utterance_length=5.0, has_text=True)
    assert rules.is_endpoint(trailing_silence=1.2, utterance_length=5.0, has_text=True)  # rule 2
    assert rules.is_endpoint(trailing_silence=0.0, utterance_length=20.0, has_text=True)  # rule 3
    assert not EndpointRule(True, 0.5).holds(1.0, 3.0, has_text=False)


def test_is_endpoint_counts_trailing_blanks_in_the_current_segment(models):
    model = models["zipformer-xs"]
    rec = OnlineRecognizer(model, streaming_options("zipformer-xs", "greedy"), endpoint=EndpointConfig())
    frame = rec.frame_seconds
    stream = rec.create_stream()
    stream._search.frames = round(3.0 / frame)
    stream._search.hyp = Hypothesis([5], [round(1.9 / frame) - 1])  # last token ends at 1.9 s: 1.1 s of blanks
    assert not rec.is_endpoint(stream)
    stream._search.hyp = Hypothesis([5], [round(1.8 / frame) - 1])  # 1.2 s of blanks after text: rule 2
    assert rec.is_endpoint(stream)
    stream._encoder_frames = 100
    rec.reset(stream)
    assert not rec.is_endpoint(stream) and rec.get_result(stream).segment == 1
    assert rec.get_result(stream).text == "" and rec.get_result(stream).start_time == pytest.approx(100 * frame)


# -- the offline recognizer ---------------------------------------------------------------------------------------
def test_recognizer_transcribe_equals_asr_decode_on_every_test_utterance(models, corpus, tmp_path, capsys):
    model = models["conformer-xs"]
    lang = Path(model.tokenizer.source).parent
    path = save_model(tmp_path / "m.pt", model, extra={"tokenizer": {"bpe.model": (lang / "bpe.model").read_bytes()}})
    capsys.readouterr()
    assert (
        cli.main(["decode", "--checkpoint", str(path), "--cuts", str(corpus["test"]), "--out-dir", str(tmp_path)]) == 0
    )
    printed = dict(line.split("\t", 1) for line in capsys.readouterr().out.splitlines() if "\t" in line)
    rec = Recognizer.from_checkpoint(path)
    cuts = list(load_manifest(corpus["test"]))
    assert printed == {c.id: rec.transcribe(c.recording.sources[0].source).text for c in cuts}


def test_long_audio_is_decoded_in_segments_joined_at_their_middles(models, audio):
    """A long input decoded in overlapping segments gives, per segment, the tokens that segment's features
    decoded alone emit in its kept span (a second implementation of the join)."""
    model = models["conformer-xs"]
    clip = np.concatenate(list(audio.values()))[: 16000 * 9]
    rec = Recognizer(model, max_segment_seconds=3.0, segment_overlap_seconds=1.0)
    joined = rec.transcribe(clip, 16000)
    whole = Recognizer(model).transcribe(clip, 16000)
    features = compute_fbank(clip, 16000)
    expected: list[int] = []
    starts = [0, 200, 400, 600]  # 3 s segments every 2 s (fbank frames); the last runs to the end
    for k, start in enumerate(starts):
        end = features.size(0) if k == len(starts) - 1 else start + 300
        ((_, piece, _),) = Recognizer(model).recognize([Utterance(str(k), features[start:end])], [])
        keep_from = 0 if k == 0 else start + 50
        keep_until = features.size(0) if k == len(starts) - 1 else end - 50
        expected += [
            token
            for token, t in zip(piece.token_ids, piece.timestamps)
            if keep_from <= start + round(t * 100) < keep_until
        ]
    assert joined.token_ids == expected
    assert len(expected) > 100 and joined.token_ids != whole.token_ids  # the segments matter


# -- the examples ------------------------------------------------------------------------------------------------
def test_the_examples_run_as_documented(models, audio, tmp_path):
    model = models["zipformer-xs"]
    lang = Path(model.tokenizer.source).parent
    path = save_model(tmp_path / "m.pt", model, extra={"tokenizer": {"bpe.model": (lang / "bpe.model").read_bytes()}})
    clip = next(iter(audio.values()))
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, clip, 16000, subtype="FLOAT")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    streamed = subprocess.run(
        [sys.executable, str(REPO / "examples" / "stream_file.py"), "--checkpoint", str(path), str(wav)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.splitlines()
    rec = OnlineRecognizer(model, DecodingOptions(), EndpointConfig())
    stream = rec.create_stream()
    stream.accept_waveform(16000, clip)
    stream.input_finished()
    rec.decode_to_end([stream])
    assert streamed[-1] == f"segment 0: {rec.get_result(stream).text}"
    assert any(line.startswith("partial: ") for line in streamed)
    offline = subprocess.run(
        [sys.executable, str(REPO / "examples" / "transcribe_file.py"), "--checkpoint", str(path), str(wav)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.splitlines()
    expected = Recognizer(model, DecodingOptions(method="modified_beam_search")).transcribe(wav)
    assert offline[0] == f"{wav}: {expected.text}"
    assert len(offline) == 1 + len(expected.words)
