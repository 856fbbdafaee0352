"""Offline recognition's pieces: utterances from files or cuts, batched encoding, search.

:func:`decode_batches` runs a model over utterances in padded batches (:func:`batches`), encoding each batch
whole or, with ``chunk_size``, chunk by chunk through a causal encoder's streaming forward
(:func:`asr.streaming.simulate_streaming`), then searching its output (:func:`search`).
:class:`asr.inference.Recognizer` is the user's object over these; :func:`transcribe` the one-call form.
Audio of any sample rate is resampled to 16 kHz.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asr.data.audio import AudioError, load_audio
from asr.data.features import compute_fbank, make_fbank_extractor
from asr.data.tokenizer import CharTokenizer, Tokenizer
from asr.decoding import (
    Hypothesis,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    greedy_search,
    modified_beam_search,
)
from asr.decoding.attention import attention_beam_search, attention_rescore
from asr.decoding.beam_search import ModifiedBeamSearch
from asr.decoding.scorers import Scorer
from asr.encoders import StreamingEncoder
from asr.inference.options import SCORER_METHODS, DecodingOptions
from asr.models import AsrModel
from asr.streaming import is_streaming_encoder, simulate_streaming
from asr.streaming.simulate import LOG_EPS  # what training pads with

log = logging.getLogger("asr.inference")

SAMPLE_RATE = 16000
FRAME_SHIFT = 0.01  # seconds per fbank frame


@dataclass
class Utterance:
    id: str
    features: torch.Tensor  # (T, 80)
    reference: str | None = None
    speaker: str | None = None


def check_samples(samples: np.ndarray, name: str | Path) -> np.ndarray:
    """``samples`` if every one is finite; otherwise :class:`AudioError` naming ``name`` and the count."""
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise AudioError(f"{name}: {bad} of {samples.size} samples are NaN or infinite")
    return samples


def utterances_from_files(paths: Iterable[str], errors: list[str]) -> Iterator[Utterance]:
    """Fbank of each audio file; unreadable files are appended to ``errors`` (message names the file)."""
    extractor = make_fbank_extractor()
    for path in paths:
        try:
            samples = check_samples(load_audio(path, SAMPLE_RATE), path)
        except AudioError as e:
            errors.append(str(e))
            log.error("%s", e)
            continue
        yield Utterance(id=Path(path).stem, features=compute_fbank(samples, SAMPLE_RATE, extractor))


def utterances_from_cuts(cuts_path: str, errors: list[str]) -> Iterator[Utterance]:
    """Fbank (stored, or computed from the recording) and reference text of each cut.

    The file is read and checked here, before any cut is decoded: a torn, foreign or empty file raises
    :class:`asr.data.manifests.ManifestError` naming it (and the line). A cut whose audio cannot be
    loaded is reported in ``errors`` and skipped when the returned iterator reaches it.
    """
    from asr.data.manifests import load_cuts

    cuts = load_cuts(cuts_path)
    extractor = make_fbank_extractor()

    def utterances() -> Iterator[Utterance]:
        for cut in cuts:
            try:
                if cut.has_features:
                    features = torch.from_numpy(cut.load_features())
                else:
                    cut = cut.resample(SAMPLE_RATE) if cut.sampling_rate != SAMPLE_RATE else cut
                    features = compute_fbank(cut.load_audio()[0], SAMPLE_RATE, extractor)
            except Exception as e:  # lhotse raises many types for unreadable audio
                message = f"cut {cut.id}: cannot load audio: {e}"
                errors.append(message)
                log.error("%s", message)
                continue
            text = " ".join(s.text for s in cut.supervisions if s.text)
            speaker = next((s.speaker for s in cut.supervisions if s.speaker), None)
            yield Utterance(id=cut.id, features=features, reference=text, speaker=speaker)

    return utterances()


def batches(utterances: Iterable[Utterance], max_frames: int) -> Iterator[list[Utterance]]:
    """Group utterances so that a padded batch holds at most ``max_frames`` frames."""
    batch: list[Utterance] = []
    longest = 0
    for utt in utterances:
        longest_if_added = max(longest, utt.features.size(0))
        if batch and longest_if_added * (len(batch) + 1) > max_frames:
            yield batch
            batch, longest_if_added = [], utt.features.size(0)
        batch.append(utt)
        longest = longest_if_added
    if batch:
        yield batch


def encode(
    model: AsrModel,
    features: torch.Tensor,
    feature_lens: torch.Tensor,
    chunk_size: int | None,
    left_context_frames: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output ``(N, T', C)`` and lengths ``(N,)`` of a padded batch ``(N, T, F)``, ``(N,)``.

    With ``chunk_size`` (and optionally ``left_context_frames``; ``None`` keeps the model's), in the
    encoder's own frames (``encoder.chunk_frame_ms``), a causal model runs chunk by chunk through its
    streaming forward. Without it a causal model attends with full context (no chunk mask, unlimited left
    context): the offline decode its streaming decode is compared with. Either way the encoder's own
    settings are restored afterwards.
    """
    encoder = model.encoder
    if chunk_size is None:
        if isinstance(encoder, StreamingEncoder):
            with encoder.full_context():
                return model.encode(features, feature_lens)
        return model.encode(features, feature_lens)
    if not is_streaming_encoder(encoder):
        raise ValueError(f"--chunk-size needs a causal (streaming) model; this {type(encoder).__name__} is not one")
    with encoder.streaming(chunk_size, left_context_frames):
        return simulate_streaming(encoder, features, feature_lens)


def check_model_fits(model: AsrModel, options: DecodingOptions) -> None:
    """Raise ``ValueError`` when ``options`` ask for a search whose head the model lacks."""
    method = options.method
    wanted = {
        "greedy": ("transducer",),
        "modified_beam_search": ("transducer",),
        "ctc_greedy": ("ctc",),
        "ctc_prefix_beam_search": ("ctc",),
        "attention_beam_search": ("aed",),
        "attention_rescoring": ("transducer", "aed"),
        "edatt": ("aed",),
        "alignatt": ("aed",),
    }[method]
    if options.ctc_weight > 0 and method.startswith("attention"):
        wanted += ("ctc",)
    missing = [head for head in wanted if head not in model.heads]
    if missing:
        raise ValueError(f"method {method} needs the {' and '.join(wanted)} heads; this model has {model.heads}")


def search(
    model: AsrModel,
    method: str,
    enc_out: torch.Tensor,
    enc_lens: torch.Tensor,
    beam: int,
    scorers: Sequence[Scorer] = (),
    options: DecodingOptions | None = None,
) -> list[Hypothesis]:
    """Run ``method`` (:data:`METHODS`) over encoder output ``(N, T, C)`` with lengths ``(N,)``; ``scorers``
    are added to the beam searches' ranking; ``options`` gives the attention methods' weights."""
    options = options if options is not None else DecodingOptions(method=method, beam=beam)
    check_model_fits(model, options)
    if scorers and method not in SCORER_METHODS:
        raise ValueError(f"LM fusion and the lexicon are implemented for {', '.join(SCORER_METHODS)}, not {method}")
    if method == "greedy":
        return greedy_search(model, enc_out, enc_lens)
    if method == "modified_beam_search":
        return modified_beam_search(model, enc_out, enc_lens, beam=beam, scorers=scorers)
    if method.startswith("ctc"):
        ctc_log_probs = model.ctc_log_probs(enc_out)
        if method == "ctc_greedy":
            return ctc_greedy_search(ctc_log_probs, enc_lens)
        return ctc_prefix_beam_search(ctc_log_probs, enc_lens, beam=beam)
    ctc_log_probs = model.ctc_log_probs(enc_out) if options.ctc_weight > 0 else None
    if method == "attention_beam_search":
        return attention_beam_search(
            model.attention_decoder,
            enc_out,
            enc_lens,
            beam,
            ctc_log_probs=ctc_log_probs,
            ctc_weight=options.ctc_weight,
            scorers=scorers,
        )
    first_pass = ModifiedBeamSearch(model, beam)
    beams = [first_pass.initial() for _ in range(enc_out.size(0))]
    first_pass.advance(beams, enc_out, enc_lens)
    return attention_rescore(
        model.attention_decoder,
        enc_out,
        enc_lens,
        [first_pass.nbest(b) for b in beams],
        ctc_log_probs=ctc_log_probs,
        ctc_weight=options.ctc_weight,
        first_pass_weight=options.first_pass_weight,
    )


def scoring_unit(tokenizer: Tokenizer, chars: bool | None = None) -> str:
    """What references are scored by: ``"char"`` or ``"word"`` (:func:`asr.wer.compute_wer`'s ``unit``).

    ``chars`` forces it; None means characters for a character-table tokenizer, words otherwise.
    """
    if chars is None:
        chars = isinstance(tokenizer, CharTokenizer)
    return "char" if chars else "word"


@dataclass
class DecodeResult:
    hypotheses: dict[str, str]
    references: dict[str, str]
    errors: list[str]
    audio_seconds: float
    compute_seconds: float
    speakers: dict[str, str] = field(default_factory=dict)  # id -> speaker, where the input names one
    audio_seconds_by_id: dict[str, float] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / max(self.audio_seconds, 1e-9)


@torch.no_grad()
def decode_batches(
    model: AsrModel,
    utterances: Iterable[Utterance],
    options: DecodingOptions,
    scorers: Sequence[Scorer] = (),
    max_frames: int = 30000,
) -> Iterator[tuple[Utterance, Hypothesis, float]]:
    """Decode utterances in padded batches of at most ``max_frames`` fbank frames, in their order.

    Yields:
        each utterance, its hypothesis, and its share of the batch's compute seconds.
    """
    device = next(model.parameters()).device
    for batch in batches(utterances, max_frames):
        started = time.perf_counter()
        feature_lens = torch.tensor([u.features.size(0) for u in batch], dtype=torch.int64)
        features = torch.nn.utils.rnn.pad_sequence([u.features for u in batch], batch_first=True, padding_value=LOG_EPS)
        features, feature_lens = features.to(device), feature_lens.to(device)
        enc_out, enc_lens = encode(model, features, feature_lens, options.chunk_size, options.left_context_frames)
        hyps = search(model, options.method, enc_out, enc_lens, options.beam, scorers, options)
        seconds = (time.perf_counter() - started) / len(batch)
        for utt, hyp in zip(batch, hyps):
            yield utt, hyp, seconds


def transcribe(
    model: AsrModel,
    audio: str | Path | np.ndarray | torch.Tensor,
    sample_rate: int | None = None,
    method: str = "greedy",
    beam: int = 4,
    chunk_size: int | None = None,
    left_context_frames: int | None = None,
) -> str:
    """The text of one utterance (:meth:`asr.Recognizer.transcribe` gives tokens and times too).

    Args:
        model: from :func:`asr.load_model` (its ``tokenizer`` turns tokens into text).
        audio: an audio file (any sample rate; wav, flac, ogg, mp3 where libsndfile reads it), or samples
            ``(num_samples,)`` in [-1, 1] at ``sample_rate`` Hz.
        method, beam: the search (:data:`METHODS`).
        chunk_size, left_context_frames: decode a causal model chunk by chunk, in the encoder's frames.
    """
    from asr.inference.recognizer import Recognizer

    options = DecodingOptions(method, beam, chunk_size, left_context_frames)
    return Recognizer(model, options).transcribe(audio, sample_rate).text
