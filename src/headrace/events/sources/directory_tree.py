"""The directory source's view of a tree: a walk, the difference between two views as events, the snapshot.

A view (`Tree`) maps each path below the root ("/a/b.h5", always absolute below it) to an `Entry`: (size,
mtime_ns, inode) for a regular file, (-1, 0, inode) for a directory. Symbolic links and other special files
are neither followed nor reported. `diff` turns a stored view and a fresh one into MOVE / DELETE / CREATE /
CLOSE_WRITE changes (renames found by inode), each with a key made of what it says (path, old path, inode,
size, mtime), so the same change found again (after a restart, a re-scan, an inotify event and a scan of the
same file) has the same key and the sink stores it once.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import stat
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from headrace.events.model import EventKind
from headrace.events.sources.base import RemoteEvent

Entry = tuple[int, int, int]  # size (-1: a directory), mtime_ns (0 for a directory), inode
Tree = dict[str, Entry]

#: Names not reported (nor descended into) unless the source's `ignore` says otherwise: hidden files and
#: the temporary names writers use before renaming a complete file into place.
DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.partial", "*.swp", "*~", ".~*")


def is_dir(entry: Entry) -> bool:
    return entry[0] < 0


@dataclass(frozen=True)
class Filter:
    """Which names a source reports: `ignore` globs (a name, or with a '/' the path below the root) exclude
    files and directories (an ignored directory is not descended into); `pattern` globs, when given, select
    the files reported (directories are always walked)."""

    pattern: tuple[str, ...] = ()
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    recursive: bool = True

    @staticmethod
    def _match(globs: Iterable[str], path: str) -> bool:
        name = path.rsplit("/", 1)[-1]
        for glob in globs:
            if "/" in glob:
                if fnmatch.fnmatchcase(path, glob if glob.startswith("/") else "/" + glob):
                    return True
            elif fnmatch.fnmatchcase(name, glob):
                return True
        return False

    def ignored(self, path: str) -> bool:
        return self._match(self.ignore, path)

    def wanted_file(self, path: str) -> bool:
        return not self.ignored(path) and (not self.pattern or self._match(self.pattern, path))


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent != "/" else f"/{name}"


def entry_of(st: os.stat_result) -> Entry | None:
    """The entry of a stat (lstat) result: None for what a source does not report (links, devices, ...)."""
    if stat.S_ISREG(st.st_mode):
        return (st.st_size, st.st_mtime_ns, st.st_ino)
    if stat.S_ISDIR(st.st_mode):
        return (-1, 0, st.st_ino)
    return None


def walk(root: str, flt: Filter, start: str = "/", on_dir: Callable[[str], None] | None = None) -> Tree:
    """The view of the tree below `root` (from `start`, a directory below it), blocking: run it in a thread.
    `on_dir(path)` is called for each directory before it is listed (the inotify watch is added there, so
    that nothing created after the listing is missed). A directory that vanishes while walked is skipped;
    the root (or `start`) vanishing raises FileNotFoundError."""
    tree: Tree = {}
    stack = [start]
    while stack:
        rel = stack.pop()
        if on_dir is not None:
            try:
                on_dir(rel)
            except FileNotFoundError:
                if rel == start:
                    raise
                continue
        absolute = root if rel == "/" else root + rel
        try:
            with os.scandir(absolute) as entries:
                for item in entries:
                    path = join(rel, item.name)
                    try:
                        if item.is_dir(follow_symlinks=False):
                            if flt.recursive and not flt.ignored(path):
                                tree[path] = (-1, 0, item.inode())
                                stack.append(path)
                        elif item.is_file(follow_symlinks=False) and flt.wanted_file(path):
                            st = item.stat(follow_symlinks=False)
                            tree[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
                    except FileNotFoundError:
                        continue
        except (FileNotFoundError, NotADirectoryError):
            if rel == start:
                raise
        except PermissionError:
            if rel == start:
                raise
    return tree


@dataclass(frozen=True)
class Change:
    kind: EventKind
    path: str
    entry: Entry
    old_path: str | None = None

    @property
    def key(self) -> str:
        size, mtime, inode = self.entry
        raw = f"{self.kind}\0{self.old_path or ''}\0{self.path}\0{inode}\0{size}\0{mtime}"
        digest = hashlib.blake2b(raw.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()
        return f"{self.kind.lower()}:{digest}"


def under(tree: Tree, prefix: str) -> list[str]:
    """The paths of `tree` strictly below the directory `prefix`."""
    start = prefix + "/"
    return [p for p in tree if p.startswith(start)]


def rename_prefix(tree: Tree, old: str, new: str) -> None:
    """Rename the directory `old` to `new` in `tree`, with everything below it."""
    moved = {p: tree.pop(p) for p in [old, *under(tree, old)] if p in tree}
    for p, e in moved.items():
        tree[new + p[len(old) :]] = e


def drop_prefix(tree: Tree, path: str) -> None:
    for p in [path, *under(tree, path)]:
        tree.pop(p, None)


def _depth(path: str) -> int:
    return path.count("/")


def diff(known: Tree, now: Tree, complete: Callable[[str, Entry], bool]) -> tuple[list[Change], Tree, list[str]]:
    """What changed from `known` (what has been announced) to `now` (a fresh walk): the changes in the order to
    deliver them (directory moves, file moves, deletions deepest first, new directories shallowest first,
    files complete now), the view after them, and the files that changed but are not yet `complete`
    (announced later: `known` keeps their old entry, or none)."""
    k = dict(known)
    changes: list[Change] = []
    # Directory renames, found by inode, shallowest first: a directory's move carries what is below it.
    dir_at = {e[2]: p for p, e in k.items() if is_dir(e)}
    for p in sorted((p for p, e in now.items() if is_dir(e) and k.get(p) != e), key=_depth):
        if k.get(p) == now[p]:  # arrived with its parent's move
            continue
        e = now[p]
        q = dir_at.get(e[2])
        if q is None or q == p or q not in k or now.get(q, (0, 0, -1))[2] == e[2]:
            continue
        if p in k:
            drop_prefix(k, p)
        rename_prefix(k, q, p)
        dir_at = {ee[2]: pp for pp, ee in k.items() if is_dir(ee)}
        changes.append(Change(EventKind.MOVE, p, e, old_path=q))
    # File renames: the same inode, size and mtime under a new name (the old name gone or holding another).
    file_at = {e[2]: p for p, e in k.items() if not is_dir(e)}
    for p, e in now.items():
        if is_dir(e) or k.get(p) == e:
            continue
        q = file_at.get(e[2])
        if q is None or q == p or q not in k or k[q][:2] != e[:2]:
            continue
        if now.get(q, (0, 0, -1))[2] == e[2]:  # still there: a hard link, not a rename
            continue
        del k[q]
        k[p] = e
        file_at[e[2]] = p
        changes.append(Change(EventKind.MOVE, p, e, old_path=q))
    # Deletions: what is gone, or is now of the other type; files first, then directories deepest first.
    gone = [p for p, e in k.items() if p not in now or is_dir(now[p]) != is_dir(e)]
    for p in sorted(gone, key=lambda p: (is_dir(k[p]), -_depth(p), p)):
        changes.append(Change(EventKind.DELETE, p, k.pop(p)))
    for p in sorted((p for p, e in now.items() if is_dir(e) and p not in k), key=lambda p: (_depth(p), p)):
        k[p] = now[p]
        changes.append(Change(EventKind.CREATE, p, now[p]))
    pending: list[str] = []
    for p in sorted(p for p, e in now.items() if not is_dir(e) and k.get(p) != e):
        if complete(p, now[p]):
            k[p] = now[p]
            changes.append(Change(EventKind.CLOSE_WRITE, p, now[p]))
        else:
            pending.append(p)
    return changes, k, pending


# The snapshot stored with sink.set_state: grouped by directory and compressed, so that a tree of 100,000
# files is a few MB of JSON text at most (measured in tests/test_source_directory.py).


def encode(tree: Tree, position: int, mark: int = 0) -> dict[str, Any]:
    grouped: dict[str, dict[str, list[int]]] = {}
    for path, (size, mtime, inode) in tree.items():
        parent, _, name = path.rpartition("/")
        grouped.setdefault(parent, {})[name] = [size, mtime, inode] if size >= 0 else [inode]
    raw = json.dumps(grouped, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")
    z = base64.b64encode(zlib.compress(raw, 6)).decode()
    return {"v": 1, "position": position, "mark": mark, "files": len(tree), "z": z}


def replay(tree: Tree, delivered: Iterable[RemoteEvent]) -> None:
    """Bring `tree` (a stored snapshot) up to what the log holds: apply the events delivered after it was
    taken, as the source made them (`DirectorySource.event`)."""
    for ev in delivered:
        inode = int(ev.detail.get("inode", 0))
        entry: Entry = (-1, 0, inode) if ev.is_dir else (ev.size or 0, int(ev.detail.get("mtime_ns", 0)), inode)
        if ev.kind is EventKind.CLOSE_WRITE or ev.kind is EventKind.CREATE:
            tree[ev.path] = entry
        elif ev.kind is EventKind.DELETE:
            drop_prefix(tree, ev.path)
        elif ev.kind is EventKind.MOVE and ev.old_path is not None:
            if ev.is_dir:
                drop_prefix(tree, ev.path)
                rename_prefix(tree, ev.old_path, ev.path)
            else:
                tree.pop(ev.old_path, None)
                tree[ev.path] = entry


def decode(value: Any) -> Tree | None:
    """The tree of a stored snapshot (None when there is none, or it is not one this code wrote)."""
    if not isinstance(value, dict) or value.get("v") != 1 or not isinstance(value.get("z"), str):
        return None
    grouped = json.loads(zlib.decompress(base64.b64decode(value["z"])).decode("utf-8", "surrogateescape"))
    tree: Tree = {}
    for parent, names in grouped.items():
        for name, e in names.items():
            tree[f"{parent}/{name}"] = (e[0], e[1], e[2]) if len(e) == 3 else (-1, 0, e[0])
    return tree
