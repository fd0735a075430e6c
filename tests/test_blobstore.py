"""The BlobStore contract (headrace.storage.blobstore), held by the local store (a pool directory) and the
in-memory one alike; the remote one (a pool process) is held to it through the door in test_remote_pools.py.
ASGI messages are scripted: no server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headrace.errors import BadRequest, Conflict, IncompleteUpload, InsufficientStorage, NotFound
from headrace.http.body import RequestBody
from headrace.storage.blobstore import BlobStore, Stores, StoreUnavailable
from headrace.storage.local_store import LocalStore
from headrace.storage.memory_store import MemoryStore
from headrace.storage.namespace import Blob
from headrace.storage.pool import Pool


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "local":
        yield LocalStore(Pool("p", tmp_path / "pool", max_bytes=1000, fsync=False))
    else:
        yield MemoryStore("p", max_bytes=1000)


def body(*parts: bytes, length: int | None = None) -> RequestBody:
    messages = [{"type": "http.request", "body": p, "more_body": i < len(parts) - 1} for i, p in enumerate(parts)]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return RequestBody(receive, length, 5.0)


async def read(store: BlobStore, blob: str, start: int, length: int, status: int = 206) -> tuple[int, bytes, int]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    n = await store.send({}, send, receive, blob, status, {"X-A": "b"}, start, length, label="/f")
    assert sent[0]["type"] == "http.response.start" and (b"x-a", b"b") in sent[0]["headers"]
    assert sent[-1]["more_body"] is False
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), n


def test_receive_hash_send_copy_delete(store: BlobStore) -> None:
    async def run() -> None:
        data = b"0123456789" * 10
        stored = await store.receive(body(data[:50], data[50:], length=100), {"MD5"}, {})
        assert stored.size == 100 and stored.checksums["MD5"] == hashlib.md5(data).hexdigest()
        assert "ADLER32" in stored.checksums
        assert store.used_bytes == 100
        assert await read(store, stored.blob, 10, 5) == (206, b"01234", 5)
        assert await read(store, stored.blob, 0, 100, 200) == (200, data, 100)
        assert (await store.checksums(stored.blob, {"SHA-256"}))["SHA-256"] == hashlib.sha256(data).hexdigest()
        copied = await store.copy(stored.blob)
        assert copied.blob != stored.blob and copied.size == 100
        assert (await read(store, copied.blob, 0, 100))[1] == data
        await store.delete(stored.blob, 100)
        await store.delete(stored.blob, 100)  # idempotent
        with pytest.raises(NotFound):
            await read(store, stored.blob, 0, 1)
        with pytest.raises(NotFound):
            await store.checksums(stored.blob, set())
        with pytest.raises(NotFound):
            await store.copy(stored.blob)
        assert store.used_bytes == 100
        empty = await store.write(b"")
        assert empty.size == 0 and empty.checksums == {"ADLER32": "00000001"}
        assert await read(store, empty.blob, 0, 0, 200) == (200, b"", 0)
        assert await store.client_url("read", empty.blob, "/f", 60) is None

    asyncio.run(run())


def test_failed_receives_leave_nothing(store: BlobStore) -> None:
    async def run() -> None:
        md5 = hashlib.md5(b"abc").hexdigest()
        with pytest.raises(BadRequest, match="Digest mismatch"):
            await store.receive(body(b"abd"), set(), {"MD5": md5})
        with pytest.raises(IncompleteUpload):
            await store.receive(body(b"ab", length=3), set(), {})
        with pytest.raises(InsufficientStorage):
            await store.receive(body(b"x" * 1001), set(), {})
        assert store.used_bytes == 0
        good = await store.receive(body(b"abc"), set(), {"MD5": md5}, blob="ab" * 16)
        assert good.blob == "ab" * 16
        with pytest.raises(Conflict):
            await store.receive(body(b"abc"), set(), {}, blob="ab" * 16)
        assert store.used_bytes == 3

    asyncio.run(run())


def test_local_store_leaves_no_partial_file(tmp_path: Path) -> None:
    pool = Pool("p", tmp_path / "pool", fsync=False)
    store = LocalStore(pool)
    with pytest.raises(IncompleteUpload):
        asyncio.run(store.receive(body(b"ab", length=3), set(), {}))
    assert not any(pool.tmp.iterdir()) and list(pool.blobs()) == []


class NoPools:
    """A pool directory in which no pool process is registered."""

    async def get(self, name: str) -> None:
        return None

    async def choose(self, length: int | None, exclude: set[str] | None = None) -> None:
        return None

    def cached(self) -> dict[str, Any]:
        return {}


def test_stores_choose_get_quota_drop() -> None:
    async def run() -> None:
        small, large = MemoryStore("small", max_bytes=10), MemoryStore("large", max_bytes=100)
        stores = Stores({"small": small, "large": large}, NoPools())
        assert await stores.choose(5) is large
        assert await stores.choose(5, exclude={"large"}) is None
        assert await stores.get("small") is small
        with pytest.raises(StoreUnavailable):
            await stores.get("elsewhere")
        stored = await small.write(b"12345")
        assert stores.quota() == (5, 5 + 100)
        await stores.drop([Blob("small", stored.blob, 5), Blob("elsewhere", stored.blob, 5)])
        assert small.blobs == {}

    asyncio.run(run())
