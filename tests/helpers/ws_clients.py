"""Raw websocket exchanges with the streaming server, for protocol and fault tests."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def raw_exchange(url: str, messages: list[str | bytes], wait_seconds: float = 10.0) -> tuple[list[dict], int]:
    """Send ``messages`` (stopping early if the server closes), then read until the server closes or
    ``wait_seconds`` pass. Returns the JSON messages received and the close code (0: still open)."""
    received: list[dict] = []
    async with connect(url, max_size=None, ping_interval=None, open_timeout=10) as ws:

        async def read() -> None:
            async for raw in ws:
                received.append(json.loads(raw))

        reader = asyncio.create_task(read())
        try:
            for message in messages:
                await ws.send(message)
        except ConnectionClosed:
            pass
        try:
            await asyncio.wait_for(reader, wait_seconds)
        except (asyncio.TimeoutError, ConnectionClosed):
            pass
        reader.cancel()
        code = ws.close_code or 0
    return received, code
