"""Streaming recognition: streams that take audio as it arrives and give partial results as they decode.

The shape is sherpa-onnx's, so users can switch between the two::

    rec = asr.OnlineRecognizer.from_checkpoint("exp/causal", chunk_size=16)
    stream = rec.create_stream()
    for piece in pieces:                     # any size, any sample rate
        stream.accept_waveform(16000, piece)
        while rec.is_ready(stream):
            rec.decode_streams([stream])     # many streams: one batched encoder call
        print(rec.get_result(stream).text)
        if rec.is_endpoint(stream):
            rec.reset(stream)                # the next segment starts
    stream.input_finished()

Each stream computes fbank as samples arrive (:class:`asr.streaming.fbank.OnlineFbank`), keeps its own
encoder caches, position and search state; ``decode_streams`` runs one ``streaming_forward`` over every
ready stream and continues each stream's search (greedy, or modified beam search with its scorers) where
its last chunk ended. A stream's input finished, its last window is followed by silence-level padding, as
``asr decode --chunk-size`` does, so a whole utterance gives exactly the tokens of the chunked decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from asr.data.features import FEATURE_DIM, SAMPLE_RATE
from asr.decoding import Hypothesis
from asr.decoding.beam_search import Beam, ModifiedBeamSearch
from asr.decoding.greedy import greedy_advance
from asr.decoding.scorers import Scorer
from asr.inference.options import DecodingOptions, build_scorers
from asr.inference.recognizer import encoder_frame_seconds
from asr.inference.result import Result, make_result
from asr.models import AsrModel
from asr.streaming.fbank import OnlineFbank
from asr.streaming.resample import StreamResampler
from asr.streaming.simulate import LOG_EPS, is_streaming_encoder

__all__ = ["EndpointRule", "EndpointConfig", "OnlineRecognizer", "Stream"]

MAX_SAMPLE_RATE = 384_000
DEFAULT_CHUNK_MS = 320
DEFAULT_LEFT_CONTEXT_CHUNKS = 4


@dataclass(frozen=True)
class EndpointRule:
    """An endpoint is detected when the segment has decoded text (if ``must_contain_nonsilence``), has
    ended in at least ``min_trailing_silence`` seconds of blanks, and is at least ``min_utterance_length``
    seconds long."""

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float = 0.0

    def holds(self, trailing_silence: float, utterance_length: float, has_text: bool) -> bool:
        return (
            (has_text or not self.must_contain_nonsilence)
            and trailing_silence >= self.min_trailing_silence
            and utterance_length >= self.min_utterance_length
        )


@dataclass(frozen=True)
class EndpointConfig:
    """sherpa-onnx's three rules (its defaults): silence with no text yet; silence after some text; a
    segment grown too long. Silence is judged from the blanks the search emits."""

    rule1: EndpointRule = EndpointRule(False, 2.4)
    rule2: EndpointRule = EndpointRule(True, 1.2)
    rule3: EndpointRule = EndpointRule(False, 0.0, 20.0)

    def is_endpoint(self, trailing_silence: float, utterance_length: float, has_text: bool) -> bool:
        return any(r.holds(trailing_silence, utterance_length, has_text) for r in (self.rule1, self.rule2, self.rule3))


@dataclass
class _SearchState:
    """A stream's search within its current segment."""

    hyp: Hypothesis = field(default_factory=Hypothesis)  # greedy
    beam: Beam | None = None  # modified beam search
    frames: int = 0  # encoder frames searched in this segment


class Stream:
    """One audio stream; made by :meth:`OnlineRecognizer.create_stream`."""

    def __init__(self, recognizer: OnlineRecognizer):
        self._recognizer = recognizer
        self._fbank = OnlineFbank()
        self._sample_rate: int | None = None  # the input's rate, fixed by the first samples
        self._resampler: StreamResampler | None = None
        self._features = torch.zeros(0, FEATURE_DIM)  # fbank frames from _feature_start on
        self._feature_start = 0  # index of _features[0] in the stream
        self._windows_done = 0  # streaming_forward calls so far
        self._padded = False  # the end padding has been appended
        self._states = recognizer._init_states()
        self._encoder_frames = 0  # encoder frames searched since the stream began
        self._search = recognizer._new_search()
        self._segment = 0
        self._segment_start = 0  # encoder frame where the current segment began
        self.input_done = False

    def accept_waveform(self, sample_rate: int, samples: np.ndarray | torch.Tensor | Sequence[float]) -> None:
        """Append audio: float samples ``(num_samples,)`` in [-1, 1] at ``sample_rate`` Hz (resampled to 16 kHz).

        Raises:
            ValueError, TypeError: after :meth:`input_finished`, a sample rate that is not a positive number
                of Hz, a rate other than this stream's first, non-float or multi-dimensional samples, NaN or
                infinite samples. The stream is unchanged then.
        """
        if self.input_done:
            raise ValueError("accept_waveform after input_finished: create a new stream (or reset this one)")
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)):
            if not (isinstance(sample_rate, float) and sample_rate.is_integer()):
                raise ValueError(f"sample_rate must be a whole number of Hz, got {sample_rate!r}")
        sample_rate = int(sample_rate)
        if not 0 < sample_rate <= MAX_SAMPLE_RATE:
            raise ValueError(f"sample_rate must be in (0, {MAX_SAMPLE_RATE}] Hz, got {sample_rate}")
        if self._sample_rate is not None and sample_rate != self._sample_rate:
            raise ValueError(f"sample_rate {sample_rate} differs from this stream's {self._sample_rate}")
        if isinstance(samples, torch.Tensor):
            samples = samples.detach().cpu().numpy()
        samples = np.asarray(samples)
        if samples.dtype == object or not np.issubdtype(samples.dtype, np.floating):
            raise TypeError(f"samples must be floating point in [-1, 1], got dtype {samples.dtype}")
        if samples.ndim > 1 and not (samples.ndim == 2 and 1 in samples.shape):
            raise ValueError(f"samples must be one channel (num_samples,), got shape {samples.shape}")
        samples = samples.astype(np.float32, copy=False).reshape(-1)
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        if bad:
            raise ValueError(f"{bad} of {samples.size} samples are NaN or infinite")
        if self._sample_rate is None:
            self._sample_rate = sample_rate
            if sample_rate != SAMPLE_RATE:
                self._resampler = StreamResampler(sample_rate, SAMPLE_RATE)
        if self._resampler is not None:
            samples = self._resampler.accept(samples)
        self._fbank.accept_waveform(samples)
        self._take_frames()

    def input_finished(self) -> None:
        """No more audio: the last frames are computed and the stream decodes to its end."""
        if self.input_done:
            return
        if self._resampler is not None:
            self._fbank.accept_waveform(self._resampler.finish())
        self.input_done = True
        self._fbank.input_finished()
        self._take_frames()

    @property
    def num_samples(self) -> int:
        """16 kHz samples received so far."""
        return self._fbank.num_samples

    def _take_frames(self) -> None:
        frames = self._fbank.pop_frames()
        if frames.numel():
            self._features = torch.cat([self._features, frames])

    # -- windows ----------------------------------------------------------------------------------------
    def _next_window(self, window: int, shift: int) -> tuple[torch.Tensor, int] | None:
        """The next ``(window, 80)`` features and their valid length, or None when not ready."""
        start = self._windows_done * shift
        total = self._fbank.num_frames
        if self.input_done:
            # As the chunked offline decode: a window of silence-level frames follows the audio, counted
            # as valid input, and windows run while they start before its last chunk.
            if start >= total + shift:
                return None
            end = min(total, start + window)
            frames = self._features[start - self._feature_start : end - self._feature_start]
            pad = torch.full((window - frames.size(0), FEATURE_DIM), LOG_EPS)
            return torch.cat([frames, pad]), min(window, total + window - start)
        if start + window > total:
            return None
        return self._features[start - self._feature_start : start + window - self._feature_start], window

    def _advance_window(self, shift: int) -> None:
        self._windows_done += 1
        drop = self._windows_done * shift - self._feature_start
        if drop > 0:
            self._features = self._features[drop:]
            self._feature_start += drop


class OnlineRecognizer:
    """Streaming recognition with a causal model.

    Args:
        model: an :class:`asr.models.AsrModel` with a causal (streaming) encoder and a transducer head, and
            a ``tokenizer`` (:func:`asr.load_model` attaches it).
        options: the search (``greedy`` or ``modified_beam_search`` with its LM/lexicon scorers) and the
            chunk: ``chunk_size`` and ``left_context_frames`` in the encoder's frames
            (``encoder.chunk_frame_ms``); by default chunks of 320 ms and four chunks of left context.
        endpoint: the endpoint rules, or None for no endpointing.
        scorers: scorers to use instead of those ``options`` name.
        compile: run the encoder's ``streaming_forward`` through ``torch.compile`` with dynamic shapes:
            three graphs serve every number of streams per step (one stream, 2-15, 16 or more: torch's
            convolution picks its memory format by batch size); the first step of each compiles, minutes
            on a CPU. Chunks have one shape, so nothing recompiles after that.
    Raises:
        ValueError: a model that cannot stream, a search without the head it needs, or bad options.
    """

    def __init__(
        self,
        model: AsrModel,
        options: DecodingOptions | None = None,
        endpoint: EndpointConfig | None = EndpointConfig(),
        scorers: Sequence[Scorer] | None = None,
        compile: bool = False,
    ):
        options = options if options is not None else DecodingOptions()
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("the model has no tokenizer: load it with asr.load_model(path, lang_dir=...)")
        encoder = model.encoder
        if not is_streaming_encoder(encoder):
            raise ValueError(
                f"OnlineRecognizer needs a causal (streaming) model; this {type(encoder).__name__} was built "
                "with causal=False (use asr.Recognizer for offline decoding)"
            )
        if options.method not in ("greedy", "modified_beam_search"):
            raise ValueError(f"streaming decodes with greedy or modified_beam_search, not {options.method}")
        if not model.has_transducer:
            raise ValueError(f"streaming search needs a transducer head; this model has {model.heads}")
        if options.chunk_size is None:
            chunk_size = max(1, DEFAULT_CHUNK_MS // encoder.chunk_frame_ms)
            left = options.left_context_frames or DEFAULT_LEFT_CONTEXT_CHUNKS * chunk_size
            options = replace(options, chunk_size=chunk_size, left_context_frames=left)
        with encoder.streaming(options.chunk_size, options.left_context_frames):
            self.left_context_frames = encoder.streaming_context()[1]
            self._window = encoder.streaming_feature_frames
            self._shift = encoder.streaming_feature_shift
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.options = options
        self.chunk_size = options.chunk_size
        self.endpoint = endpoint
        self.frame_seconds = encoder_frame_seconds(model)
        self.scorers = list(scorers) if scorers is not None else build_scorers(options, self.tokenizer)
        self._beam_search = (
            ModifiedBeamSearch(model, options.beam, self.scorers) if options.method == "modified_beam_search" else None
        )
        self._device = next(model.parameters()).device
        if compile and not isinstance(model, torch.nn.Module):
            raise ValueError(f"compile needs a PyTorch model, not a {type(model).__name__}")
        self._streaming_forward = (
            torch.compile(encoder.streaming_forward, dynamic=True) if compile else encoder.streaming_forward
        )

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        lang_dir: str | Path | None = None,
        options: DecodingOptions | None = None,
        endpoint: EndpointConfig | None = EndpointConfig(),
        backend: str = "torch",
        compile: bool = False,
        **option_values,
    ) -> OnlineRecognizer:
        """A recognizer over the causal model in ``path``; options as a :class:`DecodingOptions` or its fields.
        ``backend="onnxruntime"``: ``path`` is a streaming ``asr export onnx`` directory, whose graphs
        onnxruntime runs (:mod:`asr.export.backend`), with the chunk and left context it was exported with.
        ``compile``: see :class:`OnlineRecognizer` (torch only)."""
        from asr.export.backend import load_backend_model, onnx_stream_options

        options = replace(options or DecodingOptions(), **option_values)
        model = load_backend_model(backend, path, device, lang_dir, streaming=True)
        if backend == "onnxruntime":
            chunk_size, left = onnx_stream_options(model, options.chunk_size, options.left_context_frames)
            options = replace(options, chunk_size=chunk_size, left_context_frames=left)
        return cls(model, options, endpoint, compile=compile)

    @property
    def chunk_seconds(self) -> float:
        """Audio one decode step of a stream consumes."""
        return self._shift * 0.01

    # -- streams --------------------------------------------------------------------------------------------
    def create_stream(self) -> Stream:
        return Stream(self)

    def _init_states(self) -> list[torch.Tensor]:
        with self.model.encoder.streaming(self.chunk_size, self.left_context_frames):
            return self.model.encoder.init_states(1, device=self._device)

    def _new_search(self) -> _SearchState:
        return _SearchState(beam=self._beam_search.initial() if self._beam_search is not None else None)

    def is_ready(self, stream: Stream) -> bool:
        """Whether ``stream`` has a chunk of features (with its look-ahead) waiting to be decoded."""
        return stream._next_window(self._window, self._shift) is not None

    @torch.no_grad()
    def decode_streams(self, streams: Sequence[Stream]) -> None:
        """Decode one chunk of every ready stream in ``streams``, in one batched encoder call."""
        ready, windows, lens = [], [], []
        for stream in streams:
            if stream._recognizer is not self:
                raise ValueError("a stream of another recognizer")
            window = stream._next_window(self._window, self._shift)
            if window is not None and all(s is not stream for s in ready):
                ready.append(stream)
                windows.append(window[0])
                lens.append(window[1])
        if not ready:
            return
        encoder = self.model.encoder
        x = torch.stack(windows).to(self._device)
        x_lens = torch.tensor(lens, dtype=torch.int64, device=self._device)
        batch_dims = encoder.state_batch_dims()
        states = [torch.cat([s._states[i] for s in ready], dim=d) for i, d in enumerate(batch_dims)]
        with encoder.streaming(self.chunk_size, self.left_context_frames):
            y, y_lens, new_states = self._streaming_forward(x, x_lens, states)
        for i, d in enumerate(batch_dims):
            for stream, state in zip(ready, new_states[i].split(1, dim=d)):
                stream._states[i] = state
        valid = []
        for k, stream in enumerate(ready):
            count = int(y_lens[k])
            if stream.input_done:  # frames past the audio's own encoder length come from the padding
                full = int(encoder.output_lengths(torch.tensor([stream._fbank.num_frames]))[0])
                count = max(0, min(count, full - stream._encoder_frames))
            valid.append(count)
            stream._advance_window(self._shift)
        self._search_chunk(ready, y, valid)

    def _search_chunk(self, streams: list[Stream], enc_out: torch.Tensor, valid: list[int]) -> None:
        enc_lens = torch.tensor(valid, dtype=torch.int64, device=enc_out.device)
        offsets = [s._encoder_frames - s._segment_start for s in streams]
        if self._beam_search is not None:
            beams = [s._search.beam for s in streams]
            self._beam_search.advance(beams, enc_out, enc_lens, offsets)
            for stream, beam in zip(streams, beams):
                stream._search.beam = beam
        else:
            greedy_advance(self.model, [s._search.hyp for s in streams], enc_out, enc_lens, offsets)
        for stream, count in zip(streams, valid):
            stream._encoder_frames += count
            stream._search.frames += count

    def _best(self, stream: Stream) -> Hypothesis:
        if self._beam_search is not None:
            return self._beam_search.best(stream._search.beam)
        return stream._search.hyp

    # -- results --------------------------------------------------------------------------------------------
    def get_result(self, stream: Stream) -> Result:
        """The current segment's text so far, its tokens and their times in seconds from the stream's start."""
        offset = stream._segment_start * self.frame_seconds
        return make_result(self._best(stream), self.tokenizer, self.frame_seconds, offset, stream._segment)

    def is_endpoint(self, stream: Stream) -> bool:
        """Whether the current segment has ended by the endpoint rules (never without rules)."""
        if self.endpoint is None:
            return False
        hyp = self._best(stream)
        frames = stream._search.frames
        last_emission = hyp.timestamps[-1] + 1 if hyp.timestamps else 0
        trailing = (frames - last_emission) * self.frame_seconds
        return self.endpoint.is_endpoint(trailing, frames * self.frame_seconds, bool(hyp.tokens))

    def reset(self, stream: Stream) -> None:
        """Start a new segment: the search starts afresh; the encoder keeps its caches and position."""
        stream._search = self._new_search()
        stream._segment += 1
        stream._segment_start = stream._encoder_frames

    def is_finished(self, stream: Stream) -> bool:
        """Whether the stream's input is finished and every chunk of it has been decoded."""
        return stream.input_done and not self.is_ready(stream)

    def decode_to_end(self, streams: Sequence[Stream]) -> None:
        """Decode every ready chunk of ``streams``, batched, until none is ready."""
        pending = list(streams)
        while pending:
            self.decode_streams(pending)
            pending = [s for s in pending if self.is_ready(s)]
