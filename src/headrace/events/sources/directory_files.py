"""Functions reading a directory source's files (base.RemoteFiles): the file below the source's root, never
anything outside it.

A path with a `..` (or `.`) component, a NUL, or one that is not absolute is refused (PermissionError). The
path is resolved (symbolic links followed) and must stay below the root's own resolved path; a link to
something outside the root is refused (PermissionError) and one to something inside is followed. The file is
then opened one component at a time from the root with O_NOFOLLOW, along the resolved path, so a link put in
place between the check and the open is not followed either.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator

CHUNK = 1 << 20


class LocalFiles:
    def __init__(self, root: str) -> None:
        self.root = root

    def _open(self, path: str) -> tuple[int, int]:
        if not path.startswith("/") or "\0" in path:
            raise PermissionError(f"{path!r} is not a path below the source's root")
        parts = [p for p in path.split("/") if p]
        if any(p in (".", "..") for p in parts) or not parts:
            raise PermissionError(f"{path!r} is not a path below the source's root")
        root = os.path.realpath(self.root)
        resolved = os.path.realpath(os.path.join(root, *parts))
        if os.path.commonpath([root, resolved]) != root or resolved == root:
            raise PermissionError(f"{path} leads outside the source's root")
        names = os.path.relpath(resolved, root).split(os.sep)
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in names[:-1]:
                nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = nxt
            try:
                file_fd = os.open(names[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
            except OSError as e:
                if e.errno == 40:  # ELOOP: a link put in place since the check
                    raise PermissionError(f"{path} leads outside the source's root") from e
                raise
        except NotADirectoryError as e:
            raise FileNotFoundError(path) from e
        finally:
            os.close(fd)
        st = os.fstat(file_fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(file_fd)
            raise FileNotFoundError(f"{path} is not a file")
        return file_fd, st.st_size

    async def open(self, path: str, start: int = 0, end: int | None = None) -> tuple[int | None, AsyncIterator[bytes]]:
        fd, size = await asyncio.to_thread(self._open, path)
        stop = size if end is None else min(end, size)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                offset = max(start, 0)
                while offset < stop:
                    data = await asyncio.to_thread(os.pread, fd, min(CHUNK, stop - offset), offset)
                    if not data:
                        break
                    offset += len(data)
                    yield data
            finally:
                os.close(fd)

        return size, chunks()
