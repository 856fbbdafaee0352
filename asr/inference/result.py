"""What recognition returns: text, tokens, and token and word times in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field

from asr.data.tokenizer import CharTokenizer, Tokenizer
from asr.decoding import Hypothesis

WORD_START = "\u2581"  # SentencePiece's word-start marker


@dataclass
class WordTiming:
    """One word of a result: its text and its span in seconds from the start of the audio (None for a search
    that gives no times, such as attention-decoder search)."""

    word: str
    start: float | None
    end: float | None


@dataclass
class Result:
    """One recognised utterance (or, when streaming, the text so far).

    Attributes:
        text: the transcript.
        tokens: the token pieces (``▁`` marks a word start in BPE pieces).
        token_ids: their ids.
        timestamps: each token's emission time in seconds (the start of the encoder frame it was emitted at);
            empty for a search that gives no times.
        words: per word, its start (the time of its first token that is not a bare ``▁``) and end (the next
            word's first token, or the last token's frame end for the last word).
        segment: with streaming endpointing, the index of this segment in the stream.
        start_time: seconds from the start of the stream to the start of this segment's audio.
        word_emission_ms: simultaneous methods: per word, the audio (ms) received when it was committed.
        word_elapsed_ms: the same plus the decoding time spent until then (computation-aware latency).
    """

    text: str = ""
    tokens: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)
    segment: int = 0
    start_time: float = 0.0
    word_emission_ms: list[float] = field(default_factory=list)
    word_elapsed_ms: list[float] = field(default_factory=list)


def make_result(
    hyp: Hypothesis,
    tokenizer: Tokenizer,
    frame_seconds: float,
    time_offset: float = 0.0,
    segment: int = 0,
) -> Result:
    """A :class:`Result` of a search's hypothesis.

    Args:
        hyp: tokens and their encoder-frame timestamps.
        tokenizer: the model's tokenizer.
        frame_seconds: the duration of one encoder output frame.
        time_offset: seconds added to every time (the segment's start within a stream).
        segment: the segment index.
    """
    pieces = [tokenizer.id_to_token(t) for t in hyp.tokens]
    timed = len(hyp.timestamps) == len(hyp.tokens)
    times = [round(time_offset + t * frame_seconds, 3) for t in hyp.timestamps] if timed else []
    chars = isinstance(tokenizer, CharTokenizer)
    # Token positions of each word: a character table makes every token a word; BPE starts one at "▁".
    groups: list[list[int]] = []
    for k, piece in enumerate(pieces):
        if chars or piece.startswith(WORD_START) or not groups:
            groups.append([k])
        else:
            groups[-1].append(k)
    words: list[WordTiming] = []
    for g, group in enumerate(groups):
        text = tokenizer.decode([hyp.tokens[k] for k in group]).strip()
        if not text:  # a bare "▁" piece
            continue
        if not timed:
            words.append(WordTiming(text, None, None))
            continue
        # A bare "▁" piece carries no sound and may come anywhere in the silence before its word.
        voiced = [k for k in group if pieces[k] != WORD_START] or group
        end = times[groups[g + 1][0]] if g + 1 < len(groups) else round(times[group[-1]] + frame_seconds, 3)
        words.append(WordTiming(text, times[voiced[0]], end))
    return Result(tokenizer.decode(hyp.tokens), pieces, list(hyp.tokens), times, words, segment, time_offset)
