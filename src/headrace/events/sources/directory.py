"""The `directory` source kind: a local or mounted POSIX tree (the online file system a DAQ writes first).

Configuration (`PUT /api/v1/sources/{name}` with `{"kind": "directory", ...}`):
  root       the tree, an absolute path; it must exist when the source runs (otherwise the run fails with
             that error, shown as lastError, and is retried with backoff)
  mode       "auto" (default): inotify, unless the root is on a file system where another machine's writes
             raise no inotify event (the file system type of the root's mount in /proc/self/mounts: nfs, nfs4,
             lustre, gpfs, ceph, cifs/smb3, 9p, afs, beegfs, glusterfs, gfs2, ocfs2, panfs, orangefs,
             virtiofs and every fuse.* such as ceph-fuse or sshfs), or inotify cannot be had (no inotify, the
             watch limit reached): then "scan". "inotify" and "scan" force one.
  interval   seconds between scans (default 5); with inotify, how long a file found by a listing (at start,
             in a new directory, after an overflow) must have been left unmodified before it is announced
  pattern    glob or list of globs: only matching files are reported (a glob with '/' matches the path
             below the root, one without the file name)
  ignore     globs of names not reported nor descended into; default: hidden names and writers' temporary
             ones (.*, *.tmp, *.part, *.partial, *.swp, *~, .~*); a list given replaces it ([]: none)
  recursive  the whole tree (default) or the root's files only

Events (paths below the root, "/run/f.h5"; `url` is the file's file:// URL; `detail` has inode and mtime_ns):
  CLOSE_WRITE  a complete file. With inotify, IN_CLOSE_WRITE: each close of a file opened for writing that
               changed it (a file opened for writing, closed, and opened and written again is announced after
               each close; a close that changed nothing, as `touch -c` does not, has the key of the one before
               and is stored once); and a file renamed into the tree from outside it or from an ignored name
               (write to "f.part" or "../tmp/f", then rename to "f": one event, for "f"). With a scan, a file
               whose size and mtime were the same in two consecutive scans (a writer that pauses longer than
               `interval` may so have its file announced twice, before and after the pause).
  MOVE         a rename within the tree, `old_path` the old name (a directory's rename is one MOVE of it)
  DELETE       a file or directory gone (or renamed out of the tree, or to an ignored name)
  CREATE       a directory (new directories are watched as they appear, and the files already in them when
               the watch was added are found by listing them)
Symbolic links and special files are not reported nor followed.

Keys are made of (kind, old path, path, inode, size, mtime), so whatever finds a change again (an inotify event
and the reconciling scan after a restart, a re-scan) delivers an event the sink already holds, and it enters
the log once. A clock granularity that gives two writes of the same size the same mtime would merge them.

State: the position is a counter raised by each delivery; the snapshot of what has been announced (path ->
size, mtime_ns, inode, and the directories) is kept with `sink.set_state("snapshot", ...)`, grouped by
directory and zlib-compressed (100,000 files: see the test's figure), saved after each delivery, or, when
encoding it takes longer than 50 ms (large trees), at most every max(5 s, 20 x that time) and at the next
quiet moment after. The snapshot holds the log's `mark` (base.Sink) when it was taken, and a start replays
the events delivered after it onto it: a file announced after the last save, then renamed or deleted while
headrace was down, is known, and its MOVE or DELETE is announced. At the first start the tree as it is
becomes the snapshot, announcing nothing. On every later start, the tree is walked (watches added as it
goes) and compared with the snapshot: what changed while headrace was not watching is announced, then
inotify is followed (or the scans go on).
IN_Q_OVERFLOW (events lost) does the same walk and comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from headrace.events.model import EventKind
from headrace.events.sources.base import RemoteEvent, RemoteFiles, Sink, SourceConfigError
from headrace.events.sources.directory_files import LocalFiles
from headrace.events.sources.directory_tree import (
    DEFAULT_IGNORE,
    Change,
    Entry,
    Filter,
    Tree,
    decode,
    diff,
    drop_prefix,
    encode,
    entry_of,
    is_dir,
    join,
    rename_prefix,
    replay,
    under,
    walk,
)

log = logging.getLogger("headrace.sources.directory")

KEYS = frozenset({"root", "mode", "interval", "pattern", "ignore", "recursive"})
MODES = ("auto", "inotify", "scan")
#: File system types whose changes made by other machines raise no inotify event here.
NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "ceph",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "afs",
        "beegfs",
        "glusterfs",
        "gfs2",
        "ocfs2",
        "panfs",
        "orangefs",
        "pvfs2",
        "virtiofs",
        "fuse",
    }
)
#: A delivery holds at most this many events (a reconciling walk can find a whole tree changed).
BATCH = 1000
#: How long an IN_MOVED_FROM waits for its IN_MOVED_TO before it is taken for a move out of the tree.
MOVE_PAIRING = 0.1


@dataclass(frozen=True)
class Config:
    root: str
    mode: str
    interval: float
    filter: Filter


def _globs(config: Mapping[str, Any], key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(g, str) and g and "\0" not in g for g in value):
        raise SourceConfigError(f"'{key}' must be a glob or a list of globs.")
    return tuple(value)


def parse(config: Mapping[str, Any]) -> Config:
    unknown = sorted(set(config) - KEYS - {"kind"})
    if unknown:
        raise SourceConfigError(
            f"Unknown option(s) for a directory source: {', '.join(unknown)} (known: {', '.join(sorted(KEYS))})."
        )
    root = config.get("root")
    if not isinstance(root, str) or not root or "\0" in root:
        raise SourceConfigError("A directory source needs 'root', the absolute path of the tree it watches.")
    if not os.path.isabs(root):
        raise SourceConfigError(f"'root' must be an absolute path: {root!r}.")
    if any(part == ".." for part in root.split("/")):
        raise SourceConfigError(f"'root' must not contain '..': {root!r}.")
    root = os.path.normpath(root)
    if root != "/":
        root = root.rstrip("/")
    mode = config.get("mode", "auto")
    if mode not in MODES:
        raise SourceConfigError(f"'mode' must be one of {', '.join(MODES)}: {mode!r}.")
    interval = config.get("interval", 5)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 86400:
        raise SourceConfigError(f"'interval' must be a number of seconds, more than 0 and at most 86400: {interval!r}.")
    recursive = config.get("recursive", True)
    if not isinstance(recursive, bool):
        raise SourceConfigError(f"'recursive' must be true or false: {recursive!r}.")
    flt = Filter(
        pattern=_globs(config, "pattern", ()),
        ignore=_globs(config, "ignore", DEFAULT_IGNORE),
        recursive=recursive,
    )
    return Config(root=root, mode=mode, interval=float(interval), filter=flt)


def _unescape(field: str) -> str:
    """A /proc/mounts field (space, tab, newline and backslash are octal escapes there)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def fstype(path: str, mounts: str = "/proc/self/mounts") -> str | None:
    """The file system type of the mount `path` is on: the longest mount point above its resolved path."""
    target = os.path.realpath(path)
    best, kind = "", None
    try:
        with open(mounts, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def inotify_sees_all(kind: str | None) -> bool:
    """Whether inotify on this file system type reports every change (not only this machine's)."""
    return kind is not None and kind not in NETWORK_FS and not kind.startswith("fuse.")


class _Book:
    """What has been announced (`known`, the snapshot), the position counter, and their saving."""

    def __init__(self, source: DirectorySource, sink: Sink, known: Tree | None, position: int) -> None:
        self.source = source
        self.sink = sink
        self.known = known
        self.position = position
        self.dirty = False
        self.next_save = 0.0

    async def deliver(self, changes: Sequence[Change]) -> None:
        for i in range(0, len(changes), BATCH):
            self.position += 1
            events = [self.source.event(c) for c in changes[i : i + BATCH]]
            await self.sink.deliver(events, str(self.position))
            self.source.delivered += len(events)
        if changes:
            self.dirty = True
            await self.save()

    async def save(self, force: bool = False) -> None:
        if self.known is None or not (self.dirty or force) or (not force and time.monotonic() < self.next_save):
            return
        started = time.monotonic()
        mark = await self.sink.mark()  # nothing delivers meanwhile: this task is the only one that does
        value = await asyncio.to_thread(encode, dict(self.known), self.position, mark)
        await self.sink.set_state("snapshot", value)
        took = time.monotonic() - started
        self.dirty = False
        self.next_save = time.monotonic() + (0.0 if took < 0.05 else max(5.0, 20 * took))
        self.source.snapshot_bytes = len(value["z"])

    def save_deadline(self) -> float | None:
        return self.next_save if self.dirty else None


class DirectorySource:
    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        #: What the last run chose ("inotify" | "scan") and why; scans (or reconciling walks) completed;
        #: events handed to the sink; the stored snapshot's size (base64 characters). For tests and status.
        self.mode_in_use: str | None = None
        self.fstype: str | None = None
        self.scans = 0
        self.delivered = 0
        self.snapshot_bytes = 0
        self.follower: _Follow | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def rescan(self) -> None:
        """Scan now instead of at the end of the interval (scan mode; from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def files(self) -> RemoteFiles | None:
        return LocalFiles(self.config.root)

    def event(self, c: Change) -> RemoteEvent:
        size, mtime, inode = c.entry
        directory = is_dir(c.entry)
        absolute = self.config.root.rstrip("/") + c.path
        return RemoteEvent(
            key=c.key,
            kind=c.kind,
            path=c.path,
            is_dir=directory,
            size=None if directory else size,
            old_path=c.old_path,
            time=mtime // 1000 if c.kind is EventKind.CLOSE_WRITE else None,
            url="file://" + quote(absolute.encode("utf-8", "surrogateescape")),
            detail={"inode": inode} if directory else {"inode": inode, "mtime_ns": mtime},
        )

    def _choose(self) -> str:
        self.fstype = fstype(self.config.root)
        if self.config.mode != "auto":
            return self.config.mode
        return "inotify" if inotify_sees_all(self.fstype) else "scan"

    async def run(self, sink: Sink) -> None:
        root = self.config.root
        if not await asyncio.to_thread(os.path.isdir, root):
            raise FileNotFoundError(errno.ENOENT, "The directory source's root does not exist", root)
        mode = self._choose()
        position = await sink.position()
        counter = int(position) if position and position.isdigit() else 0
        snapshot = await sink.state("snapshot")
        known = decode(snapshot)
        if known is not None and isinstance(snapshot.get("mark"), int):
            replay(known, await sink.since(snapshot["mark"]))
        book = _Book(self, sink, known, counter)
        watcher = None
        if mode == "inotify":
            try:
                from headrace.events.sources.directory_inotify import Watcher

                watcher = Watcher(root)
            except (OSError, ImportError, AttributeError) as e:
                if self.config.mode == "inotify":
                    raise
                log.warning("source %s: no inotify (%s), scanning %s", self.name, e, root)
                mode = "scan"
        self.mode_in_use = mode
        log.info("source %s: %s on %s (%s)", self.name, mode, root, self.fstype)
        if watcher is None:
            await self._scan(book)
        else:
            try:
                self.follower = _Follow(self, book, watcher)
                await self.follower.run()
            except OSError as e:
                if self.config.mode == "auto" and e.errno == errno.ENOSPC:
                    log.warning("source %s: %s; scanning instead", self.name, e)
                    self.mode_in_use = "scan"
                    await self._scan(book)
                raise

    def _walk(self, start: str = "/", on_dir: Any = None) -> Tree:
        return walk(self.config.root, self.config.filter, start, on_dir)

    async def _scan(self, book: _Book) -> None:
        seen: set[Entry] = set()
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            now = await asyncio.to_thread(self._walk)
            if book.known is None:
                book.known = now
                await book.save(force=True)
            else:
                changes, book.known, _ = diff(book.known, now, _seen_in(seen))
                await book.deliver(changes)
            seen = {e for e in now.values() if not is_dir(e)}
            self.scans += 1
            await book.save()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.interval)
            self._wake.clear()


def _seen_in(seen: set[Entry]) -> Callable[[str, Entry], bool]:
    """A scan's test of completeness: the file, as it is now, was in the previous scan (under any name)."""
    return lambda _path, e: e in seen


class _Follow:
    """inotify mode: a reconciling walk (watches added as it goes), then the events."""

    def __init__(self, source: DirectorySource, book: _Book, watcher: Any) -> None:
        from headrace.events.sources.directory_inotify import flags

        self.flags = flags
        self.source = source
        self.config = source.config
        self.book = book
        self.watcher = watcher
        self.pending: dict[str, float] = {}  # files found by a listing -> when to look at them again
        self.moved: dict[int, tuple[str, bool, float]] = {}  # IN_MOVED_FROM cookie -> (path, is dir, until)
        self.changes: list[Change] = []
        self.ready = asyncio.Event()

    @property
    def known(self) -> Tree:
        assert self.book.known is not None
        return self.book.known

    def _settled(self, _path: str, e: Entry) -> bool:
        return time.time_ns() - e[1] >= self.config.interval * 1e9

    def _on_readable(self) -> None:
        asyncio.get_running_loop().remove_reader(self.watcher.fd)
        self.ready.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._reconcile(first=self.book.known is None)
            while True:
                loop.add_reader(self.watcher.fd, self._on_readable)
                deadlines = [d for d in (self.book.save_deadline(),) if d is not None]
                deadlines += self.pending.values()
                deadlines += (until for _, _, until in self.moved.values())
                timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                try:
                    await asyncio.wait_for(self.ready.wait(), timeout)
                except TimeoutError:
                    loop.remove_reader(self.watcher.fd)
                self.ready.clear()
                overflow = await self._handle(self.watcher.read())
                if overflow:
                    await self._reconcile(first=False)
                self._expire_moves()
                await self._check_pending()
                changes, self.changes = self.changes, []
                await self.book.deliver(changes)
                await self.book.save()
        finally:
            loop.remove_reader(self.watcher.fd)
            self.watcher.close()

    async def _reconcile(self, first: bool) -> None:
        now = await asyncio.to_thread(self.source._walk, "/", self.watcher.watch)
        self.source.scans += 1
        if first:
            self.book.known = now
            await self.book.save(force=True)
            return
        self.moved.clear()
        changes, self.book.known, pending = diff(self.known, now, self._settled)
        await self.book.deliver(changes)
        at = time.monotonic()
        for p in pending:
            self.pending[p] = at

    async def _handle(self, events: list[Any]) -> bool:
        f = self.flags
        overflow = False
        for ev in events:
            if ev.mask & f.Q_OVERFLOW:
                overflow = True
                continue
            if ev.mask & f.IGNORED:
                self.watcher.forget(ev.wd)
                continue
            base = self.watcher.path_of.get(ev.wd)
            if base is None:
                continue
            if ev.mask & (f.DELETE_SELF | f.MOVE_SELF):
                if base == "/":
                    gone = "The directory source's root was removed or renamed"
                    raise FileNotFoundError(errno.ENOENT, gone, self.config.root)
                continue
            if not ev.name:
                continue
            path = join(base, ev.name)
            directory = bool(ev.mask & f.ISDIR)
            if ev.mask & f.CREATE:
                if directory and self.config.filter.recursive and not self.config.filter.ignored(path):
                    await self._new_dir(path)
            elif ev.mask & f.CLOSE_WRITE:
                if not directory and self.config.filter.wanted_file(path):
                    self._closed(path)
            elif ev.mask & f.MOVED_FROM:
                self.moved[ev.cookie] = (path, directory, time.monotonic() + MOVE_PAIRING)
            elif ev.mask & f.MOVED_TO:
                src = self.moved.pop(ev.cookie, None)
                await self._moved(src[0] if src else None, path, directory)
            elif ev.mask & f.DELETE:
                self._gone(path)
        return overflow

    def _lstat(self, path: str) -> Entry | None:
        try:
            return entry_of(os.lstat(self.config.root.rstrip("/") + path))
        except OSError:
            return None

    def _closed(self, path: str) -> None:
        self.pending.pop(path, None)
        e = self._lstat(path)
        if e is None or is_dir(e):
            return  # gone again (its DELETE follows, and there is nothing to announce), or replaced
        if self.known.get(path) != e:
            self.known[path] = e
            self.changes.append(Change(EventKind.CLOSE_WRITE, path, e))

    def _gone(self, path: str) -> None:
        """`path` deleted or moved out of the tree: DELETE what was announced of it, what is below it first."""
        for p in [p for p in self.pending if p == path or p.startswith(path + "/")]:
            del self.pending[p]
        e = self.known.get(path)
        if e is None:
            return
        if is_dir(e):
            below = under(self.known, path)
            for p in sorted(below, key=lambda p: (is_dir(self.known[p]), -p.count("/"), p)):
                self.changes.append(Change(EventKind.DELETE, p, self.known[p]))
            drop_prefix(self.known, path)
            self.watcher.unwatch(path)
        else:
            del self.known[path]
        self.changes.append(Change(EventKind.DELETE, path, e))

    async def _new_dir(self, path: str) -> None:
        """A directory created in (or moved into) the tree: watch it and what is below it, then list it."""
        e = self._lstat(path)
        if e is None or not is_dir(e):
            return
        try:
            below = await asyncio.to_thread(self.source._walk, path, self.watcher.watch)
        except (FileNotFoundError, NotADirectoryError):
            return  # gone already: its DELETE follows
        if self.known.get(path) != e:
            self.known[path] = e
            self.changes.append(Change(EventKind.CREATE, path, e))
        at = time.monotonic()
        for p in sorted(below, key=lambda p: (p.count("/"), p)):
            pe = below[p]
            if is_dir(pe):
                if self.known.get(p) != pe:
                    self.known[p] = pe
                    self.changes.append(Change(EventKind.CREATE, p, pe))
            elif self.known.get(p) != pe:
                self.pending[p] = at

    async def _moved(self, src: str | None, dst: str, directory: bool) -> None:
        flt = self.config.filter
        src_entry = self.known.get(src) if src is not None else None
        if src_entry is not None and is_dir(src_entry) != directory:
            src_entry = None
        if directory:
            if not flt.recursive:
                return
            if src is not None and src_entry is not None and not flt.ignored(dst):
                if dst in self.known:
                    drop_prefix(self.known, dst)
                rename_prefix(self.known, src, dst)
                self.watcher.rename(src, dst)
                for p in [p for p in self.pending if p.startswith(src + "/")]:
                    self.pending[dst + p[len(src) :]] = self.pending.pop(p)
                self.changes.append(Change(EventKind.MOVE, dst, src_entry, old_path=src))
            elif src is not None and src_entry is not None:
                self._gone(src)
            elif not flt.ignored(dst):
                await self._new_dir(dst)
            return
        e = self._lstat(dst) if flt.wanted_file(dst) else None
        if src is not None:
            self.pending.pop(src, None)
        self.pending.pop(dst, None)
        if src is not None and src_entry is not None and e is not None and not is_dir(e):
            del self.known[src]
            self.known[dst] = e
            self.changes.append(Change(EventKind.MOVE, dst, e, old_path=src))
        elif src is not None and src_entry is not None:
            self._gone(src)
        elif e is not None and not is_dir(e) and self.known.get(dst) != e:
            self.known[dst] = e
            self.changes.append(Change(EventKind.CLOSE_WRITE, dst, e))

    def _expire_moves(self) -> None:
        now = time.monotonic()
        for cookie, (path, _directory, until) in list(self.moved.items()):
            if until <= now:
                del self.moved[cookie]
                if not self._moved_before_watched(path):
                    self._gone(path)

    def _moved_before_watched(self, path: str) -> bool:
        """A file renamed into a directory created a moment before, whose watch was not yet there (so no
        IN_MOVED_TO): its listing found it under the new name (the same inode, size, mtime), a MOVE."""
        e = self.known.get(path)
        if e is None or is_dir(e):
            return False
        for p in self.pending:
            if self._lstat(p) == e:
                del self.pending[p]
                del self.known[path]
                self.known[p] = e
                self.changes.append(Change(EventKind.MOVE, p, e, old_path=path))
                return True
        return False

    async def _check_pending(self) -> None:
        if self.moved:
            return  # a file found by a listing may be the other half of a rename: wait for the pairing
        now = time.monotonic()
        for path, at in list(self.pending.items()):
            if at > now:
                continue
            e = self._lstat(path)
            if e is None or is_dir(e):
                del self.pending[path]
                continue
            age = time.time_ns() - e[1]
            if age >= self.config.interval * 1e9:
                del self.pending[path]
                if self.known.get(path) != e:
                    self.known[path] = e
                    self.changes.append(Change(EventKind.CLOSE_WRITE, path, e))
            else:
                self.pending[path] = now + max(0.05, self.config.interval - age / 1e9)


def build(name: str, config: Mapping[str, Any]) -> DirectorySource:
    return DirectorySource(name, parse(config))
