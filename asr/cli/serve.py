"""``asr serve``: a websocket server for streaming recognition, with a browser microphone page at /.

Clients send a JSON start message (sample rate, int16 or float32 PCM), binary audio frames and a JSON end
message; the server answers with partial results as the text changes and a final result per endpoint
segment (see :mod:`asr.streaming.server` for the messages, and ``asr client`` for a client). One decode loop
batches every ready stream into one encoder call. Open ``http://HOST:PORT/`` in a browser for the
microphone page. Ctrl-C stops the server after open streams finish their segments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from asr.cli.common import make_parser, parse

log = logging.getLogger("asr.serve")


def build_parser():
    parser = make_parser("serve", __doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument(
        "--checkpoint", required=True, help="a causal model: training or model checkpoint, or an experiment dir"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=6006, help="port for websockets and the page (0: a free one)")
    parser.add_argument("--max-streams", type=int, default=32, help="concurrent streams; more are refused")
    parser.add_argument("--max-frame-bytes", type=int, default=1 << 20, help="largest message a client may send")
    parser.add_argument("--max-stream-seconds", type=float, default=600.0, help="audio per connection")
    parser.add_argument(
        "--idle-timeout", type=float, default=20.0, help="seconds without a message before a client is dropped"
    )
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=50.0,
        help="when a decode step left streams out, wait this long so that more share the next step (0: none)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="chunk in the encoder's frames (50 Hz Zipformer: 16 = 320 ms); default: 320 ms",
    )
    parser.add_argument(
        "--left-context-frames", type=int, default=None, help="left context in the same frames (default: 4 chunks)"
    )
    parser.add_argument("--method", choices=("greedy", "modified_beam_search"), default="greedy")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--lang-dir", default=None, help="tokenizer dir (default: the one in the checkpoint)")
    parser.add_argument(
        "--endpoint",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="split the stream into segments at pauses (sherpa-onnx's rules); --no-endpoint: one segment",
    )
    parser.add_argument(
        "--num-threads", type=int, default=None, help="CPU threads of the decode loop (default: torch's)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_streams", "max_frame_bytes", "max_stream_seconds", "idle_timeout", "num_threads"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.batch_window_ms < 0:
        parser.error(f"--batch-window-ms must be >= 0, got {args.batch_window_ms}")
    import torch

    from asr.checkpoint import load_model
    from asr.device import resolve_device
    from asr.inference.options import DecodingOptions
    from asr.streaming.online import EndpointConfig, OnlineRecognizer
    from asr.streaming.server import ServerConfig, StreamingServer

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    try:
        options = DecodingOptions(
            method=args.method, beam=args.beam, chunk_size=args.chunk_size, left_context_frames=args.left_context_frames
        )
    except ValueError as error:
        option, _, message = str(error).partition(" ")
        parser.error(f"--{option.replace('_', '-')} {message}")
    try:
        device = resolve_device(args.device, 0)
        model = load_model(args.checkpoint, device, args.lang_dir)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        raise SystemExit(f"asr serve: {error}") from None
    try:
        recognizer = OnlineRecognizer(model, options, EndpointConfig() if args.endpoint else None)
    except ValueError as error:
        raise SystemExit(f"asr serve: {args.checkpoint}: {error}") from None
    config = ServerConfig(
        max_streams=args.max_streams,
        max_frame_bytes=args.max_frame_bytes,
        max_stream_seconds=args.max_stream_seconds,
        idle_timeout_seconds=args.idle_timeout,
        batch_window_seconds=args.batch_window_ms / 1000,
    )
    try:
        asyncio.run(_serve(StreamingServer(recognizer, config), args.host, args.port))
    except OSError as error:  # the port is taken, the address is not ours
        raise SystemExit(f"asr serve: cannot listen on {args.host}:{args.port}: {error}") from None
    return 0


async def _serve(server, host: str, port: int) -> None:
    await server.start(host, port)
    print(f"serving on http://{host}:{server.port}/ (websocket ws://{host}:{server.port}/)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: finishing open streams")
    await server.stop()
