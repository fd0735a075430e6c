"""A lean HTTP/1.1 GET and PUT for the bulk bytes of a third-party copy: asyncio streams and httptools' parser.

httpx's async stack reads a response body at a third of the socket's rate here (a 256 MiB GET from a
local door: 0.21-0.36 GB/s against 0.53-1.1 GB/s from the socket read in 1 MiB steps, on a loaded 2-CPU
machine), and a pull is that read and nothing else (a push, the matching write). One request per connection
(closed after it); a GET
follows redirects (dropping the credentials when the origin changes, as httpx and curl do), speaks TLS
with the project's one TLS context, and hands the body on in the pieces the socket gives (up to 1 MiB).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httptools

from headrace.storage.tpc_policy import TransferPolicy, TransferRefused
from headrace.tls import tls_context

READ = 1024 * 1024
#: Bytes per sendfile(2) call of a push.
SENDFILE_STEP = 8 * READ
MAX_REDIRECTS = 8
#: Headers a redirect to another origin must not carry on.
CREDENTIALS = {"authorization", "cookie", "proxy-authorization"}


class HttpFailure(Exception):
    """The connection failed or the response could not be read."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    url: str
    _reader: asyncio.StreamReader
    _writer: asyncio.StreamWriter
    _parser: httptools.HttpResponseParser
    _parsed: _Parsed
    _timeout: float = 120.0

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length", "")
        return int(value) if value.isdigit() else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (dechunked when sent chunked); HttpFailure if it ends early."""
        while True:
            pieces = self._parsed.pieces
            if pieces:
                joined = b"".join(pieces) if len(pieces) > 1 else pieces[0]
                pieces.clear()
                yield joined
            if self._parsed.complete:
                return
            try:
                async with asyncio.timeout(self._timeout):
                    data = await self._reader.read(READ)
            except TimeoutError as exc:
                raise HttpFailure(f"no data from the remote for {self._timeout:g} s") from exc
            except OSError as exc:
                raise HttpFailure(f"reading from the remote failed: {exc}") from exc
            if not data:
                if self.length is None and "chunked" not in self.headers.get("transfer-encoding", ""):
                    return  # the body ends with the connection
                raise HttpFailure("the remote closed the connection before the end of the body")
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise HttpFailure(f"malformed response from the remote: {exc}") from exc

    async def text(self, limit: int = 4096) -> str:
        got = bytearray()
        with contextlib.suppress(HttpFailure):
            async for chunk in self.chunks():
                got += chunk
                if len(got) >= limit:
                    break
        return got[:limit].decode("utf-8", "replace")

    def close(self) -> None:
        self._writer.close()


class _Parsed:
    """httptools' callbacks, collected."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.pieces: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def _connect(
    url: str, connect_timeout: float, policy: TransferPolicy
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, str]:
    """A connection to `url`'s host (to an address `policy` permits: the one checked is the one connected to);
    also the request target and the Host header."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    try:
        async with asyncio.timeout(connect_timeout):
            targets = await policy.addresses(host, port)
            for i, address in enumerate(targets):
                try:
                    reader, writer = await asyncio.open_connection(
                        address, port, ssl=tls_context() if secure else None,
                        server_hostname=host if secure else None, limit=READ,
                    )  # fmt: skip
                    break
                except OSError:
                    if i == len(targets) - 1:
                        raise
    except TransferRefused as exc:
        raise HttpFailure(str(exc)) from exc
    except (OSError, TimeoutError) as exc:
        raise HttpFailure(f"cannot connect to {host}:{port}: {exc or type(exc).__name__}") from exc
    netloc = host if ":" not in host else f"[{host}]"
    if parts.port:
        netloc += f":{parts.port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return reader, writer, target, netloc


def _head(method: str, target: str, netloc: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {netloc}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in ("host", "connection")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _response(
    url: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, idle_timeout: float
) -> Response:
    """Read the response's head; the response, its body still to read."""
    parsed = _Parsed()
    parser = httptools.HttpResponseParser(parsed)
    try:
        async with asyncio.timeout(idle_timeout):
            while not parsed.head_done:
                data = await reader.read(READ)
                if not data:
                    raise HttpFailure("the remote closed the connection before answering")
                parser.feed_data(data)
    except (OSError, TimeoutError, httptools.HttpParserError) as exc:
        writer.close()
        raise HttpFailure(f"no answer from {urlsplit(url).netloc}: {exc or type(exc).__name__}") from exc
    except BaseException:
        writer.close()
        raise
    return Response(
        parser.get_status_code(), parsed.headers, url, reader, writer, parser, parsed, _timeout=idle_timeout
    )


async def _once(
    url: str, headers: dict[str, str], connect_timeout: float, idle_timeout: float, policy: TransferPolicy
) -> Response:
    reader, writer, target, netloc = await _connect(url, connect_timeout, policy)
    writer.write(_head("GET", target, netloc, headers))
    return await _response(url, reader, writer, idle_timeout)


def _sendfile(sock: int, path: str, size: int, idle_timeout: float, stop: threading.Event, sent: list[int]) -> None:
    """Send the file at `path` on the non-blocking socket `sock` with sendfile(2), waiting for room with
    poll(2) (a thread's loop: the event loop does not write to the socket meanwhile); `sent[0]` counts."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while sent[0] < size and not stop.is_set():
            try:
                n = os.sendfile(sock, fd, sent[0], min(size - sent[0], SENDFILE_STEP))
            except BlockingIOError:
                waited = time.monotonic()
                while not poller.poll(500):
                    if stop.is_set():
                        return
                    if time.monotonic() - waited > idle_timeout:
                        raise TimeoutError() from None
                continue
            if n == 0:
                raise HttpFailure(f"the local file ended after {sent[0]} of {size} bytes")
            sent[0] += n
    finally:
        os.close(fd)


async def _send_body(
    writer: asyncio.StreamWriter, body: AsyncIterator[bytes] | str, size: int, idle_timeout: float, sent: list[int]
) -> None:
    """The request body: chunks written as they come, or a file sent with sendfile(2) on a plain connection."""
    sock = writer.get_extra_info("socket")
    if isinstance(body, str) and writer.get_extra_info("sslcontext") is None and sock is not None:
        writer.transport.set_write_buffer_limits(high=0)  # drain() now waits until the head is on the wire
        async with asyncio.timeout(idle_timeout):
            await writer.drain()
        stop = threading.Event()
        thread = asyncio.get_running_loop().run_in_executor(
            None, _sendfile, sock.fileno(), body, size, idle_timeout, stop, sent
        )
        try:
            await asyncio.shield(thread)
        except asyncio.CancelledError:
            stop.set()  # the thread must be done with the socket before it may be closed
            with contextlib.suppress(BaseException):
                await thread
            raise
        return
    if isinstance(body, str):
        body = _file_chunks(body, size)
    # Wait for the socket only past a few chunks queued, not after each (asyncio's default is 64 KiB).
    writer.transport.set_write_buffer_limits(high=4 * READ, low=2 * READ)
    async for chunk in body:
        writer.write(chunk)
        sent[0] += len(chunk)
        async with asyncio.timeout(idle_timeout):
            await writer.drain()


async def _file_chunks(path: str, size: int) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = 0
        while pos < size:
            data = await loop.run_in_executor(None, os.pread, fd, min(READ, size - pos), pos)
            if not data:
                return
            pos += len(data)
            yield data
    finally:
        os.close(fd)


async def put(
    url: str,
    headers: dict[str, str],
    size: int,
    body: AsyncIterator[bytes] | str,
    *,
    connect_timeout: float,
    idle_timeout: float,
    policy: TransferPolicy,
    sent: list[int] | None = None,
) -> tuple[Response, str]:
    """PUT `size` bytes to `url`: from the chunks of `body`, or the file at the path `body` (sendfile(2) on a
    plain connection: the bytes never enter Python). No redirect is followed (the body cannot be sent twice).
    The response (closed) and the start of its body; `sent[0]` counts the bytes sent as they go. A remote
    that answers before the body is complete (a 401, a 507) is read for its answer."""
    count = sent if sent is not None else [0]
    reader, writer, target, netloc = await _connect(url, connect_timeout, policy)
    try:
        writer.write(_head("PUT", target, netloc, {**headers, "Content-Length": str(size)}))
        failed: ConnectionError | None = None
        try:
            await _send_body(writer, body, size, idle_timeout, count)
        except TimeoutError as exc:
            raise HttpFailure(f"{netloc} took no data for {idle_timeout:g} s (after {count[0]} bytes)") from exc
        except ConnectionError as exc:
            failed = exc  # the remote may have answered, and stopped reading
        if failed is None and count[0] != size:
            raise HttpFailure(f"the local file gave {count[0]} bytes, not {size}")
        try:
            response = await _response(url, reader, writer, idle_timeout)
        except HttpFailure as exc:
            if failed is not None:
                raise HttpFailure(f"sending to {netloc} failed after {count[0]} bytes: {failed}") from failed
            raise exc
        if failed is not None and response.status < 300:
            raise HttpFailure(f"sending to {netloc} failed after {count[0]} bytes: {failed}") from failed
        return response, await response.text()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def get(
    url: str,
    headers: dict[str, str],
    *,
    connect_timeout: float,
    idle_timeout: float,
    policy: TransferPolicy,
) -> AsyncIterator[Response]:
    """GET `url`, following redirects (each to an address `policy` permits); the final response, its body still
    to read (closed on exit)."""
    sent = dict(headers)
    origin = urlsplit(url)[:2]
    for _ in range(MAX_REDIRECTS + 1):
        response = await _once(url, sent, connect_timeout, idle_timeout, policy)
        location = response.headers.get("location")
        if response.status in (301, 302, 303, 307, 308) and location:
            response.close()
            url = urljoin(url, location)
            if urlsplit(url)[:2] != origin:
                sent = {k: v for k, v in sent.items() if k.lower() not in CREDENTIALS}
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise HttpFailure(f"more than {MAX_REDIRECTS} redirects")
