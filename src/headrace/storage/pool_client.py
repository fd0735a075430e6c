"""The door's side of pools that run as processes of their own: which ones there are, which one takes a new
file, and the HTTP calls that move data to and from them.

`PoolDirectory` reads the `pools` table (at most once a second) and chooses, round robin, among the pools
that heartbeat and have room. `RemotePool` is a pool process as a `BlobStore`: it streams an upload to its
pool (which hashes, fsyncs and renames it into place before it answers), proxies a byte range back, copies,
checksums and deletes blobs, and sends clients to the pool itself (`client_url`). Every request carries a
pool token the door signs for that one pool, blob and operation (see `pool_protocol`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from headrace.db.engine import Database
from headrace.errors import BadRequest, HeadraceError, InsufficientStorage, NotFound
from headrace.http.body import RequestBody
from headrace.http.streaming import raw_headers, watch_disconnect
from headrace.storage import pool_protocol as proto
from headrace.storage.blobstore import BlobStore, Stored, StoreUnavailable, StoreUnreachable
from headrace.storage.checksums import format_digest
from headrace.storage.pool import new_blob_name
from headrace.storage.pool_registry import PoolRow, now_ms, pool_secret, read_pools
from headrace.tls import tls_context

log = logging.getLogger("headrace.pools")

#: How long the door trusts its copy of the `pools` table.
REFRESH_SECONDS = 1.0
#: After a pool refused a connection, the door leaves it out of new uploads for this long.
DOWN_SECONDS = 5.0
#: Bytes gathered from the client before each write to a pool process.
REMOTE_BUFFER = 1024 * 1024

#: The pool that holds (or was to take) the data cannot be reached or failed during the transfer.
PoolUnavailable = StoreUnavailable
#: Not even a connection: nothing was sent, so another pool may take the upload.
PoolUnreachable = StoreUnreachable


class PoolFailed(HeadraceError):
    """The pool answered with an error; the client sees the pool's status and sentence."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title


class RemotePool(BlobStore):
    def __init__(self, row: PoolRow, directory: PoolDirectory) -> None:
        self.name = row.name
        self.url = row.url.rstrip("/")
        self.row = row
        self.directory = directory

    def __repr__(self) -> str:
        return f"RemotePool({self.name!r}, {self.url!r})"

    # -- requests ----------------------------------------------------------------------------------------

    def _api(self, blob: str, action: str = "") -> str:
        return f"{self.url}{proto.API_PREFIX}{blob}" + (f"/{action}" if action else "")

    async def _auth(self, op: str, blob: str, dst: str | None = None) -> dict[str, str]:
        secret = await self.directory.secret()
        token = proto.mint(
            secret, aud="door", op=op, pool=self.name, blob=blob, seconds=proto.DOOR_TOKEN_SECONDS, dst=dst
        )
        return {"Authorization": f"Bearer {token}"}

    async def client_token(
        self, op: str, blob: str, seconds: float, *, headers: dict[str, str] | None = None, commit: Any = None
    ) -> str:
        """A token for a redirected client: `op` on `blob` at this pool only, for `seconds`."""
        secret = await self.directory.secret()
        return proto.mint(
            secret, aud="client", op=op, pool=self.name, blob=blob, seconds=seconds, headers=headers, commit=commit
        )

    def _failed(self, r: httpx.Response, what: str) -> HeadraceError:
        try:
            body = r.json()
            detail = str(body.get("detail") or r.text)
            title = str(body.get("title") or r.reason_phrase)
        except ValueError:
            detail, title = r.text or r.reason_phrase, r.reason_phrase
        if r.status_code == 404:
            return NotFound(f"{what}: {detail}")
        if r.status_code >= 500 and r.status_code != 507:
            return PoolUnavailable(f"Pool {self.name} failed: {detail}")
        return PoolFailed(r.status_code, title, detail)

    def _transport(self, exc: httpx.TransportError, what: str) -> PoolUnavailable:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            self.directory.mark_down(self.name)
            return PoolUnreachable(f"Pool {self.name} cannot be reached at {self.url}")
        return PoolUnavailable(f"Pool {self.name} failed during {what}: {type(exc).__name__}")

    async def upload(
        self,
        body: AsyncIterable[bytes] | bytes,
        *,
        blob: str,
        length: int | None,
        types: set[str],
        digest: str | None = None,
    ) -> Stored:
        """Stream `body` into a new blob; returns once the pool has it complete, durable and hashed (and, with
        `digest`, verified). Exceptions raised by `body` (the client went away) propagate as they are."""
        headers = await self._auth("write", blob)
        if length is not None:
            headers["Content-Length"] = str(length)
        if digest:
            headers["Digest"] = digest
        params = {"sums": ",".join(sorted(types))} if types else None
        try:
            r = await self.directory.http().put(self._api(blob), content=body, headers=headers, params=params)
        except httpx.TransportError as exc:
            raise self._transport(exc, "the upload") from exc
        if r.status_code != 201:
            raise self._failed(r, f"Upload to pool {self.name}")
        data = r.json()
        return Stored(str(data["blob"]), int(data["size"]), {str(k): str(v) for k, v in data["checksums"].items()})

    @asynccontextmanager
    async def read(self, blob: str, start: int, length: int) -> AsyncIterator[httpx.Response]:
        """The pool's response for bytes [start, start+length) of `blob`, its body not yet read."""
        headers = await self._auth("read", blob)
        headers["Range"] = f"bytes={start}-{start + length - 1}"
        http = self.directory.http()
        try:
            r = await http.send(http.build_request("GET", self._api(blob), headers=headers), stream=True)
        except httpx.TransportError as exc:
            raise self._transport(exc, "the download") from exc
        try:
            if r.status_code not in (200, 206):
                await r.aread()
                raise self._failed(r, f"Data in pool {self.name}")
            yield r
        finally:
            await r.aclose()

    async def checksums(self, blob: str, types: set[str]) -> dict[str, str]:
        headers = await self._auth("sums", blob)
        try:
            r = await self.directory.http().get(
                self._api(blob, "checksums"), headers=headers, params={"types": ",".join(sorted(types))}
            )
        except httpx.TransportError as exc:
            raise self._transport(exc, "checksumming") from exc
        if r.status_code != 200:
            raise self._failed(r, f"Data in pool {self.name}")
        return {str(k): str(v) for k, v in r.json()["checksums"].items()}

    async def copy(self, blob: str, *, dst: str | None = None) -> Stored:
        """A new blob (`dst`, else a fresh name) in this pool with the bytes of `blob` (for COPY)."""
        dst = dst or new_blob_name()
        headers = await self._auth("copy", blob, dst=dst)
        try:
            r = await self.directory.http().post(self._api(blob, "copy"), headers=headers)
        except httpx.TransportError as exc:
            raise self._transport(exc, "a copy") from exc
        if r.status_code != 201:
            raise self._failed(r, f"Data in pool {self.name}")
        return Stored(dst, int(r.json().get("size", 0)), {})

    async def delete(self, blob: str, size: int | None = None) -> None:
        headers = await self._auth("delete", blob)
        try:
            r = await self.directory.http().delete(self._api(blob), headers=headers)
        except httpx.TransportError as exc:
            raise self._transport(exc, "a delete") from exc
        if r.status_code not in (204, 404):
            raise self._failed(r, f"Data in pool {self.name}")

    # -- as a BlobStore ------------------------------------------------------------------------------------

    async def receive(
        self, body: RequestBody, types: set[str], expected: Mapping[str, str], *, blob: str | None = None
    ) -> Stored:
        stored = await self.upload(
            body.chunks(REMOTE_BUFFER),
            blob=blob or new_blob_name(),
            length=body.length,
            types=types | set(expected),
            digest=format_digest(dict(expected), list(expected)),
        )
        for t, v in expected.items():  # the pool verified one of them; never commit on its word alone
            if stored.checksums.get(t) != v:
                await self.delete(stored.blob, stored.size)
                raise BadRequest(f"Digest mismatch: {t} sent {v}, computed {stored.checksums.get(t)}")
        return stored

    async def write(self, data: bytes) -> Stored:
        return await self.upload(data, blob=new_blob_name(), length=len(data), types=set())

    async def send(
        self,
        scope: Mapping[str, Any],
        send: Any,
        receive: Any,
        blob: str,
        status: int,
        headers: Mapping[str, str],
        start: int,
        length: int,
        *,
        label: str,
    ) -> int:
        """Proxy the bytes from the pool; the response starts only once the pool has answered, so that an
        unreachable pool is a 503, not a cut-off 200."""
        raw = raw_headers(headers)
        if length == 0:
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 0
        gone = asyncio.Event()
        async with self.read(blob, start, length) as r:
            watcher = asyncio.create_task(watch_disconnect(receive, gone))
            sent = 0
            try:
                await send({"type": "http.response.start", "status": status, "headers": raw})
                try:
                    async for chunk in r.aiter_raw():
                        if gone.is_set():
                            break
                        sent += len(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.TransportError as exc:
                    raise PoolUnavailable(f"Pool {self.name} failed while sending {label}") from exc
                if not gone.is_set():
                    if sent < length:
                        raise PoolUnavailable(f"Pool {self.name} sent {sent} of {length} bytes of {label}")
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                watcher.cancel()
        return sent

    async def client_url(
        self, op: str, blob: str, path: str, seconds: float, *, headers: Any = None, commit: Any = None
    ) -> str | None:
        token = await self.client_token(op, blob, seconds, headers=headers, commit=commit)
        return f"{self.url}{quote(path, safe='/')}?{proto.TOKEN_PARAM}={token}"

    @property
    def used_bytes(self) -> int:
        return self.row.used_bytes

    def free_bytes(self) -> int:
        return self.row.free_bytes


class PoolDirectory:
    """The pools registered in the shared database, as this process last read them."""

    def __init__(self, db: Database, secret: str = "") -> None:
        self.db = db
        self._configured_secret = secret
        self._secret: str | None = None
        self._rows: dict[str, PoolRow] = {}
        self._read_at = 0.0
        self._refreshing: asyncio.Future[None] | None = None
        self._down: dict[str, float] = {}
        self._turn = itertools.count()
        self._http: httpx.AsyncClient | None = None

    async def secret(self) -> str:
        if self._secret is None:
            self._secret = await self.db.write(pool_secret, self.db, self._configured_secret)
        return self._secret

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                verify=tls_context(),
                timeout=httpx.Timeout(30.0, connect=5.0, read=300.0, write=300.0),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
                trust_env=False,  # pool traffic never goes through the environment's HTTP proxy
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- the table -----------------------------------------------------------------------------------------

    async def refresh(self, *, force: bool = False) -> dict[str, PoolRow]:
        if not force and time.monotonic() - self._read_at < REFRESH_SECONDS:
            return self._rows
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)  # one read for all the requests that need it now
            return self._rows
        self._refreshing = asyncio.get_running_loop().create_future()
        try:
            rows = await self.db.read(read_pools, self.db)
            self._rows = {r.name: r for r in rows}
            self._read_at = time.monotonic()
        finally:
            self._refreshing.set_result(None)
        return self._rows

    def cached(self) -> dict[str, PoolRow]:
        """The rows as last read, without waiting (for quota reports)."""
        return self._rows

    async def get(self, name: str) -> RemotePool | None:
        """The registered pool called `name` (alive or not: its files are still there), or None."""
        rows = await self.refresh()
        if name not in rows:
            rows = await self.refresh(force=True)
        row = rows.get(name)
        return None if row is None else RemotePool(row, self)

    def mark_down(self, name: str) -> None:
        self._down[name] = time.monotonic() + DOWN_SECONDS

    async def choose(self, length: int | None, exclude: set[str] | None = None) -> RemotePool | None:
        """The pool for a new file: round robin over the live pools with room for `length` bytes. None when
        no pool is registered at all (the door then writes to its own); PoolUnavailable when pools are
        registered but none is alive, InsufficientStorage when none has room."""
        rows = await self.refresh()
        if not rows:
            return None
        t, mono = now_ms(), time.monotonic()
        live = [
            r
            for r in rows.values()
            if r.live(t) and self._down.get(r.name, 0.0) <= mono and r.name not in (exclude or ())
        ]
        if not live:
            raise PoolUnavailable("No pool is online to take the file")
        need = length or 0
        roomy = [r for r in live if r.free_bytes >= need]
        if not roomy:
            raise InsufficientStorage(f"No pool has room for {need} bytes")
        row = roomy[next(self._turn) % len(roomy)]
        return RemotePool(row, self)
