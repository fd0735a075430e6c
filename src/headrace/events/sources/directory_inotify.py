"""inotify watches over a directory tree (inotify_simple: a thin ctypes wrapper that gives the raw events,
with IN_CLOSE_WRITE and the rename cookies), keeping which watch descriptor is which directory as
directories are added, renamed and removed."""

from __future__ import annotations

import contextlib
import errno
import os

from inotify_simple import Event as InotifyEvent
from inotify_simple import INotify, flags

MASK = (
    flags.CLOSE_WRITE
    | flags.MOVED_FROM
    | flags.MOVED_TO
    | flags.CREATE
    | flags.DELETE
    | flags.DELETE_SELF
    | flags.MOVE_SELF
    | flags.ONLYDIR
    | flags.DONT_FOLLOW
    | flags.EXCL_UNLINK
)

__all__ = ["MASK", "InotifyEvent", "Watcher", "flags"]


class Watcher:
    """One inotify instance watching the directories of a tree; paths are below the root ("/" is the root)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.ino = INotify(nonblocking=True)
        self.path_of: dict[int, str] = {}
        self.wd_of: dict[str, int] = {}

    @property
    def fd(self) -> int:
        fd: int = self.ino.fileno()
        return fd

    def watch(self, path: str) -> None:
        """Watch the directory `path` (again: then its descriptor is the same, and the path is updated)."""
        try:
            wd = self.ino.add_watch(self.root if path == "/" else self.root + path, MASK)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise OSError(
                    errno.ENOSPC,
                    f"inotify watch limit reached watching {self.root}{path} (raise fs.inotify.max_user_watches, "
                    "or use mode 'scan')",
                ) from e
            if e.errno in (errno.ENOENT, errno.ENOTDIR):
                raise FileNotFoundError(e.errno, os.strerror(e.errno), self.root + path) from e
            raise
        old = self.path_of.get(wd)
        if old is not None and old != path and self.wd_of.get(old) == wd:
            del self.wd_of[old]
        self.path_of[wd] = path
        self.wd_of[path] = wd

    def forget(self, wd: int) -> None:
        """The kernel dropped watch `wd` (IN_IGNORED: its directory is gone, or it was removed)."""
        path = self.path_of.pop(wd, None)
        if path is not None and self.wd_of.get(path) == wd:
            del self.wd_of[path]

    def _below(self, path: str) -> list[str]:
        return [p for p in self.wd_of if p == path or p.startswith(path + "/")]

    def unwatch(self, path: str) -> None:
        """Stop watching `path` and what is below it (a directory moved out of the tree still exists)."""
        for p in self._below(path):
            wd = self.wd_of.pop(p)
            self.path_of.pop(wd, None)
            with contextlib.suppress(OSError):  # already gone with its directory
                self.ino.rm_watch(wd)

    def rename(self, old: str, new: str) -> None:
        for p in self._below(old):
            wd = self.wd_of.pop(p)
            self.path_of[wd] = new + p[len(old) :]
            self.wd_of[new + p[len(old) :]] = wd

    def read(self) -> list[InotifyEvent]:
        return list(self.ino.read(timeout=0))

    def close(self) -> None:
        self.ino.close()
