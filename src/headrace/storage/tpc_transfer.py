"""Third-party copy's transport: the door's HTTP client to the remote (streamed both ways: a pull's GET
and a push's PUT through `tpc_http`, httpx for the small HEAD and DELETE).

A pull reads the remote's GET response as if it were an upload's request body (`RemoteBody`, an ASGI
`receive` over the response), so the bytes take the door's own upload path into a pool (`BlobStore.receive`:
hashed as they arrive, in tmp/ until complete). A push reads the local blob through the store's own `send`
(an ASGI response caught in a queue: the same code for the door's pools and pool processes) and streams it
as the body of a PUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httpx

from headrace.http.body import RequestBody
from headrace.storage import tpc_http
from headrace.storage.blobstore import BlobStore
from headrace.storage.tpc import TpcSettings
from headrace.storage.tpc_policy import TransferRefused
from headrace.tls import tls_context


class RemoteFailure(Exception):
    """The remote refused or broke off the copy; str() is the reason for the failure line."""


@dataclass
class Progress:
    """Bytes moved so far, read by the marker loop while the transfer updates it."""

    transferred: int = 0
    size: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RemoteBody:
    """An ASGI `receive` that yields a remote response's body, counting it into `progress`."""

    def __init__(self, response: tpc_http.Response, progress: Progress) -> None:
        self._chunks = response.chunks()
        self._progress = progress
        self._ended = False

    async def __call__(self) -> dict[str, Any]:
        if self._ended:
            return {"type": "http.request", "body": b"", "more_body": False}
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        except tpc_http.HttpFailure as exc:
            raise RemoteFailure(f"reading from the remote failed: {exc}") from exc
        self._progress.transferred += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _reason(status: int, text: str, method: str) -> str:
    detail = ""
    with contextlib.suppress(ValueError):
        body = json.loads(text)
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("title") or "")
    if not detail:
        detail = text[:200]
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
    return f"remote {method} answered {status} {phrase}".rstrip() + (f": {detail}" if detail.strip() else "")


class RemoteClient:
    """The door's one HTTP client to remote servers (kept-alive connections shared by its copies)."""

    def __init__(self, settings: TpcSettings) -> None:
        self.settings = settings
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            timeout = httpx.Timeout(
                connect=self.settings.connect_timeout,
                read=self.settings.idle_timeout,
                write=self.settings.idle_timeout,
                pool=self.settings.connect_timeout,
            )
            self._client = httpx.AsyncClient(
                timeout=timeout, verify=tls_context(), trust_env=False, event_hooks={"request": [self._permitted]}
            )
        return self._client

    async def _permitted(self, request: httpx.Request) -> None:
        """Each request of the client (a redirect's too) goes only where the transfer policy permits."""
        try:
            await self.settings.policy.check_url(str(request.url))
        except TransferRefused as exc:
            raise RemoteFailure(f"{request.method} {request.url}: {exc}") from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    @contextlib.asynccontextmanager
    async def get(
        self, url: str, headers: dict[str, str], progress: Progress
    ) -> AsyncIterator[tuple[RequestBody, tpc_http.Response]]:
        """GET `url` (redirects followed, as a dCache door sends the client to a pool); its body as an upload's
        RequestBody. RemoteFailure unless the remote answers 200."""
        sent = {"Accept-Encoding": "identity", **headers}
        timeouts = {"connect_timeout": self.settings.connect_timeout, "idle_timeout": self.settings.idle_timeout}
        try:
            async with tpc_http.get(url, sent, policy=self.settings.policy, **timeouts) as r:
                if r.status != 200:
                    raise RemoteFailure(_reason(r.status, await r.text(), "GET"))
                progress.size = r.length
                yield RequestBody(RemoteBody(r, progress), r.length, self.settings.idle_timeout), r
        except tpc_http.HttpFailure as exc:
            raise RemoteFailure(f"GET {url} failed: {exc}") from exc

    async def put(
        self, url: str, headers: dict[str, str], size: int, body: AsyncIterator[bytes] | str, progress: Progress
    ) -> dict[str, str]:
        """PUT `size` bytes to `url` from the chunks of `body` or the local file at the path `body`; the
        response's headers, RemoteFailure unless 2xx."""
        progress.size = size
        sent = [0]

        async def count() -> None:  # the bytes sent, for the markers, while the PUT runs
            while True:
                progress.transferred = sent[0]
                await asyncio.sleep(0.2)

        counter = asyncio.create_task(count())
        timeouts = {"connect_timeout": self.settings.connect_timeout, "idle_timeout": self.settings.idle_timeout}
        try:
            r, text = await tpc_http.put(url, headers, size, body, sent=sent, policy=self.settings.policy, **timeouts)
        except tpc_http.HttpFailure as exc:
            raise RemoteFailure(f"PUT {url} failed: {exc}") from exc
        finally:
            counter.cancel()
            progress.transferred = sent[0]
        if not 200 <= r.status < 300:
            raise RemoteFailure(_reason(r.status, text, "PUT"))
        return r.headers

    async def head_digest(self, url: str, headers: dict[str, str], want: str) -> str | None:
        """The remote's `Digest` for `url` (HEAD with Want-Digest), None if it names none."""
        try:
            r = await self.client.request("HEAD", url, headers={**headers, "Want-Digest": want}, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RemoteFailure(f"HEAD {url} failed: {describe(exc)}") from exc
        if not r.is_success:
            raise RemoteFailure(_reason(r.status_code, "", "HEAD"))
        digest: str | None = r.headers.get("digest")
        return digest

    async def delete(self, url: str, headers: dict[str, str]) -> None:
        """Remove what a push left at the remote (a copy that failed its checksum); best effort."""
        with contextlib.suppress(httpx.HTTPError, RemoteFailure):
            await self.client.request("DELETE", url, headers=headers)


async def blob_chunks(store: BlobStore, blob: str, size: int, label: str) -> AsyncIterator[bytes]:
    """The bytes of a stored blob, read through the store's ASGI `send` (whichever kind of store it is)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
    never = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            await queue.put(bytes(message["body"]))

    async def receive() -> dict[str, Any]:
        await never.wait()  # the "client" (this reader) never hangs up: it cancels
        return {"type": "http.disconnect"}

    async def run() -> None:
        try:
            await store.send({"type": "http", "extensions": {}}, send, receive, blob, 200, {}, 0, size, label=label)
        finally:
            await queue.put(None)

    task = asyncio.create_task(run())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task  # its error, if it ended with one
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
