"""Smart cache: a local copy of every new file, dropped when the source goes, least recently used evicted.

Fired by IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_FROM and IN_MOVED_TO. Parameters:

- `cache_dir` (required): the cache directory on the worker's host; a file `/a/b.h5` is kept as
  `<cache_dir>/a/b.h5`;
- `max_bytes` (default 1 GiB): past this, the least recently used files are evicted until it fits;
- `root` (default `/`): only paths below it are cached (a move out of it drops the copy);
- `patterns` (default `["*"]`): globs on a file's name; only files matching one are cached (the example's
  headrace.yaml caches `*.h5`, not the JSON and PNG results that are rewritten as a run goes on).

"Used" is a file's modification time in the cache: it is set when the file is cached, and a reader that
wants a file kept marks it used with `os.utime(path)` (`touch`). Copies are written to a temporary name
and renamed, so a reader never sees part of a file; changes to the cache hold an exclusive lock on
`<cache_dir>/.lock`, so concurrent activations (on one host) do not evict what another is adding.

Self-contained (stdlib only): deployable as one file.
"""

from __future__ import annotations

import fcntl
import fnmatch
import io
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_MAX_BYTES = 1 << 30


def cached(cache_dir: Path, path: str) -> Path:
    rel = path.lstrip("/")
    if not rel or ".." in Path(rel).parts:
        raise ValueError(f"cannot cache {path!r}")
    return cache_dir / rel


@contextmanager
def locked(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def entries(cache_dir: Path) -> list[tuple[float, int, Path]]:
    """(last used, size, file) of every cached file, least recently used first."""
    out = []
    for dirpath, _dirs, files in os.walk(cache_dir):
        for name in files:
            if name == ".lock" or name.startswith(".part-"):
                continue
            p = Path(dirpath) / name
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, p))
    out.sort(key=lambda e: (e[0], str(e[2])))
    return out


def evict(cache_dir: Path, max_bytes: int, keep: Path | None = None) -> list[str]:
    """Drop least recently used files until the cache holds at most `max_bytes` (never `keep`)."""
    files = entries(cache_dir)
    total = sum(size for _, size, _ in files)
    dropped = []
    for _, size, p in files:
        if total <= max_bytes:
            break
        if p == keep:
            continue
        p.unlink(missing_ok=True)
        _prune(cache_dir, p.parent)
        total -= size
        dropped.append("/" + str(p.relative_to(cache_dir)))
    return dropped


def _prune(cache_dir: Path, d: Path) -> None:
    """Remove directories left empty, up to the cache directory."""
    while d != cache_dir and cache_dir in d.parents:
        try:
            d.rmdir()
        except OSError:
            return
        d = d.parent


def add(cache_dir: Path, path: str, source: Any, size: int, max_bytes: int) -> dict[str, Any]:
    target = cached(cache_dir, path)
    if size > max_bytes:
        return {"skipped": path, "reason": f"{size} bytes is more than the cache's {max_bytes}"}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"cached": path, "evicted": evict(cache_dir, max_bytes, keep=target)}


def drop(cache_dir: Path, path: str) -> dict[str, Any]:
    target = cached(cache_dir, path)
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    else:
        return {"dropped": None}
    _prune(cache_dir, target.parent)
    return {"dropped": path}


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def main(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    if not event.get("cache_dir"):
        raise ValueError("the parameter `cache_dir` (the cache directory) is not set")
    cache_dir = Path(event["cache_dir"]).expanduser()
    max_bytes = int(event.get("max_bytes", DEFAULT_MAX_BYTES))
    root = event.get("root", "/")
    flag, path = event["mask"][0], event["path"]
    is_dir = bool(event.get("isDir"))
    patterns = event.get("patterns") or ["*"]
    if not is_dir and not any(fnmatch.fnmatchcase(posixpath.basename(path), p) for p in patterns):
        return {"skipped": path, "reason": "not a file the cache keeps"}
    if flag == "IN_CLOSE_WRITE" and not is_dir:
        try:
            source = io.BytesIO(ctx.storage.read(path))  # the whole file: one GET (open() reads by ranges)
        except Exception as exc:  # gone since it closed: a later event drops or moves it
            if "404" in str(exc):
                return {"skipped": path, "reason": "no longer exists"}
            raise
        with source, locked(cache_dir):
            return add(cache_dir, path, source, int(event.get("size") or 0), max_bytes)
    if flag == "IN_DELETE":
        with locked(cache_dir):
            return drop(cache_dir, path)
    if flag == "IN_MOVED_FROM":  # the IN_MOVED_TO moves the copy, unless the file left the cached tree
        if _inside(event.get("newPath", ""), root):
            return {"skipped": "the move's IN_MOVED_TO moves the copy"}
        with locked(cache_dir):
            return drop(cache_dir, path)
    if flag == "IN_MOVED_TO":
        old = event.get("oldPath") or ""
        with locked(cache_dir):
            if old and _inside(old, root) and cached(cache_dir, old).exists():
                target = cached(cache_dir, path)
                if not _inside(path, root):
                    return drop(cache_dir, old)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(cached(cache_dir, old), target)
                _prune(cache_dir, cached(cache_dir, old).parent)
                return {"moved": path, "from": old}
        if is_dir or not _inside(path, root):
            return {"skipped": path}
        return main({**event, "mask": ["IN_CLOSE_WRITE"]}, ctx)  # not cached before: cache it now
    return {"skipped": flag}
