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

    .venv/bin/python tools/bench/streaming.py [--threads 1] [--streams 1,4,16,32] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import platform
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
    parser.add_argument("--json", type=Path, default=Path("tools/bench/results/streaming.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = make_model(args.checkpoint)
    options = DecodingOptions(
        method=args.method, chunk_size=args.chunk_size, left_context_frames=args.left_context_frames
    )
    rec = OnlineRecognizer(model, options, endpoint=None)
    print(
        f"chunk {rec.chunk_seconds * 1000:.0f} ms, left context {args.left_context_frames} frames, "
        f"{args.threads} thread(s), {args.method}"
    )
    rows = []
    print(f"{'streams':>7} {'steps':>6} {'step ms':>8} {'p95 ms':>7} {'RTF':>7} {'real-time load':>15}")
    for n in map(int, args.streams.split(",")):
        row = throughput(rec, clips(n, args.seconds, args.cuts))
        rows.append(row)
        print(
            f"{n:>7} {row['steps']:>6} {row['step_ms_mean']:>8.1f} {row['step_ms_p95']:>7.1f} {row['rtf']:>7.4f} "
            f"{row['realtime_load']:>15.2f}"
        )
    delays = []
    print(f"\n{'streams':>7} {'tokens':>6} {'delay median ms':>16} {'p95 ms':>7}  (real-time pace, 100 ms pieces)")
    for n in map(int, args.delay_streams.split(",")):
        row = {"streams": n, **emission_delay(rec, clips(n, args.delay_seconds, args.cuts))}
        delays.append(row)
        if row["tokens"]:
            print(f"{n:>7} {row['tokens']:>6} {row['delay_ms_median']:>16.0f} {row['delay_ms_p95']:>7.0f}")
        else:
            print(f"{n:>7} {0:>6}  (no tokens emitted)")
    result = {
        "machine": platform.processor() or platform.machine(),
        "model": args.checkpoint or "zipformer-xs causal, random weights",
        "threads": args.threads,
        "method": args.method,
        "chunk_ms": rec.chunk_seconds * 1000,
        "left_context_frames": args.left_context_frames,
        "throughput": rows,
        "emission_delay": delays,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
