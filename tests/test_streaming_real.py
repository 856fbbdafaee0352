"""Streaming with a model that really recognises speech: endpointing splits a stream of three utterances
into those three, and token and word times match where the words are in the audio.

The model is a tiny causal Zipformer transducer + CTC overfit, in the fixture, to nine words spoken one
by one by espeak-ng, joined in random orders with random silences (:mod:`helpers.overfit`); the three test
utterances are joined from the same words with fixed silences, so each word's start time is known exactly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from asr.data.tokenizer import load_tokenizer
from asr.inference import DecodingOptions, Recognizer, Result
from asr.models import build_model
from asr.streaming import EndpointConfig, OnlineRecognizer

from helpers.overfit import (
    SAMPLE_RATE,
    WordUtterance,
    batch_features,
    ctc_forced_alignment,
    join_words,
    overfit,
    speak_word,
)
from helpers.tiny_models import TINY_ZIPFORMER

TEXTS = ("the room was", "not many calls", "food and water")
# 320 ms chunks and 1.28 s of left context (50 Hz frames), the smallest the encoder trains with.
OPTIONS = DecodingOptions(chunk_size=16, left_context_frames=64)
PIECE_SAMPLES = SAMPLE_RATE // 10  # 100 ms
GAP_SECONDS = 1.5  # between the utterances of the endpointing test
GAP_SECONDS_IN_UTTERANCE = 0.15
TOLERANCE_SECONDS = 0.2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory, one_thread) -> tuple[torch.nn.Module, list[WordUtterance]]:
    """The overfit model (eval mode, tokenizer attached) and the three utterances it decodes exactly."""
    word_dir = tmp_path_factory.mktemp("words")
    clips = {word: speak_word(word, word_dir) for word in sorted({w for t in TEXTS for w in t.split()})}
    # A word's time is its first token's, often a bare "▁" (a word start without sound) that a model may
    # emit anywhere in the silence before the word: no such silence is longer than the tolerance.
    utterances = [join_words(text, clips, GAP_SECONDS_IN_UTTERANCE, lead_seconds=0.15) for text in TEXTS]
    tokenizer = load_tokenizer(corpus["lang"])
    torch.manual_seed(0)
    model = build_model(
        "zipformer-xs",
        tokenizer.vocab_size,
        heads=("transducer", "ctc"),
        causal=True,
        encoder_kwargs=TINY_ZIPFORMER,
        decoder_dim=64,
        joiner_dim=64,
    )
    model.tokenizer = tokenizer
    steps, seconds = overfit(model, clips, utterances, OPTIONS)
    print(f"\noverfit: {steps} Adam steps, {seconds:.1f} s")
    return model, utterances


def stream(rec: OnlineRecognizer, samples: np.ndarray) -> list[Result]:
    """``samples`` streamed in 100 ms pieces, decoding what is ready after each and starting a new
    segment at each endpoint (as examples/stream_file.py does); the non-empty segment results in order."""
    segments = []
    s = rec.create_stream()
    for start in range(0, samples.size, PIECE_SAMPLES):
        s.accept_waveform(SAMPLE_RATE, samples[start : start + PIECE_SAMPLES])
        while rec.is_ready(s):
            rec.decode_streams([s])
        if rec.is_endpoint(s):
            segments.append(rec.get_result(s))
            rec.reset(s)
    s.input_finished()
    rec.decode_to_end([s])
    segments.append(rec.get_result(s))
    return [r for r in segments if r.text]


def check_times(result: Result, duration: float) -> None:
    """Token times non-decreasing and inside the audio; words in order, each ``start <= end``, inside too."""
    assert result.timestamps == sorted(result.timestamps)
    assert all(0 <= t < duration for t in result.timestamps), (result.timestamps, duration)
    starts = [w.start for w in result.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= duration for w in result.words), (result.words, duration)


# -- the reference alignment itself ---------------------------------------------------------------------------
def test_ctc_forced_alignment_is_the_best_path_by_brute_force():
    """Every frame labelling that collapses to the tokens, scored; the best one's token start frames."""
    generator = torch.Generator().manual_seed(0)
    for tokens, num_frames in [([1, 2], 5), ([1, 1], 5), ([2, 1, 2], 6), ([1], 4)]:
        for _ in range(5):
            log_probs = torch.randn(num_frames, 3, generator=generator).mul(2).log_softmax(-1)
            best, best_starts = -math.inf, None
            for labels in itertools.product(range(3), repeat=num_frames):
                collapsed = [label for k, label in enumerate(labels) if label and (k == 0 or labels[k - 1] != label)]
                if collapsed != tokens:
                    continue
                score = float(sum(log_probs[t, label] for t, label in enumerate(labels)))
                if score > best:
                    starts = [t for t, label in enumerate(labels) if label and (t == 0 or labels[t - 1] != label)]
                    best, best_starts = score, starts
            assert ctc_forced_alignment(log_probs, tokens) == best_starts


# -- endpointing ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_endpoints_split_a_stream_into_its_utterances(trained):
    model, utterances = trained
    rec = OnlineRecognizer(model, OPTIONS, EndpointConfig())
    alone = [stream(rec, u.samples) for u in utterances]
    assert [[r.text for r in results] for results in alone] == [[u.text] for u in utterances]
    gap = np.zeros(round(GAP_SECONDS * SAMPLE_RATE), dtype=np.float32)
    joined = np.concatenate([utterances[0].samples, gap, utterances[1].samples, gap, utterances[2].samples])
    segments = stream(rec, joined)
    assert [r.text for r in segments] == [results[0].text for results in alone]
    # Each segment starts after the previous utterance's speech and before its own; its words lie in it.
    offset, previous_speech_end = 0.0, 0.0
    for segment, utterance in zip(segments, utterances):
        assert previous_speech_end <= segment.start_time <= offset + utterance.word_starts[0]
        assert offset <= segment.words[0].start and segment.words[-1].end <= offset + utterance.duration
        previous_speech_end = offset + utterance.word_ends[-1]
        offset += utterance.duration + GAP_SECONDS
    assert [r.segment for r in segments] == sorted({r.segment for r in segments})


# -- timestamps ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_word_times_match_where_the_words_were_spoken(trained):
    model, utterances = trained
    frame_seconds = Recognizer(model, OPTIONS).frame_seconds
    results = {
        "streamed": [stream(OnlineRecognizer(model, OPTIONS, endpoint=None), u.samples)[0] for u in utterances],
        "offline chunked": Recognizer(model, OPTIONS).transcribe_batch([u.samples for u in utterances], SAMPLE_RATE),
        "offline full context": Recognizer(model).transcribe_batch([u.samples for u in utterances], SAMPLE_RATE),
    }
    # The CTC head's forced alignment of each transcript: a second reference, from the model itself.
    x, x_lens = batch_features([u.samples for u in utterances])
    with torch.no_grad():
        enc_out, enc_lens = model.encode(x, x_lens)
        log_probs = model.ctc_log_probs(enc_out)
    ctc_starts = []
    for k, u in enumerate(utterances):
        tokens = model.tokenizer.encode(u.text)
        frames = ctc_forced_alignment(log_probs[k, : enc_lens[k]], tokens)
        word_first_tokens = [i for i, t in enumerate(tokens) if model.tokenizer.id_to_token(t).startswith("\u2581")]
        ctc_starts.append([frames[i] * frame_seconds for i in word_first_tokens])
    for name, found in results.items():
        differences, ctc_differences = [], []
        for result, u, ctc in zip(found, utterances, ctc_starts):
            assert result.text == u.text
            check_times(result, u.duration)
            assert [w.word for w in result.words] == u.text.split()
            differences += [w.start - ref for w, ref in zip(result.words, u.word_starts)]
            ctc_differences += [w.start - ref for w, ref in zip(result.words, ctc)]
        error = np.abs(differences)
        ctc_error = np.abs(ctc_differences)
        print(
            f"{name}: word start - spoken start: mean {np.mean(differences):+.3f} s, mean abs {error.mean():.3f} s, "
            f"max abs {error.max():.3f} s; vs CTC alignment: mean abs {ctc_error.mean():.3f} s, "
            f"max abs {ctc_error.max():.3f} s"
        )
        assert error.max() <= TOLERANCE_SECONDS, differences
