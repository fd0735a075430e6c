"""`MemoryStore`: blobs as bytes in a dict, a `BlobStore` for tests (a door or a contract test without disks
or pool processes). Bounded by `max_bytes` like a pool; nothing survives the process."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headrace.errors import BadRequest, Conflict, InsufficientStorage, NotFound
from headrace.http.body import RequestBody
from headrace.http.streaming import raw_headers
from headrace.storage.blobstore import BlobStore, Stored
from headrace.storage.checksums import Hasher
from headrace.storage.pool import new_blob_name

#: Bytes per body message when sending.
CHUNK = 64 * 1024


class _Collect:
    def __init__(self, store: MemoryStore, hasher: Hasher) -> None:
        self.store = store
        self.hasher = hasher
        self.parts: list[bytes] = []
        self.size = 0

    def reserve_for(self, n: int) -> None:
        if self.store.max_bytes and self.store.used_bytes + self.size + n > self.store.max_bytes:
            raise InsufficientStorage(f"Pool {self.store.name} is full")
        self.size += n

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.parts.append(data)


class MemoryStore(BlobStore):
    def __init__(self, name: str, *, max_bytes: int = 0) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.blobs: dict[str, bytes] = {}

    def _put(self, blob: str | None, data: bytes) -> str:
        name = blob or new_blob_name()
        if name in self.blobs:
            raise Conflict(f"Blob {name} exists in pool {self.name}")
        if self.max_bytes and self.used_bytes + len(data) > self.max_bytes:
            raise InsufficientStorage(f"Pool {self.name} is full")
        self.blobs[name] = data
        return name

    def _get(self, blob: str) -> bytes:
        try:
            return self.blobs[blob]
        except KeyError:
            raise NotFound(f"No blob {blob} in pool {self.name}") from None

    async def receive(
        self, body: RequestBody, types: set[str], expected: Mapping[str, str], *, blob: str | None = None
    ) -> Stored:
        if blob is not None and blob in self.blobs:
            raise Conflict(f"Blob {blob} exists in pool {self.name}")
        sink = _Collect(self, Hasher(types | set(expected)))
        await body.into(sink)
        sums = sink.hasher.values()
        for t, v in expected.items():
            if sums.get(t) != v:
                raise BadRequest(f"Digest mismatch: {t} sent {v}, computed {sums.get(t)}")
        data = b"".join(sink.parts)
        return Stored(self._put(blob, data), len(data), sums)

    async def write(self, data: bytes) -> Stored:
        hasher = Hasher(set())
        hasher.update(data)
        return Stored(self._put(None, bytes(data)), len(data), hasher.values())

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
        if blob not in self.blobs:
            raise NotFound(f"Data of {label} is missing from pool {self.name}")
        data = memoryview(self.blobs[blob])[start : start + length]
        if len(data) < length:
            raise NotFound(f"Data of {label} is shorter than its recorded size")
        await send({"type": "http.response.start", "status": status, "headers": raw_headers(headers)})
        for i in range(0, max(len(data), 1), CHUNK):
            piece = bytes(data[i : i + CHUNK])
            await send({"type": "http.response.body", "body": piece, "more_body": i + CHUNK < len(data)})
        return len(data)

    async def checksums(self, blob: str, types: set[str]) -> dict[str, str]:
        hasher = Hasher(types)
        hasher.update(self._get(blob))
        return hasher.values()

    async def copy(self, blob: str, *, dst: str | None = None) -> Stored:
        data = self._get(blob)
        return Stored(self._put(dst, data), len(data), {})

    async def delete(self, blob: str, size: int | None = None) -> None:
        self.blobs.pop(blob, None)

    @property
    def used_bytes(self) -> int:
        return sum(len(b) for b in self.blobs.values())

    def free_bytes(self) -> int:
        return max(0, self.max_bytes - self.used_bytes) if self.max_bytes else 1 << 62
