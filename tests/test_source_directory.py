"""The `directory` event source kind (events/sources/directory.py) on real files in temporary trees, in both
modes, delivering to an in-memory sink with the database sink's contract (a key already held is not stored
again; the position and kind state kept). Each wait is for a condition: an event delivered, a scan done, a
marker file's event proving that everything before it has been handled."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, query, wait_for
from headrace.events.model import EventKind
from headrace.events.sources import directory as dirsource
from headrace.events.sources import directory_tree, kinds
from headrace.events.sources.base import SourceConfigError
from source_support import MemorySink
from test_cli import ok, one_line_error
from test_cli import run as cli

#: The kind against an in-memory sink needs no database; the end-to-end tests at the end run on both.
no_db = pytest.mark.db_independent("the kind against an in-memory sink: no database")

CW, MOVE, DELETE, CREATE = EventKind.CLOSE_WRITE, EventKind.MOVE, EventKind.DELETE, EventKind.CREATE


Read = tuple[int | None, bytes]


class Running:
    """A source's run() on an event loop of its own thread, as the runner would run it."""

    def __init__(self, source: dirsource.DirectorySource, sink: MemorySink) -> None:
        self.source, self.sink = source, sink
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.future: Future[None] = asyncio.run_coroutine_threadsafe(source.run(sink), self.loop)

    def ready(self) -> Running:
        wait_for(lambda: self.source.scans >= 1 or self.future.done(), "the first scan")
        if self.future.done():
            self.future.result()
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.future.cancel)
        wait_for(self.future.done, "the source to stop")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def events(self) -> list[tuple[EventKind, str, str | None]]:
        if self.future.done():
            self.future.result()  # raises what ended the run
        return [(e.kind, e.path, e.old_path) for e in list(self.sink.events)]

    def wait(self, *expected: tuple[EventKind, str, str | None] | tuple[EventKind, str]) -> None:
        want = [(*x, None) if len(x) == 2 else x for x in expected]

        def arrived() -> bool:
            if self.source.mode_in_use == "scan":
                self.source.rescan()
            return all(w in self.events() for w in want)

        wait_for(arrived, f"events {want}")

    def barrier(self, root: Path) -> None:
        """Everything written before now has been handled: a marker file's CLOSE_WRITE has been delivered
        (in scan mode, after the scans it needs, asked for at once)."""
        marker = root / f"marker-{time.monotonic_ns()}"
        marker.write_bytes(b"m")
        rel = "/" + str(marker.relative_to(root))

        def seen() -> bool:
            if self.source.mode_in_use == "scan":
                self.source.rescan()
            return (CW, rel, None) in self.events()

        wait_for(seen, f"the marker {rel}")
        marker.unlink()
        wait_for(lambda: (DELETE, rel, None) in self.events() or bool(self.source.rescan()), f"{rel} deleted")


def make(root: Path, **config: Any) -> dirsource.DirectorySource:
    config.setdefault("interval", 0.1)
    return dirsource.build("d", {"root": str(root), **config})


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


@pytest.fixture(params=["inotify", "scan"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(tree: Path, mode: str) -> Iterator[Running]:
    # scan mode: scans on the test's request (rescan) as well as every 0.1 s
    r = Running(make(tree, mode=mode), MemorySink()).ready()
    assert r.source.mode_in_use == mode
    yield r
    r.stop()


def kinds_of(r: Running, path: str) -> list[EventKind]:
    return [k for k, p, _ in r.events() if p == path]


@no_db
def test_slow_write_is_announced_once_when_complete(tree: Path, mode: str) -> None:
    # scan mode with a long interval: the test asks for each scan, so that the scanner sees the file between
    # every two pieces (a writer slower than the scans, without a race against the clock)
    r = Running(make(tree, mode=mode, interval=3600), MemorySink()).ready()
    try:
        pieces = [os.urandom(1000) for _ in range(5)]
        with open(tree / "slow.h5", "wb") as f:
            for piece in pieces:
                f.write(piece)
                f.flush()
                if mode == "scan":
                    scans = r.source.scans
                    r.source.rescan()
                    wait_for(lambda scans=scans: r.source.scans > scans, "a scan of the partial file")
                else:
                    r.barrier(tree)
                assert kinds_of(r, "/slow.h5") == []
        r.wait((CW, "/slow.h5"))
        r.barrier(tree)
        r.barrier(tree)
        assert kinds_of(r, "/slow.h5") == [CW]
        (event,) = [e for e in r.sink.events if e.path == "/slow.h5"]
        assert event.size == 5000 and event.url == "file://" + str(tree / "slow.h5")
        assert event.detail["inode"] == (tree / "slow.h5").stat().st_ino
    finally:
        r.stop()


@no_db
def test_rename_within_the_tree_is_a_move(run: Running, tree: Path) -> None:
    (tree / "a.h5").write_bytes(b"x" * 10)
    run.wait((CW, "/a.h5"))
    (tree / "sub").mkdir()
    os.rename(tree / "a.h5", tree / "sub" / "b.h5")
    run.wait((MOVE, "/sub/b.h5", "/a.h5"))
    run.barrier(tree)
    assert kinds_of(run, "/a.h5") == [CW]
    assert kinds_of(run, "/sub/b.h5") == [MOVE]
    # a directory's rename is one MOVE, and what is below it follows
    os.rename(tree / "sub", tree / "sub2")
    run.wait((MOVE, "/sub2", "/sub"))
    (tree / "sub2" / "b.h5").unlink()
    run.wait((DELETE, "/sub2/b.h5"))


@no_db
def test_write_to_temporary_name_then_rename_is_one_close_write(run: Running, tree: Path, tmp_path: Path) -> None:
    with open(tree / "c.h5.part", "wb") as f:
        f.write(b"partial")
        f.write(b" and the rest")
    os.rename(tree / "c.h5.part", tree / "c.h5")
    run.wait((CW, "/c.h5"))
    outside = tmp_path / "outside.tmp"
    outside.write_bytes(b"from elsewhere")
    os.rename(outside, tree / "d.h5")
    run.wait((CW, "/d.h5"))
    run.barrier(tree)
    assert [(k, p) for k, p, _ in run.events() if not p.startswith("/marker")] == [(CW, "/c.h5"), (CW, "/d.h5")]
    (event,) = [e for e in run.sink.events if e.path == "/c.h5"]
    assert event.size == len(b"partial and the rest")


@no_db
def test_delete(run: Running, tree: Path) -> None:
    (tree / "gone.h5").write_bytes(b"1")
    run.wait((CW, "/gone.h5"))
    (tree / "gone.h5").unlink()
    run.wait((DELETE, "/gone.h5"))
    # a directory moved out of the tree: what was announced below it is deleted, then the directory
    (tree / "d").mkdir()
    (tree / "d" / "f").write_bytes(b"2")
    run.wait((CREATE, "/d"), (CW, "/d/f"))
    os.rename(tree / "d", tree.parent / "moved-out")
    run.wait((DELETE, "/d/f"), (DELETE, "/d"))
    assert run.events().index((DELETE, "/d/f", None)) < run.events().index((DELETE, "/d", None))
    (tree.parent / "moved-out" / "g").write_bytes(b"no longer watched")
    run.barrier(tree)
    assert not [p for _, p, _ in run.events() if p.endswith("/g")]


@no_db
def test_new_subdirectories_and_their_files(run: Running, tree: Path, tmp_path: Path) -> None:
    (tree / "r1" / "a" / "b").mkdir(parents=True)
    (tree / "r1" / "a" / "b" / "f1.h5").write_bytes(b"1")
    (tree / "r1" / "f0.h5").write_bytes(b"0")
    # a directory with files in it before it enters the tree (found by listing it)
    staged = tmp_path / "staged"
    (staged / "deep").mkdir(parents=True)
    (staged / "s.h5").write_bytes(b"s")
    (staged / "deep" / "t.h5").write_bytes(b"t")
    os.rename(staged, tree / "r2")
    run.wait(
        (CREATE, "/r1"),
        (CREATE, "/r1/a"),
        (CREATE, "/r1/a/b"),
        (CW, "/r1/a/b/f1.h5"),
        (CW, "/r1/f0.h5"),
        (CREATE, "/r2"),
        (CREATE, "/r2/deep"),
        (CW, "/r2/s.h5"),
        (CW, "/r2/deep/t.h5"),
    )
    # files written into a new directory afterwards
    (tree / "r2" / "deep" / "u.h5").write_bytes(b"u")
    run.wait((CW, "/r2/deep/u.h5"))
    run.barrier(tree)
    ev = [(k, p) for k, p, _ in run.events() if not p.startswith("/marker")]
    assert len(ev) == len(set(ev)) == 10, ev
    assert ev.index((CREATE, "/r1/a/b")) < ev.index((CW, "/r1/a/b/f1.h5"))


@no_db
def test_restart_reconciles_what_changed_meanwhile(tree: Path, mode: str) -> None:
    sink = MemorySink()
    r = Running(make(tree, mode=mode), sink).ready()
    for name in ("keep", "change", "rename", "remove"):
        (tree / f"{name}.h5").write_bytes(name.encode())
    r.wait(*[(CW, f"/{n}.h5") for n in ("keep", "change", "rename", "remove")])
    r.barrier(tree)
    r.stop()
    stale = copy.deepcopy(sink.states["snapshot"])  # the snapshot before the next run's deliveries
    before = len(sink.events)
    # while nothing watches
    (tree / "new.h5").write_bytes(b"new")
    (tree / "change.h5").write_bytes(b"changed content")
    os.rename(tree / "rename.h5", tree / "renamed.h5")
    (tree / "remove.h5").unlink()
    os.utime(tree / "change.h5", ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))  # long closed
    os.utime(tree / "new.h5", ns=(time.time_ns() - 10**10, time.time_ns() - 10**10))
    second = make(tree, mode=mode)
    r = Running(second, sink).ready()
    try:
        if mode == "scan":
            r.source.rescan()  # a change is complete when two scans saw it
        r.wait((CW, "/new.h5"), (CW, "/change.h5"), (MOVE, "/renamed.h5", "/rename.h5"), (DELETE, "/remove.h5"))
        r.barrier(tree)
        after = [(k, p, o) for k, p, o in r.events()[before:] if not p.startswith("/marker")]
        assert sorted(after) == sorted(
            [
                (CW, "/new.h5", None),
                (CW, "/change.h5", None),
                (MOVE, "/renamed.h5", "/rename.h5"),
                (DELETE, "/remove.h5", None),
            ]
        )
    finally:
        r.stop()
    # a third start from the stale snapshot (as after a crash before it was saved): the events delivered
    # after it are replayed onto it from the log, so nothing is found again nor enters twice
    sink.states["snapshot"] = stale
    count = len(sink.events)
    r = Running(make(tree, mode=mode), sink).ready()
    try:
        if mode == "scan":
            r.source.rescan()
        r.barrier(tree)
        new = [(k, p) for k, p, _ in r.events()[count:] if not p.startswith("/marker")]
        assert new == []
        assert len(sink.keys) == len(sink.events)
    finally:
        r.stop()
    assert int(sink.pos or 0) > 0


@no_db
def test_restart_from_a_snapshot_older_than_the_log(tree: Path, mode: str) -> None:
    """Files announced after the last saved snapshot (a large tree saves it every few seconds), then renamed
    or deleted while headrace was down: the log's events after the snapshot's mark are replayed onto it at
    start, so the rename is a MOVE and the deletion a DELETE, and nothing is announced twice."""
    sink = MemorySink()
    r = Running(make(tree, mode=mode), sink).ready()
    wait_for(lambda: "snapshot" in sink.states, "the first snapshot")
    first = copy.deepcopy(sink.states["snapshot"])  # of the empty tree: as if no later save had happened
    for name in ("moved", "removed", "kept"):
        (tree / f"{name}.h5").write_bytes(name.encode())
    r.wait(*[(CW, f"/{n}.h5") for n in ("moved", "removed", "kept")])
    r.stop()
    sink.states["snapshot"] = first
    count = len(sink.events)
    os.rename(tree / "moved.h5", tree / "moved-away.h5")
    (tree / "removed.h5").unlink()
    r = Running(make(tree, mode=mode), sink).ready()
    try:
        if mode == "scan":
            r.source.rescan()
        r.wait((MOVE, "/moved-away.h5", "/moved.h5"), (DELETE, "/removed.h5"))
        r.barrier(tree)
        after = [(k, p, o) for k, p, o in r.events()[count:] if not p.startswith("/marker")]
        assert sorted(after) == sorted([(MOVE, "/moved-away.h5", "/moved.h5"), (DELETE, "/removed.h5", None)])
    finally:
        r.stop()


@no_db
def test_lost_events_overflow_rewalks_the_tree(tree: Path) -> None:
    """IN_Q_OVERFLOW (the kernel's queue full: events lost) makes the source walk the tree and compare it with
    what it has announced. The loss is made here by dropping what inotify reports for a while."""
    from headrace.events.sources.directory_inotify import InotifyEvent, flags

    r = Running(make(tree, mode="inotify"), MemorySink()).ready()
    try:
        (tree / "a.h5").write_bytes(b"a")
        (tree / "b.h5").write_bytes(b"b")
        r.wait((CW, "/a.h5"), (CW, "/b.h5"))
        follower = r.source.follower
        assert follower is not None
        real_read = follower.watcher.read
        dropped: list[Any] = []
        lose = {"drop": True, "overflow": True}

        def read() -> list[Any]:
            events = real_read()
            if lose["drop"]:
                dropped.extend(events)
                return []
            if lose["overflow"]:
                lose["overflow"] = False
                return [InotifyEvent(wd=-1, mask=flags.Q_OVERFLOW, cookie=0, name=""), *events]
            return events

        follower.watcher.read = read  # type: ignore[method-assign]
        (tree / "new.h5").write_bytes(b"n")
        os.rename(tree / "b.h5", tree / "c.h5")
        (tree / "a.h5").unlink()
        wait_for(lambda: any(e.name == "a.h5" and e.mask & flags.DELETE for e in dropped), "the events to be lost")
        lose["drop"] = False
        r.barrier(tree)  # its events come after the overflow
        r.wait((CW, "/new.h5"), (MOVE, "/c.h5", "/b.h5"), (DELETE, "/a.h5"))
        r.barrier(tree)
        ev = [(k, p, o) for k, p, o in r.events() if not p.startswith("/marker")]
        assert ev == [
            (CW, "/a.h5", None),
            (CW, "/b.h5", None),
            (MOVE, "/c.h5", "/b.h5"),  # the walk's order: moves, deletions, then complete files
            (DELETE, "/a.h5", None),
            (CW, "/new.h5", None),
        ]
    finally:
        r.stop()


@no_db
def test_inotify_each_close_that_changed_the_file(tree: Path) -> None:
    r = Running(make(tree, mode="inotify"), MemorySink()).ready()
    try:
        with open(tree / "log.h5", "wb") as f:
            f.write(b"first")
        r.wait((CW, "/log.h5"))
        with open(tree / "log.h5", "ab") as f:
            f.write(b" second")
        wait_for(lambda: kinds_of(r, "/log.h5") == [CW, CW], "the second close")
        os.close(os.open(tree / "log.h5", os.O_WRONLY))  # opened for writing, closed unchanged: no new event
        r.barrier(tree)
        assert kinds_of(r, "/log.h5") == [CW, CW]
        assert [e.size for e in r.sink.events if e.path == "/log.h5"] == [5, 12]
    finally:
        r.stop()


@no_db
def test_first_start_announces_nothing_of_what_is_there(tree: Path, mode: str) -> None:
    (tree / "old.h5").write_bytes(b"old")
    r = Running(make(tree, mode=mode), MemorySink()).ready()
    try:
        r.barrier(tree)
        assert [p for _, p, _ in r.events() if not p.startswith("/marker")] == []
        assert directory_tree.decode(r.sink.states["snapshot"]) is not None
    finally:
        r.stop()


@no_db
def test_pattern_ignore_and_not_recursive(tree: Path, mode: str) -> None:
    r = Running(make(tree, mode=mode, pattern=["*.h5", "marker-*"], recursive=False), MemorySink()).ready()
    try:
        (tree / "a.h5").write_bytes(b"a")
        (tree / "a.txt").write_bytes(b"a")
        (tree / ".hidden.h5").write_bytes(b"a")
        (tree / "x.h5.tmp").write_bytes(b"a")
        (tree / "sub").mkdir()
        (tree / "sub" / "b.h5").write_bytes(b"b")
        r.wait((CW, "/a.h5"))
        r.barrier(tree)
        assert [p for _, p, _ in r.events() if not p.startswith("/marker")] == ["/a.h5"]
    finally:
        r.stop()


@no_db
def test_auto_mode_by_file_system_type(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw 0 0\n"
        "server:/export /mnt/online nfs4 rw 0 0\n"
        "lustre@o2ib:/fs /lustre lustre rw 0 0\n"
        "ceph-fuse /mnt/my\\040ceph fuse.ceph-fuse rw 0 0\n"
    )
    assert dirsource.fstype("/mnt/online/raw/r0042", str(mounts)) == "nfs4"
    assert dirsource.fstype("/lustre/exp", str(mounts)) == "lustre"
    assert dirsource.fstype("/mnt/my ceph/x", str(mounts)) == "fuse.ceph-fuse"
    assert dirsource.fstype("/mnt/onlinex", str(mounts)) == "ext4"
    assert [dirsource.inotify_sees_all(t) for t in ("ext4", "xfs", "tmpfs", "nfs4", "lustre", "gpfs", "ceph")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert not dirsource.inotify_sees_all("fuse.sshfs")
    # here: the test's temporary directory is on a local file system, so auto is inotify
    source = make(tmp_path, mode="auto")
    r = Running(source, MemorySink()).ready()
    try:
        assert source.mode_in_use == ("inotify" if dirsource.inotify_sees_all(source.fstype) else "scan")
    finally:
        r.stop()


@no_db
def test_root_missing_at_run_time_is_an_error_then_works(tmp_path: Path) -> None:
    root = tmp_path / "later"
    source = make(root, mode="inotify")
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            loop.run_until_complete(source.run(MemorySink()))
    finally:
        loop.close()
    root.mkdir()
    r = Running(source, MemorySink()).ready()
    try:
        (root / "f").write_bytes(b"f")
        r.wait((CW, "/f"))
        # the root removed: the run ends with the error (the runner restarts it with backoff)
        (root / "f").unlink()
        r.wait((DELETE, "/f"))
        root.rmdir()
        wait_for(r.future.done, "the run to end")
        with pytest.raises(FileNotFoundError):
            r.future.result()
    finally:
        r.stop()


@no_db
@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"root": "/data", "url": "http://x"}, "Unknown option"),
        ({}, "needs 'root'"),
        ({"root": "relative/dir"}, "absolute"),
        ({"root": "/data/../etc"}, r"'\.\.'"),
        ({"root": "/data", "mode": "fanotify"}, "'mode'"),
        ({"root": "/data", "interval": 0}, "'interval'"),
        ({"root": "/data", "interval": "5"}, "'interval'"),
        ({"root": "/data", "interval": True}, "'interval'"),
        ({"root": "/data", "pattern": 5}, "'pattern'"),
        ({"root": "/data", "ignore": ["ok", 1]}, "'ignore'"),
        ({"root": "/data", "recursive": "yes"}, "'recursive'"),
    ],
)
def test_bad_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(SourceConfigError, match=message):
        kinds.build("d", "directory", config)


@no_db
def test_good_config() -> None:
    source = kinds.build("d", "directory", {"root": "/data/", "mode": "scan", "interval": 2, "ignore": []})
    assert isinstance(source, dirsource.DirectorySource)
    assert source.config.root == "/data" and source.config.interval == 2.0
    assert source.config.filter.ignore == () and source.config.filter.recursive


def read(
    source: dirsource.DirectorySource, path: str, start: int = 0, end: int | None = None
) -> tuple[int | None, bytes]:
    files = source.files()
    assert files is not None

    async def go() -> tuple[int | None, bytes]:
        size, chunks = await files.open(path, start, end)
        return size, b"".join([c async for c in chunks])

    return asyncio.run(go())


@no_db
def test_files_read_below_the_root_only(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f.h5").write_bytes(b"0123456789")
    (tmp_path / "secret").write_bytes(b"secret")
    os.symlink(tmp_path / "secret", root / "out-link")
    os.symlink(tmp_path, root / "out-dir")
    os.symlink("sub/f.h5", root / "in-link")
    source = make(root)
    assert read(source, "/sub/f.h5") == (10, b"0123456789")
    assert read(source, "/sub/f.h5", 2, 5) == (10, b"234")
    assert read(source, "/in-link") == (10, b"0123456789")  # a link that stays inside is followed
    for escape in ("/../secret", "/sub/../../secret", "../secret", "/out-link", "/out-dir/secret", "sub/f.h5", "/"):
        with pytest.raises(PermissionError):
            read(source, escape)
    with pytest.raises(FileNotFoundError):
        read(source, "/missing")
    with pytest.raises(FileNotFoundError):
        read(source, "/sub")


@no_db
def test_snapshot_of_100000_files_is_compact() -> None:
    tree: directory_tree.Tree = {}
    inode, mtime = 1_000_000, 1_780_000_000_000_000_000
    for run in range(100):
        tree[f"/raw/p700000/r{run:04d}"] = (-1, 0, inode)
        inode += 1
        for seq in range(1000):
            mtime += 123_456_789
            tree[f"/raw/p700000/r{run:04d}/RAW-R{run:04d}-DA01-S{seq:05d}.h5"] = (1 << 30, mtime, inode)
            inode += 1
    started = time.monotonic()
    value = directory_tree.encode(tree, 42)
    took = time.monotonic() - started
    stored = len(json.dumps(value))
    print(f"snapshot of {len(tree)} entries: {stored} bytes stored, encoded in {took:.3f} s")
    assert directory_tree.decode(value) == tree
    assert stored < 4_000_000


# End to end: directory sources on a real `headrace up` (its runner and database sink), a trigger on each
# running a function that reads the file through ctx.storage; on SQLite and on PostgreSQL.

SRC = "/api/v1/sources"
NS = "/api/v1/namespaces/_"
READER = """\
def main(event, ctx):
    data = ctx.storage.read(event["path"], source=event["source"])
    return {"path": event["path"], "mask": event.get("mask"), "size": len(data), "head": data[:6].decode()}
"""


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("dirsrc")
    s = Server(data=base / "data", cli_config=base / "cli.json").start()
    yield s
    s.stop()


def _problem(r: httpx.Response, status: int, detail: str = "") -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == str(status) and detail in body["detail"], body


def _activations(api: httpx.Client, name: str) -> list[dict[str, Any]]:
    r = api.get(f"{NS}/activations", params={"name": name, "docs": "true", "limit": 200})
    assert r.status_code == 200, r.text
    return [a for a in r.json() if a.get("state") == "done"]


def _deploy(api: httpx.Client, name: str, source: str) -> None:
    action = {"exec": {"kind": "python:3", "code": READER}, "annotations": [{"key": "storage", "value": True}]}
    assert api.put(f"{NS}/actions/{name}?overwrite=true", json=action).status_code == 200
    feed = {"path": "/", "source": source, "recursive": True}
    assert api.put(f"{NS}/triggers/{name}-t?overwrite=true", json={"feed": feed}).status_code == 200
    rule = {"trigger": f"/_/{name}-t", "action": f"/_/{name}"}
    assert api.put(f"{NS}/rules/{name}-r?overwrite=true", json=rule).status_code == 200


def _watching(srv: Server, name: str) -> bool:
    """The source has taken its first view of the tree (what is written from now on is announced)."""
    rows = query(srv.data, "SELECT state FROM sources WHERE name = :n", n=name)
    return bool(rows and rows[0][0] and "snapshot" in json.loads(rows[0][0]))


def _logged(srv: Server, name: str) -> list[tuple[str, str, str | None]]:
    rows = query(srv.data, 'SELECT kind, path, old_path FROM events WHERE source = :s ORDER BY "offset"', s=name)
    return [(str(k), str(p), o) for k, p, o in rows]


@pytest.mark.parametrize("mode", ["inotify", "scan"])
def test_end_to_end_on_a_real_server(srv: Server, tmp_path: Path, mode: str) -> None:
    root = tmp_path / "online"
    root.mkdir()
    name = f"daq-{mode}"
    alice_name, alice_key, _ = add_user(srv, f"dir{mode}a")
    bob_name, bob_key, _ = add_user(srv, f"dir{mode}b")
    alice, bob = (alice_name, alice_key), (bob_name, bob_key)
    body = {"kind": "directory", "root": str(root), "mode": mode, "interval": 0.2, "readers": {"users": [alice_name]}}
    with srv.api() as api, client(base_url=srv.api_url, auth=alice) as a, client(base_url=srv.api_url, auth=bob) as b:
        _problem(a.put(f"{SRC}/{name}", json=body), 403, "administrators")
        assert api.put(f"{SRC}/{name}", json=body).status_code == 201
        _deploy(a, f"dir-{mode}", name)
        wait_for(lambda: _watching(srv, name), "the source's first view of the tree")
        # a file written in pieces, one written under a temporary name and renamed, one renamed, one deleted
        (root / "r0042").mkdir()
        with open(root / "r0042" / "a.h5", "wb") as f:
            for i in range(4):
                f.write(b"AAAAAA" if i == 0 else os.urandom(1000))
                f.flush()
        (root / "r0042" / "b.h5.part").write_bytes(b"BBBBBB and more")
        os.rename(root / "r0042" / "b.h5.part", root / "r0042" / "b.h5")
        done = wait_for(lambda: len(acts := _activations(a, f"dir-{mode}")) >= 2 and acts, "two activations")
        results = sorted((x["response"]["result"] for x in done), key=lambda r: r["path"])
        assert results == [
            {"path": "/r0042/a.h5", "mask": ["IN_CLOSE_WRITE"], "size": 3006, "head": "AAAAAA"},
            {"path": "/r0042/b.h5", "mask": ["IN_CLOSE_WRITE"], "size": 15, "head": "BBBBBB"},
        ]
        os.rename(root / "r0042" / "b.h5", root / "r0042" / "c.h5")
        (root / "r0042" / "a.h5").unlink()
        wait_for(lambda: ("DELETE", "/r0042/a.h5", None) in _logged(srv, name), "the delete in the log")
        assert _logged(srv, name) == [
            ("CREATE", "/r0042", None),
            ("CLOSE_WRITE", "/r0042/a.h5", None),
            ("CLOSE_WRITE", "/r0042/b.h5", None),
            ("MOVE", "/r0042/c.h5", "/r0042/b.h5"),
            ("DELETE", "/r0042/a.h5", None),
        ]
        assert len(_activations(a, f"dir-{mode}")) == 2
        # reading the source's files: its reader may, another user may not, nothing outside the root
        r = a.get(f"{SRC}/{name}/files/r0042/c.h5", headers={"Range": "bytes=0-5"})
        assert r.status_code == 206 and r.content == b"BBBBBB"
        _problem(b.get(f"{SRC}/{name}/files/r0042/c.h5"), 404)
        (tmp_path / "secret").write_bytes(b"secret")
        os.symlink(tmp_path / "secret", root / "link")
        _problem(a.get(f"{SRC}/{name}/files/link"), 403)
        _problem(a.get(f"{SRC}/{name}/files/r0042/%2E%2E/%2E%2E/secret"), 403)
        assert api.get(f"{SRC}/{name}").json()["state"]["lastError"] is None
        assert api.delete(f"{SRC}/{name}").status_code == 204


def test_end_to_end_configuration_errors(srv: Server, tmp_path: Path) -> None:
    with srv.api() as api:
        _problem(api.put(f"{SRC}/bad", json={"kind": "directory", "root": "relative"}), 400, "absolute")
        _problem(api.put(f"{SRC}/bad", json={"kind": "directory", "root": "/x", "colour": 1}), 400, "colour")
        _problem(api.put(f"{SRC}/bad", json={"kind": "directory", "root": "/x", "mode": "poll"}), 400, "'mode'")
        # a root that is not there yet: the error is shown, and the source runs once it appears
        root = tmp_path / "mounted-later"
        body = {"kind": "directory", "root": str(root), "interval": 0.2}
        assert api.put(f"{SRC}/later", json=body).status_code == 201
        wait_for(lambda: "does not exist" in (api.get(f"{SRC}/later").json()["state"]["lastError"] or ""), "the error")
        root.mkdir()
        wait_for(lambda: _watching(srv, "later"), "the source running once its root is there")
        (root / "f.h5").write_bytes(b"f")
        wait_for(lambda: ("CLOSE_WRITE", "/f.h5", None) in _logged(srv, "later"), "the file's event")
        assert api.delete(f"{SRC}/later").status_code == 204


def test_the_cli_adds_a_directory_source(srv: Server, tmp_path: Path) -> None:
    root = tmp_path / "cli-tree"
    root.mkdir()
    args = ("source", "add", "dircli", "--kind", "directory", "--root", str(root), "--mode", "scan")
    out = ok(cli(srv, *args, "--interval", "0.2", "-o", 'pattern=["*.h5"]', "--json"))
    data = json.loads(out)
    assert (data["root"], data["mode"], data["interval"], data["pattern"]) == (str(root), "scan", 0.2, ["*.h5"])
    assert "colour" in one_line_error(cli(srv, *args, "-o", "colour=1"))
    assert "--mode" in one_line_error(cli(srv, *args[:-1], "poll"), code=2)
    wait_for(lambda: _watching(srv, "dircli"), "the source's first view")
    (root / "x.h5").write_bytes(b"x")
    (root / "x.txt").write_bytes(b"x")
    wait_for(lambda: _logged(srv, "dircli") == [("CLOSE_WRITE", "/x.h5", None)], "the .h5 file's event")
    ok(cli(srv, "source", "rm", "dircli"))


def test_end_to_end_a_killed_server_reconciles_on_restart(tmp_path: Path) -> None:
    """headrace killed while a directory source delivers, the tree changed while it is down: on restart every
    file is announced once, and what changed meanwhile (renames, deletions, new files) once."""
    server = Server(data=tmp_path / "data", cli_config=tmp_path / "cli.json").start()
    root = tmp_path / "online"
    root.mkdir()
    try:
        with server.api() as api:
            body = {"kind": "directory", "root": str(root), "mode": "inotify", "interval": 0.2}
            assert api.put(f"{SRC}/kept", json=body).status_code == 201
        wait_for(lambda: _watching(server, "kept"), "the source's first view")
        for i in range(600):
            (root / f"f{i:03d}.h5").write_bytes(b"x" * i)
        wait_for(lambda: len(_logged(server, "kept")) >= 50, "some files announced")
        server.stop(signal.SIGKILL)  # in a delivery or between two: each commits with its position
        announced = sorted(p for k, p, _ in _logged(server, "kept") if k == "CLOSE_WRITE")
        print(f"killed with {len(announced)} of 600 files announced")
        # while nothing watches: files written, announced ones renamed and deleted
        for i in range(600, 800):
            (root / f"f{i:03d}.h5").write_bytes(b"y" * i)
        renamed, deleted = announced[:10], announced[10:20]
        for p in renamed:
            os.rename(root / p[1:], root / f"moved-{p[1:]}")
        for p in deleted:
            (root / p[1:]).unlink()
        server.start()
        expected = (
            {("CLOSE_WRITE", f"/f{i:03d}.h5", None) for i in range(800)}
            | {("MOVE", f"/moved-{p[1:]}", p) for p in renamed}
            | {("DELETE", p, None) for p in deleted}
        )
        # a file never announced and renamed while down is new under its new name
        expected = {
            ("CLOSE_WRITE", f"/moved-{p[1:]}", None) if p in renamed and k == "CLOSE_WRITE" and p not in announced
            else (k, p, o)
            for k, p, o in expected
        }  # fmt: skip
        wait_for(lambda: set(_logged(server, "kept")) >= expected, "every change announced", timeout=120)
        logged = _logged(server, "kept")
        assert len(logged) == len(set(logged)) == len(expected), sorted(set(logged) - expected)
        with server.api() as api:
            assert api.get(f"{SRC}/kept").json()["state"]["received"] == len(expected)
    finally:
        server.stop()
