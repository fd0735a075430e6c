"""Sending a file's bytes as an ASGI response: a whole file through the server's `http.response.pathsend`
(the bytes never enter Python), or a byte range read a chunk at a time, paced by the client and stopped
when it disconnects."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

#: Bytes read from a file per body message.
READ_CHUNK = 1024 * 1024


def raw_headers(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]


async def watch_disconnect(receive: Any, gone: asyncio.Event) -> None:
    """Set `gone` when the client disconnects (run as a task while a response streams)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            return


def can_pathsend(scope: Mapping[str, Any]) -> bool:
    return "http.response.pathsend" in (scope.get("extensions") or {})


async def send_path(send: Any, headers: Mapping[str, str], path: str) -> None:
    """A 200 with the whole file at `path`, sent by the server itself."""
    await send({"type": "http.response.start", "status": 200, "headers": raw_headers(headers)})
    await send({"type": "http.response.pathsend", "path": path})


async def send_fd_range(
    send: Any,
    receive: Any,
    status: int,
    headers: Mapping[str, str],
    fd: int,
    start: int,
    length: int,
    *,
    executor: Executor | None = None,
    short: Exception | None = None,
) -> int:
    """Send bytes [start, start+length) of the open file `fd` (not closed here) as the body of a `status`
    response; the bytes sent. A file that ends early raises `short` (after the response started: the
    caller logs it and the connection is cut)."""
    loop = asyncio.get_running_loop()
    gone = asyncio.Event()
    watcher = asyncio.create_task(watch_disconnect(receive, gone))
    pos, remaining = start, length
    try:
        await send({"type": "http.response.start", "status": status, "headers": raw_headers(headers)})
        if remaining == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        while remaining > 0 and not gone.is_set():
            data = await loop.run_in_executor(executor, os.pread, fd, min(READ_CHUNK, remaining), pos)
            if not data:
                raise short or EOFError("The file is shorter than expected")
            pos += len(data)
            remaining -= len(data)
            await send({"type": "http.response.body", "body": data, "more_body": remaining > 0})
    finally:
        watcher.cancel()
    return pos - start
