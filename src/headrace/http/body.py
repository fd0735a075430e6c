"""Reading an ASGI request body: whole and bounded (XML, JSON), streamed into a sink in large chunks (an
upload), regrouped into chunks for a proxy, or read and dropped. Every wait for the client has a deadline;
a client that hangs up raises ClientGone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol

from headrace.errors import IncompleteUpload, PayloadTooLarge, RequestTimeout

#: Bytes gathered from the client before each write to a sink.
WRITE_BUFFER = 1024 * 1024


class ClientGone(Exception):
    """The client hung up before the request body was complete."""


class Sink(Protocol):
    """Where a streamed body goes: `reserve_for` runs on the event loop before each chunk is handed to
    `write`, which runs on an I/O thread."""

    def reserve_for(self, n: int) -> None: ...

    def write(self, data: bytes) -> None: ...


@dataclass
class RequestBody:
    """The body of one request: `receive`, its Content-Length (None: chunked) and how long the client may
    send nothing before the read is abandoned (IncompleteUpload)."""

    receive: Any
    length: int | None
    idle_timeout: float
    #: Whether any of the body has been asked for (a sink that fails before may be replaced by another).
    started: bool = False

    async def message(self) -> dict[str, Any]:
        """The next body message; ClientGone if the client hung up, IncompleteUpload after the idle timeout."""
        self.started = True
        try:
            async with asyncio.timeout(self.idle_timeout):
                message = dict(await self.receive())
        except TimeoutError as exc:
            raise IncompleteUpload(f"No data for {self.idle_timeout:g} s; upload abandoned") from exc
        if message["type"] == "http.disconnect":
            raise ClientGone()
        return message

    async def discard(self) -> None:
        """Read the body to its end and drop it."""
        while (await self.message()).get("more_body", False):
            pass

    async def chunks(self, size: int = WRITE_BUFFER) -> AsyncIterator[bytes]:
        """The body regrouped into chunks of at least `size` bytes (the last may be shorter); IncompleteUpload
        if it is not Content-Length bytes long."""
        pieces: list[bytes] = []
        buffered = received = 0
        while True:
            message = await self.message()
            chunk = message.get("body", b"")
            more = message.get("more_body", False)
            if chunk:
                pieces.append(chunk)
                buffered += len(chunk)
                received += len(chunk)
            if (buffered >= size or not more) and pieces:
                yield b"".join(pieces)
                pieces.clear()
                buffered = 0
            if not more:
                break
        if self.length is not None and received != self.length:
            raise IncompleteUpload(f"Body has {received} bytes, Content-Length says {self.length}")

    async def _read(self, take: Callable[[bytes], Awaitable[None] | None]) -> int:
        """Receive the body to its end, giving each non-empty chunk to `take` (awaited if it returns an
        awaitable); the number of bytes. ClientGone when the client hangs up; IncompleteUpload after the idle
        timeout without data, or when the body is not Content-Length bytes long."""
        self.started = True
        loop = asyncio.get_running_loop()
        total = 0
        try:
            async with asyncio.timeout(None) as idle:
                while True:
                    # One timer rescheduled per chunk: asyncio.wait_for would cost a task per chunk.
                    idle.reschedule(loop.time() + self.idle_timeout)
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone()
                    body = message.get("body", b"")
                    if body:
                        total += len(body)
                        wait = take(body)
                        if wait is not None:
                            await wait
                    if not message.get("more_body", False):
                        break
        except TimeoutError as exc:
            raise IncompleteUpload(f"No data for {self.idle_timeout:g} s; upload abandoned") from exc
        if self.length is not None and total != self.length:
            raise IncompleteUpload(f"Body has {total} bytes, Content-Length says {self.length}")
        return total

    async def whole(self) -> bytes:
        """The whole body in memory, with `into`'s errors: for a small body of a known length (the caller
        bounds it), so that it can be written with one hand-off to an I/O thread rather than one per step."""
        parts: list[bytes] = []
        await self._read(parts.append)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def into(self, sink: Sink, executor: Executor | None = None) -> int:
        """Stream the body into `sink`; the number of bytes.

        Double-buffered: while one chunk of up to WRITE_BUFFER bytes is written on an I/O thread (zlib,
        hashlib and os.write release the GIL), the next is received; so at most two chunks are in memory.
        Raises ClientGone when the client hangs up, IncompleteUpload after the idle timeout without data or
        when the body is not Content-Length bytes long."""
        loop = asyncio.get_running_loop()
        pieces: list[bytes] = []
        buffered = 0
        pending: asyncio.Future[None] | None = None

        async def flush() -> None:
            nonlocal pending, buffered
            data = b"".join(pieces)
            pieces.clear()
            buffered = 0
            if pending is not None:
                await pending
            sink.reserve_for(len(data))  # bookkeeping stays on the loop thread
            pending = loop.run_in_executor(executor, sink.write, data)

        def take(body: bytes) -> Awaitable[None] | None:
            nonlocal buffered
            pieces.append(body)
            buffered += len(body)
            return flush() if buffered >= WRITE_BUFFER else None

        try:
            total = await self._read(take)
            if pieces:
                await flush()
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                # Never leave a write running against a file that the caller is about to remove.
                await asyncio.shield(pending)
        return total


async def read_small(receive: Any, length: int | None, *, limit: int, timeout: float) -> bytes:
    """A small body (XML, JSON), whole: PayloadTooLarge (413) past `limit` bytes, announced or sent;
    RequestTimeout (408) when the client sends nothing for `timeout` seconds; ClientGone if it hangs up."""
    if length is not None and length > limit:
        raise PayloadTooLarge(f"Request body of {length} bytes is over {limit} bytes")
    body = bytearray()
    while True:
        try:
            async with asyncio.timeout(timeout):
                message = await receive()
        except TimeoutError as exc:
            raise RequestTimeout(f"No request body data for {timeout:g} s") from exc
        if message["type"] == "http.disconnect":
            raise ClientGone()
        body += message.get("body", b"")
        if len(body) > limit:
            raise PayloadTooLarge(f"Request body over {limit} bytes")
        if not message.get("more_body", False):
            return bytes(body)
