"""A websocket streaming-recognition server, and the browser page it serves at ``/``.

Protocol (one websocket per audio stream; JSON text messages, binary audio)::

    client -> {"type": "start", "sample_rate": 16000, "format": "int16"}   (format: int16 or float32)
    server -> {"type": "ready", "id": 7, "sample_rate": 16000, "format": "int16", "chunk_seconds": 0.32}
    client -> binary frames: little-endian mono PCM in that format, any length up to the frame cap
    server -> {"type": "partial", "segment": 0, "text": ..., ...}      whenever the segment's text changes
    server -> {"type": "final", "segment": 0, "text": ..., ...}        at each endpoint and at the end
    client -> {"type": "end"}                                          (or closes the socket)
    server -> {"type": "done", "segments": 2, "audio_seconds": 5.1}    after the last final; then it closes
    server -> {"type": "error", "message": ...}                        then it closes (codes 1008, 1011, 1013)

A partial or final result carries ``text``, ``tokens``, ``timestamps`` (each token's time in seconds from
the stream's start), ``words`` (``{"word", "start", "end"}``), ``segment`` and its ``start_time``, and
``audio_seconds``: the audio the result has seen.

One decode loop serves every connection: it hands the audio that arrived to its streams and runs one batched
:meth:`OnlineRecognizer.decode_streams` over every ready stream, in a worker thread so that the event loop
keeps receiving audio meanwhile. Streams are touched only by that thread; the event loop only queues audio.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import mimetypes
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from asr.inference.result import Result
from asr.streaming.online import OnlineRecognizer, Stream

__all__ = ["ServerConfig", "StreamingServer", "ServerThread"]

log = logging.getLogger(__name__)

FORMATS = {"int16": np.dtype("<i2"), "float32": np.dtype("<f4")}
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192_000
STATS_LOG_SECONDS = 10.0


@dataclass(frozen=True)
class ServerConfig:
    """The server's limits.

    Attributes:
        max_streams: concurrent connections; past it a client gets an error and close code 1013.
        max_frame_bytes: the largest message a client may send (websockets closes with 1009 past it).
        max_stream_seconds: audio per connection; past it the client gets an error and is dropped.
        idle_timeout_seconds: a client silent this long (no message) gets an error and is dropped.
        shutdown_timeout_seconds: on shutdown, how long open streams get to finish their segments.
        batch_window_seconds: when a decode step left some streams out (their chunks not complete yet), how
            long the loop waits before the next step so that more streams share it (0: no wait).
    """

    max_streams: int = 32
    max_frame_bytes: int = 1 << 20
    max_stream_seconds: float = 600.0
    idle_timeout_seconds: float = 20.0
    shutdown_timeout_seconds: float = 10.0
    batch_window_seconds: float = 0.05

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_frame_bytes", "max_stream_seconds", "idle_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.batch_window_seconds < 0:
            raise ValueError(f"batch_window_seconds must be >= 0, got {self.batch_window_seconds}")


class ClientError(Exception):
    """A client broke the protocol; the message goes back to it before the connection closes."""


@dataclass
class _Session:
    """One connection's state. ``pending`` and ``finishing`` are written by the event loop and taken by the
    decode loop; ``stream`` and the result bookkeeping belong to the decode worker."""

    id: int
    connection: ServerConnection
    sample_rate: int = 0
    dtype: np.dtype | None = None
    stream: Stream | None = None
    pending: list[np.ndarray] = field(default_factory=list)
    received_samples: int = 0
    finishing: bool = False  # no more audio will come
    finished: bool = False  # every chunk decoded and the last final sent
    failed: str | None = None
    internal: bool = False  # the failure is the server's, not the client's
    steps: int = 0  # decode steps of this stream
    last_sent: tuple[int, tuple[int, ...]] = (0, ())  # (segment, token ids) of the last partial or final
    outbox: asyncio.Queue = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)


def result_message(kind: str, result: Result, audio_seconds: float) -> dict[str, Any]:
    """The JSON form of a partial or final result."""
    return {
        "type": kind,
        "segment": result.segment,
        "text": result.text,
        "tokens": result.tokens,
        "timestamps": result.timestamps,
        "words": [{"word": w.word, "start": w.start, "end": w.end} for w in result.words],
        "start_time": result.start_time,
        "audio_seconds": round(audio_seconds, 3),
    }


class StreamingServer:
    """Serves ``recognizer`` over websockets, and the browser page over HTTP on the same port.

    Use ``await server.start(host, port)``, then ``await server.stop()`` (which finishes open segments).
    ``stats()`` (also served as JSON at ``/stats``) gives connection counts and the decode loop's
    real-time factor.
    """

    def __init__(self, recognizer: OnlineRecognizer, config: ServerConfig | None = None):
        self.recognizer = recognizer
        self.config = config or ServerConfig()
        encoder = recognizer.model.encoder
        with encoder.streaming(recognizer.chunk_size, recognizer.left_context_frames):
            # fbank frames (10 ms) one decode step reads and advances: a result has seen the audio up to
            # the end of its last window
            self._window_frames = encoder.streaming_feature_frames
            self._shift_frames = encoder.streaming_feature_shift
        self._sessions: dict[int, _Session] = {}
        self._next_id = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="asr-decode")
        self._server: Server | None = None
        self._decode_task: asyncio.Task | None = None
        self._stopping = False
        self._counts = {"connections": 0, "completed": 0, "refused": 0, "dropped": 0, "errors": 0}
        self._busy_seconds = 0.0  # decode worker time
        self._decoded_seconds = 0.0  # audio seconds those steps consumed, all streams
        self._steps = 0
        self._batch_total = 0
        self._last_stats_log = time.monotonic()
        self.port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 6006) -> None:
        """Listen on ``host:port`` (port 0: a free one, then in ``self.port``)."""
        self._wake = asyncio.Event()
        self._decode_task = asyncio.create_task(self._decode_loop())
        self._server = await serve(
            self._handle,
            host,
            port,
            max_size=self.config.max_frame_bytes,
            process_request=self._process_request,
            ping_interval=None,  # the idle timeout watches clients; the stream itself is the keep-alive
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info(
            "event=listening host=%s port=%d max_streams=%d chunk_seconds=%.3f",
            host,
            self.port,
            self.config.max_streams,
            self.recognizer.chunk_seconds,
        )

    async def stop(self) -> None:
        """Refuse new connections, let open streams finish (their last finals are sent), then close."""
        self._stopping = True
        if self._server is not None:
            self._server.close(close_connections=False)
        for session in list(self._sessions.values()):
            if session.stream is not None:
                session.finishing = True
        self._wake.set()
        waits = [s.done.wait() for s in self._sessions.values() if s.stream is not None]
        if waits:
            _, pending = await asyncio.wait(
                [asyncio.ensure_future(w) for w in waits], timeout=self.config.shutdown_timeout_seconds
            )
            for task in pending:
                task.cancel()
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
        if self._decode_task is not None:
            self._decode_task.cancel()
            try:
                await self._decode_task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        self._log_stats(force=True)
        log.info("event=stopped")

    def stats(self) -> dict[str, Any]:
        """Counters since start: connections (accepted, active, completed, refused, dropped, errors), the
        decode loop's steps, mean batch, busy seconds and real-time factor (busy seconds per audio second)."""
        return {
            **self._counts,
            "active": len(self._sessions),
            "steps": self._steps,
            "mean_batch": self._batch_total / self._steps if self._steps else 0.0,
            "busy_seconds": round(self._busy_seconds, 3),
            "decoded_audio_seconds": round(self._decoded_seconds, 3),
            "rtf": self._busy_seconds / self._decoded_seconds if self._decoded_seconds else 0.0,
            "chunk_seconds": self.recognizer.chunk_seconds,
            "frame_seconds": self.recognizer.frame_seconds,
        }

    def _log_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stats_log < STATS_LOG_SECONDS:
            return
        self._last_stats_log = now
        s = self.stats()
        log.info(
            "event=stats active=%d connections=%d completed=%d refused=%d dropped=%d errors=%d steps=%d "
            "mean_batch=%.1f rtf=%.3f",
            s["active"],
            s["connections"],
            s["completed"],
            s["refused"],
            s["dropped"],
            s["errors"],
            s["steps"],
            s["mean_batch"],
            s["rtf"],
        )

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Websocket upgrades go on to the handler; plain GETs get the page's files or ``/stats``."""
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None
        path = request.path.split("?", 1)[0]
        if path == "/stats":
            return _response(200, json.dumps(self.stats()).encode(), "application/json")
        name = "index.html" if path == "/" else path.lstrip("/")
        if "/" in name or name.startswith(".") or not name:
            return _response(404, b"not found\n", "text/plain")
        resource = resources.files("asr.streaming") / "web" / name
        if not resource.is_file():
            return _response(404, b"not found\n", "text/plain")
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return _response(200, resource.read_bytes(), content_type)

    # -- connections ---------------------------------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        peer = _peer(connection)
        if self._stopping or len(self._sessions) >= self.config.max_streams:
            self._counts["refused"] += 1
            reason = "server shutting down" if self._stopping else "server busy"
            message = (
                "server shutting down; try again later"
                if self._stopping
                else f"server busy: all {self.config.max_streams} streams are in use; try again later"
            )
            log.warning("event=refused peer=%s active=%d reason=%r", peer, len(self._sessions), reason)
            await _send_quietly(connection, {"type": "error", "message": message})
            await connection.close(CloseCode.TRY_AGAIN_LATER, reason)
            return
        self._next_id += 1
        session = _Session(self._next_id, connection)
        self._sessions[session.id] = session
        self._counts["connections"] += 1
        log.info("event=connect id=%d peer=%s active=%d", session.id, peer, len(self._sessions))
        sender = asyncio.create_task(self._send_loop(session))
        outcome = "completed"
        receiver = asyncio.create_task(self._receive(session))
        # Shutdown or a stream error may end the session while the receiver still waits for audio.
        finished = asyncio.create_task(session.done.wait())
        try:
            await asyncio.wait({receiver, finished}, return_when=asyncio.FIRST_COMPLETED)
            if receiver.done():
                receiver.result()
                await finished
            else:
                receiver.cancel()
            if session.failed is not None:
                raise ClientError(session.failed)
        except ClientError as error:
            outcome = "error"
            self._counts["errors"] += 1
            log.warning("event=client_error id=%d error=%r", session.id, str(error))
            session.outbox.put_nowait({"type": "error", "message": str(error)})
            session.outbox.put_nowait(None)
            await _wait_quietly(sender, 5.0)
            # Read what the client still sends, so that its closing handshake is not stuck behind it.
            drain = asyncio.create_task(_drain(connection))
            code = CloseCode.INTERNAL_ERROR if session.internal else CloseCode.POLICY_VIOLATION
            await connection.close(code, _close_reason(str(error)))
            drain.cancel()
        except ConnectionClosed as closed:
            outcome = "dropped"
            self._counts["dropped"] += 1
            log.info("event=dropped id=%d reason=%r", session.id, str(closed))
        else:
            self._counts["completed"] += 1
            session.outbox.put_nowait(None)
            await _wait_quietly(sender, 5.0)
            await connection.close(CloseCode.NORMAL_CLOSURE, "done")
        finally:
            for task in (sender, receiver, finished):
                task.cancel()
            session.finishing = True
            session.done.set()  # releases a shutdown waiting on this stream
            del self._sessions[session.id]
            log.info(
                "event=disconnect id=%d outcome=%s audio_seconds=%.2f active=%d",
                session.id,
                outcome,
                session.received_samples / _rate(session),
                len(self._sessions),
            )

    async def _recv(self, session: _Session) -> str | bytes:
        try:
            return await asyncio.wait_for(session.connection.recv(), self.config.idle_timeout_seconds)
        except asyncio.TimeoutError:
            raise ClientError(f"idle for {self.config.idle_timeout_seconds:g} s: connection dropped") from None

    async def _receive(self, session: _Session) -> None:
        """Read the start message, then audio until the end message or the socket closes."""
        message = await self._recv(session)
        sample_rate, name = _parse_start(message)
        session.sample_rate, session.dtype = sample_rate, FORMATS[name]
        session.stream = self.recognizer.create_stream()
        session.outbox.put_nowait(
            {
                "type": "ready",
                "id": session.id,
                "sample_rate": sample_rate,
                "format": name,
                "chunk_seconds": self.recognizer.chunk_seconds,
            }
        )
        max_samples = self.config.max_stream_seconds * sample_rate
        while not session.finishing:
            message = await self._recv(session)
            if session.finishing:  # the server is shutting down: this stream's input has been closed
                break
            if isinstance(message, str):
                _parse_end(message)
                break
            if len(message) % session.dtype.itemsize:
                raise ClientError(f"a {session.dtype.name} audio frame of {len(message)} bytes is not whole samples")
            samples = np.frombuffer(message, dtype=session.dtype)
            if session.received_samples + samples.size > max_samples:
                raise ClientError(f"audio longer than the server's cap of {self.config.max_stream_seconds:g} s")
            if session.dtype.kind == "i":
                samples = samples.astype(np.float32) / 32768.0
            elif not np.all(np.isfinite(samples)):
                raise ClientError("float32 audio frame has NaN or infinite samples")
            session.pending.append(samples.astype(np.float32, copy=False))
            session.received_samples += samples.size
            self._wake.set()
        session.finishing = True
        self._wake.set()

    async def _send_loop(self, session: _Session) -> None:
        while True:
            message = await session.outbox.get()
            if message is None:
                return
            try:
                await session.connection.send(json.dumps(message))
            except ConnectionClosed:
                return

    # -- the decode loop -----------------------------------------------------------------------------------
    async def _decode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                work = []
                for session in self._sessions.values():
                    if session.stream is None or session.finished or session.failed is not None:
                        continue
                    audio, session.pending = session.pending, []
                    work.append((session, audio, session.finishing))
                if not work:
                    break
                try:
                    messages, batch = await loop.run_in_executor(self._executor, self._step, work)
                except Exception:  # a model failure: every stream in the batch is lost, the server lives on
                    log.exception("event=decode_failed streams=%d", len(work))
                    for session, _, _ in work:
                        session.failed = "internal error while decoding"
                        session.internal = True
                        session.done.set()
                    break
                for session, message in messages:
                    session.outbox.put_nowait(message)
                    if message["type"] == "done":
                        session.finished = True
                for session, _, _ in work:
                    if session.failed is not None or session.finished:
                        session.done.set()
                self._log_stats()
                if not batch:
                    break  # nothing ready: wait for audio
                if batch < len(work) and self.config.batch_window_seconds > 0:
                    # Streams are at different points of their chunks: a step costs a fixed part plus a part
                    # per stream, so a moment's wait lets more of them share the next one.
                    await asyncio.sleep(self.config.batch_window_seconds)

    def _step(self, work: list[tuple[_Session, list[np.ndarray], bool]]) -> tuple[list, int]:
        """In the worker: give streams their audio, decode one chunk of every ready stream in one batch, and
        the messages that follow. Returns ``[(session, message)]`` and the number of streams decoded. The whole
        step (features, encoder and search, results) counts as the loop's busy time."""
        rec = self.recognizer
        start = time.perf_counter()
        for session, audio, finishing in work:
            try:
                for samples in audio:
                    session.stream.accept_waveform(session.sample_rate, samples)
                if finishing:
                    session.stream.input_finished()
            except (ValueError, TypeError) as error:
                session.failed = str(error)
        live = [s for s, _, _ in work if s.failed is None]
        ready = [s for s in live if rec.is_ready(s.stream)]
        if ready:
            rec.decode_streams([s.stream for s in ready])
            self._decoded_seconds += len(ready) * rec.chunk_seconds
            self._steps += 1
            self._batch_total += len(ready)
        for session in ready:
            session.steps += 1
        # Only a decoded chunk changes a result; a finishing stream may end without one.
        changed = [s for s in live if s in ready or s.stream.input_done]
        messages = [(session, m) for session in changed for m in self._results(session)]
        self._busy_seconds += time.perf_counter() - start
        return messages, len(ready)

    def _results(self, session: _Session) -> list[dict[str, Any]]:
        """A partial when the segment's tokens changed; a final at an endpoint or the stream's end."""
        rec, stream = self.recognizer, session.stream
        seen = min(stream.num_samples / 16000, ((session.steps - 1) * self._shift_frames + self._window_frames) * 0.01)
        seen = max(seen, 0.0)
        result = rec.get_result(stream)
        key = (result.segment, tuple(result.token_ids))
        if rec.is_finished(stream):
            segments = result.segment + 1
            return [
                result_message("final", result, seen),
                {"type": "done", "segments": segments, "audio_seconds": round(stream.num_samples / 16000, 3)},
            ]
        if rec.is_endpoint(stream):
            rec.reset(stream)
            session.last_sent = (result.segment + 1, ())
            return [result_message("final", result, seen)]
        if key != session.last_sent:
            session.last_sent = key
            return [result_message("partial", result, seen)]
        return []


def _parse_start(message: str | bytes) -> tuple[int, str]:
    if isinstance(message, bytes):
        raise ClientError('expected a JSON start message {"type": "start", "sample_rate": ..., "format": ...} first')
    try:
        start = json.loads(message)
    except json.JSONDecodeError as error:
        raise ClientError(f"start message is not JSON: {error.msg} at position {error.pos}") from None
    if not isinstance(start, dict) or start.get("type") != "start":
        raise ClientError('the first message must be {"type": "start", "sample_rate": ..., "format": ...}')
    rate = start.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate != int(rate):
        raise ClientError(f"sample_rate must be a whole number of Hz, got {rate!r}")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ClientError(f"sample_rate {int(rate)} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}]")
    name = start.get("format", "int16")
    if name not in FORMATS:
        raise ClientError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return int(rate), name


def _parse_end(message: str) -> None:
    try:
        end = json.loads(message)
    except json.JSONDecodeError:
        end = None
    if not isinstance(end, dict) or end.get("type") != "end":
        raise ClientError('expected binary audio frames or {"type": "end"}, got a text message')


def _response(status: int, body: bytes, content_type: str) -> Response:
    reason = {200: "OK", 404: "Not Found"}[status]
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    return Response(status, reason, headers, body)


def _peer(connection: ServerConnection) -> str:
    address = connection.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


def _rate(session: _Session) -> int:
    return session.sample_rate or 16000


def _close_reason(text: str) -> str:
    # A close frame's reason is at most 123 bytes.
    encoded = text.encode()[:120]
    return encoded.decode(errors="ignore")


async def _send_quietly(connection: ServerConnection, message: dict) -> None:
    try:
        await connection.send(json.dumps(message))
    except ConnectionClosed:
        pass


async def _drain(connection: ServerConnection) -> None:
    try:
        while True:
            await connection.recv()
    except ConnectionClosed:
        pass


async def _wait_quietly(task: asyncio.Task, timeout: float) -> None:
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError):
        pass


class ServerThread:
    """A :class:`StreamingServer` on its own event loop in a background thread: for tests, benchmarks and
    notebooks. ``with ServerThread(recognizer, config) as server: server.url ...``; leaving stops it
    gracefully."""

    def __init__(self, recognizer: OnlineRecognizer, config: ServerConfig | None = None, host: str = "127.0.0.1"):
        self.server = StreamingServer(recognizer, config)
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="asr-server", daemon=True)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.server.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.host, 0), self._loop).result(timeout=30)
        return self

    def stats(self) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(_call(self.server.stats), self._loop).result(timeout=10)

    def __exit__(self, *exc) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()


async def _call(function):
    return function()
