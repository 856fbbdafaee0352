"""``asr decode``: recognise audio files or a CutSet with a trained model.

Audio files of any sample rate (wav, flac, ogg, mp3 where libsndfile reads it) are resampled to
16 kHz; a file that cannot be read is reported by name and the others are still decoded. With
``--cuts`` the references are scored: ``R/hyps.txt``, ``R/refs.txt``, ``R/errs.txt`` and a final
``WER ...`` line, or ``CER ...`` when scoring characters: the default for a model with a character
table (Mandarin transcripts have no spaces to split words at), forced either way by
``--chars`` / ``--no-chars``. Where the cuts name speakers, ``R/utt2spk`` and ``R/wer_by_speaker.txt``
(each speaker's error rate and share of the errors, worst first) are written too. ``--chunk-size`` runs a causal model chunk by chunk through its
streaming forward. Modified beam search takes a token n-gram LM (``--lm``, shallow fusion) and a word list
(``--lexicon``: a penalty per hypothesis word not in it, see :mod:`asr.decoding.lexicon`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch

from asr.data.audio import AudioError, load_audio
from asr.data.features import compute_fbank, make_fbank_extractor
from asr.data.tokenizer import CharTokenizer, Tokenizer, load_tokenizer
from asr.decoding import (
    Hypothesis,
    ctc_greedy_search,
    ctc_prefix_beam_search,
    greedy_search,
    modified_beam_search,
)
from asr.decoding.lexicon import Lexicon
from asr.models import AsrModel, model_from_config, read_checkpoint
from asr.models.lm import NgramLM
from asr.streaming import is_streaming_encoder, simulate_streaming
from asr.streaming.simulate import LOG_EPS  # what training pads with
from asr.training import checkpoint as ckpt
from asr.training.trainer import resolve_device

log = logging.getLogger("asr.decode")

METHODS = ("greedy", "modified_beam_search", "ctc_greedy", "ctc_prefix_beam_search")
SAMPLE_RATE = 16000
FRAME_SHIFT = 0.01  # seconds per fbank frame
DEFAULT_WORD_LM_SCALE = 0.3
DEFAULT_WORD_BONUS = 1.5
DEFAULT_OOV_PENALTY = 6.0  # best of 1.5, 3, 6, 10 on 600 synth dev utterances


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or for an experiment directory its newest checkpoint."""
    path = Path(path)
    if path.is_dir():
        newest = ckpt.newest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no checkpoint-*.pt or epoch-*.pt in {path}")
        log.info("using %s", newest)
        return newest
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def averaged_state_dict(end: dict, start: dict) -> dict[str, torch.Tensor]:
    """The model averaged over the batches between two training checkpoints of one run (icefall's
    ``--use-averaged-model``): each holds the running mean ``model_avg`` of the model since batch 0, so
    the mean over ``(b_start, b_end]`` is ``(avg_end·b_end - avg_start·b_start) / (b_end - b_start)``."""
    b_end, b_start = end["state"]["batch_idx_train"], start["state"]["batch_idx_train"]
    if end.get("model_avg") is None or start.get("model_avg") is None:
        raise ValueError("averaging needs checkpoints written by asr train with a model average")
    if b_start >= b_end:
        raise ValueError(f"--average-from must be earlier than the decoded checkpoint (batch {b_start} >= {b_end})")
    averaged = {}
    for key, value in end["model_avg"].items():
        if value.is_floating_point():
            averaged[key] = (value * b_end - start["model_avg"][key] * b_start) / (b_end - b_start)
        else:
            averaged[key] = value
    return averaged


def average_start(path: Path, end_batch: int, average_batches: int) -> Path | None:
    """The checkpoint of ``path``'s run (same directory) to average from so that the average spans about
    the last ``average_batches`` batches up to ``end_batch``; None, with a warning, when the directory
    holds no earlier checkpoint (a run shorter than one checkpoint interval): there is nothing to average."""
    if average_batches <= 0:
        raise ValueError(f"--average-batches must be positive, got {average_batches}")
    start = ckpt.checkpoint_near_batch(path.parent, end_batch - average_batches, before=end_batch)
    if start is None:
        log.warning("--average-batches %d: %s has no checkpoint of the run written before batch %d to average "
                    "from; decoding the model of %s alone", average_batches, path.parent, end_batch, path.name)
        return None
    start_batch = ckpt.checkpoint_batch(start)
    log.info("decoding the model averaged over batches %d-%d (from %s to %s)", start_batch + 1, end_batch,
             start.name, path.name)
    return start


def load_checkpoint_for_decoding(
    path: str | Path, lang_dir: str | Path | None = None, average_from: str | Path | None = None,
    average_batches: int | None = None,
) -> tuple[AsrModel, Tokenizer]:
    """A model in eval mode and its tokenizer from a training checkpoint (``asr train``; a directory
    means its newest checkpoint) or a model checkpoint (:func:`asr.models.save_model`). With
    ``average_from`` (an earlier checkpoint of the same run) the weights are the model averaged over
    the training between the two; ``average_batches`` picks that checkpoint as the one of the same
    directory nearest to that many batches back. The tokenizer comes from ``lang_dir`` when given, else
    from the files stored in the checkpoint."""
    if average_from is not None and average_batches is not None:
        raise ValueError("give --average-from or --average-batches, not both")
    path = resolve_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(raw, dict) and raw.get("format") == "asr-train":
        config = raw["build_config"]
        state_dict = raw["model"]
        if average_batches is not None:
            average_from = average_start(path, raw["state"]["batch_idx_train"], average_batches)
        if average_from is not None:
            state_dict = averaged_state_dict(raw, ckpt.load(resolve_checkpoint(average_from)))
        tokenizer_files = raw.get("tokenizer", {})
    else:
        if average_from is not None or average_batches is not None:
            raise ValueError(f"{path} is a model checkpoint; averaging needs training checkpoints")
        checkpoint = read_checkpoint(path)
        config, state_dict = checkpoint["config"], checkpoint["state_dict"]
        tokenizer_files = checkpoint.get("extra", {}).get("tokenizer", {})
    model = model_from_config(config, state_dict)
    model.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()})
    model.eval()
    if lang_dir is not None:
        tokenizer = load_tokenizer(lang_dir)
    elif tokenizer_files:
        with tempfile.TemporaryDirectory() as tmp:
            for name, data in tokenizer_files.items():
                (Path(tmp) / name).write_bytes(data)
            tokenizer = load_tokenizer(tmp)
    else:
        raise ValueError(f"{path} holds no tokenizer; pass --lang-dir")
    if tokenizer.vocab_size != config["vocab_size"]:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} symbols but the model was built for {config['vocab_size']}"
        )
    return model, tokenizer


@dataclass
class Utterance:
    id: str
    features: torch.Tensor  # (T, 80)
    reference: str | None = None
    speaker: str | None = None


def utterances_from_files(paths: Iterable[str], errors: list[str]) -> Iterator[Utterance]:
    """Fbank of each audio file; unreadable files are appended to ``errors`` (message names the file)."""
    extractor = make_fbank_extractor()
    for path in paths:
        try:
            samples = load_audio(path, SAMPLE_RATE)
        except AudioError as e:
            errors.append(str(e))
            log.error("%s", e)
            continue
        yield Utterance(id=Path(path).stem, features=compute_fbank(samples, SAMPLE_RATE, extractor))


def utterances_from_cuts(cuts_path: str, errors: list[str]) -> Iterator[Utterance]:
    """Fbank (stored, or computed from the recording) and reference text of each cut."""
    from lhotse import load_manifest_lazy

    extractor = make_fbank_extractor()
    for cut in load_manifest_lazy(cuts_path):
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


def full_context_settings(encoder: torch.nn.Module) -> dict[str, int]:
    """The attribute values that make a causal encoder attend with no chunk and no context limit."""
    if hasattr(encoder, "left_context_frames"):  # Zipformer, Conformer
        return {"chunk_size": -1, "left_context_frames": -1}
    if hasattr(encoder, "right_context"):  # the Transformer-Transducer's audio encoder
        return {"chunk_size": 0, "left_context": -1, "right_context": -1}
    return {}


def encode(
    model: AsrModel, features: torch.Tensor, feature_lens: torch.Tensor, chunk_size: int | None,
    left_context_frames: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output of a padded batch; with ``chunk_size``, chunk by chunk through the streaming forward.

    Without ``chunk_size`` a causal model is run with full context (no chunk mask, unlimited left
    context), the offline decode its streaming decode is compared with; its own ``chunk_size`` /
    ``left_context_frames`` attributes are restored afterwards.
    """
    encoder = model.encoder
    if chunk_size is None:
        full_context = full_context_settings(encoder) if getattr(encoder, "causal", False) else {}
        saved = {name: getattr(encoder, name) for name in full_context}
        for name, value in full_context.items():
            setattr(encoder, name, value)
        try:
            return model.encode(features, feature_lens)
        finally:
            for name, value in saved.items():
                setattr(encoder, name, value)
    if not is_streaming_encoder(encoder):
        raise ValueError(f"--chunk-size needs a causal (streaming) model; this {type(encoder).__name__} is not one")
    encoder.chunk_size = chunk_size
    if left_context_frames is not None:
        encoder.left_context_frames = left_context_frames
    return simulate_streaming(encoder, features, feature_lens)


@dataclass
class LmFusion:
    """Shallow fusion settings for modified beam search (:func:`asr.decoding.modified_beam_search`)."""

    lm: NgramLM
    scale: float
    final: bool = True  # add the LM's </s> probability before picking the best hypothesis
    bonus: float = 0.0  # reward per emitted token


@dataclass
class WordScoring:
    """Word-level terms of modified beam search: ``penalty`` per hypothesis word not in ``lexicon``, and
    a word n-gram LM weighted by ``word_lm_scale``."""

    lexicon: Lexicon
    penalty: float
    word_lm: NgramLM | None = None
    word_lm_scale: float = 0.0
    word_bonus: float = 0.0


def search(
    model: AsrModel, method: str, enc_out: torch.Tensor, enc_lens: torch.Tensor, beam: int,
    fusion: LmFusion | None = None, words: WordScoring | None = None,
) -> list[Hypothesis]:
    if method in ("greedy", "modified_beam_search") and not model.has_transducer:
        raise ValueError(f"--method {method} needs a transducer head; this model has {model.heads}")
    if method.startswith("ctc") and not model.has_ctc:
        raise ValueError(f"--method {method} needs a CTC head; this model has {model.heads}")
    if fusion is not None and method != "modified_beam_search":
        raise ValueError(f"LM fusion is implemented for modified_beam_search only, not {method}")
    if words is not None and method != "modified_beam_search":
        raise ValueError(f"the lexicon and word LM are implemented for modified_beam_search only, not {method}")
    if method == "greedy":
        return greedy_search(model, enc_out, enc_lens)
    if method == "modified_beam_search":
        options = {}
        if fusion is not None:
            options.update(lm=fusion.lm, lm_scale=fusion.scale, lm_final=fusion.final, lm_bonus=fusion.bonus)
        if words is not None:
            options.update(lexicon=words.lexicon, oov_penalty=words.penalty, word_lm=words.word_lm,
                           word_lm_scale=words.word_lm_scale, word_bonus=words.word_bonus)
        return modified_beam_search(model, enc_out, enc_lens, beam=beam, **options)
    log_probs = model.ctc_log_probs(enc_out)
    if method == "ctc_greedy":
        return ctc_greedy_search(log_probs, enc_lens)
    return ctc_prefix_beam_search(log_probs, enc_lens, beam=beam)


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

    @property
    def real_time_factor(self) -> float:
        return self.compute_seconds / max(self.audio_seconds, 1e-9)


@torch.no_grad()
def decode(
    model: AsrModel,
    tokenizer: Tokenizer,
    utterances: Iterable[Utterance],
    method: str = "greedy",
    beam: int = 4,
    chunk_size: int | None = None,
    left_context_frames: int | None = None,
    max_frames: int = 30000,
    errors: list[str] | None = None,
    on_result=None,
    fusion: LmFusion | None = None,
    words: WordScoring | None = None,
) -> DecodeResult:
    """Decode utterances in batches; ``on_result(id, text)`` is called as each hypothesis is ready.
    ``fusion`` adds an n-gram LM to modified beam search, ``words`` a penalty on words outside a list and
    a word LM."""
    hyps: dict[str, str] = {}
    refs: dict[str, str] = {}
    speakers: dict[str, str] = {}
    audio_seconds = compute_seconds = 0.0
    for batch in batches(utterances, max_frames):
        started = time.perf_counter()
        device = next(model.parameters()).device
        feature_lens = torch.tensor([u.features.size(0) for u in batch], dtype=torch.int64)
        features = torch.nn.utils.rnn.pad_sequence(
            [u.features for u in batch], batch_first=True, padding_value=LOG_EPS
        )
        features, feature_lens = features.to(device), feature_lens.to(device)
        enc_out, enc_lens = encode(model, features, feature_lens, chunk_size, left_context_frames)
        results = search(model, method, enc_out, enc_lens, beam, fusion, words)
        compute_seconds += time.perf_counter() - started
        audio_seconds += float(feature_lens.sum()) * FRAME_SHIFT
        for utt, hyp in zip(batch, results):
            text = tokenizer.decode(hyp.tokens)
            hyps[utt.id] = text
            if utt.reference is not None:
                refs[utt.id] = utt.reference
            if utt.speaker is not None:
                speakers[utt.id] = utt.speaker
            if on_result is not None:
                on_result(utt.id, text)
    return DecodeResult(hyps, refs, errors if errors is not None else [], audio_seconds, compute_seconds, speakers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr decode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True,
                        help="training or model checkpoint, or an experiment dir (its newest checkpoint)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cuts", help="a CutSet (jsonl.gz) with reference texts")
    source.add_argument("audio", nargs="*", default=[], help="audio files")
    parser.add_argument("--method", choices=METHODS, default="greedy")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=None, help="streaming chunk, in 50 Hz frames")
    parser.add_argument("--left-context-frames", type=int, default=None)
    parser.add_argument("--lang-dir", default=None, help="tokenizer dir (default: the one in the checkpoint)")
    parser.add_argument("--results-dir", default=None,
                        help="with --cuts: where hyps.txt, refs.txt and errs.txt go")
    parser.add_argument("--chars", action=argparse.BooleanOptionalAction, default=None,
                        help="with --cuts: score characters (CER) or words (WER); "
                             "default: characters when the model's tokenizer is a character table")
    parser.add_argument("--average-from", default=None,
                        help="an earlier checkpoint of the same run: decode the model averaged since then")
    parser.add_argument("--average-batches", type=int, default=None,
                        help="decode the model averaged over about the last N batches of the run: averages "
                             "from the checkpoint in the same directory nearest to N batches back")
    parser.add_argument("--lm", default=None,
                        help="an ARPA n-gram LM over the model's tokens (asr lm train) for shallow fusion; "
                             "modified_beam_search only")
    parser.add_argument("--lm-scale", type=float, default=0.5,
                        help="weight of the LM log-probability (default: best on the synth dev set)")
    parser.add_argument("--lm-final", action=argparse.BooleanOptionalAction, default=True,
                        help="add the LM's end-of-sentence probability before picking the best hypothesis")
    parser.add_argument("--lm-bonus", type=float, default=1.5,
                        help="with --lm: reward per emitted token, against the deletions LM fusion causes "
                             "(default: best on the synth dev set)")
    parser.add_argument("--lexicon", action="append", default=None, metavar="FILE",
                        help="a word list or text (.gz read as gzip; case matched to the tokens; repeat for "
                             "more): modified beam search subtracts --oov-penalty per hypothesis word not in them")
    parser.add_argument("--oov-penalty", type=float, default=DEFAULT_OOV_PENALTY,
                        help="with --lexicon: score penalty per unknown word (default: best on the synth dev set; retune elsewhere)")
    parser.add_argument("--word-lm", default=None,
                        help="an ARPA n-gram LM over words (asr lm train --words), fused at word ends; needs --lexicon")
    parser.add_argument("--word-lm-scale", type=float, default=DEFAULT_WORD_LM_SCALE,
                        help="weight of the word LM's log-probability (default: tried on the synth dev set)")
    parser.add_argument("--word-bonus", type=float, default=DEFAULT_WORD_BONUS,
                        help="with --word-lm: reward per word, against the deletions the word LM causes "
                             "(default: tried on the synth dev set)")
    parser.add_argument("--max-frames", type=int, default=30000, help="frames per padded batch")
    parser.add_argument("--num-threads", type=int, default=None)
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda, cuda:N, or auto (the GPU when there is one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.lm is not None and args.method != "modified_beam_search":
        parser.error(f"--lm needs --method modified_beam_search (got {args.method})")
    if args.lm_scale < 0:
        parser.error(f"--lm-scale must be >= 0, got {args.lm_scale}")
    if args.lexicon is not None and args.method != "modified_beam_search":
        parser.error(f"--lexicon needs --method modified_beam_search (got {args.method})")
    if args.oov_penalty < 0:
        parser.error(f"--oov-penalty must be >= 0, got {args.oov_penalty}")
    if args.word_lm is not None and args.lexicon is None:
        parser.error("--word-lm needs --lexicon (it tells where words end; --oov-penalty 0 for no penalty)")
    if args.word_lm_scale < 0:
        parser.error(f"--word-lm-scale must be >= 0, got {args.word_lm_scale}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    if not args.cuts and not args.audio:
        raise SystemExit("asr decode: give audio files or --cuts")
    try:
        device = resolve_device(args.device, 0)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device}: {error}")
    if args.average_from is not None and args.average_batches is not None:
        parser.error("give --average-from or --average-batches, not both")
    try:
        model, tokenizer = load_checkpoint_for_decoding(
            args.checkpoint, args.lang_dir, args.average_from, args.average_batches
        )
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"asr decode: {error}") from None
    model.to(device)
    fusion = None
    if args.lm is not None:
        symbols = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        try:
            fusion = LmFusion(NgramLM.load_arpa(args.lm, symbols), args.lm_scale, args.lm_final, args.lm_bonus)
        except (OSError, ValueError) as error:
            parser.error(f"--lm {args.lm}: {error}")
    words = None
    if args.lexicon is not None:
        pieces = [tokenizer.id_to_token(i) for i in range(tokenizer.vocab_size)]
        try:
            words = WordScoring(Lexicon.from_files(args.lexicon, pieces), args.oov_penalty)
        except (OSError, ValueError) as error:
            parser.error(f"--lexicon: {error}")
        log.info("lexicon: %d words, penalty %g per unknown word", len(words.lexicon), args.oov_penalty)
    if args.word_lm is not None:
        try:
            words.word_lm = NgramLM.load_arpa_words(args.word_lm)
        except (OSError, ValueError) as error:
            parser.error(f"--word-lm {args.word_lm}: {error}")
        words.word_lm_scale = args.word_lm_scale
        words.word_bonus = args.word_bonus
    errors: list[str] = []
    utterances = utterances_from_cuts(args.cuts, errors) if args.cuts else utterances_from_files(args.audio, errors)
    result = decode(
        model, tokenizer, utterances, args.method, args.beam, args.chunk_size, args.left_context_frames,
        args.max_frames, errors, on_result=lambda uid, text: print(f"{uid}\t{text}", flush=True), fusion=fusion,
        words=words,
    )
    print(
        f"decoded {len(result.hypotheses)} utterances, {result.audio_seconds:.1f} s of audio, "
        f"real-time factor {result.real_time_factor:.3f}",
        file=sys.stderr,
    )
    if args.cuts:
        from asr.wer import compute_wer, format_group_table, wer_by_group, write_error_stats

        checkpoint_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
        results_dir = Path(args.results_dir or checkpoint_dir / f"decode-{args.method}")
        results_dir.mkdir(parents=True, exist_ok=True)
        for name, texts in (("hyps.txt", result.hypotheses), ("refs.txt", result.references)):
            with open(results_dir / name, "w", encoding="utf-8") as f:
                f.writelines(f"{uid}\t{text}\n" for uid, text in texts.items())
        wer = compute_wer(result.references, result.hypotheses, unit=scoring_unit(tokenizer, args.chars))
        write_error_stats(results_dir / "errs.txt", wer)
        if result.speakers:
            # Kaldi's utt2spk beside the texts, so `asr wer --utt2spk` can rescore; the table shows
            # which voices the errors come from.
            with open(results_dir / "utt2spk", "w", encoding="utf-8") as f:
                f.writelines(f"{uid} {speaker}\n" for uid, speaker in result.speakers.items())
            table = format_group_table(wer_by_group(wer, result.speakers))
            (results_dir / "wer_by_speaker.txt").write_text(table + "\n", encoding="utf-8")
            log.info("error rate per speaker in %s", results_dir / "wer_by_speaker.txt")
        print(wer.summary_line())
    if errors:
        print(f"{len(errors)} input(s) could not be decoded:", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
