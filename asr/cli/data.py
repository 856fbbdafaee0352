"""``asr data``: the offline corpus (``synth``), corpus manifests (``prepare``), features (``fbank``) and
tokenizers (``tokenizer``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from asr.cli.common import HelpFormatter, add_logging_options, make_parser, parse

log = logging.getLogger("asr.data")


def synth(argv: list[str] | None = None) -> int:
    from asr.data.acoustics import CODEC_KBPS, KINDS, AugmentConfig
    from asr.data.synth import ENGINES, FESTIVAL_BATCH, LANGUAGES, SPLITS, EngineMissingError, synthesize_corpus

    parser = make_parser(
        "data synth", "Build the offline TTS speech corpus: 16 kHz wavs and lhotse train/dev/test manifests."
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="output directory (audio/ and synth_*.jsonl.gz)")
    parser.add_argument("--num-utts", type=int, required=True, help="number of utterances over all splits")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sentence/voice/speed plan")
    parser.add_argument("--num-workers", type=int, default=None, help="worker processes (default: the usable cores)")
    parser.add_argument(
        "--engines",
        default=None,
        help=f"comma-separated subset of {','.join(ENGINES)} (default: all of the language);"
        " the mix is renormalised over them",
    )
    parser.add_argument(
        "--language",
        choices=sorted(LANGUAGES),
        default="en",
        help="en: English from four engines (default); cmn: Mandarin from espeak-ng pinyin voices",
    )
    parser.add_argument("--festival-batch", type=int, default=FESTIVAL_BATCH, help="utterances per festival process")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--augment",
        default=None,
        help=f"acoustic augmentation: comma-separated kinds of {','.join(KINDS)}, or 'all' (default: none, clean"
        " audio); each kind is drawn per utterance with its probability (asr.data.acoustics.AugmentConfig) and"
        " the supervisions record every transform applied",
    )
    parser.add_argument(
        "--augment-splits",
        default="train",
        help=f"comma-separated splits of {','.join(SPLITS)} that --augment and --vary-voices change",
    )
    parser.add_argument(
        "--vary-voices",
        action="store_true",
        help="draw engine options per utterance that vary each voice: pitch level and range (espeak-ng, flite,"
        " festival's diphone voices), pauses between words (espeak-ng), delivery and rhythm (piper); recorded"
        " in the supervisions",
    )
    parser.add_argument(
        "--augment-codecs",
        default=",".join(CODEC_KBPS),
        help="comma-separated codecs the codec kind draws from (opus and g722 need ffmpeg)",
    )
    args = parse(parser, argv)

    def comma_list(option: str, value: str, choices: tuple[str, ...]) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        unknown = [v for v in items if v not in choices]
        if unknown or not items:
            parser.error(f"{option}: unknown {unknown or 'empty list'}; choose from {','.join(choices)}")
        return items

    augment = None
    if args.augment is not None:
        kinds = KINDS if args.augment.strip() == "all" else comma_list("--augment", args.augment, KINDS)
        codecs = comma_list("--augment-codecs", args.augment_codecs, tuple(CODEC_KBPS))
        augment = AugmentConfig(kinds=kinds, codecs=codecs)
    augment_splits = comma_list("--augment-splits", args.augment_splits, SPLITS)

    lang = LANGUAGES[args.language]
    engines = None
    if args.engines is not None:
        engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = [e for e in engines if e not in lang.voices]
        if unknown or not engines:
            parser.error(
                f"--engines: unknown {unknown or 'empty list'} for --language {args.language};"
                f" choose from {','.join(lang.voices)}"
            )
    try:
        cuts = synthesize_corpus(
            args.out_dir,
            args.num_utts,
            args.seed,
            num_workers=args.num_workers,
            engines=engines,
            festival_batch=args.festival_batch,
            progress=not args.no_progress,
            language=args.language,
            augment=augment,
            augment_splits=augment_splits,
            vary_voices=args.vary_voices,
        )
    except (EngineMissingError, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"asr data synth: error: {e}", file=sys.stderr)
        return 1
    for split, cut_set in cuts.items():
        hours = sum(c.duration for c in cut_set) / 3600
        speakers = len({c.supervisions[0].speaker for c in cut_set})
        manifest = args.out_dir / f"{lang.prefix}_cuts_{split}.jsonl.gz"
        print(f"{split}: {len(cut_set)} utterances, {hours:.2f} h, {speakers} voices -> {manifest}")
    return 0


def _prepare_parser() -> argparse.ArgumentParser:
    from asr.data.prepare import CORPUS_PARTS

    parser = make_parser(
        "data prepare",
        "Make lhotse manifests (recordings, supervisions, cuts) of a corpus, or download it.",
        logging_options=False,
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="{librispeech,aishell,musan,download}")
    for corpus, layout in (
        ("librispeech", "the LibriSpeech directory holding dev-clean/, train-clean-100/, ..."),
        ("aishell", "the directory holding data_aishell/"),
        ("musan", "the musan directory holding music/, speech/, noise/"),
    ):
        p = sub.add_parser(corpus, help=f"manifests of {corpus}", formatter_class=HelpFormatter)
        add_logging_options(p, default="warning")
        p.add_argument("--corpus-dir", type=Path, required=True, help=layout)
        p.add_argument("--out-dir", type=Path, required=True, help="where the manifests are written")
        p.add_argument(
            "--parts",
            nargs="+",
            help=f"parts to prepare (default: {'all present' if corpus == 'librispeech' else 'all'}); "
            f"known: {' '.join(CORPUS_PARTS[corpus])}",
        )
        if corpus == "librispeech":
            p.add_argument("--num-workers", type=int, default=1, help="threads reading audio headers")
    p = sub.add_parser("download", help="download a corpus (needs the internet)", formatter_class=HelpFormatter)
    add_logging_options(p, default="warning")
    p.add_argument("corpus", choices=sorted(CORPUS_PARTS))
    p.add_argument("--dl-dir", type=Path, required=True, help="the corpus is unpacked under this directory")
    p.add_argument("--parts", nargs="+", help="LibriSpeech parts to fetch (default: the full 960 h + dev/test)")
    p.add_argument("--mirror", help="base URL replacing https://www.openslr.org/resources")
    return parser


def prepare(argv: list[str] | None = None) -> int:
    from lhotse.audio.utils import AudioLoadingError

    from asr.data.prepare import PrepareError, download, prepare_aishell, prepare_librispeech, prepare_musan

    args = parse(_prepare_parser(), argv)
    try:
        if args.action == "download":
            corpus_dir = download(args.corpus, args.dl_dir, args.parts, args.mirror)
            print(f"{args.corpus} is in {corpus_dir}")
        elif args.action == "librispeech":
            prepare_librispeech(args.corpus_dir, args.out_dir, args.parts, args.num_workers)
        elif args.action == "aishell":
            prepare_aishell(args.corpus_dir, args.out_dir, args.parts)
        else:
            prepare_musan(args.corpus_dir, args.out_dir, args.parts)
    except PrepareError as e:
        print(f"asr data prepare {args.action}: error: {e}", file=sys.stderr)
        return 1
    except AudioLoadingError as e:
        # lhotse's message names the file on its first line; the rest is per-backend detail.
        first_line = str(e).splitlines()[0].removesuffix(" Details:")
        print(f"asr data prepare {args.action}: error: unreadable audio: {first_line}", file=sys.stderr)
        return 1
    return 0


def fbank(argv: list[str] | None = None) -> int:
    from asr.data.features import SPEED_PERTURB_MODES

    parser = make_parser("data fbank", "Compute 80-dim log-mel fbank for a CutSet and store it (lilcom chunks).")
    parser.add_argument(
        "--cuts", type=Path, required=True, help="input CutSet, e.g. data/manifests/x_cuts_train.jsonl.gz"
    )
    parser.add_argument("--out", type=Path, required=True, help="output CutSet with features attached (.jsonl.gz)")
    parser.add_argument(
        "--storage-dir",
        type=Path,
        default=None,
        help="where the feature files go (default: next to --out, named after it)",
    )
    parser.add_argument("--num-workers", type=int, default=1, help="parallel processes")
    parser.add_argument(
        "--speed-perturb",
        nargs="?",
        const="copies",
        default="off",
        choices=SPEED_PERTURB_MODES,
        help="'copies' (the default when given alone): add 0.9x and 1.1x copies, 3x the data; 'one-of': "
        "each cut at one of 0.9x/1x/1.1x, the same cuts and hours (drawn with --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the 'one-of' speed draw")
    args = parse(parser, argv)
    import torch

    from asr.data.features import compute_and_store_fbank, default_storage_dir
    from asr.data.manifests import ManifestError, load_cuts, save_manifest

    if not args.cuts.is_file():
        parser.error(f"--cuts {args.cuts}: no such file")
    # Feature extraction is one small matrix product per frame; many threads per process only contend.
    torch.set_num_threads(1)
    try:
        cuts = load_cuts(args.cuts)
    except ManifestError as error:
        parser.error(f"--cuts {error}")
    storage_dir = args.storage_dir if args.storage_dir is not None else default_storage_dir(args.out)
    storage_dir.mkdir(parents=True, exist_ok=True)
    with_feats = compute_and_store_fbank(
        cuts,
        storage_dir / "feats",
        num_workers=args.num_workers,
        speed_perturb=args.speed_perturb,
        seed=args.seed,
    )
    if len(with_feats) == 0:
        log.error("no cut of %s could be read; nothing written", args.cuts)
        return 1
    save_manifest(with_feats, args.out)  # whole or not at all: an interrupted run leaves no torn manifest
    hours = sum(c.duration for c in with_feats) / 3600
    log.info("wrote %s: %d cuts, %.2f h of features in %s", args.out, len(with_feats), hours, storage_dir)
    return 0


def tokenizer(argv: list[str] | None = None) -> int:
    parser = make_parser("data tokenizer", "Make a lang dir: BPE model or character table.", logging_options=False)
    kinds = parser.add_subparsers(dest="kind", required=True)
    bpe = kinds.add_parser("bpe", help="train a sentencepiece model (LANG/bpe.model, tokens.txt, transcript_words.txt)")
    chars = kinds.add_parser("chars", help="build a character table (LANG/tokens.txt), spaces dropped")
    for sub in (bpe, chars):
        sub.formatter_class = HelpFormatter
        add_logging_options(sub)
        source = sub.add_mutually_exclusive_group(required=True)
        source.add_argument("--text", type=Path, help="transcripts, one sentence a line")
        source.add_argument("--cuts", type=Path, help="a CutSet whose supervision texts are the transcripts")
        sub.add_argument("--out-dir", type=Path, required=True, help="the lang dir to write")
    bpe.add_argument("--vocab-size", type=int, required=True)
    bpe.add_argument(
        "--model-type",
        choices=["unigram", "bpe"],
        default="unigram",
        help="sentencepiece algorithm (unigram is what icefall's lang_bpe dirs use)",
    )
    args = parse(parser, argv)
    from asr.data.tokenizer import SPECIAL_SYMBOLS, build_char_tokenizer, cut_texts, train_bpe
    from asr.textio import read_lines

    source_path = args.text if args.text is not None else args.cuts
    if not source_path.is_file():
        parser.error(f"{'--text' if args.text is not None else '--cuts'} {source_path}: no such file")
    texts = read_lines(args.text) if args.text is not None else cut_texts(args.cuts)

    if args.kind == "chars":
        tokenizer = build_char_tokenizer(texts, args.out_dir)
        log.info("wrote %s: %d tokens", args.out_dir / "tokens.txt", tokenizer.vocab_size)
        return 0

    if args.vocab_size <= len(SPECIAL_SYMBOLS):
        parser.error(f"--vocab-size must be larger than {len(SPECIAL_SYMBOLS)}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    transcript = args.out_dir / "transcript_words.txt"
    if args.text is not None and args.text.resolve() == transcript.resolve():
        num_lines = sum(1 for _ in texts)  # training on the lang dir's own transcript: nothing to copy
    else:
        num_lines = 0
        with open(transcript, "w", encoding="utf-8") as f:
            for text in texts:
                f.write(text + "\n")
                num_lines += 1
    if num_lines == 0:
        log.error("%s holds no transcripts", source_path)
        return 1
    try:
        tokenizer = train_bpe(transcript, args.out_dir, args.vocab_size, args.model_type)
    except ValueError as error:
        log.error("transcripts from %s: %s", source_path, error)
        return 1
    log.info(
        "wrote %s and tokens.txt: %d tokens from %d sentences",
        args.out_dir / "bpe.model",
        tokenizer.vocab_size,
        num_lines,
    )
    return 0


def real_speech(argv: list[str] | None = None) -> int:
    parser = make_parser(
        "data real-speech",
        "Manifest of real human speech for evaluation only: the Asterisk telephony prompts (one US English "
        "speaker, read, 16 kHz G.722; Debian packages asterisk-core-sounds-en and -en-g722, CC-BY-SA-3.0).",
    )
    parser.add_argument("--out-dir", type=Path, required=True, help="where audio/ and asterisk_cuts.jsonl.gz go")
    args = parse(parser, argv)
    from asr.data.real_speech import RealSpeechMissingError, asterisk_prompts_cuts

    try:
        cuts = asterisk_prompts_cuts(args.out_dir)
    except RealSpeechMissingError as error:
        print(f"asr data real-speech: {error}", file=sys.stderr)
        return 1
    seconds = sum(c.duration for c in cuts)
    log.info("wrote %s: %d prompts, %.1f min", args.out_dir / "asterisk_cuts.jsonl.gz", len(cuts), seconds / 60)
    return 0
