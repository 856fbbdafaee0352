"""A client of the streaming server (:mod:`asr.streaming.server`): streams audio, collects the results.

result = transcribe_file("clip.wav", "ws://127.0.0.1:6006", realtime=True)
print(result.text)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

__all__ = ["ServerError", "StreamResult", "stream_audio", "transcribe_file", "read_pcm"]

PIECE_SECONDS = 0.1


class ServerError(Exception):
    """The server sent an error message, or closed the connection before it was done."""


@dataclass
class StreamResult:
    """What the server sent for one stream: its partial and final results (JSON objects) and the ``done``
    message."""

    partials: list[dict[str, Any]] = field(default_factory=list)
    finals: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        """The final segments' texts joined by spaces."""
        return " ".join(f["text"] for f in self.finals if f["text"])


def read_pcm(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono audio file's samples: int16 ``(num_samples,)`` for 16-bit PCM (sent as is), else float32.

    Raises:
        ValueError: an unreadable or multi-channel file (naming it).
    """
    try:
        info = soundfile.info(str(path))
        dtype = "int16" if info.subtype == "PCM_16" else "float32"
        samples, sample_rate = soundfile.read(str(path), dtype=dtype, always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as error:
        raise ValueError(f"{path}: cannot read audio: {error}") from None
    if samples.shape[1] != 1:
        raise ValueError(f"{path}: {samples.shape[1]} channels; the server takes mono audio")
    return samples[:, 0], int(sample_rate)


async def stream_audio(
    url: str,
    samples: np.ndarray,
    sample_rate: int,
    realtime: bool = False,
    piece_seconds: float = PIECE_SECONDS,
    on_send: Callable[[float, float], None] | None = None,
    on_message: Callable[[dict[str, Any], float], None] | None = None,
    timeout_seconds: float = 600.0,
) -> StreamResult:
    """Stream ``samples`` (int16 or float32, ``(num_samples,)``) to the server at ``url`` and collect its results.

    Args:
        realtime: pace the pieces at the audio's own speed (else send as fast as the socket takes them).
        piece_seconds: audio per binary frame.
        on_send: called with (seconds of audio sent so far, ``time.monotonic()``) after each piece.
        on_message: called with each message from the server and the ``time.monotonic()`` it arrived.
        timeout_seconds: the whole exchange's limit.
    Raises:
        ServerError: the server's error message, or a close before its ``done`` message.
    """
    samples = np.asarray(samples)
    fmt = "int16" if samples.dtype == np.int16 else "float32"
    data = samples.astype("<i2" if fmt == "int16" else "<f4", copy=False)
    piece = max(1, int(piece_seconds * sample_rate))
    result = StreamResult()

    async def send(ws) -> None:
        start = time.monotonic()
        for offset in range(0, data.size, piece):
            chunk = data[offset : offset + piece]
            if realtime:
                delay = start + offset / sample_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await ws.send(chunk.tobytes())
            if on_send is not None:
                on_send((offset + chunk.size) / sample_rate, time.monotonic())
        await ws.send(json.dumps({"type": "end"}))

    async def exchange() -> StreamResult:
        async with connect(url, max_size=None, ping_interval=None, open_timeout=30) as ws:
            sender: asyncio.Task | None = None
            try:
                # A server that refuses the stream may close before the start message goes out; its error
                # message is read below all the same.
                await ws.send(json.dumps({"type": "start", "sample_rate": sample_rate, "format": fmt}))
            except ConnectionClosed:
                pass
            try:
                async for raw in ws:
                    now = time.monotonic()
                    message = json.loads(raw)
                    if on_message is not None:
                        on_message(message, now)
                    kind = message.get("type")
                    if kind == "error":
                        raise ServerError(message.get("message", "server error"))
                    if kind == "ready":
                        sender = asyncio.create_task(send(ws))
                    elif kind == "partial":
                        result.partials.append(message)
                    elif kind == "final":
                        result.finals.append(message)
                    elif kind == "done":
                        result.done = message
                        return result
            except ConnectionClosed:
                pass
            finally:
                if sender is not None:
                    if sender.done() and not sender.cancelled() and sender.exception() is not None:
                        if not isinstance(sender.exception(), ConnectionClosed):
                            raise sender.exception()
                    sender.cancel()
            detail = f"code {ws.close_code}: {ws.close_reason}" if ws.close_code is not None else "no close frame"
            raise ServerError(f"the server closed the connection before it was done ({detail})")

    return await asyncio.wait_for(exchange(), timeout_seconds)


def transcribe_file(path: str | Path, url: str, realtime: bool = False, **kwargs) -> StreamResult:
    """Stream an audio file to the server at ``url``; see :func:`stream_audio`."""
    samples, sample_rate = read_pcm(path)
    return asyncio.run(stream_audio(url, samples, sample_rate, realtime=realtime, **kwargs))
