"""`LocalStore`: a pool directory (`pool.Pool`) opened by this process, as a `BlobStore`. Blocking file I/O
runs on an executor; the door's embedded pools and a pool process (`pool_server`) both serve through it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from headrace.db.handoff import Handoff
from headrace.errors import BadRequest, NotFound
from headrace.http.body import RequestBody
from headrace.http.streaming import can_pathsend, send_fd_range, send_path
from headrace.storage.blobstore import BlobStore, Stored
from headrace.storage.checksums import Hasher
from headrace.storage.pool import Pool, Upload

#: A body of at most this many bytes (with a Content-Length) is read whole, then written in one thread hand-off.
SMALL_BODY = 64 * 1024


#: The threads that write small uploads (each one file, fsync, rename, directory fsync): as many as the I/O
#: executor has, so that the disk sees as many fsyncs at once.
_SMALL_WRITES = Handoff(16, "store-small")


class HashingSink:
    """An upload as the sink of a streamed request body (`headrace.http.body.Sink`): each chunk hashed, then
    written."""

    def __init__(self, upload: Upload, types: set[str]) -> None:
        self.upload = upload
        self.hasher = Hasher(types)

    def reserve_for(self, n: int) -> None:
        self.upload.reserve_for(n)

    def write(self, data: bytes) -> None:
        self.hasher.update(data)
        self.upload.write_raw(data)


class LocalStore(BlobStore):
    def __init__(self, pool: Pool, executor: Executor | None = None) -> None:
        self.pool = pool
        self.name = pool.name
        self.io = executor
        #: Blobs being sent now (a tape agent does not evict them): blob -> readers.
        self.reading: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"LocalStore({self.name!r}, {str(self.pool.root)!r})"

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.io, fn, *args)

    async def receive(
        self, body: RequestBody, types: set[str], expected: Mapping[str, str], *, blob: str | None = None
    ) -> Stored:
        if body.length is not None and body.length <= SMALL_BODY:
            return await self._receive_small(body, types, expected, blob)
        upload: Upload = await self._run(self.pool.start_upload, blob)
        try:
            if body.length:
                upload.reserve(body.length)  # room for all of it, before the first byte
            sink = HashingSink(upload, types | set(expected))
            await body.into(sink, self.io)
            sums = sink.hasher.values()
            for t, v in expected.items():
                if sums.get(t) != v:
                    raise BadRequest(f"Digest mismatch: {t} sent {v}, computed {sums.get(t)}")
            await asyncio.to_thread(upload.finish)
        except BaseException:
            upload.abort()
            raise
        return Stored(upload.blob, upload.size, sums)

    async def _receive_small(
        self, body: RequestBody, types: set[str], expected: Mapping[str, str], blob: str | None
    ) -> Stored:
        """A small body read whole on the loop, then hashed, checked and written (file, fsync, rename,
        directory fsync) in ONE hand-off to an I/O thread instead of one per step: the hand-offs cost a small
        upload more CPU than its bytes. Same errors and the same order as the streamed path: nothing is
        stored when the digest does not match."""
        length = body.length or 0
        self.pool._reserve(length)  # room for all of it before the first byte is read (507 first), as streamed
        try:
            data = await body.whole()
        except BaseException:
            self.pool.reserved_bytes -= length
            raise

        def run() -> Stored:
            # Runs once queued, even if the request is cancelled meanwhile: it settles the reservation itself.
            held = length
            try:
                hasher = Hasher(types | set(expected))
                hasher.update(data)
                sums = hasher.values()
                for t, v in expected.items():
                    if sums.get(t) != v:
                        raise BadRequest(f"Digest mismatch: {t} sent {v}, computed {sums.get(t)}")
                upload = self.pool.start_upload(blob)
                upload.reserved, held = held, 0  # the upload releases it when it finishes or aborts
                try:
                    upload.write_raw(data)
                    upload.finish()
                except BaseException:
                    upload.abort()
                    raise
                return Stored(upload.blob, upload.size, sums)
            finally:
                if held:
                    self.pool.reserved_bytes -= held

        return await _SMALL_WRITES.run(run)

    async def write(self, data: bytes) -> Stored:
        def run() -> Stored:
            upload = self.pool.start_upload()
            try:
                hasher = Hasher(set())
                hasher.update(data)
                upload.write_raw(data)
                upload.finish()
            except BaseException:
                upload.abort()
                raise
            return Stored(upload.blob, upload.size, hasher.values())

        result: Stored = await self._run(run)
        return result

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
        self.reading[blob] = self.reading.get(blob, 0) + 1
        try:
            return await self._send(scope, send, receive, blob, status, headers, start, length, label)
        finally:
            left = self.reading.pop(blob) - 1
            if left:
                self.reading[blob] = left

    async def _send(
        self,
        scope: Mapping[str, Any],
        send: Any,
        receive: Any,
        blob: str,
        status: int,
        headers: Mapping[str, str],
        start: int,
        length: int,
        label: str,
    ) -> int:
        missing = f"Data of {label} is missing from pool {self.name}"
        if status == 200 and can_pathsend(scope):
            # The whole file via the server's `http.response.pathsend`: the bytes never enter Python.
            path = self.pool.blob_path_str(blob)
            if not os.path.exists(path):
                raise NotFound(missing)
            await send_path(send, headers, path)
            return length
        try:
            fd = self.pool.open_blob(blob)
        except FileNotFoundError as exc:
            raise NotFound(missing) from exc
        try:
            short = NotFound(f"Data of {label} is shorter than its recorded size")
            return await send_fd_range(send, receive, status, headers, fd, start, length, executor=self.io, short=short)
        finally:
            os.close(fd)

    async def checksums(self, blob: str, types: set[str]) -> dict[str, str]:
        try:
            sums: dict[str, str] = await self._run(self.pool.compute_checksums, blob, types)
        except FileNotFoundError as exc:
            raise NotFound(f"No blob {blob} in pool {self.name}") from exc
        return sums

    async def copy(self, blob: str, *, dst: str | None = None) -> Stored:
        try:
            new, size = await self._run(self.pool.copy_blob, blob, dst)
        except FileNotFoundError as exc:
            raise NotFound(f"No blob {blob} in pool {self.name}") from exc
        return Stored(new, size, {})

    async def delete(self, blob: str, size: int | None = None) -> None:
        await self._run(self.pool.remove_blob, blob, size)

    @property
    def used_bytes(self) -> int:
        return self.pool.used_bytes

    def free_bytes(self) -> int:
        return self.pool.free_bytes()
