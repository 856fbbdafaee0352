"""``asr client``: stream an audio file to an ``asr serve`` server and print its final segments.

Each final segment's text is printed on its own line as it arrives (partial results go to the log at debug
level). ``--realtime`` paces the audio at its own speed, as a microphone would deliver it.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from asr.cli.common import make_parser, parse

log = logging.getLogger("asr.client")


def build_parser():
    parser = make_parser("client", __doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("audio", help="a mono audio file (16-bit PCM is sent as int16, anything else as float32)")
    parser.add_argument("--url", default="ws://127.0.0.1:6006", help="the server's websocket URL")
    parser.add_argument("--realtime", action="store_true", help="send the audio at its own pace")
    parser.add_argument("--piece-ms", type=int, default=100, help="audio per frame sent, in milliseconds")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the whole exchange may take")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if args.piece_ms < 1:
        parser.error(f"--piece-ms must be >= 1, got {args.piece_ms}")
    if not args.url.startswith(("ws://", "wss://")):
        parser.error(f"--url must start with ws:// or wss://, got {args.url!r}")
    from websockets.exceptions import InvalidHandshake, InvalidURI

    from asr.streaming.client import ServerError, read_pcm, stream_audio

    try:
        samples, sample_rate = read_pcm(args.audio)
    except ValueError as error:
        raise SystemExit(f"asr client: {error}") from None

    def show(message: dict, _: float) -> None:
        if message.get("type") == "final":
            print(message["text"], flush=True)
        elif message.get("type") == "partial":
            log.debug("segment %d: %s", message["segment"], message["text"])

    try:
        asyncio.run(
            stream_audio(
                args.url,
                samples,
                sample_rate,
                realtime=args.realtime,
                piece_seconds=args.piece_ms / 1000,
                on_message=show,
                timeout_seconds=args.timeout,
            )
        )
    except ServerError as error:
        print(f"asr client: {args.url}: {error}", file=sys.stderr)
        return 1
    except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI) as error:
        print(f"asr client: {args.url}: {error or 'timed out'}", file=sys.stderr)
        return 1
    return 0
