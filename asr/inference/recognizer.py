"""The offline recognizer: a model, decoding options, and audio in; results with timestamps out.

    rec = asr.Recognizer.from_checkpoint("exp/synth", method="modified_beam_search", beam=8)
    result = rec.transcribe("speech.wav")
    print(result.text, [(w.word, w.start, w.end) for w in result.words])

Audio longer than ``max_segment_seconds`` is cut into overlapping segments decoded in padded batches, so
memory stays bounded whatever the length (a causal model decoded with ``chunk_size`` streams instead);
each segment contributes the tokens emitted in its middle part, so the texts join at the overlaps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from asr.data.audio import AudioError, load_audio, resample
from asr.data.features import compute_fbank, make_fbank_extractor
from asr.decoding import Hypothesis
from asr.decoding.scorers import Scorer
from asr.inference.offline import (
    FRAME_SHIFT,
    SAMPLE_RATE,
    DecodeResult,
    Utterance,
    check_model_fits,
    check_samples,
    decode_batches,
)
from asr.inference.options import SIMULTANEOUS_METHODS, DecodingOptions, build_scorers
from asr.inference.result import Result, WordTiming, make_result
from asr.models import AsrModel
from asr.streaming import is_streaming_encoder

log = logging.getLogger("asr.inference")

Audio = str | Path | np.ndarray | torch.Tensor


def encoder_frame_seconds(model: AsrModel) -> float:
    """Seconds per encoder output frame: the feature hop times the encoder's subsampling."""
    long = torch.tensor([100_000])
    return FRAME_SHIFT * round(100_000 / int(model.encoder.output_lengths(long)[0]))


def min_feature_frames(model: AsrModel) -> int:
    """The fewest fbank frames the encoder turns into at least one output frame."""
    lens = model.encoder.output_lengths(torch.arange(1, 1001))
    found = torch.nonzero(lens >= 1)
    if found.numel() == 0:
        raise ValueError("the encoder gives no output frame for inputs of up to 10 s")
    return int(found[0, 0]) + 1


@dataclass
class _Segment:
    parent: Utterance
    index: int
    start_frame: int  # in fbank frames, within the parent
    keep_from: int  # tokens emitted at fbank frames in [keep_from, keep_until) are kept
    keep_until: int
    last: bool


class Recognizer:
    """Offline recognition with one model and one set of :class:`DecodingOptions`.

    Args:
        model: an :class:`asr.models.AsrModel` with a ``tokenizer`` (:func:`asr.load_model` attaches it).
        options: the search; its LM, lexicon and word LM files are read once here.
        scorers: scorers to use instead of those ``options`` name (already loaded LMs).
        max_frames: fbank frames (10 ms) per padded batch.
        max_segment_seconds, segment_overlap_seconds: longer audio is decoded in segments of this length
            overlapping by this much.
        compile: run the encoder through ``torch.compile`` (:meth:`asr.models.AsrModel.compile_encoder`;
            the first batch waits for the compilation).
    Raises:
        ValueError: the options do not fit the model (a search it has no head for, ``chunk_size`` on a
            model that cannot stream, an LM over other tokens); the message names the option.
    """

    def __init__(
        self,
        model: AsrModel,
        options: DecodingOptions | None = None,
        scorers: Sequence[Scorer] | None = None,
        max_frames: int = 30000,
        max_segment_seconds: float = 30.0,
        segment_overlap_seconds: float = 2.0,
        compile: bool = False,
    ):
        options = options if options is not None else DecodingOptions()
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("the model has no tokenizer: load it with asr.load_model(path, lang_dir=...)")
        check_model_fits(model, options)
        if options.chunk_size is not None:
            if not is_streaming_encoder(model.encoder):
                raise ValueError(
                    f"chunk_size needs a causal (streaming) model; this {type(model.encoder).__name__} is not one"
                )
            with model.encoder.streaming(options.chunk_size, options.left_context_frames):
                pass  # raises ValueError for settings the encoder cannot stream with
        if not 0 <= segment_overlap_seconds < max_segment_seconds / 2:
            raise ValueError("segment_overlap_seconds must be in [0, max_segment_seconds / 2)")
        if compile:
            if not isinstance(model, AsrModel):
                raise ValueError(f"compile needs a PyTorch model, not a {type(model).__name__}")
            model.compile_encoder()
        self.model = model.eval()
        self.tokenizer = model.tokenizer
        self.options = options
        self.scorers = list(scorers) if scorers is not None else build_scorers(options, self.tokenizer)
        self.max_frames = max_frames
        self.frame_seconds = encoder_frame_seconds(model)
        self.min_frames = min_feature_frames(model)
        self.segment_frames = round(max_segment_seconds / FRAME_SHIFT)
        self.overlap_frames = round(segment_overlap_seconds / FRAME_SHIFT)
        self._extractor = make_fbank_extractor()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        lang_dir: str | Path | None = None,
        options: DecodingOptions | None = None,
        backend: str = "torch",
        compile: bool = False,
        **option_values,
    ) -> Recognizer:
        """A recognizer over the model in ``path`` (a training checkpoint, a model file or an experiment
        dir); decoding options as a :class:`DecodingOptions` or as its fields (``method=..., beam=...``).
        ``backend="onnxruntime"``: ``path`` is an offline ``asr export onnx`` directory, whose graphs
        onnxruntime runs (:mod:`asr.export.backend`). ``compile``: see :class:`Recognizer` (torch only)."""
        from asr.export.backend import load_backend_model

        options = replace(options or DecodingOptions(), **option_values)
        model = load_backend_model(backend, path, device, lang_dir, streaming=False)
        return cls(model, options, compile=compile)

    # -- audio in ------------------------------------------------------------------------------------------
    def features(self, audio: Audio, sample_rate: int | None = None, name: str = "audio") -> torch.Tensor:
        """Fbank ``(T, 80)`` of a file or of samples ``(num_samples,)`` in [-1, 1] at ``sample_rate`` Hz."""
        if isinstance(audio, (str, Path)):
            samples = load_audio(audio, SAMPLE_RATE)
            name = str(audio)
        else:
            if sample_rate is None:
                raise ValueError("samples need their sample_rate")
            if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or not 0 < sample_rate <= 384_000:
                raise ValueError(f"sample_rate must be a positive number of Hz up to 384000, got {sample_rate}")
            if isinstance(audio, torch.Tensor):
                audio = audio.detach().cpu().numpy()
            samples = np.asarray(audio)
            if not np.issubdtype(samples.dtype, np.floating):
                raise TypeError(f"samples must be floating point in [-1, 1], got {samples.dtype}")
            samples = resample(samples.astype(np.float32, copy=False).reshape(-1), int(sample_rate), SAMPLE_RATE)
        return compute_fbank(check_samples(samples, name), SAMPLE_RATE, self._extractor)

    # -- recognition ---------------------------------------------------------------------------------------
    def transcribe(self, audio: Audio, sample_rate: int | None = None) -> Result:
        """Recognise one utterance: a file (any sample rate) or samples ``(num_samples,)`` at ``sample_rate``.

        Raises:
            asr.data.audio.AudioError: unreadable or too short audio, or NaN/infinite samples.
        """
        return self.transcribe_batch([audio], sample_rate)[0]

    def transcribe_batch(self, audios: Sequence[Audio], sample_rate: int | None = None) -> list[Result]:
        """Recognise several utterances, batched; one :class:`Result` each, in order."""
        utterances = [Utterance(str(i), self.features(a, sample_rate)) for i, a in enumerate(audios)]
        errors: list[str] = []
        results = {utt.id: result for utt, result, _ in self.recognize(utterances, errors)}
        if errors:
            raise AudioError(errors[0])
        return [results[str(i)] for i in range(len(audios))]

    def recognize(
        self, utterances: Iterable[Utterance], errors: list[str]
    ) -> Iterator[tuple[Utterance, Result, float]]:
        """Decode utterances in order; each is yielded with its result and compute seconds. Too-short
        utterances are reported in ``errors`` (the message names them) and skipped."""
        pending: dict[str, list[tuple[_Segment, Hypothesis]]] = {}
        compute: dict[str, float] = {}
        if self.options.method in SIMULTANEOUS_METHODS:
            yield from self._simultaneous(utterances, errors)
            return
        segments: dict[int, _Segment] = {}  # id() of a segment's Utterance -> where it lies in its parent
        for utt, hyp, seconds in decode_batches(
            self.model, self._segments(utterances, errors, segments), self.options, self.scorers, self.max_frames
        ):
            segment = segments.pop(id(utt), None)
            if segment is None:
                yield utt, make_result(hyp, self.tokenizer, self.frame_seconds), seconds
                continue
            parent = segment.parent
            pending.setdefault(parent.id, []).append((segment, hyp))
            compute[parent.id] = compute.get(parent.id, 0.0) + seconds
            if segment.last:
                joined = self._join(pending.pop(parent.id))
                yield parent, make_result(joined, self.tokenizer, self.frame_seconds), compute.pop(parent.id)

    def decode(
        self,
        utterances: Iterable[Utterance],
        errors: list[str] | None = None,
        on_result: Callable[[str, Result], None] | None = None,
    ) -> DecodeResult:
        """Decode utterances (from files or cuts) into texts, with references and speakers where given;
        ``on_result(id, result)`` is called as each is ready."""
        errors = errors if errors is not None else []
        hyps: dict[str, str] = {}
        refs: dict[str, str] = {}
        speakers: dict[str, str] = {}
        seconds_by_id: dict[str, float] = {}
        audio_seconds = compute_seconds = 0.0
        started = time.perf_counter()
        for utt, result, seconds in self.recognize(utterances, errors):
            hyps[utt.id] = result.text
            if utt.reference is not None:
                refs[utt.id] = utt.reference
            if utt.speaker is not None:
                speakers[utt.id] = utt.speaker
            seconds_by_id[utt.id] = utt.features.size(0) * FRAME_SHIFT
            audio_seconds += seconds_by_id[utt.id]
            compute_seconds += seconds
            if on_result is not None:
                on_result(utt.id, result)
        log.debug("decoded in %.1f s", time.perf_counter() - started)
        return DecodeResult(hyps, refs, errors, audio_seconds, compute_seconds, speakers, seconds_by_id)

    def _simultaneous(
        self, utterances: Iterable[Utterance], errors: list[str]
    ) -> Iterator[tuple[Utterance, Result, float]]:
        """EDAtt / AlignAtt, one utterance at a time as audio would arrive (:mod:`asr.decoding.simultaneous`)."""
        from asr.decoding.simultaneous import AlignAttPolicy, EDAttPolicy, simultaneous_decode

        options = self.options
        # FBK's agents read the 4th decoder layer (index 3 of 6); a shallower decoder gives its last.
        layer = min(3, self.model.attention_decoder.num_layers - 1)
        if options.method == "edatt":
            policy = EDAttPolicy(options.alpha, options.lambda_frames, layer)
        else:
            policy = AlignAttPolicy(options.align_frames, layer)
        for utt in utterances:
            if utt.features.size(0) < self.min_frames:
                self._too_short(utt, errors)
                continue
            started = time.perf_counter()
            out = simultaneous_decode(self.model, utt.features, policy, options.step_ms, final_beam=options.beam)
            result = make_result(Hypothesis(out.tokens, [], 0.0), self.tokenizer, self.frame_seconds)
            result.words = [WordTiming(word, None, None) for word in out.words]  # one per emission time
            result.word_emission_ms, result.word_elapsed_ms = list(out.word_emission_ms), out.elapsed_ms
            yield utt, result, time.perf_counter() - started

    def _too_short(self, utt: Utterance, errors: list[str]) -> None:
        num_frames = utt.features.size(0)
        message = (
            f"{utt.id}: too short to decode ({num_frames * FRAME_SHIFT:.2f} s; the model needs at "
            f"least {self.min_frames * FRAME_SHIFT:.2f} s)"
        )
        errors.append(message)
        log.error("%s", message)

    # -- long audio ----------------------------------------------------------------------------------------
    def _segments(
        self, utterances: Iterable[Utterance], errors: list[str], segments: dict[int, _Segment]
    ) -> Iterator[Utterance]:
        """The utterances, long ones replaced by overlapping segments (each noted in ``segments``); too-short
        ones reported and dropped."""
        for utt in utterances:
            num_frames = utt.features.size(0)
            if num_frames < self.min_frames:
                self._too_short(utt, errors)
                continue
            if num_frames <= self.segment_frames or self.options.chunk_size is not None:
                yield utt
                continue
            step = self.segment_frames - self.overlap_frames
            starts = list(range(0, num_frames - self.segment_frames, step)) + [None]
            starts[-1] = starts[-2] + step
            half = self.overlap_frames // 2
            for index, start in enumerate(starts):
                last = index == len(starts) - 1
                end = num_frames if last else start + self.segment_frames
                piece = Utterance(f"{utt.id}#{index}", utt.features[start:end])
                segments[id(piece)] = _Segment(
                    utt, index, start, 0 if index == 0 else start + half, num_frames if last else end - half, last
                )
                yield piece

    def _join(self, pieces: list[tuple[_Segment, Hypothesis]]) -> Hypothesis:
        """One hypothesis of a long utterance: each segment's tokens emitted in its kept span, timestamps
        in the whole utterance's encoder frames."""
        subsampling = round(self.frame_seconds / FRAME_SHIFT)
        tokens: list[int] = []
        timestamps: list[int] = []
        score = 0.0
        for segment, hyp in pieces:
            offset = segment.start_frame // subsampling
            for token, t in zip(hyp.tokens, hyp.timestamps):
                if segment.keep_from <= segment.start_frame + t * subsampling < segment.keep_until:
                    tokens.append(token)
                    timestamps.append(offset + t)
            score += hyp.score
        return Hypothesis(tokens, timestamps, score)
