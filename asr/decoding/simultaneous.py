"""Simultaneous recognition with the attention decoder (EDAtt, AlignAtt) and word emission times.

An offline AED model becomes a simultaneous recogniser by a policy over its cross-attention (FBK's agents):
every ``step_ms`` of new audio, the audio received so far is re-encoded (full context), the decoder
continues from the committed prefix, and the policy decides how many of the new tokens may be committed:

- **EDAtt** (Papi et al. 2023, "Attention as a guide for simultaneous speech translation"): the
  cross-attention of one decoder layer, averaged over heads, without the last encoder frame, each token's
  row L2-normalised; a token is blocked when its mass on the last ``λ`` frames is ``>= α``.
- **AlignAtt** (Papi et al. 2023): a token is blocked when its most attended frame is one of the last
  ``f`` frames.

The tokens before the first blocked one are candidates, and only whole words among them are committed: a
word is complete when the hypothesis goes on with a token starting with ``▁`` (SentencePiece's word
start), so the last word of a hypothesis is never committed before the end of the input (with a
character tokenizer every token is a word). At the end of the input the search finishes from the
committed prefix. Committed tokens are never revised, and a committed word is never extended: the
search continues a committed prefix with a word-start token (or ends it).

Each word's emission time is the audio received when its last token was committed (ms, SimulEval's
``delays``), and its computation time the wall-clock time spent decoding up to then (added to the delay
it gives SimulEval's ``elapsed``), so :mod:`asr.metrics.latency` scores them. :func:`stream_emission_times`
does the same bookkeeping for a chunked transducer streamed through an ``OnlineRecognizer``, so the two
families compare on one scale.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from asr.data.features import FRAME_SHIFT
from asr.data.tokenizer import CharTokenizer, Tokenizer
from asr.metrics.latency import UtteranceTiming
from asr.models import AsrModel
from asr.models.aed import AttentionDecoder

if TYPE_CHECKING:
    from asr.streaming.online import OnlineRecognizer

__all__ = [
    "AlignAttPolicy",
    "AttentionPolicy",
    "EDAttPolicy",
    "SimultaneousResult",
    "beam_search_continuation",
    "greedy_continuation",
    "simultaneous_decode",
    "stream_emission_times",
    "whole_word_cut",
]

WORD_START = "\u2581"  # SentencePiece's word-start marker
FRAME_SHIFT_MS = FRAME_SHIFT * 1000  # one feature frame (10 ms)
DEFAULT_LAYER = 3  # FBK's agents read decoder layer index 3


class AttentionPolicy(abc.ABC):
    """A policy over one decoder layer's cross-attention: which hypothesis tokens must wait for more audio.

    Args:
        layer: index of the decoder layer whose cross-attention is read (negative counts from the last).
    """

    def __init__(self, layer: int = DEFAULT_LAYER) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"layer must be an int, got {layer!r}")
        self.layer = layer

    def check(self, num_layers: int) -> None:
        """Raise a one-line error when the decoder has no layer ``self.layer``."""
        if not -num_layers <= self.layer < num_layers:
            raise ValueError(
                f"{type(self).__name__}: decoder layer {self.layer} does not exist in a {num_layers}-layer "
                "attention decoder (set the policy's layer)"
            )

    def head_average(self, cross_weights: Sequence[Tensor]) -> Tensor:
        """Per-layer weights ``(H, U, T)`` -> this policy's layer averaged over heads ``(U, T)``."""
        self.check(len(cross_weights))
        weights = cross_weights[self.layer]
        if weights.ndim != 3:
            raise ValueError(f"expected cross-attention weights (H, U, T), got {tuple(weights.shape)}")
        return weights.mean(dim=0)

    @abc.abstractmethod
    def blocked(self, attention: Tensor) -> Tensor:
        """``(U,)`` bool: whether each token, with head-averaged attention rows ``(U, T)``, must wait."""

    def allowed(self, cross_weights: Sequence[Tensor]) -> int:
        """How many leading tokens may be emitted: the tokens before the first blocked one.

        ``cross_weights``: per decoder layer, ``(H, U, T)`` weights of the ``U`` candidate tokens (row ``u``
        the attention with which token ``u`` was predicted) over the ``T`` encoder frames received.
        """
        blocked = self.blocked(self.head_average(cross_weights))
        hits = torch.nonzero(blocked).flatten()
        return int(hits[0]) if hits.numel() else int(blocked.numel())


class EDAttPolicy(AttentionPolicy):
    """EDAtt: a token is blocked when ``Σ_{last λ frames} a / ||a||_2 >= α``, ``a`` its head-averaged
    attention row without the last encoder frame.

    The mass of ``λ`` entries of a unit vector is at most ``sqrt(λ)``, so ``α > sqrt(λ)`` never blocks and
    ``α = 0`` always does; the papers sweep ``α`` between about 0.6 and 0.03 with ``λ = 2``. With a single
    encoder frame (nothing left after dropping the last) every token is blocked.

    Args:
        alpha: the threshold α (>= 0; ``math.inf`` never blocks).
        lambda_frames: λ, the trailing encoder frames whose attention counts (>= 1).
        layer: the decoder layer read.
    """

    def __init__(self, alpha: float, lambda_frames: int = 2, layer: int = DEFAULT_LAYER) -> None:
        super().__init__(layer)
        if math.isnan(alpha) or alpha < 0:
            raise ValueError(f"EDAtt alpha must be >= 0, got {alpha}")
        if isinstance(lambda_frames, bool) or not isinstance(lambda_frames, int) or lambda_frames < 1:
            raise ValueError(f"EDAtt lambda_frames must be an int >= 1, got {lambda_frames!r}")
        self.alpha = float(alpha)
        self.lambda_frames = lambda_frames

    def tail_mass(self, attention: Tensor) -> Tensor:
        """``(U,)`` the L2-normalised attention mass of each row of ``(U, T)`` on the last λ of its first
        ``T - 1`` frames."""
        kept = attention[:, :-1].double()
        if kept.size(1) == 0:
            return torch.full((attention.size(0),), math.inf, dtype=torch.float64)
        unit = kept / kept.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return unit[:, -self.lambda_frames :].sum(dim=1)

    def blocked(self, attention: Tensor) -> Tensor:
        return self.tail_mass(attention) >= self.alpha


class AlignAttPolicy(AttentionPolicy):
    """AlignAtt: a token is blocked when its most attended frame (head-averaged, first of ties) is one of
    the last ``f`` encoder frames received.

    Args:
        align_frames: f (>= 1; the papers sweep 2 … 14).
        layer: the decoder layer read.
    """

    def __init__(self, align_frames: int, layer: int = DEFAULT_LAYER) -> None:
        super().__init__(layer)
        if isinstance(align_frames, bool) or not isinstance(align_frames, int) or align_frames < 1:
            raise ValueError(f"AlignAtt align_frames must be an int >= 1, got {align_frames!r}")
        self.align_frames = align_frames

    def blocked(self, attention: Tensor) -> Tensor:
        return attention.argmax(dim=1) >= attention.size(1) - self.align_frames


@dataclass
class SimultaneousResult:
    """The output of a simultaneous (or streaming) decode and when each part of it came out.

    Attributes:
        tokens: the token ids; text: their text.
        words: the words of ``text``; word_emission_ms: per word, the audio received (ms) when its last
            token was committed; computation_ms: per word, the wall-clock decoding time (ms) spent from the
            start of the utterance until then.
        token_emission_ms: per token, the audio received when it was committed.
        source_length_ms: the duration of the input.
    """

    tokens: list[int]
    text: str
    words: list[str]
    word_emission_ms: list[float]
    computation_ms: list[float]
    token_emission_ms: list[float]
    source_length_ms: float

    @property
    def elapsed_ms(self) -> list[float]:
        """Per word, emission time plus computation time: SimulEval's computation-aware ``elapsed``."""
        return [d + c for d, c in zip(self.word_emission_ms, self.computation_ms)]

    def timing(self, reference_length: int | None = None, computation_aware: bool = True) -> UtteranceTiming:
        """This utterance's input to :func:`asr.metrics.latency.corpus_latency_scores`."""
        return UtteranceTiming(
            list(self.word_emission_ms),
            self.source_length_ms,
            reference_length,
            self.elapsed_ms if computation_aware else None,
        )


def _starts_word(tokenizer: Tokenizer, token: int) -> bool:
    return isinstance(tokenizer, CharTokenizer) or tokenizer.id_to_token(token).startswith(WORD_START)


def whole_word_cut(tokenizer: Tokenizer, hypothesis: Sequence[int], committed: int, allowed: int) -> int:
    """How many tokens of ``hypothesis`` to commit: the end of the last whole word within the first
    ``committed + allowed`` tokens, or ``committed`` if no new word is complete there.

    A word ends at position ``k`` when token ``k`` exists and starts a word (``▁``), so the hypothesis's
    last word is held back; with a :class:`CharTokenizer` every token is a complete word.
    """
    limit = min(committed + allowed, len(hypothesis))
    if isinstance(tokenizer, CharTokenizer):
        return max(committed, limit)
    for k in range(limit, committed, -1):
        if k < len(hypothesis) and _starts_word(tokenizer, hypothesis[k]):
            return k
    return committed


def _word_spans(tokenizer: Tokenizer, tokens: Sequence[int]) -> list[tuple[str, int]]:
    """Each non-empty word of ``tokens`` with the index of its last token (a word starts at ``▁``)."""
    groups: list[list[int]] = []
    for k, token in enumerate(tokens):
        if not groups or _starts_word(tokenizer, token):
            groups.append([k])
        else:
            groups[-1].append(k)
    spans = []
    for group in groups:
        text = tokenizer.decode([tokens[k] for k in group]).strip()
        if text:  # a bare "▁" piece is no word
            spans.append((text, group[-1]))
    return spans


def _result(
    tokenizer: Tokenizer,
    tokens: list[int],
    token_ms: list[float],
    token_compute_ms: list[float],
    source_ms: float,
) -> SimultaneousResult:
    spans = _word_spans(tokenizer, tokens)
    return SimultaneousResult(
        tokens=list(tokens),
        text=tokenizer.decode(tokens),
        words=[word for word, _ in spans],
        word_emission_ms=[token_ms[last] for _, last in spans],
        computation_ms=[token_compute_ms[last] for _, last in spans],
        token_emission_ms=list(token_ms),
        source_length_ms=source_ms,
    )


def _next_log_probs(decoder: AttentionDecoder, memory: Tensor, memory_len: int, prefixes: list[list[int]]) -> Tensor:
    """``(M, V)`` float64 log-probabilities after ``M`` equal-length token prefixes (``<sos/eos>`` prepended)."""
    eos = decoder.sos_eos_id
    inputs = torch.tensor([[eos, *p] for p in prefixes], dtype=torch.int64, device=memory.device)
    M = inputs.size(0)
    lens = torch.full((M,), memory_len, dtype=torch.int64, device=memory.device)
    log_probs, _ = decoder.next_log_probs(inputs, memory.unsqueeze(0).expand(M, -1, -1), lens)
    return log_probs.double().cpu()


def _restrict(log_probs: Tensor, allowed: Tensor, eos: int) -> Tensor:
    """``(M, V)`` scores with the tokens outside ``allowed`` ``(V,)`` (``<sos/eos>`` kept) set to -inf."""
    keep = allowed.clone()
    keep[eos] = True
    return log_probs.masked_fill(~keep.unsqueeze(0), -math.inf)


@torch.no_grad()
def greedy_continuation(
    decoder: AttentionDecoder,
    memory: Tensor,
    memory_len: int,
    prefix: Sequence[int],
    max_len: int,
    blank_id: int = 0,
    first_allowed: Tensor | None = None,
) -> list[int]:
    """Greedy attention decoding from ``prefix``: the most likely next token (blank excluded) until
    ``<sos/eos>`` or ``max_len`` tokens in all; returns the prefix and the tokens added.

    Args:
        memory: ``(T, C)`` encoder output of one utterance; memory_len: its valid frames.
        first_allowed: ``(V,)`` bool, the tokens that may follow the prefix (``<sos/eos>`` always may).
    """
    tokens = list(prefix)
    while len(tokens) < max_len:
        log_probs = _next_log_probs(decoder, memory, memory_len, [tokens])[0]
        if first_allowed is not None and len(tokens) == len(prefix):
            log_probs = _restrict(log_probs.unsqueeze(0), first_allowed, decoder.sos_eos_id)[0]
        log_probs[blank_id] = -math.inf
        best = int(log_probs.argmax())
        if best == decoder.sos_eos_id:
            break
        tokens.append(best)
    return tokens


@torch.no_grad()
def beam_search_continuation(
    decoder: AttentionDecoder,
    memory: Tensor,
    memory_len: int,
    prefix: Sequence[int],
    beam: int,
    max_len: int,
    blank_id: int = 0,
    first_allowed: Tensor | None = None,
) -> list[int]:
    """Attention beam search whose hypotheses all start with ``prefix`` (the plain search of
    :func:`asr.decoding.attention.attention_beam_search` from there): each step keeps the ``beam`` best
    extensions, ``<sos/eos>`` finishes a hypothesis, and the search stops once a finished hypothesis
    scores at least the best unfinished one, or at ``max_len`` tokens in all. Returns the best finished
    hypothesis's tokens, the prefix included (the prefix alone if none could finish).

    Args:
        memory: ``(T, C)`` encoder output of one utterance; memory_len: its valid frames.
        first_allowed: ``(V,)`` bool, the tokens that may follow the prefix (``<sos/eos>`` always may).
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    eos = decoder.sos_eos_id
    V = decoder.vocab_size
    alive = [list(prefix)]
    scores = torch.zeros(1, dtype=torch.float64)
    finished: list[tuple[float, list[int]]] = []
    for length in range(len(prefix), max_len + 1):
        total = scores.unsqueeze(1) + _next_log_probs(decoder, memory, memory_len, alive)
        if first_allowed is not None and length == len(prefix):
            total = _restrict(total, first_allowed, eos)
        total[:, blank_id] = -math.inf
        finished += [(float(total[m, eos]), alive[m]) for m in range(len(alive)) if total[m, eos] > -math.inf]
        if length == max_len:
            break
        total[:, eos] = -math.inf
        best, flat = total.flatten().topk(min(beam, total.numel()))
        keep = best > -math.inf
        best, flat = best[keep], flat[keep]
        # Every added term is a log-probability (<= 0): nothing alive can overtake a better finished one.
        if best.numel() == 0 or (finished and max(f[0] for f in finished) >= float(best[0])):
            break
        alive = [alive[int(i) // V] + [int(i) % V] for i in flat]
        scores = best
    if not finished:
        return list(prefix)
    return max(finished, key=lambda f: f[0])[1]


def _cross_weights(decoder: AttentionDecoder, memory: Tensor, memory_len: int, hypothesis: list[int]) -> list[Tensor]:
    """Per layer ``(H, U, T)``: row ``u`` the cross-attention with which ``hypothesis[u]`` was predicted."""
    eos = decoder.sos_eos_id
    inputs = torch.tensor([[eos, *hypothesis]], dtype=torch.int64, device=memory.device)
    out = decoder(
        inputs,
        torch.tensor([inputs.size(1)], device=memory.device),
        memory.unsqueeze(0),
        torch.tensor([memory_len], device=memory.device),
        need_weights=True,
    )
    return [w[0, :, : len(hypothesis), :memory_len] for w in out.cross_weights]


@torch.no_grad()
def simultaneous_decode(
    model: AsrModel,
    features: Tensor,
    policy: AttentionPolicy,
    step_ms: float,
    beam: int = 1,
    final_beam: int | None = None,
    max_len: int | None = None,
    tokenizer: Tokenizer | None = None,
) -> SimultaneousResult:
    """Decode one utterance as if its audio arrived ``step_ms`` at a time, committing words by ``policy``.

    At each step (``step_ms``, ``2·step_ms``, … of audio) the features received so far, ``floor(t / 10 ms)``
    frames, are encoded (a step too short for the encoder commits nothing), the decoder continues from the
    committed tokens (greedy with ``beam`` 1, else beam search; its first token must start a word) and
    the whole words among the tokens the policy allows are committed. When the input ends (``T·10 ms``)
    the search finishes from the committed prefix with beam ``final_beam`` (greedy with 1).

    Args:
        model: an :class:`AsrModel` with an ``aed`` head; it is put in eval mode.
        features: ``(T, F)`` log-mel features (10 ms hop) of the whole utterance.
        policy: :class:`EDAttPolicy` or :class:`AlignAttPolicy`.
        step_ms: audio per step (ms, > 0).
        beam: beam of the search at each step (1: greedy).
        final_beam: beam of the final search (default: ``beam``).
        max_len: most tokens of a hypothesis (default: the valid encoder frames of the audio received).
        tokenizer: to find word starts and the text (default: ``model.tokenizer``).
    Returns:
        the tokens, text, words, and per word its emission time and computation time (ms).
    """
    if not getattr(model, "has_aed", False):
        raise ValueError(f"simultaneous decoding needs an attention-decoder (aed) head; this model has {model.heads}")
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("the model has no tokenizer: load it with asr.load_model(path, lang_dir=...) or pass one")
    if features.ndim != 2 or features.size(0) == 0:
        raise ValueError(f"expected features (T, F) with T > 0, got {tuple(features.shape)}")
    if not step_ms > 0 or not math.isfinite(step_ms):
        raise ValueError(f"step_ms must be a positive number of ms, got {step_ms}")
    final_beam = beam if final_beam is None else final_beam
    for name, value in (("beam", beam), ("final_beam", final_beam)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if max_len is not None and max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    model.eval()
    decoder = model.attention_decoder
    policy.check(decoder.num_layers)
    device = next(model.parameters()).device
    features = features.to(device)
    num_frames = features.size(0)
    source_ms = num_frames * FRAME_SHIFT_MS

    # A committed word is final: the token after it must start a new word.
    word_starts = None
    if not isinstance(tokenizer, CharTokenizer):
        word_starts = torch.tensor([_starts_word(tokenizer, i) for i in range(decoder.vocab_size)])

    def search(memory: Tensor, memory_len: int, prefix: list[int], width: int) -> list[int]:
        limit = memory_len if max_len is None else max_len
        first = word_starts if prefix else None
        if width == 1:
            return greedy_continuation(decoder, memory, memory_len, prefix, limit, model.blank_id, first)
        return beam_search_continuation(decoder, memory, memory_len, prefix, width, limit, model.blank_id, first)

    committed: list[int] = []
    token_ms: list[float] = []
    token_compute_ms: list[float] = []
    compute_s = 0.0
    step = 1
    while True:
        received_ms = min(step * step_ms, source_ms)
        final = received_ms >= source_ms
        started = time.perf_counter()
        frames = num_frames if final else min(num_frames, int(received_ms // FRAME_SHIFT_MS))
        new: list[int] = []
        if frames > 0 and int(model.encoder_output_lengths(torch.tensor([frames]))[0]) > 0:
            lens = torch.tensor([frames], dtype=torch.int64, device=device)
            memory, memory_lens = model.encode(features[:frames].unsqueeze(0), lens)
            memory, memory_len = memory[0], int(memory_lens[0])
            if final:
                new = search(memory, memory_len, committed, final_beam)[len(committed) :]
            else:
                hypothesis = search(memory, memory_len, committed, beam)
                candidates = hypothesis[len(committed) :]
                allowed = 0
                if candidates:
                    weights = _cross_weights(decoder, memory, memory_len, hypothesis)
                    allowed = policy.allowed([w[:, len(committed) :] for w in weights])
                cut = whole_word_cut(tokenizer, hypothesis, len(committed), allowed)
                new = hypothesis[len(committed) : cut]
        compute_s += time.perf_counter() - started
        committed += new
        token_ms += [float(received_ms)] * len(new)
        token_compute_ms += [compute_s * 1000] * len(new)
        if final:
            return _result(tokenizer, committed, token_ms, token_compute_ms, source_ms)
        step += 1


def stream_emission_times(
    recognizer: OnlineRecognizer,
    samples: np.ndarray,
    sample_rate: int = 16000,
    piece_ms: float | None = None,
) -> SimultaneousResult:
    """Stream one utterance through ``recognizer`` (a chunked transducer) and time each word.

    The audio is fed in pieces of ``piece_ms`` (default: one chunk, ``recognizer.chunk_seconds``), every
    ready chunk decoded after each piece. A token's emission time is the audio received when it entered
    the best hypothesis for good (the end of the piece after which the chunk that emitted it, look-ahead
    included, was decoded; tokens a beam search later revises are re-timed); tokens of the last chunks,
    decoded once the input is finished, get the audio length. A word's time is its last token's.

    Args:
        recognizer: an :class:`asr.streaming.OnlineRecognizer` (its endpoint rules are not applied).
        samples: ``(num_samples,)`` float audio in [-1, 1]; sample_rate: its rate (Hz).
        piece_ms: audio per feeding piece (ms, > 0).
    """
    samples = np.asarray(samples, dtype=np.float32).reshape(-1)
    if samples.size == 0:
        raise ValueError("no samples: the utterance is empty")
    if piece_ms is None:
        piece_ms = recognizer.chunk_seconds * 1000
    if not piece_ms > 0 or not math.isfinite(piece_ms):
        raise ValueError(f"piece_ms must be a positive number of ms, got {piece_ms}")
    piece = max(1, round(piece_ms * sample_rate / 1000))
    source_ms = samples.size * 1000 / sample_rate
    stream = recognizer.create_stream()
    tokens: list[int] = []
    token_ms: list[float] = []
    token_compute_ms: list[float] = []
    compute_s = 0.0

    def update(received_ms: float) -> None:
        best = recognizer.get_result(stream).token_ids
        same = 0
        while same < min(len(best), len(tokens)) and best[same] == tokens[same]:
            same += 1
        tokens[same:] = best[same:]
        token_ms[same:] = [received_ms] * (len(best) - same)
        token_compute_ms[same:] = [compute_s * 1000] * (len(best) - same)

    for start in range(0, samples.size, piece):
        started = time.perf_counter()
        stream.accept_waveform(sample_rate, samples[start : start + piece])
        while recognizer.is_ready(stream):
            recognizer.decode_streams([stream])
        compute_s += time.perf_counter() - started
        update(min(start + piece, samples.size) * 1000 / sample_rate)
    started = time.perf_counter()
    stream.input_finished()
    recognizer.decode_to_end([stream])
    compute_s += time.perf_counter() - started
    update(source_ms)
    return _result(recognizer.tokenizer, tokens, token_ms, token_compute_ms, source_ms)
