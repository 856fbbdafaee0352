"""Streaming recognition cost: the OnlineRecognizer's compute per chunk and real-time factor for 1, 4, 16 and
32 concurrent streams decoded in one batch, and the delay from audio to partial result.

A causal ``zipformer-xs`` transducer (its architecture; weights from ``--checkpoint`` or random, which cost
the same) decodes streams fed in 100 ms pieces, each stream its own clip (``--cuts`` audio, or generated
noise), every stream's ready chunk decoded together in one ``decode_streams`` call. Per concurrency it
reports the mean and p95 compute time of one decode step, the real-time factor (compute seconds / audio
seconds of all streams), and the real-time load: a step's time over the chunk's duration (below 1, every
stream is served in real time).

Emission delay, with streams paced in real time: a token emitted at encoder frame ``t`` needs the audio up
to the end of that frame; the delay is the wall time from that audio's arrival (the piece that completed
it) to the decode step that first shows the token in a partial result: the chunk's wait for its
look-ahead plus queueing plus compute. (A word's acoustic end lies before its emission frame; with a trained
model the delay from the word's last sample adds the model's own emission lag.)

Backends (``--backend torch,onnxruntime``): the same OnlineRecognizer over the torch model and over its
streaming ONNX export run by onnxruntime (``--export-dir``, or the model exported into a temporary directory
with the chunk and left context given here), on the same streams, reported side by side; ``--threads`` is
torch's threads and onnxruntime's intra-op threads per graph. ``torch-compiled`` is the torch model with
``OnlineRecognizer(..., compile=True)``: its compilation (one graph for a single stream, one for 2-15 streams,
one from 16 on) happens in warm-up steps on 1, 2 and 16 streams before anything is timed.

    .venv/bin/python tools/bench/streaming.py [--threads 1] [--streams 1,4,16,32] [--seconds 20]
        [--backend torch,torch-compiled,onnxruntime [--export-dir D]]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asr.data.tokenizer import CharTokenizer
from asr.inference import DecodingOptions
from asr.models import build_model
from asr.streaming import OnlineRecognizer

PIECE_SECONDS = 0.1


def make_model(checkpoint: str | None):
    if checkpoint:
        from asr.checkpoint import load_model

        return load_model(checkpoint)
    tokens = {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    torch.manual_seed(0)
    model = build_model("zipformer-xs", len(tokens), heads=("transducer",), causal=True).eval()
    model.tokenizer = CharTokenizer(tokens)
    return model


def clips(num: int, seconds: float, cuts: str | None) -> list[np.ndarray]:
    if cuts:
        from lhotse import load_manifest_lazy

        from asr.data.audio import load_audio

        audio = np.concatenate([load_audio(c.recording.sources[0].source, 16000) for c in load_manifest_lazy(cuts)])
        length = int(seconds * 16000)
        return [np.roll(audio, -i * 16000 * 3)[:length] for i in range(num)]
    rng = np.random.default_rng(0)
    return [(0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32) for _ in range(num)]


def throughput(rec: OnlineRecognizer, audio: list[np.ndarray]) -> dict:
    """Feed every stream all its audio, then time each batched decode step until all are done."""
    streams = [rec.create_stream() for _ in audio]
    for stream, clip in zip(streams, audio):
        stream.accept_waveform(16000, clip)
        stream.input_finished()
    rec.decode_streams(streams[:1])  # warm-up: first-call allocations
    steps = []
    while True:
        ready = [s for s in streams if rec.is_ready(s)]
        if not ready:
            break
        start = time.perf_counter()
        rec.decode_streams(ready)
        steps.append(time.perf_counter() - start)
    audio_seconds = sum(clip.size for clip in audio) / 16000
    rtf = sum(steps) / audio_seconds
    return {
        "streams": len(audio),
        "steps": len(steps),
        "step_ms_mean": 1000 * float(np.mean(steps)),
        "step_ms_p95": 1000 * float(np.percentile(steps, 95)),
        "rtf": rtf,
        # A decode step serves one chunk of every stream: below 1, the machine keeps up with all of them.
        "realtime_load": float(np.mean(steps)) / rec.chunk_seconds,
    }


def emission_delay(rec: OnlineRecognizer, audio: list[np.ndarray]) -> dict:
    """Streams paced in real time (100 ms pieces); per emitted token, the wall time from the arrival of the
    audio its emission frame needs to the decode step that shows it."""
    streams = [rec.create_stream() for _ in audio]
    piece = int(PIECE_SECONDS * 16000)
    num_pieces = max(clip.size for clip in audio) // piece
    arrival: list[float] = []  # wall time at which piece k arrived
    delays: list[float] = []
    seen = [0] * len(streams)
    start = time.perf_counter()
    for k in range(num_pieces):
        target = start + k * PIECE_SECONDS
        now = time.perf_counter()
        if now < target:
            time.sleep(target - now)
        arrival.append(time.perf_counter())
        for stream, clip in zip(streams, audio):
            stream.accept_waveform(16000, clip[k * piece : (k + 1) * piece])
        while any(rec.is_ready(s) for s in streams):
            rec.decode_streams(streams)
        shown = time.perf_counter()
        for i, stream in enumerate(streams):
            result = rec.get_result(stream)
            for t in result.timestamps[seen[i] :]:
                needed = min(int((t + rec.frame_seconds) / PIECE_SECONDS - 1e-9), len(arrival) - 1)
                delays.append(shown - arrival[needed])
            seen[i] = len(result.timestamps)
    if not delays:
        return {"tokens": 0}
    return {
        "tokens": len(delays),
        "delay_ms_median": 1000 * float(np.median(delays)),
        "delay_ms_p95": 1000 * float(np.percentile(delays, 95)),
    }


def recognizers(args: argparse.Namespace, options: DecodingOptions, work_dir: Path) -> dict[str, OnlineRecognizer]:
    """backend -> its recognizer; onnxruntime on ``--export-dir`` or on the model exported into ``work_dir``."""
    recs: dict[str, OnlineRecognizer] = {}
    model = None
    for backend in args.backend.split(","):
        if backend == "torch":
            model = make_model(args.checkpoint) if model is None else model
            recs[backend] = OnlineRecognizer(model, options, endpoint=None)
        elif backend == "torch-compiled":
            model = make_model(args.checkpoint) if model is None else model
            recs[backend] = OnlineRecognizer(model, options, endpoint=None, compile=True)
            start = time.perf_counter()
            # One stream gets a graph of its own under dynamic shapes, and torch's convolution picks its
            # memory format by batch size below or from 16 on: three graphs cover every concurrency.
            for streams in (1, 2, 16):
                throughput(recs[backend], clips(streams, 2.0, None))
            print(f"torch-compiled: compiled in {time.perf_counter() - start:.0f} s (warm-up, not timed)")
        elif backend == "onnxruntime":
            from asr.export import export_onnx
            from asr.export.backend import load_onnx_model

            export_dir = args.export_dir
            if export_dir is None:
                model = make_model(args.checkpoint) if model is None else model
                export_dir = work_dir / "onnx"
                export_onnx(
                    model,
                    export_dir,
                    streaming=True,
                    chunk_size=args.chunk_size,
                    left_context_frames=args.left_context_frames,
                )
            onnx_model = load_onnx_model(export_dir, num_threads=args.threads)
            recs[backend] = OnlineRecognizer(onnx_model, options, endpoint=None)
        else:
            raise SystemExit(f"--backend: {backend!r} is not one of torch, torch-compiled, onnxruntime")
    return recs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a causal model (default: random zipformer-xs weights)")
    parser.add_argument("--cuts", default=None, help="a CutSet whose audio the streams play (default: noise)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", default="1,4,16,32")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream in the throughput runs")
    parser.add_argument("--delay-streams", default="1,16", help="concurrencies of the real-time-paced runs")
    parser.add_argument("--delay-seconds", type=float, default=8.0)
    parser.add_argument("--chunk-size", type=int, default=16, help="in 20 ms frames (16 = 320 ms)")
    parser.add_argument("--left-context-frames", type=int, default=64)
    parser.add_argument("--method", default="greedy", choices=("greedy", "modified_beam_search"))
    parser.add_argument("--backend", default="torch", help="comma list of torch, torch-compiled, onnxruntime")
    parser.add_argument(
        "--export-dir", type=Path, default=None, help="a streaming `asr export onnx` dir (default: export the model)"
    )
    parser.add_argument("--json", type=Path, default=Path("tools/bench/results/streaming.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = DecodingOptions(
        method=args.method, chunk_size=args.chunk_size, left_context_frames=args.left_context_frames
    )
    with tempfile.TemporaryDirectory() as work_dir:
        recs = recognizers(args, options, Path(work_dir))
        first = next(iter(recs.values()))
        print(
            f"chunk {first.chunk_seconds * 1000:.0f} ms, left context {args.left_context_frames} frames, "
            f"{args.threads} thread(s), {args.method}"
        )
        results = {}
        for backend, rec in recs.items():
            results[backend] = run_backend(backend, rec, args)
    if len(recs) > 1:
        print_side_by_side(results)
    result = {
        "machine": platform.processor() or platform.machine(),
        "model": args.checkpoint or "zipformer-xs causal, random weights",
        "export_dir": str(args.export_dir) if args.export_dir else None,
        "threads": args.threads,
        "method": args.method,
        "chunk_ms": first.chunk_seconds * 1000,
        "left_context_frames": args.left_context_frames,
        "backends": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


def run_backend(backend: str, rec: OnlineRecognizer, args: argparse.Namespace) -> dict:
    """Throughput per concurrency and emission delay of one backend, printed as they come."""
    rows = []
    print(f"\n[{backend}]")
    print(f"{'streams':>7} {'steps':>6} {'step ms':>8} {'p95 ms':>7} {'RTF':>7} {'real-time load':>15}")
    for n in map(int, args.streams.split(",")):
        row = throughput(rec, clips(n, args.seconds, args.cuts))
        rows.append(row)
        print(
            f"{n:>7} {row['steps']:>6} {row['step_ms_mean']:>8.1f} {row['step_ms_p95']:>7.1f} {row['rtf']:>7.4f} "
            f"{row['realtime_load']:>15.2f}"
        )
    delays = []
    print(f"{'streams':>7} {'tokens':>6} {'delay median ms':>16} {'p95 ms':>7}  (real-time pace, 100 ms pieces)")
    for n in map(int, args.delay_streams.split(",")):
        row = {"streams": n, **emission_delay(rec, clips(n, args.delay_seconds, args.cuts))}
        delays.append(row)
        if row["tokens"]:
            print(f"{n:>7} {row['tokens']:>6} {row['delay_ms_median']:>16.0f} {row['delay_ms_p95']:>7.0f}")
        else:
            print(f"{n:>7} {0:>6}  (no tokens emitted)")
    return {"throughput": rows, "emission_delay": delays}


def print_side_by_side(results: dict[str, dict]) -> None:
    """RTF and mean step time per concurrency, one column pair per backend, and each backend's RTF over the
    first's."""
    names = list(results)
    print("\n" + f"{'streams':>7} " + " ".join(f"{name + ' RTF':>16} {'step ms':>8}" for name in names), end="")
    print("".join(f" {name + '/' + names[0]:>24}" for name in names[1:]))
    rows = zip(*(results[name]["throughput"] for name in names))
    for per_backend in rows:
        line = f"{per_backend[0]['streams']:>7} "
        line += " ".join(f"{row['rtf']:>16.4f} {row['step_ms_mean']:>8.1f}" for row in per_backend)
        line += "".join(f" {row['rtf'] / per_backend[0]['rtf']:>24.2f}" for row in per_backend[1:])
        print(line)


if __name__ == "__main__":
    main()
