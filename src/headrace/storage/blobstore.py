"""Where file data lives, behind one async interface: `BlobStore`. A blob is one file version's bytes, named
by a random hex name; the namespace records which store holds it.

Implementations: `local_store.LocalStore` (a pool directory opened by this process), `pool_client.RemotePool`
(a pool process, over HTTP) and `memory_store.MemoryStore` (bytes in a dict, for tests). Another kind (a tape
back-end, an object store) is one more file implementing `BlobStore`.

`Stores` is the set a door writes to and reads from: this process's own stores, and the pool processes
registered in the database (new files go to those when any is registered).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from headrace.errors import HeadraceError
from headrace.http.body import RequestBody

log = logging.getLogger("headrace.storage")


@dataclass(frozen=True)
class Stored:
    """A blob a store holds, complete and durable: its name, size and the checksums computed as it arrived."""

    blob: str
    size: int
    checksums: dict[str, str]


class StoreUnavailable(HeadraceError):
    """The store that holds (or was to take) the data cannot be reached or failed during the transfer."""

    status = 503
    title = "Service Unavailable"


class StoreUnreachable(StoreUnavailable):
    """Not even a connection: nothing was sent, so another store may take the upload."""


class BlobStore(ABC):
    """One place blobs live. Every method is safe to call from the event loop (blocking I/O runs elsewhere)."""

    name: str

    @abstractmethod
    async def receive(
        self, body: RequestBody, types: set[str], expected: Mapping[str, str], *, blob: str | None = None
    ) -> Stored:
        """Stream `body` into a new blob (called `blob`, else a fresh name), hashing it with `types` and the
        types of `expected`; returns once it is complete and durable and its checksums equal `expected`
        (BadRequest otherwise). On any failure nothing is left behind."""

    @abstractmethod
    async def write(self, data: bytes) -> Stored:
        """A new blob holding `data` (small: an empty file made by LOCK)."""

    @abstractmethod
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
        """Answer with `status` and `headers`, the body bytes [start, start+length) of `blob`; the bytes sent.
        NotFound (before the response starts) when the blob is missing; `label` names the data in errors."""

    @abstractmethod
    async def checksums(self, blob: str, types: set[str]) -> dict[str, str]:
        """Checksums of a stored blob, computed from its bytes."""

    @abstractmethod
    async def copy(self, blob: str, *, dst: str | None = None) -> Stored:
        """A new blob (called `dst`, else a fresh name) with the bytes of `blob` (for COPY)."""

    @abstractmethod
    async def delete(self, blob: str, size: int | None = None) -> None:
        """Remove a blob no namespace entry refers to any more (`size` None: measure it). Idempotent."""

    async def client_url(
        self, op: str, blob: str, path: str, seconds: float, *, headers: Any = None, commit: Any = None
    ) -> str | None:
        """A URL (`path` quoted, on this store) at which a redirected client does `op` ("read", "write") on
        `blob` itself for `seconds`; None for a store that clients cannot reach (the door then moves the bytes)."""
        return None

    @property
    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes of committed blobs."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Room left for new blobs."""


class Stores:
    """The stores of one door: its own (`local`, by name) and the pool processes of `directory` (a
    `pool_client.PoolDirectory`; when any is registered, new files go to them; the door's own stores still
    serve the files they hold)."""

    def __init__(self, local: Mapping[str, BlobStore], directory: Any) -> None:
        self.local = dict(local)
        self.directory = directory

    async def get(self, name: str) -> BlobStore:
        """The store called `name`; StoreUnavailable if no such store is known."""
        store = self.local.get(name)
        if store is not None:
            return store
        remote: BlobStore | None = await self.directory.get(name)
        if remote is None:
            raise StoreUnavailable(f"Pool {name} is not registered")
        return remote

    async def choose(self, length: int | None, exclude: set[str] | None = None) -> BlobStore | None:
        """Where a new file of `length` bytes goes: a pool process when any is registered, else the own store
        with the most room. None when all those that could take it are `exclude`d."""
        remote: BlobStore | None = await self.directory.choose(length, exclude=exclude)
        if remote is not None:
            return remote
        if exclude:
            return None
        if len(self.local) == 1:  # nothing to compare: no statvfs per upload
            return next(iter(self.local.values()))
        return max(self.local.values(), key=lambda s: s.free_bytes())

    def quota(self) -> tuple[int, int]:
        """(bytes used, bytes free) for a quota report: the free room is that of the stores new files go to."""
        rows = self.directory.cached().values()
        used = sum(s.used_bytes for s in self.local.values()) + sum(r.used_bytes for r in rows)
        if rows:
            return used, sum(r.free_bytes for r in rows if r.live())
        return used, sum(s.free_bytes() for s in self.local.values())

    async def drop(self, blobs: list[Any]) -> None:
        """Remove blobs (`namespace.Blob`s) no longer referenced, after the transaction that dropped them has
        committed. A store that cannot be reached keeps the blob until its orphan sweep removes it."""
        limit = asyncio.Semaphore(32)  # a deleted tree's blobs go in parallel, but not all at once

        async def drop_one(b: Any) -> None:
            async with limit:
                try:
                    store = self.local.get(b.pool) or await self.directory.get(b.pool)
                    if store is not None:
                        await store.delete(b.blob, b.size)
                except HeadraceError as exc:
                    log.warning("blob %s stays in pool %s until its orphan sweep: %s", b.blob, b.pool, exc.detail)

        for i in range(0, len(blobs), 1000):
            await asyncio.gather(*(drop_one(b) for b in blobs[i : i + 1000]))
