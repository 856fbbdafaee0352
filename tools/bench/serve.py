"""The streaming server under load: N clients stream synth speech at real-time pace over loopback.

A causal ``zipformer-xs`` transducer (its architecture; random weights, which cost what trained ones do)
serves from ``asr.streaming.server`` in a child process (its decode loop at ``--threads`` torch threads);
this process runs the N websocket clients, each its own clip (synth utterances, espeak, joined to
``--seconds``), starting at random times within the first second, sending 100 ms pieces at the audio's
pace. Per N it reports:

- decode-loop RTF: the loop's compute seconds per second of audio it decoded (all streams), and its load:
  compute seconds per wall second (near 1, the loop is saturated and streams fall behind);
- partial latency, p50/p95: per token, from the send of the piece that completed the audio up to the end of
  the token's encoder frame to the arrival of the first partial result that shows the token (the look-ahead
  wait, queueing and compute; a trained model adds its own emission lag);
- refused streams (past ``--max-streams``), and whether every client's final text equals the offline chunked
  decode of its clip (``asr decode --chunk-size``): no audio lost or reordered.

    .venv/bin/python tools/bench/serve.py [--streams 1,8,16,32,64] [--seconds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from asr.data.tokenizer import CharTokenizer
from asr.inference import DecodingOptions, Recognizer
from asr.models import build_model
from asr.streaming.server import ServerConfig

CHUNK_SIZE, LEFT_CONTEXT = 16, 64  # encoder frames (20 ms): 320 ms chunks, 1.28 s of left context
PIECE_SECONDS = 0.1


def make_model():
    tokens = {"<blk>": 0, "<sos/eos>": 1, "<unk>": 2, **{chr(97 + i): 3 + i for i in range(26)}}
    torch.manual_seed(0)
    model = build_model("zipformer-xs", len(tokens), heads=("transducer",), causal=True).eval()
    model.tokenizer = CharTokenizer(tokens)
    return model


def options() -> DecodingOptions:
    return DecodingOptions(chunk_size=CHUNK_SIZE, left_context_frames=LEFT_CONTEXT)


def synth_clips(num: int, seconds: float, cuts: str | None) -> list[np.ndarray]:
    """``num`` clips of ``seconds``: synth utterances joined end to end, clip ``i`` starting at utterance ``i``."""
    from lhotse import load_manifest

    from asr.data.audio import load_audio

    if cuts is None:
        from asr.data.synth import synthesize_corpus

        root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
        made = synthesize_corpus(root, num_utts=24, seed=3, engines=["espeak"], progress=False)
        cut_list = [c for split in made.values() for c in split]
    else:
        cut_list = list(load_manifest(cuts))
    utterances = [load_audio(c.recording.sources[0].source, 16000) for c in cut_list]
    length = int(seconds * 16000)
    clips = []
    for i in range(num):
        parts, total, k = [], 0, i
        while total < length:
            parts.append(utterances[k % len(utterances)])
            total += parts[-1].size
            k += 1
        clips.append(np.concatenate(parts)[:length])
    return clips


def serve(port_queue, stop_event, threads: int, max_streams: int, batch_window: float) -> None:
    """The child process: the server on a free loopback port until ``stop_event``."""
    torch.set_num_threads(threads)
    from asr.streaming import OnlineRecognizer
    from asr.streaming.server import ServerConfig, StreamingServer

    recognizer = OnlineRecognizer(make_model(), options(), endpoint=None)
    config = ServerConfig(max_streams=max_streams, idle_timeout_seconds=60, batch_window_seconds=batch_window)
    server = StreamingServer(recognizer, config)

    async def run() -> None:
        await server.start("127.0.0.1", 0)
        port_queue.put(server.port)
        await asyncio.to_thread(stop_event.wait)
        await server.stop()

    asyncio.run(run())


def stats(port: int) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30).read())


async def one_client(url: str, clip: np.ndarray, delay: float, frame_seconds: float, timeout: float) -> dict:
    from asr.streaming.client import ServerError, stream_audio

    await asyncio.sleep(delay)
    sent: list[tuple[float, float]] = []  # (audio seconds sent, wall time)
    latencies: list[float] = []
    shown = 0

    def on_message(message: dict, now: float) -> None:
        nonlocal shown
        if message["type"] not in ("partial", "final"):
            return
        for t in message["timestamps"][shown:]:
            needed = t + frame_seconds
            piece = next((when for seconds, when in sent if seconds >= needed - 1e-9), None)
            if piece is not None:
                latencies.append(now - piece)
        shown = len(message["timestamps"])

    try:
        result = await stream_audio(
            url,
            clip,
            16000,
            realtime=True,
            piece_seconds=PIECE_SECONDS,
            on_send=lambda seconds, now: sent.append((seconds, now)),
            on_message=on_message,
            timeout_seconds=timeout,
        )
    except ServerError as error:
        return {"refused": "busy" in str(error), "error": str(error), "latencies": []}
    except asyncio.TimeoutError:
        return {"refused": False, "error": "timed out", "latencies": latencies}
    return {"refused": False, "error": None, "text": result.text, "latencies": latencies}


async def load(url: str, clips: list[np.ndarray], frame_seconds: float, seconds: float) -> list[dict]:
    rng = np.random.default_rng(len(clips))
    timeout = 4 * seconds + 60
    tasks = [one_client(url, clip, float(rng.uniform(0, 1)), frame_seconds, timeout) for clip in clips]
    return await asyncio.gather(*tasks)


def uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,8,16,32,64", help="comma-separated client counts")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio per client")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the server's decode loop (the clients run on the same machine: on 2 cores, 2 "
        "decode threads contend with them and latency suffers)",
    )
    parser.add_argument("--max-streams", type=int, default=64, help="the server's cap on concurrent streams")
    parser.add_argument(
        "--batch-window", type=float, default=ServerConfig.batch_window_seconds, help="the server's batch window, s"
    )
    parser.add_argument("--cuts", default=None, help="a CutSet of speech (default: 24 espeak utterances made here)")
    parser.add_argument("--json", default="tools/bench/results/serve.json")
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    torch.set_num_threads(1)

    clips = synth_clips(max(counts), args.seconds, args.cuts)
    start = time.perf_counter()
    offline = [r.text for r in Recognizer(make_model(), options()).transcribe_batch(clips, 16000)]
    chars = np.mean([len(t) for t in offline])
    print(
        f"offline chunked decode of {len(clips)} clips: {time.perf_counter() - start:.1f} s, {chars:.0f} chars per text"
    )

    context = multiprocessing.get_context("spawn")
    port_queue, stop_event = context.Queue(), context.Event()
    child = context.Process(
        target=serve, args=(port_queue, stop_event, args.threads, args.max_streams, args.batch_window)
    )
    child.start()
    rows = []
    try:
        port = port_queue.get(timeout=120)
        url = f"ws://127.0.0.1:{port}"
        frame_seconds = stats(port)["frame_seconds"]
        for n in counts:
            load_before, before = uptime(), stats(port)
            wall = time.perf_counter()
            results = asyncio.run(load(url, clips[:n], frame_seconds, args.seconds))
            wall = time.perf_counter() - wall
            after = stats(port)
            busy = after["busy_seconds"] - before["busy_seconds"]
            audio = after["decoded_audio_seconds"] - before["decoded_audio_seconds"]
            steps = after["steps"] - before["steps"]
            latencies = [x for r in results for x in r["latencies"]]
            served = [(r, text) for r, text in zip(results, offline) if not r["refused"]]
            rows.append(
                {
                    "streams": n,
                    "refused": sum(r["refused"] for r in results),
                    "errors": sum(1 for r in results if r["error"] and not r["refused"]),
                    "exact": sum(r.get("text") == text for r, text in served),
                    "served": len(served),
                    "rtf": busy / audio if audio else 0.0,
                    "loop_load": busy / wall,
                    "mean_batch": audio / after["chunk_seconds"] / steps if steps else 0.0,
                    "latency_p50_s": float(np.percentile(latencies, 50)) if latencies else None,
                    "latency_p95_s": float(np.percentile(latencies, 95)) if latencies else None,
                    "tokens": len(latencies),
                    "wall_s": wall,
                    "loadavg_before": load_before,
                }
            )
            row = rows[-1]
            print(
                f"N={n:3d} rtf={row['rtf']:.4f} loop_load={row['loop_load']:.2f} batch={row['mean_batch']:.1f} "
                f"p50={row['latency_p50_s'] or 0:.3f}s p95={row['latency_p95_s'] or 0:.3f}s "
                f"refused={row['refused']} exact={row['exact']}/{row['served']} (load {load_before})",
                flush=True,
            )
    finally:
        stop_event.set()
        child.join(timeout=60)
        if child.is_alive():
            child.terminate()

    header = (
        "| streams | decode-loop RTF | loop load | mean batch | p50 latency | p95 latency | refused | exact finals |"
    )
    print("\n" + header + "\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        p50 = f"{r['latency_p50_s']:.3f} s" if r["latency_p50_s"] is not None else "-"
        p95 = f"{r['latency_p95_s']:.3f} s" if r["latency_p95_s"] is not None else "-"
        print(
            f"| {r['streams']} | {r['rtf']:.4f} | {r['loop_load']:.2f} | {r['mean_batch']:.1f} | {p50} | {p95} "
            f"| {r['refused']} | {r['exact']}/{r['served']} |"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                    "torch": torch.__version__,
                    "server_threads": args.threads,
                    "batch_window_seconds": args.batch_window,
                    "loadavg_end": uptime(),
                },
                "model": "zipformer-xs (causal, random weights)",
                "chunk_size": CHUNK_SIZE,
                "left_context_frames": LEFT_CONTEXT,
                "seconds_per_client": args.seconds,
                "offline_chars_per_text": float(chars),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
