"""``asr decode``: recognise audio files or a CutSet with a trained model.

Audio files of any sample rate (wav, flac, ogg, mp3 where libsndfile reads it) are resampled to 16 kHz; a
file that cannot be read is reported by name and the others are still decoded (exit status 1). With
``--cuts`` the references are scored: ``OUT/hyps.txt``, ``OUT/refs.txt``, ``OUT/errs.txt`` and a final
``WER ...`` line, or ``CER ...`` when scoring characters: the default for a model with a character table
(Mandarin transcripts have no spaces to split words at), forced either way by ``--chars`` / ``--no-chars``.
Where the cuts name speakers, ``OUT/utt2spk`` and ``OUT/wer_by_speaker.txt`` (each speaker's error rate and
share of the errors, worst first) are written too. ``--chunk-size`` runs a causal model chunk by chunk
through its streaming forward. Modified beam search takes a token n-gram LM (``--lm``, shallow fusion) and
a word list (``--lexicon``: a penalty per hypothesis word not in it, see :mod:`asr.decoding.lexicon`).
A model with an attention decoder decodes with ``attention_beam_search`` (joint with CTC by ``--ctc-weight``)
or ``attention_rescoring`` of the transducer's n-best list.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.cli.common import make_parser, parse
from asr.inference.options import (
    DEFAULT_LM_BONUS,
    DEFAULT_LM_SCALE,
    DEFAULT_OOV_PENALTY,
    DEFAULT_WORD_BONUS,
    DEFAULT_WORD_LM_SCALE,
    METHODS,
    SCORER_METHODS,
    SIMULTANEOUS_METHODS,
)

log = logging.getLogger("asr.decode")


def build_parser():
    parser = make_parser("decode", __doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument(
        "--checkpoint", required=True, help="training or model checkpoint, or an experiment dir (its newest checkpoint)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cuts", help="a CutSet (jsonl.gz) with reference texts")
    source.add_argument("audio", nargs="*", default=[], help="audio files")
    parser.add_argument("--method", choices=METHODS, default="greedy")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="decode a causal model chunk by chunk; chunk in the encoder's frames: 50 Hz for the "
        "Zipformer (32 = 640 ms), 25 Hz for the Conformer and Transformer",
    )
    parser.add_argument(
        "--left-context-frames",
        type=int,
        default=None,
        help="with --chunk-size: the left context, in the same frames (default: the model's)",
    )
    parser.add_argument("--lang-dir", default=None, help="tokenizer dir (default: the one in the checkpoint)")
    parser.add_argument(
        "--out-dir",
        default=None,
        help="with --cuts: where hyps.txt, refs.txt and errs.txt go (default: decode-METHOD beside the checkpoint)",
    )
    parser.add_argument(
        "--chars",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --cuts: score characters (CER) or words (WER); "
        "default: characters when the model's tokenizer is a character table",
    )
    parser.add_argument(
        "--average-from",
        default=None,
        help="an earlier checkpoint of the same run: decode the model averaged since then",
    )
    parser.add_argument(
        "--average-batches",
        type=int,
        default=None,
        help="decode the model averaged over about the last N batches of the run: averages "
        "from the checkpoint in the same directory nearest to N batches back",
    )
    parser.add_argument(
        "--lm",
        default=None,
        help="an ARPA n-gram LM over the model's tokens (asr lm train) for shallow fusion; modified_beam_search only",
    )
    parser.add_argument(
        "--lm-scale",
        type=float,
        default=DEFAULT_LM_SCALE,
        help="weight of the LM log-probability (default: best on the synth dev set)",
    )
    parser.add_argument(
        "--lm-final",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the LM's end-of-sentence probability before picking the best hypothesis",
    )
    parser.add_argument(
        "--lm-bonus",
        type=float,
        default=DEFAULT_LM_BONUS,
        help="with --lm: reward per emitted token, against the deletions LM fusion causes "
        "(default: best on the synth dev set)",
    )
    parser.add_argument(
        "--lexicon",
        action="append",
        default=None,
        metavar="FILE",
        help="a word list or text (.gz read as gzip; case matched to the tokens; repeat for "
        "more): modified beam search subtracts --oov-penalty per hypothesis word not in them",
    )
    parser.add_argument(
        "--oov-penalty",
        type=float,
        default=DEFAULT_OOV_PENALTY,
        help="with --lexicon: score penalty per unknown word (default: best on the synth dev set; retune elsewhere)",
    )
    parser.add_argument(
        "--word-lm",
        default=None,
        help="an ARPA n-gram LM over words (asr lm train --words), fused at word ends; needs --lexicon",
    )
    parser.add_argument(
        "--word-lm-scale",
        type=float,
        default=DEFAULT_WORD_LM_SCALE,
        help="weight of the word LM's log-probability (default: tried on the synth dev set)",
    )
    parser.add_argument(
        "--word-bonus",
        type=float,
        default=DEFAULT_WORD_BONUS,
        help="with --word-lm: reward per word, against the deletions the word LM causes "
        "(default: tried on the synth dev set)",
    )
    parser.add_argument(
        "--ctc-weight",
        type=float,
        default=0.0,
        help="attention methods with a CTC head: weight of the CTC score (joint CTC/attention beam search; "
        "the CTC term of attention rescoring)",
    )
    parser.add_argument(
        "--first-pass-weight",
        type=float,
        default=1.0,
        help="attention_rescoring: weight of the transducer score of the n-best (--beam) hypotheses",
    )
    parser.add_argument(
        "--step-ms", type=float, default=200.0, help="edatt/alignatt: audio (ms) that arrives between decoding steps"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=0.6,
        help="edatt: a token waits while its cross-attention on the last --lambda-frames frames is >= alpha",
    )
    parser.add_argument("--lambda-frames", type=int, default=2, help="edatt: the last encoder frames watched")
    parser.add_argument(
        "--align-frames",
        type=int,
        default=4,
        help="alignatt: a token waits while its most-attended encoder frame is among the last F",
    )
    parser.add_argument("--max-frames", type=int, default=30000, help="fbank frames (10 ms) per padded batch")
    parser.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (the GPU when there is one)")
    return parser


def latency_summary(emissions: dict, references: dict[str, str], seconds: dict[str, float]) -> str:
    """SimulEval's AL, LAAL, AP, DAL and their computation-aware variants over the utterances, in ms."""
    from asr.metrics.latency import UtteranceTiming, corpus_latency_scores

    timings = [
        UtteranceTiming(
            res.word_emission_ms,
            1000 * seconds[uid],
            len(references[uid].split()) if uid in references else None,
            res.word_elapsed_ms,
        )
        for uid, res in emissions.items()
    ]
    scores = corpus_latency_scores(timings)
    return "latency (ms): " + ", ".join(f"{k} {v:.0f}" if k[:2] != "AP" else f"{k} {v:.3f}" for k, v in scores.items())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    beam_methods = " or ".join(SCORER_METHODS)
    if args.lm is not None and args.method not in SCORER_METHODS:
        parser.error(f"--lm needs --method {beam_methods} (got {args.method})")
    if args.lexicon is not None and args.method not in SCORER_METHODS:
        parser.error(f"--lexicon needs --method {beam_methods} (got {args.method})")
    if args.word_lm is not None and args.lexicon is None:
        parser.error("--word-lm needs --lexicon (it tells where words end; --oov-penalty 0 for no penalty)")
    if not args.cuts and not args.audio:
        parser.error("give audio files or --cuts")
    if args.average_from is not None and args.average_batches is not None:
        parser.error("give --average-from or --average-batches, not both")
    if args.max_frames < 1:
        parser.error(f"--max-frames must be >= 1, got {args.max_frames}")
    from asr.inference.options import DecodingOptions

    try:
        options = DecodingOptions(
            method=args.method,
            beam=args.beam,
            chunk_size=args.chunk_size,
            left_context_frames=args.left_context_frames,
            lm=args.lm,
            lm_scale=args.lm_scale,
            lm_bonus=args.lm_bonus,
            lm_final=args.lm_final,
            lexicon=tuple(args.lexicon or ()),
            oov_penalty=args.oov_penalty,
            word_lm=args.word_lm,
            word_lm_scale=args.word_lm_scale,
            word_bonus=args.word_bonus,
            ctc_weight=args.ctc_weight,
            first_pass_weight=args.first_pass_weight,
            step_ms=args.step_ms,
            alpha=args.alpha,
            lambda_frames=args.lambda_frames,
            align_frames=args.align_frames,
        )
    except ValueError as error:  # "beam must be ..." -> "--beam must be ..."
        option, _, message = str(error).partition(" ")
        parser.error(f"--{option.replace('_', '-')} {message}")
    import torch

    from asr.checkpoint import load_model
    from asr.data.manifests import ManifestError
    from asr.device import resolve_device
    from asr.inference.offline import utterances_from_cuts, utterances_from_files
    from asr.inference.recognizer import Recognizer
    from asr.inference.result import Result

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        device = resolve_device(args.device, 0)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as error:
        parser.error(f"--device {args.device}: {error}")
    try:
        model = load_model(args.checkpoint, device, args.lang_dir, args.average_from, args.average_batches)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"asr decode: {error}") from None
    if model.tokenizer is None:
        raise SystemExit(f"asr decode: {args.checkpoint} holds no tokenizer; pass --lang-dir")
    tokenizer = model.tokenizer
    try:
        recognizer = Recognizer(model, options, max_frames=args.max_frames)
    except ValueError as error:  # options that do not fit this model, or LM/lexicon files that cannot be read
        parser.error(str(error))
    if args.lexicon is not None:
        log.info("lexicon: %s, penalty %g per unknown word", ", ".join(args.lexicon), args.oov_penalty)
    errors: list[str] = []
    try:
        utterances = utterances_from_cuts(args.cuts, errors) if args.cuts else utterances_from_files(args.audio, errors)
    except ManifestError as error:
        raise SystemExit(f"asr decode: {error}") from None
    emissions: dict[str, Result] = {}  # simultaneous methods: when each word came out

    def on_result(uid: str, res: Result) -> None:
        print(f"{uid}\t{res.text}", flush=True)
        if args.method in SIMULTANEOUS_METHODS:
            emissions[uid] = res

    result = recognizer.decode(utterances, errors, on_result=on_result)
    print(
        f"decoded {len(result.hypotheses)} utterances, {result.audio_seconds:.1f} s of audio, "
        f"real-time factor {result.real_time_factor:.3f}",
        file=sys.stderr,
    )
    if args.cuts:
        from asr.inference.offline import scoring_unit
        from asr.wer import compute_wer, format_group_table, wer_by_group, write_error_stats

        checkpoint_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent
        results_dir = Path(args.out_dir or checkpoint_dir / f"decode-{args.method}")
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
        if emissions:
            with open(results_dir / "emissions.txt", "w", encoding="utf-8") as f:
                for uid, res in emissions.items():
                    timed = " ".join(f"{w.word}@{ms:.0f}" for w, ms in zip(res.words, res.word_emission_ms))
                    f.write(f"{uid}\t{timed}\n")
        print(wer.summary_line())
    if emissions:
        print(latency_summary(emissions, result.references, result.audio_seconds_by_id))
    if errors:
        print(f"{len(errors)} input(s) could not be decoded:", file=sys.stderr)
        for message in errors:
            print(f"  {message}", file=sys.stderr)
        return 1
    return 0
