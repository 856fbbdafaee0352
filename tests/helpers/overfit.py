"""A causal transducer + CTC model that really recognises a few utterances, made by overfitting them.

The utterances are built word by word: each word is spoken alone by espeak-ng, cut to its audible part,
and the words are joined with fixed gaps, so every word's start time is known exactly (the reference for
timestamp tests). Training uses the library's raw losses (:meth:`asr.models.AsrModel.forward`) weighted by
:func:`asr.training.losses.combine_losses`; a causal encoder in train mode draws its own chunk size and left
context per batch, so the model learns to decode chunk by chunk as it streams.
"""

from __future__ import annotations

import math
import random
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.data.audio import load_audio
from asr.data.features import compute_fbank
from asr.inference import DecodingOptions, Recognizer
from asr.models import AsrModel
from asr.training.losses import combine_losses

SAMPLE_RATE = 16000
# Padding of batched features: log(1e-10), the level of digital silence in fbank.
PAD_LOG_ENERGY = math.log(1e-10)


@dataclass
class WordUtterance:
    """Words spoken one by one and joined: ``samples`` ``(num_samples,)`` at 16 kHz and each word's span.

    Attributes:
        text: the words, space-separated.
        samples: the audio, float32 in [-1, 1].
        word_starts, word_ends: seconds from the start of ``samples`` to each word's first and past its
            last audible sample.
    """

    text: str
    samples: np.ndarray
    word_starts: list[float]
    word_ends: list[float]

    @property
    def duration(self) -> float:
        return self.samples.size / SAMPLE_RATE


def speak_word(word: str, out_dir: Path, voice: str = "en-us", words_per_minute: int = 160) -> np.ndarray:
    """``word`` spoken alone by espeak-ng at 16 kHz, cut to the samples within 40 dB of its peak
    ``(num_samples,)``: espeak pads its output with silence of its own."""
    wav = out_dir / f"{word}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(wav), word], check=True)
    samples = load_audio(wav, SAMPLE_RATE)
    audible = np.flatnonzero(np.abs(samples) > 0.01 * np.abs(samples).max())
    return samples[audible[0] : audible[-1] + 1]


def join_words(
    text: str,
    clips: dict[str, np.ndarray],
    gap_seconds: float | Sequence[float] = 0.15,
    lead_seconds: float = 0.3,
    tail_seconds: float = 0.3,
) -> WordUtterance:
    """The words of ``text`` (each a key of ``clips``) with ``gap_seconds`` of silence between them (one
    value, or one per gap), ``lead_seconds`` before the first and ``tail_seconds`` after the last."""
    words = text.split()
    gaps = [gap_seconds] * (len(words) - 1) if isinstance(gap_seconds, (int, float)) else list(gap_seconds)
    if len(gaps) != len(words) - 1:
        raise ValueError(f"{len(words)} words need {len(words) - 1} gaps, got {len(gaps)}")
    silences = [lead_seconds, *gaps]
    pieces, starts, ends = [], [], []
    position = 0
    for word, silence in zip(words, silences):
        pieces.append(np.zeros(round(silence * SAMPLE_RATE), dtype=np.float32))
        position += pieces[-1].size
        starts.append(position / SAMPLE_RATE)
        pieces.append(clips[word])
        position += clips[word].size
        ends.append(position / SAMPLE_RATE)
    pieces.append(np.zeros(round(tail_seconds * SAMPLE_RATE), dtype=np.float32))
    return WordUtterance(text, np.concatenate(pieces), starts, ends)


def random_join(text: str, clips: dict[str, np.ndarray], rng: np.random.Generator) -> WordUtterance:
    """``text`` joined as :func:`join_words` does with random silences: 0.05-1 s before, 0.05-0.4 s
    between words, 0.1-1 s after (longer than a 320 ms chunk, so that silence alone is seen to be blank)."""
    gaps = rng.uniform(0.05, 0.4, len(text.split()) - 1).tolist()
    return join_words(text, clips, gaps, float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.1, 1.0)))


def batch_features(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fbank of 16 kHz clips, padded with silence: ``(N, T, 80)`` and lengths ``(N,)``."""
    feats = [compute_fbank(clip, SAMPLE_RATE) for clip in clips]
    x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=PAD_LOG_ENERGY)
    return x, torch.tensor([f.size(0) for f in feats])


def ctc_forced_alignment(log_probs: torch.Tensor, tokens: list[int], blank: int = 0) -> list[int]:
    """The frame at which each of ``tokens`` starts in the best CTC path (Viterbi) through ``log_probs``
    ``(T, V)``: ``len(tokens)`` increasing frame indices."""
    states = [blank]
    for token in tokens:
        states += [token, blank]  # blank, t1, blank, t2, ..., blank
    num_frames, num_states = log_probs.size(0), len(states)
    emit = log_probs[:, states].double()  # (T, S)
    score = torch.full((num_states,), -math.inf, dtype=torch.float64)
    score[:2] = emit[0, :2]
    # A path may skip the blank between two tokens only when they differ.
    no_skip = torch.tensor([s < 2 or states[s] in (blank, states[s - 2]) for s in range(num_states)])
    came_from = torch.zeros(num_frames, num_states, dtype=torch.int64)
    for t in range(1, num_frames):
        step = torch.cat([score.new_full((1,), -math.inf), score[:-1]])
        skip = torch.cat([score.new_full((2,), -math.inf), score[:-2]]).masked_fill(no_skip, -math.inf)
        candidates = torch.stack([score, step, skip])  # predecessor s, s-1, s-2
        best, came_from[t] = candidates.max(dim=0)
        score = best + emit[t]
    state = num_states - 1 if score[-1] >= score[-2] else num_states - 2
    path = [state]
    for t in range(num_frames - 1, 0, -1):
        state -= int(came_from[t, state])
        path.append(state)
    path.reverse()
    # Token k is state 2k + 1; its start is the first frame the path enters that state.
    return [path.index(2 * k + 1) for k in range(len(tokens))]


def overfit(
    model: AsrModel,
    clips: dict[str, np.ndarray],
    targets: Sequence[WordUtterance],
    options: DecodingOptions,
    batch_size: int = 4,
    words_per_utterance: int = 3,
    max_steps: int = 800,
    check_every: int = 10,
    patience: int = 3,
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[int, float]:
    """Train ``model`` (with a ``tokenizer``) with Adam on the words of ``clips`` until the greedy decode
    with ``options`` has given every transcript of ``targets`` exactly at ``patience`` checks in a row
    (one every ``check_every`` steps; the first success is often luck); returns (steps, seconds). The model
    is left in eval mode.

    Each step is a batch of ``batch_size`` utterances of ``words_per_utterance`` random words joined with
    random silences (:func:`random_join`), so the model must find each word by its sound (trained on the
    targets alone it tells them apart by their first sounds and emits all their tokens there, long before
    the later words are spoken), and one utterance of silence alone with an empty transcript (without it
    the model learns to emit a first word on any silence the search starts on, as after an endpoint).
    The loss is the transducer losses past their warm-up plus CTC: warm-up would slow a run this short.

    Raises:
        AssertionError: the transcripts are still wrong after ``max_steps`` (the message shows them).
    """
    torch.manual_seed(seed)
    random.seed(seed)  # the encoder draws its training chunk sizes with `random`
    rng = np.random.default_rng(seed)
    words = sorted(clips)
    expected = [u.text for u in targets]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    started = time.perf_counter()
    decoded: list[str] = []
    successes = 0
    for step in range(1, max_steps + 1):
        model.train()
        texts = [" ".join(rng.choice(words, words_per_utterance)) for _ in range(batch_size)]
        audio = [random_join(text, clips, rng).samples for text in texts]
        texts.append("")
        audio.append(np.zeros(round(rng.uniform(0.5, 2.0) * SAMPLE_RATE), dtype=np.float32))
        x, x_lens = batch_features(audio)
        tokens = [model.tokenizer.encode(text) for text in texts]
        loss = combine_losses(*model(x, x_lens, tokens)) / len(texts)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)  # the first steps of a fresh model jump
        optimizer.step()
        if step % check_every == 0:
            model.eval()
            recognizer = Recognizer(model, options)
            decoded = [r.text for r in recognizer.transcribe_batch([u.samples for u in targets], SAMPLE_RATE)]
            successes = successes + 1 if decoded == expected else 0
            if successes == patience:
                return step, time.perf_counter() - started
    model.eval()
    raise AssertionError(f"not overfit after {max_steps} steps: decoded {decoded}, expected {expected}")
