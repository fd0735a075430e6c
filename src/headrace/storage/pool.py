"""Pools: directories where file data lives, one blob file per file version.

An upload goes to `tmp/` under a fresh name and is renamed into `data/` only when complete (after fsync);
the namespace commit that makes it visible comes after that rename. So after a crash a blob may exist
without a namespace entry (an orphan, removed by `remove_orphans`), never the reverse.

The same directory layout serves the embedded pool (opened by the door's own process) and a pool process
of its own (`headrace pool`, see `pool_server`); both use it through `local_store.LocalStore`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from headrace.errors import Conflict, InsufficientStorage
from headrace.storage.checksums import Hasher

READ_CHUNK = 1024 * 1024
BLOB_NAME = re.compile(r"[0-9a-f]{32}")


def file_checksums(path: str | Path, types: set[str]) -> dict[str, str]:
    """Checksums of the file at `path`, read from disk (blocking)."""
    hasher = Hasher(types)
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            hasher.update(chunk)
    return hasher.values()


def new_blob_name() -> str:
    return secrets.token_hex(16)


class Pool:
    """One pool directory; `max_bytes` (0 = no limit but the disk's) caps the bytes it will hold."""

    def __init__(self, name: str, root: Path, *, max_bytes: int = 0, fsync: bool = True) -> None:
        self.name = name
        self.root = root
        self.data = root / "data"
        self._data_str = str(self.data)
        self.tmp = root / "tmp"
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.used_bytes = 0  # committed bytes, set by the owner at start, kept current after
        self.reserved_bytes = 0  # bytes written by uploads in progress
        self.tmp.mkdir(parents=True, exist_ok=True)
        # 256 fan-out directories made once, so that committing an upload never creates a directory.
        for i in range(256):
            (self.data / f"{i:02x}").mkdir(parents=True, exist_ok=True)

    # -- paths -------------------------------------------------------------------------------------------

    def blob_path(self, blob: str) -> Path:
        return self.data / blob[:2] / blob

    def blob_path_str(self, blob: str) -> str:
        """`blob_path` as a string, without pathlib's parsing (the GET path asks for it on every request)."""
        return f"{self._data_str}/{blob[:2]}/{blob}"

    # -- writing -----------------------------------------------------------------------------------------

    def start_upload(self, blob: str | None = None) -> Upload:
        """A new upload in tmp/; `blob` names it when another process chose the name (a door writing to this
        pool over HTTP): then an existing blob of that name is refused, and `finish` never replaces one."""
        if blob is None:
            name, external = new_blob_name(), False
        else:
            if not BLOB_NAME.fullmatch(blob):
                raise Conflict(f"Not a blob name: {blob!r}")
            if self.blob_path(blob).exists():
                raise Conflict(f"Blob {blob} exists in pool {self.name}")
            name, external = blob, True
        try:
            fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError as exc:
            raise Conflict(f"Blob {name} is being written in pool {self.name}") from exc
        return Upload(self, name, fd, external=external)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        disk = st.f_bavail * st.f_frsize
        if self.max_bytes:
            return max(0, min(disk, self.max_bytes - self.used_bytes - self.reserved_bytes))
        return disk

    def _reserve(self, n: int) -> None:
        if self.max_bytes and self.used_bytes + self.reserved_bytes + n > self.max_bytes:
            raise InsufficientStorage(f"Pool {self.name} is full")
        self.reserved_bytes += n

    def copy_blob(self, src_blob: str, dst: str | None = None) -> tuple[str, int]:
        """A new blob (called `dst`, else a fresh name) holding the same bytes as `src_blob` (for COPY); its name
        and size. Blocking."""
        size = self.blob_path(src_blob).stat().st_size
        upload = self.start_upload(dst)
        try:
            upload.reserve(size)
            with open(self.blob_path(src_blob), "rb") as src:
                while chunk := src.read(READ_CHUNK):
                    upload.write_raw(chunk)
            upload.finish()
        except BaseException:
            upload.abort()
            raise
        return upload.blob, size

    # -- reading and removing ------------------------------------------------------------------------------

    def open_blob(self, blob: str) -> int:
        return os.open(self.blob_path(blob), os.O_RDONLY | os.O_CLOEXEC)

    def compute_checksums(self, blob: str, types: set[str]) -> dict[str, str]:
        """Checksums of a stored blob, read from disk (blocking; for Want-Digest types not computed at upload)."""
        return file_checksums(self.blob_path(blob), types)

    def remove_blob(self, blob: str, size: int | None = None) -> None:
        """Remove a blob counted in `used_bytes`; `size` None means measure it (so a caller that does not
        know the size cannot leak the count: a leak makes the pool refuse uploads it has room for)."""
        path = self.blob_path(blob)
        try:
            if size is None:
                size = path.stat().st_size
            os.unlink(path)
        except FileNotFoundError:
            return
        self.used_bytes = max(0, self.used_bytes - size)

    # -- recovery ------------------------------------------------------------------------------------------

    def clear_tmp(self) -> int:
        """Remove every partial upload (run at start, before any request). Returns how many."""
        n = 0
        for entry in os.scandir(self.tmp):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            n += 1
        return n

    def blobs(self) -> Iterator[str]:
        for top in os.scandir(self.data):
            if top.is_dir():
                for entry in os.scandir(top.path):
                    yield entry.name

    def remove_orphans(self, referenced: Iterable[str], *, older_than: float = 0.0) -> int:
        """Remove blobs no namespace entry refers to (left by a crash between rename and commit, or by a
        delete whose door could not reach this pool). `older_than` (seconds) spares recent blobs: on a pool
        that serves while it sweeps, a young unreferenced blob may be an upload whose commit is on its way."""
        keep = set(referenced)
        cutoff = time.time() - older_than
        orphans = []
        for blob in self.blobs():
            if blob in keep:
                continue
            if older_than:
                try:
                    if self.blob_path(blob).stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:
                    continue
            orphans.append(blob)
        for blob in orphans:
            self.remove_blob(blob, 0)  # never counted in used_bytes
        return len(orphans)


@dataclass
class Upload:
    """A blob being written in `tmp/`; `finish()` moves it into `data/`, `abort()` removes it."""

    pool: Pool
    blob: str
    fd: int
    size: int = 0
    reserved: int = 0
    accepted: int = 0
    done: bool = False
    #: The name came from another process: finish() must not replace a blob of that name.
    external: bool = False

    def reserve(self, n: int) -> None:
        self.pool._reserve(n)
        self.reserved += n

    def reserve_for(self, n: int) -> None:
        """Reserve room for the next `n` bytes before handing them to a writer thread (raises
        InsufficientStorage past the limit). Counts bytes accepted, as writes may still be in flight."""
        self.accepted += n
        if self.accepted > self.reserved:
            self.reserve(self.accepted - self.reserved)

    def write_raw(self, chunk: bytes | bytearray | memoryview) -> None:
        """Write a chunk (blocking; a writer thread or the event loop for small writes)."""
        if self.size + len(chunk) > self.reserved:
            self.reserve(self.size + len(chunk) - self.reserved)
        view = memoryview(chunk)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"No space left in pool {self.pool.name}") from exc
            raise
        self.size += len(chunk)

    def adopt(self) -> None:
        """Take as this upload's data what another program wrote at its tmp/ path (an HSM script restoring a
        copy: it may have replaced the file), counting its size; `finish` then makes it a blob. Blocking."""
        os.close(self.fd)
        self.fd = os.open(self.pool.tmp / self.blob, os.O_RDONLY | os.O_CLOEXEC)
        size = os.fstat(self.fd).st_size
        self.reserve_for(size)
        self.size = size

    @property
    def tmp_path(self) -> str:
        return str(self.pool.tmp / self.blob)

    def finish(self) -> None:
        """fsync (if configured), close, and rename into data/. Blocking: run in a thread."""
        try:
            if self.pool.fsync:
                os.fsync(self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise InsufficientStorage(f"No space left in pool {self.pool.name}") from exc
            raise
        finally:
            os.close(self.fd)
            self.fd = -1
        tmp, final = self.pool.tmp / self.blob, self.pool.blob_path(self.blob)
        if self.external:
            try:
                os.link(tmp, final)  # fails rather than replace a blob that a second upload of this name made
            except FileExistsError as exc:
                os.unlink(tmp)
                self.pool.reserved_bytes -= self.reserved
                self.reserved = 0
                raise Conflict(f"Blob {self.blob} exists in pool {self.pool.name}") from exc
            os.unlink(tmp)
        else:
            os.rename(tmp, final)
        self.done = True
        self.pool.reserved_bytes -= self.reserved
        self.pool.used_bytes += self.size
        self.reserved = 0
        if self.pool.fsync:
            # The new directory entry too: without it a power cut could take back a rename that the namespace
            # has since committed to, leaving a visible file without data. (A failure here: abort() removes it.)
            dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def abort(self) -> None:
        """Drop the partial data (also after finish(): the namespace commit failed)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.done:
            self.pool.remove_blob(self.blob, self.size)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pool.tmp / self.blob)
            self.pool.reserved_bytes -= self.reserved
            self.reserved = 0
