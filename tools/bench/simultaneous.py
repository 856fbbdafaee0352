"""WER against latency for simultaneous recognition: EDAtt and AlignAtt on an attention decoder, and a
chunked transducer, on the same cuts.

Every point decodes every cut and scores it twice: WER (words), and SimulEval's latency metrics over
words (AL, LAAL, AP, DAL, each also computation-aware: ``_CA``), in ms, with the emission time of a word
the audio received when it was committed (:mod:`asr.decoding.simultaneous`). The transducer streams the
cut's audio through an :class:`asr.OnlineRecognizer` one chunk at a time
(:func:`asr.decoding.simultaneous.stream_emission_times`), so both families are timed the same way. All
points run in this process on the threads given, one after the other.

    .venv/bin/python tools/bench/simultaneous.py --aed-checkpoint exp/aed/checkpoint-1500.pt \\
        --transducer-checkpoint exp/causal/checkpoint-1500.pt --average-batches 500 \\
        --cuts data/synth/fbank/synth_cuts_test.jsonl.gz

Prints a table (one row per point) and writes JSON.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from asr.checkpoint import load_model  # noqa: E402
from asr.decoding.simultaneous import stream_emission_times  # noqa: E402
from asr.inference.offline import scoring_unit, utterances_from_cuts  # noqa: E402
from asr.inference.options import DecodingOptions  # noqa: E402
from asr.inference.recognizer import Recognizer  # noqa: E402
from asr.metrics.latency import UtteranceTiming, corpus_latency_scores  # noqa: E402
from asr.wer import compute_wer  # noqa: E402


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def score(
    hypotheses: dict[str, str], references: dict[str, str], timings: dict[str, UtteranceTiming], unit: str
) -> dict[str, float]:
    wer = compute_wer(references, hypotheses, unit=unit)
    return {"wer": 100 * wer.wer, **corpus_latency_scores(timings.values())}


def attention_point(model, cuts: str, options: DecodingOptions) -> dict[str, float]:
    """Decode ``cuts`` with ``options`` (edatt or alignatt) and score WER and latency."""
    recognizer = Recognizer(model, options)
    errors: list[str] = []
    emitted = {}
    result = recognizer.decode(utterances_from_cuts(cuts, errors), errors, lambda uid, res: emitted.update({uid: res}))
    if errors:
        raise SystemExit("; ".join(errors))
    timings = {
        uid: UtteranceTiming(
            res.word_emission_ms,
            1000 * result.audio_seconds_by_id[uid],
            len(result.references[uid].split()),
            res.word_elapsed_ms,
        )
        for uid, res in emitted.items()
    }
    row = score(result.hypotheses, result.references, timings, scoring_unit(model.tokenizer, None))
    row["rtf"] = result.real_time_factor
    return row


def transducer_point(model, cuts: str, chunk_size: int, left_context_frames: int | None) -> dict[str, float]:
    """Stream each cut's audio through a chunked greedy transducer and score WER and latency."""
    from asr.data.manifests import load_cuts
    from asr.streaming.online import OnlineRecognizer

    options = DecodingOptions(method="greedy", chunk_size=chunk_size, left_context_frames=left_context_frames)
    recognizer = OnlineRecognizer(model, options)
    hypotheses, references, timings = {}, {}, {}
    audio_seconds = compute_seconds = 0.0
    for cut in load_cuts(cuts):
        samples = cut.load_audio()[0]
        started = time.perf_counter()
        out = stream_emission_times(recognizer, samples, cut.sampling_rate)
        compute_seconds += time.perf_counter() - started
        audio_seconds += cut.duration
        references[cut.id] = " ".join(s.text for s in cut.supervisions if s.text)
        hypotheses[cut.id] = out.text
        timings[cut.id] = out.timing(len(references[cut.id].split()))
    row = score(hypotheses, references, timings, scoring_unit(model.tokenizer, None))
    row["rtf"] = compute_seconds / audio_seconds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cuts", help="CutSet with reference texts (and audio, for the transducer)")
    parser.add_argument("--aed-checkpoint", help="a checkpoint with an attention decoder (edatt/alignatt rows)")
    parser.add_argument("--transducer-checkpoint", help="a causal transducer checkpoint (chunked rows)")
    parser.add_argument("--average-batches", type=int, default=None, help="decode models averaged over N batches")
    parser.add_argument("--alphas", type=floats, default=floats("0.6,0.4,0.2,0.1,0.05,0.03"))
    parser.add_argument("--lambda-frames", type=int, default=2)
    parser.add_argument("--align-frames", type=ints, default=ints("2,4,8,14"))
    parser.add_argument("--step-ms", type=float, default=200.0)
    parser.add_argument("--beam", type=int, default=4, help="beam of the search behind the policies")
    parser.add_argument("--chunk-sizes", type=ints, default=ints("16,32,64"), help="transducer chunks (frames)")
    parser.add_argument("--left-context-frames", type=int, default=None)
    parser.add_argument(
        "--every", type=int, default=1, help="decode every N-th cut only (a subset spread over the split)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(REPO / "tools/bench/results/simultaneous.json"))
    parser.add_argument("--append", action="store_true", help="add the rows to those already in --json")
    args = parser.parse_args()
    if not (args.aed_checkpoint or args.transducer_checkpoint) or not args.cuts:
        # Nothing to measure without trained models (`make bench` runs every script with its defaults).
        print("simultaneous.py: give --cuts and --aed-checkpoint and/or --transducer-checkpoint; nothing measured")
        return
    torch.set_num_threads(args.threads)
    cuts_path = args.cuts
    if args.every > 1:
        from lhotse import CutSet

        from asr.data.manifests import load_cuts

        subset = tempfile.NamedTemporaryFile(suffix=".jsonl.gz", delete=False)
        CutSet.from_cuts(list(load_cuts(args.cuts))[:: args.every]).to_file(subset.name)
        atexit.register(os.unlink, subset.name)
        args.cuts = subset.name

    rows: list[dict] = []
    runs: list[dict] = []
    if args.append and Path(args.json).exists():
        previous = json.loads(Path(args.json).read_text())
        rows, runs = previous["rows"], previous["runs"]

    def report(row: dict) -> None:
        rows.append(row)
        print(
            f"{row['system']:<34} WER {row['wer']:6.2f}%  LAAL {row['LAAL']:6.0f}  LAAL_CA {row['LAAL_CA']:6.0f}"
            f"  AL {row['AL']:6.0f}  DAL {row['DAL']:6.0f}  RTF {row['rtf']:.3f}",
            flush=True,
        )

    if args.aed_checkpoint:
        model = load_model(args.aed_checkpoint, torch.device("cpu"), None, None, args.average_batches)
        common = {"step_ms": args.step_ms, "beam": args.beam}
        for alpha in args.alphas:
            options = DecodingOptions(method="edatt", alpha=alpha, lambda_frames=args.lambda_frames, **common)
            row = attention_point(model, args.cuts, options)
            report(
                {
                    "system": f"EDAtt alpha={alpha:g} lambda={args.lambda_frames}",
                    "method": "edatt",
                    "alpha": alpha,
                    **common,
                    **row,
                }
            )
        for frames in args.align_frames:
            options = DecodingOptions(method="alignatt", align_frames=frames, **common)
            row = attention_point(model, args.cuts, options)
            report({"system": f"AlignAtt f={frames}", "method": "alignatt", "align_frames": frames, **common, **row})
    if args.transducer_checkpoint:
        model = load_model(args.transducer_checkpoint, torch.device("cpu"), None, None, args.average_batches)
        for chunk in args.chunk_sizes:
            row = transducer_point(model, args.cuts, chunk, args.left_context_frames)
            report(
                {"system": f"chunked transducer, chunk {chunk}", "method": "chunked_greedy", "chunk_size": chunk, **row}
            )
    runs.append(
        {
            "machine": platform.processor() or platform.machine(),
            "threads": args.threads,
            "cuts": cuts_path,
            "every": args.every,
            "aed_checkpoint": args.aed_checkpoint,
            "transducer_checkpoint": args.transducer_checkpoint,
            "average_batches": args.average_batches,
            "step_ms": args.step_ms,
            "beam": args.beam,
        }
    )
    out = {"runs": runs, "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
