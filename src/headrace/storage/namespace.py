"""The namespace: directories and files with their attributes, and the outbox events of every change.

Every method that changes the namespace runs in one database transaction that also inserts the change's
events (invariant 1: no event without its change, no change without its event). Methods are blocking;
async callers run them through `Database.write` / `Database.read`.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, delete, func, insert, literal_column, null, select, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from headrace.auth.subject import ROOT, R, Subject, W, X
from headrace.db import driver
from headrace.db.engine import Database
from headrace.db.schema import checksums, events, hsm_trash, inodes, labels, xattrs
from headrace.errors import Conflict, Exists, Forbidden, NotEmpty, NotFound, PreconditionFailed
from headrace.events.model import LIST_KINDS, OVERWRITE_KINDS, READ_KINDS, UPLOAD_KINDS, EventKind
from headrace.http import conditionals
from headrace.storage.paths import join, normalize, parent_and_name

DIR, REGULAR = "DIR", "REGULAR"
QOS_LOCALITY = {"disk": "ONLINE", "tape": "NEARLINE", "disk+tape": "ONLINE_AND_NEARLINE"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def now_us() -> int:
    return time.time_ns() // 1_000


def trash_tape_copy(conn: Connection, uri: str) -> None:
    """A tape copy no file refers to any more, for the HSM's `remove` (storage/tape.py), in the caller's
    transaction."""
    conn.execute(insert(hsm_trash).values(uri=uri, created=now_ms()))


def new_pnfsid() -> str:
    """A dCache-like file id: 36 upper-case hex digits."""
    return "0000" + uuid.uuid4().hex.upper()


@dataclass
class Inode:
    id: int
    pnfsid: str
    parent_id: int | None
    name: str
    type: str
    size: int
    mode: int
    uid: int
    gid: int
    ctime: int
    mtime: int
    generation: int
    pool: str | None
    blob: str | None
    locality: str
    qos: str
    path: str
    hsm_uri: str | None = None
    accessed: int | None = None
    checksums: dict[str, str] = field(default_factory=dict)
    xattrs: dict[str, str] | None = None
    labels: list[str] | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    @property
    def current_qos(self) -> str:
        """The QoS the file has now (dCache's currentQos; `qos` is the target): a disk copy that the file's QoS
        may evict is a cache and does not count."""
        if self.locality == "NEARLINE":
            return "tape"
        if self.locality == "ONLINE_AND_NEARLINE":
            return "tape" if self.qos == "tape" else "disk+tape"
        return "disk"

    @property
    def etag(self) -> str:
        return f'"{self.pnfsid}_{self.generation}"'

    @classmethod
    def from_row(cls, row: Row[Any], path: str) -> Inode:
        m = row._mapping
        return cls(
            id=m["id"],
            pnfsid=m["pnfsid"],
            parent_id=m["parent_id"],
            name=m["name"],
            type=m["type"],
            size=m["size"],
            mode=m["mode"],
            uid=m["uid"],
            gid=m["gid"],
            ctime=m["ctime"],
            mtime=m["mtime"],
            generation=m["generation"],
            pool=m["pool"],
            blob=m["blob"],
            locality=m["locality"],
            qos=m["qos"],
            path=path,
            hsm_uri=m["hsm_uri"],
            accessed=m["accessed"],
        )


@dataclass(frozen=True)
class Blob:
    """File data to drop once the transaction that stopped referring to it has committed."""

    pool: str
    blob: str
    size: int


@dataclass(frozen=True)
class CopyItem:
    """One object of a COPY plan: its path relative to the copied root ('' for the root itself)."""

    rel: str
    type: str
    mode: int
    size: int
    pool: str | None
    blob: str | None
    checksums: dict[str, str]
    xattrs: dict[str, str]


_ROOT = select(inodes).where(inodes.c.parent_id.is_(None))
_CHILD = select(inodes).where(and_(inodes.c.parent_id == bindparam("parent"), inodes.c.name == bindparam("name")))
_COLUMNS = [c.name for c in inodes.columns]
# Hot-path statements, built once: constructing them per call costs more than SQLite takes to run them. They
# run on the driver (`headrace.db.driver`): SQLAlchemy's execution of even a cached statement cost more CPU
# than the statement itself.
# Local events leave `source`/`source_key` NULL (events of other systems come from events/sources/sink.py).
_EVENT_COLUMNS = [c.name for c in events.columns if c.name not in ("offset", "source", "source_key")]
_INODE_VALUES = [c.name for c in inodes.columns if c.name != "id"]
_INSERT_EVENT = insert(events).values({c: bindparam(c) for c in _EVENT_COLUMNS})
_INSERT_INODE = insert(inodes).values({c: bindparam(c) for c in _INODE_VALUES}).returning(inodes.c.id)
_INSERT_CHECKSUM = insert(checksums).values(
    inode_id=bindparam("inode_id"), type=bindparam("type"), value=bindparam("value")
)
_TOUCH = update(inodes).where(inodes.c.id == bindparam("id_")).values(mtime=bindparam("mtime"))
_NEW_VERSION = (
    update(inodes)
    .where(inodes.c.id == bindparam("id_"))
    .values(
        size=bindparam("size"),
        pool=bindparam("pool"),
        blob=bindparam("blob"),
        mtime=bindparam("mtime"),
        generation=inodes.c.generation + literal_column("1"),  # no bind parameter of its own
        locality=literal_column("'ONLINE'"),  # a new version is on disk only, until it is flushed
        hsm_uri=null(),
        accessed=null(),
    )
)
_DROP_CHECKSUMS = delete(checksums).where(checksums.c.inode_id == bindparam("id_"))
_CHECKSUMS_OF = select(checksums.c.type, checksums.c.value).where(checksums.c.inode_id == bindparam("id_"))


#: Names one chain query looks up: a deeper path takes one query per this many names. It bounds the statements
#: compiled and kept (two per depth up to it: from the root, and from a directory) whatever depth clients
#: send, and stays under SQLite's 64 tables in a join.
CHAIN_LEVELS = 32


@functools.cache
def _chain(depth: int, rooted: bool) -> Select[Any]:
    """SELECT a start directory and `depth` levels of names below it in one row: the start is level `r` (the
    root if `rooted`, else the inode whose id is the `start` parameter), name i is level `l{i}`, columns
    labelled `<level>_<column>`; NULL from the first missing level on."""
    assert 0 < depth <= CHAIN_LEVELS
    root = inodes.alias("r")
    levels = [inodes.alias(f"l{i}") for i in range(depth)]
    joined: Any = root
    parent = root
    for i, level in enumerate(levels):
        joined = joined.outerjoin(level, and_(level.c.parent_id == parent.c.id, level.c.name == bindparam(f"n{i}")))
        parent = level
    cols = [root.c[c].label(f"r_{c}") for c in _COLUMNS]
    cols += [lv.c[c].label(f"l{i}_{c}") for i, lv in enumerate(levels) for c in _COLUMNS]
    start = root.c.parent_id.is_(None) if rooted else root.c.id == bindparam("start")
    return select(*cols).select_from(joined).where(start)


_CHAIN_SQL: dict[tuple[str, int, bool], tuple[str, tuple[str, ...] | None]] = {}


def _run_chain(conn: Connection, names: list[str], start: int | None) -> tuple[Any, ...]:
    """Execute `_chain(len(names), start is None)` from the root or the directory with id `start`, as SQL
    compiled once per dialect and depth. SQLAlchemy would otherwise rebuild the cache key and result metadata
    of this wide statement on every call (measured: most of a lookup's CPU). The string and its parameter
    order come from the dialect, so this stays portable."""
    key = (conn.dialect.name, len(names), start is None)
    compiled = _CHAIN_SQL.get(key)
    if compiled is None:
        c = _chain(len(names), start is None).compile(dialect=conn.dialect)
        compiled = _CHAIN_SQL[key] = (c.string, tuple(c.positiontup) if c.positiontup else None)
    sql, order = compiled
    params: dict[str, Any] = {f"n{i}": name for i, name in enumerate(names)}
    if start is not None:
        params["start"] = start
    args: Any = tuple(params[k] for k in order) if order is not None else params
    cur = driver.run(conn, sql, args)
    try:
        row = cur.fetchone()
    finally:
        cur.close()
    assert row is not None, "the chain query starts at an existing directory"
    return tuple(row)


def _level(row: tuple[Any, ...], index: int, path: str) -> Inode | None:
    """Level `index` of a chain row (0 = the root): None where the path stops existing."""
    width = len(_COLUMNS)
    values = row[index * width : (index + 1) * width]
    if values[0] is None:
        return None
    return Inode(path=path, **dict(zip(_COLUMNS, values, strict=True)))


class Namespace:
    def __init__(self, db: Database, *, read_events: bool = True) -> None:
        self.db = db
        self.read_events = read_events

    # -- set-up ------------------------------------------------------------------------------------------

    def bootstrap(self) -> None:
        """Create the root directory if the namespace is new."""
        with self.db.engine.begin() as conn:
            if conn.execute(select(inodes.c.id).where(inodes.c.parent_id.is_(None))).first() is None:
                t = now_ms()
                conn.execute(
                    insert(inodes).values(
                        pnfsid=new_pnfsid(),
                        parent_id=None,
                        name="",
                        type=DIR,
                        size=0,
                        mode=0o755,
                        uid=0,
                        gid=0,
                        ctime=t,
                        mtime=t,
                        generation=0,
                        locality="ONLINE",
                        qos="disk",
                    )
                )

    # -- lookups -----------------------------------------------------------------------------------------

    def _root(self, conn: Connection) -> Inode:
        row = conn.execute(_ROOT).one()
        return Inode.from_row(row, "/")

    def _child(self, conn: Connection, parent: Inode, name: str) -> Inode | None:
        row = conn.execute(_CHILD, {"parent": parent.id, "name": name}).first()
        return Inode.from_row(row, join(parent.path, name)) if row is not None else None

    def _walk(self, conn: Connection, path: str, subject: Subject) -> tuple[Inode | None, Inode | None]:
        """(parent, target) for `path`: target None if absent; raises if the parent chain is broken.

        One query per CHAIN_LEVELS names (a chain of self-joins, built once per depth), not one per name:
        statement construction, not SQLite, is what a lookup costs in Python.
        """
        path = normalize(path)
        if path == "/":
            return None, self._root(conn)
        names = path[1:].split("/")
        row = _run_chain(conn, names[:CHAIN_LEVELS], None)
        base = 0  # the index in `names` of the row's level 1
        node = _level(row, 0, "/")
        assert node is not None
        for i, name in enumerate(names):
            if not node.is_dir:
                raise Conflict(f"Not a directory: {node.path}")
            if not subject.may(X, mode=node.mode, uid=node.uid, gid=node.gid):
                raise Forbidden(f"Permission denied: {node.path}")
            if i - base == CHAIN_LEVELS:
                row, base = _run_chain(conn, names[i : i + CHAIN_LEVELS], node.id), i
            child = _level(row, i - base + 1, join(node.path, name))
            if child is None:
                if i == len(names) - 1:
                    return node, None
                raise NotFound(f"No such file or directory: {join(node.path, name)}")
            if i == len(names) - 1:
                return node, child
            node = child
        raise AssertionError("unreachable")

    def _get(self, conn: Connection, path: str, subject: Subject) -> Inode:
        _, node = self._walk(conn, path, subject)
        if node is None:
            raise NotFound(f"No such file or directory: {normalize(path)}")
        return node

    def _walk_for_create(self, conn: Connection, path: str, subject: Subject) -> tuple[Inode | None, Inode | None]:
        """`_walk`, with a missing directory above `path` reported as 409 (nothing can be created there)."""
        try:
            return self._walk(conn, path, subject)
        except NotFound as exc:
            raise Conflict(f"Parent directory does not exist: {exc.detail.split(': ', 1)[-1]}") from exc

    def _dir_for_create(self, conn: Connection, path: str, subject: Subject) -> tuple[Inode, Inode | None]:
        """The parent directory a new entry at `path` goes into (must exist: 409 otherwise) and any entry
        already there."""
        parent, node = self._walk_for_create(conn, path, subject)
        if parent is None:
            raise Forbidden("The root cannot be replaced")
        if not parent.is_dir:
            raise Conflict(f"Not a directory: {parent.path}")
        return parent, node

    @staticmethod
    def _need(subject: Subject, want: int, node: Inode) -> None:
        if not subject.may(want, mode=node.mode, uid=node.uid, gid=node.gid):
            raise Forbidden(f"Permission denied: {node.path}")

    def _extras(self, conn: Connection, node: Inode, *, xattr: bool, label: bool, sums: bool = True) -> Inode:
        if sums and not node.is_dir:
            cur = driver.execute(conn, "checksums-of", lambda: _CHECKSUMS_OF, {"id_": node.id})
            try:
                node.checksums = dict(cur.fetchall())
            finally:
                cur.close()
        if xattr:
            node.xattrs = {r.name: r.value for r in conn.execute(select(xattrs).where(xattrs.c.inode_id == node.id))}
        if label:
            node.labels = sorted(r.label for r in conn.execute(select(labels).where(labels.c.inode_id == node.id)))
        return node

    def stat(
        self, path: str, subject: Subject = ROOT, *, xattr: bool = False, label: bool = False, sums: bool = True
    ) -> Inode:
        """The entry at `path` with its checksums (unless `sums` is false), xattrs and labels if asked."""
        with self.db.reader.connect() as conn:
            node = self._get(conn, path, subject)
            return self._extras(conn, node, xattr=xattr, label=label, sums=sums)

    def stat_in(self, conn: Connection, path: str, subject: Subject = ROOT, *, sums: bool = True) -> Inode:
        """`stat` (without xattrs and labels) on the caller's reader connection, for `Database.read_short`:
        its statements run on the driver and leave no transaction open."""
        node = self._get(conn, path, subject)
        return self._extras(conn, node, xattr=False, label=False, sums=sums)

    def entry_for_create(self, path: str, subject: Subject = ROOT) -> Inode | None:
        """The entry a new file at `path` would replace (None if there is none), in one query; 409 when a
        directory above it is missing or is a file. For refusing a write before its data arrives."""
        with self.db.reader.connect() as conn:
            return self.entry_for_create_in(conn, path, subject)

    def entry_for_create_in(self, conn: Connection, path: str, subject: Subject = ROOT) -> Inode | None:
        """`entry_for_create` on the caller's reader connection (for `Database.read_short`)."""
        return self._walk_for_create(conn, path, subject)[1]

    def try_stat(self, path: str, subject: Subject = ROOT) -> Inode | None:
        with self.db.reader.connect() as conn:
            try:
                return self._get(conn, path, subject)
            except NotFound:
                return None

    def children(
        self, directory: Inode, *, after: str | None = None, offset: int = 0, limit: int = 1000
    ) -> list[Inode]:
        """One page of a directory's entries in name order, after the name `after` (keyset paging) and
        past `offset` more entries."""
        q = select(inodes).where(inodes.c.parent_id == directory.id)
        if after is not None:
            q = q.where(inodes.c.name > after)
        q = q.order_by(inodes.c.name).limit(limit)
        if offset:
            q = q.offset(offset)
        with self.db.reader.connect() as conn:
            rows = conn.execute(q).all()
            nodes = [Inode.from_row(r, join(directory.path, r.name)) for r in rows]
            if nodes:
                sums: dict[int, dict[str, str]] = {}
                ids = [n.id for n in nodes if not n.is_dir]
                if ids:
                    for r in conn.execute(select(checksums).where(checksums.c.inode_id.in_(ids))):
                        sums.setdefault(r.inode_id, {})[r.type] = r.value
                for n in nodes:
                    n.checksums = sums.get(n.id, {})
            return nodes

    def iter_children(self, directory: Inode, *, page: int = 1000) -> Iterator[Inode]:
        """All entries of a directory, fetched a page at a time (never all in memory)."""
        after: str | None = None
        while True:
            batch = self.children(directory, after=after, limit=page)
            yield from batch
            if len(batch) < page:
                return
            after = batch[-1].name

    def xattrs_for(self, ids: list[int]) -> dict[int, dict[str, str]]:
        """Extended attributes of many entries at once (for listings that show dead properties)."""
        out: dict[int, dict[str, str]] = {}
        if not ids:
            return out
        with self.db.reader.connect() as conn:
            for r in conn.execute(select(xattrs).where(xattrs.c.inode_id.in_(ids))):
                out.setdefault(r.inode_id, {})[r.name] = r.value
        return out

    # -- events ------------------------------------------------------------------------------------------

    def _emit(
        self,
        conn: Connection,
        kinds: Sequence[EventKind],
        node: Inode,
        subject: Subject,
        *,
        detail: dict[str, Any] | None = None,
        cause: str | None = None,
        **extra: Any,
    ) -> None:
        base = self._event_base(node, subject, detail, cause)
        base.update(extra)
        driver.execute_many(conn, "insert-event", lambda: _INSERT_EVENT, [{**base, "kind": k.value} for k in kinds])
        self.db.event_writes += 1  # before the commit: a follower that sees it unchanged may skip a read

    @staticmethod
    def _event_base(node: Inode, subject: Subject, detail: dict[str, Any] | None, cause: str | None) -> dict[str, Any]:
        return {
            "time": now_us(),
            "is_dir": node.is_dir,
            "inode_id": node.id,
            "pnfsid": node.pnfsid,
            "path": node.path,
            "parent_id": node.parent_id,
            "name": node.name or None,
            "old_path": None,
            "old_parent_id": None,
            "old_name": None,
            "cookie": None,
            "size": node.size,
            "detail": json.dumps(detail, separators=(",", ":")) if detail else None,
            "cause": cause,
            "username": subject.username,
        }

    def record_read_in(self, conn: Connection, node: Inode, subject: Subject, cause: str | None = None) -> None:
        """The events of a completed read or listing, in the caller's transaction."""
        if self.read_events:
            self._emit(conn, LIST_KINDS if node.is_dir else READ_KINDS, node, subject, cause=cause)

    def record_reads_in(self, conn: Connection, reads: list[tuple[Inode, Subject, str | None]]) -> None:
        """The events of many completed reads, in order, in the caller's transaction (one multi-row insert)."""
        if not self.read_events or not reads:
            return
        rows: list[dict[str, Any]] = []
        for node, subject, cause in reads:
            base = self._event_base(node, subject, None, cause)
            rows += [{**base, "kind": k.value} for k in (LIST_KINDS if node.is_dir else READ_KINDS)]
        driver.execute_many(conn, "insert-event", lambda: _INSERT_EVENT, rows)
        self.db.event_writes += 1

    def post_read(self, node: Inode, subject: Subject, cause: str | None = None) -> None:
        """Record a completed read or listing without waiting for it: its events are written in the next group
        transaction, in order with this process's other writes (`GroupCommit.post`). A response need not
        wait for the commit of a read's events; a crash right after the read can lose them (never a
        change's events, which commit before the change is answered)."""
        if self.read_events:
            self.db.group.post(self.record_reads_in, (node, subject, cause))

    def check_readable(self, node: Inode, subject: Subject) -> None:
        self._need(subject, R, node)

    # -- changes -----------------------------------------------------------------------------------------

    def mkdir(
        self,
        path: str,
        subject: Subject,
        *,
        mode: int = 0o755,
        parents: bool = False,
        cause: str | None = None,
    ) -> Inode:
        with self.db.engine.begin() as conn:
            if parents:
                return self._mkdirs(conn, normalize(path), subject, mode, cause)
            parent, node = self._dir_for_create(conn, path, subject)
            if node is not None:
                raise Exists(f"File exists: {node.path}")
            return self._insert_dir(conn, parent, parent_and_name(normalize(path))[1], subject, mode, cause)

    def _mkdirs(self, conn: Connection, path: str, subject: Subject, mode: int, cause: str | None) -> Inode:
        node = self._root(conn)
        for name in [p for p in path.split("/") if p]:
            if not node.is_dir:
                raise Conflict(f"Not a directory: {node.path}")
            self._need(subject, X, node)
            child = self._child(conn, node, name)
            node = child if child is not None else self._insert_dir(conn, node, name, subject, mode, cause)
        if not node.is_dir:
            raise Conflict(f"Not a directory: {node.path}")
        return node

    def _insert_dir(
        self, conn: Connection, parent: Inode, name: str, subject: Subject, mode: int, cause: str | None
    ) -> Inode:
        self._need(subject, W | X, parent)
        node = self._insert(conn, parent, name, DIR, subject, mode=mode, size=0)
        self._emit(conn, (EventKind.CREATE,), node, subject, cause=cause)
        self._touch(conn, parent)
        return node

    def _insert(
        self,
        conn: Connection,
        parent: Inode,
        name: str,
        type_: str,
        subject: Subject,
        *,
        mode: int,
        size: int,
        pool: str | None = None,
        blob: str | None = None,
    ) -> Inode:
        t = now_ms()
        values = {
            "pnfsid": new_pnfsid(),
            "parent_id": parent.id,
            "name": name,
            "type": type_,
            "size": size,
            "mode": mode,
            "uid": subject.uid,
            "gid": subject.gid,
            "ctime": t,
            "mtime": t,
            "generation": 0,
            "pool": pool,
            "blob": blob,
            "locality": "ONLINE",
            "qos": parent.qos,  # a directory's QoS is its new entries' (dCache's directory tags)
            "hsm_uri": None,
            "accessed": None,
        }
        try:
            cur = driver.execute(conn, "insert-inode", lambda: _INSERT_INODE, values)
        except IntegrityError as exc:
            raise Exists(f"File exists: {join(parent.path, name)}") from exc
        try:
            pk = cur.fetchone()
        finally:
            cur.close()
        assert pk is not None
        return Inode(id=int(pk[0]), path=join(parent.path, name), **values)  # type: ignore[arg-type]

    @staticmethod
    def _touch(conn: Connection, directory: Inode) -> None:
        driver.execute(conn, "touch", lambda: _TOUCH, {"id_": directory.id, "mtime": now_ms()}).close()

    def commit_upload_in(
        self,
        conn: Connection,
        path: str,
        subject: Subject,
        *,
        pool: str,
        blob: str,
        size: int,
        sums: dict[str, str],
        mode: int = 0o644,
        if_match: str | None = None,
        if_none_match_any: bool = False,
        cause: str | None = None,
    ) -> tuple[Inode, Blob | None, bool]:
        """Make a completely written blob visible at `path`: a new file, or a new version of an existing one.

        Returns the file, the blob it replaced (to remove after commit), and whether the file is new.
        """
        parent, node = self._dir_for_create(conn, path, subject)
        name = parent_and_name(normalize(path))[1]
        if node is not None and if_none_match_any:
            raise PreconditionFailed(f"File exists: {node.path}")
        if node is None and if_match is not None:
            raise PreconditionFailed(f"No such file: {normalize(path)}")
        if node is None:
            self._need(subject, W | X, parent)
            node = self._insert(conn, parent, name, REGULAR, subject, mode=mode, size=size, pool=pool, blob=blob)
            old = None
            kinds: tuple[EventKind, ...] = UPLOAD_KINDS
            self._touch(conn, parent)
        else:
            if node.is_dir:
                raise Conflict(f"Is a directory: {node.path}")
            if if_match is not None and not conditionals.if_match_holds(if_match, node.etag):
                raise PreconditionFailed(f"ETag does not match: {node.path}")
            self._need(subject, W, node)
            old = Blob(node.pool, node.blob, node.size) if node.pool and node.blob else None
            if node.hsm_uri:
                trash_tape_copy(conn, node.hsm_uri)
            t = now_ms()
            new_version = {"id_": node.id, "size": size, "pool": pool, "blob": blob, "mtime": t}
            driver.execute(conn, "new-version", lambda: _NEW_VERSION, new_version).close()
            driver.execute(conn, "drop-checksums", lambda: _DROP_CHECKSUMS, {"id_": node.id}).close()
            node.size, node.pool, node.blob, node.mtime = size, pool, blob, t
            node.locality, node.hsm_uri, node.accessed = "ONLINE", None, None
            node.generation += 1
            kinds = OVERWRITE_KINDS
        if sums:
            rows = [{"inode_id": node.id, "type": k, "value": v} for k, v in sums.items()]
            driver.execute_many(conn, "insert-checksum", lambda: _INSERT_CHECKSUM, rows)
        node.checksums = dict(sums)
        self._emit(conn, kinds, node, subject, detail={"checksums": sums}, cause=cause)
        return node, old, old is None

    def add_checksums(self, node: Inode, sums: dict[str, str]) -> None:
        """Store checksums computed later (on a read that asked for a new type). Not an event: the
        content did not change, only what we know of it."""
        new = {k: v for k, v in sums.items() if k not in node.checksums}
        if not new:
            return
        with self.db.engine.begin() as conn:
            exists = conn.execute(
                select(inodes.c.id).where(and_(inodes.c.id == node.id, inodes.c.generation == node.generation))
            ).first()
            if exists is None:
                return
            for k, v in new.items():
                try:
                    with conn.begin_nested():
                        conn.execute(insert(checksums).values(inode_id=node.id, type=k, value=v))
                except IntegrityError:
                    pass
        node.checksums.update(new)

    def delete(self, path: str, subject: Subject, *, recursive: bool = False, cause: str | None = None) -> list[Blob]:
        """Remove a file, an empty directory, or (recursive) a whole tree. Returns blobs to drop."""
        with self.db.engine.begin() as conn:
            parent, node = self._walk(conn, path, subject)
            if node is None:
                raise NotFound(f"No such file or directory: {normalize(path)}")
            if parent is None:
                raise Forbidden("The root cannot be deleted")
            self._need(subject, W | X, parent)
            blobs = self._delete_tree(conn, node, subject, recursive=recursive, cause=cause)
            self._touch(conn, parent)
            return blobs

    def _delete_tree(
        self, conn: Connection, node: Inode, subject: Subject, *, recursive: bool, cause: str | None
    ) -> list[Blob]:
        blobs: list[Blob] = []
        if node.is_dir:
            has_children = conn.execute(select(inodes.c.id).where(inodes.c.parent_id == node.id).limit(1)).first()
            if has_children is not None:
                if not recursive:
                    raise NotEmpty(f"Directory not empty: {node.path}")
                self._need(subject, W | X, node)
                # Children first, one page at a time, depth first.
                while True:
                    rows = conn.execute(
                        select(inodes).where(inodes.c.parent_id == node.id).order_by(inodes.c.name).limit(500)
                    ).all()
                    if not rows:
                        break
                    for row in rows:
                        child = Inode.from_row(row, join(node.path, row.name))
                        blobs += self._delete_tree(conn, child, subject, recursive=True, cause=cause)
        else:
            if node.pool and node.blob:
                blobs.append(Blob(node.pool, node.blob, node.size))
            if node.hsm_uri:
                trash_tape_copy(conn, node.hsm_uri)
        conn.execute(delete(inodes).where(inodes.c.id == node.id))
        self._emit(conn, (EventKind.DELETE,), node, subject, cause=cause)
        return blobs

    def rename(
        self,
        src: str,
        dst: str,
        subject: Subject,
        *,
        overwrite: bool = True,
        posix: bool = False,
        cause: str | None = None,
    ) -> tuple[Inode, list[Blob], bool]:
        """Move `src` to `dst`. Returns the moved entry, blobs of an overwritten target, and whether the
        target existed before.

        WebDAV MOVE (RFC 4918) with Overwrite replaces whatever is at `dst`. With `posix`, as rename(2):
        a file replaces only a file, a directory only an empty directory."""
        src, dst = normalize(src), normalize(dst)
        if src == dst:
            raise Forbidden("Source and destination are the same")
        if src == "/":
            raise Forbidden("The root cannot be moved")
        if dst.startswith(src + "/"):
            raise Conflict("Cannot move a directory into itself")
        with self.db.engine.begin() as conn:
            old_parent, node = self._walk(conn, src, subject)
            if node is None or old_parent is None:
                raise NotFound(f"No such file or directory: {src}")
            new_parent, existing = self._dir_for_create(conn, dst, subject)
            self._need(subject, W | X, old_parent)
            self._need(subject, W | X, new_parent)
            blobs: list[Blob] = []
            if existing is not None:
                if not overwrite:
                    raise Exists(f"Destination exists: {dst}")
                if posix:
                    if existing.is_dir and not node.is_dir:
                        raise Conflict(f"Is a directory: {dst}")
                    if node.is_dir and not existing.is_dir:
                        raise Conflict(f"Not a directory: {dst}")
                blobs = self._delete_tree(conn, existing, subject, recursive=not posix, cause=cause)
            new_name = parent_and_name(dst)[1]
            conn.execute(update(inodes).where(inodes.c.id == node.id).values(parent_id=new_parent.id, name=new_name))
            old_path, old_name, old_parent_id = node.path, node.name, node.parent_id
            node.parent_id, node.name, node.path = new_parent.id, new_name, dst
            self._emit(
                conn,
                (EventKind.MOVE,),
                node,
                subject,
                cause=cause,
                old_path=old_path,
                old_name=old_name,
                old_parent_id=old_parent_id,
                cookie=secrets.token_hex(8),
            )
            self._touch(conn, old_parent)
            if new_parent.id != old_parent.id:
                self._touch(conn, new_parent)
            return node, blobs, existing is not None

    def copy_plan(self, src: str, subject: Subject, *, depth_infinity: bool = True) -> list[CopyItem]:
        """What a COPY of `src` must reproduce: every object (readable by `subject`) with its data."""
        with self.db.reader.connect() as conn:
            root = self._get(conn, src, subject)
            items: list[CopyItem] = []
            stack: list[tuple[Inode, str]] = [(root, "")]
            while stack:
                node, rel = stack.pop()
                self._need(subject, R, node)
                self._extras(conn, node, xattr=True, label=False)
                items.append(
                    CopyItem(
                        rel,
                        node.type,
                        node.mode,
                        node.size,
                        node.pool,
                        node.blob,
                        node.checksums,
                        node.xattrs or {},
                    )
                )
                if node.is_dir and (depth_infinity or node is root) and (depth_infinity or not rel):
                    if not depth_infinity:
                        continue
                    for row in conn.execute(select(inodes).where(inodes.c.parent_id == node.id)):
                        child = Inode.from_row(row, join(node.path, row.name))
                        stack.append((child, f"{rel}/{row.name}" if rel else row.name))
            return items

    def commit_copy(
        self,
        dst: str,
        subject: Subject,
        items: list[tuple[CopyItem, str | None, str | None]],
        *,
        overwrite: bool,
        cause: str | None = None,
    ) -> tuple[list[Blob], bool]:
        """Create the copied tree at `dst`; `items` pairs each plan entry with the (pool, blob) of its new
        data. Returns blobs of an overwritten target and whether the target existed."""
        dst = normalize(dst)
        with self.db.engine.begin() as conn:
            parent, existing = self._dir_for_create(conn, dst, subject)
            blobs: list[Blob] = []
            if existing is not None:
                if not overwrite:
                    raise Exists(f"Destination exists: {dst}")
                self._need(subject, W | X, parent)
                blobs = self._delete_tree(conn, existing, subject, recursive=True, cause=cause)
            created: dict[str, Inode] = {}
            for item, pool, blob in sorted(items, key=lambda t: t[0].rel.count("/") if t[0].rel else -1):
                if item.rel:
                    up, _, name = item.rel.rpartition("/")
                    into = created[up] if up else created[""]
                else:
                    into, name = parent, parent_and_name(dst)[1]
                self._need(subject, W | X, into)
                node = self._insert(
                    conn, into, name, item.type, subject, mode=item.mode, size=item.size, pool=pool, blob=blob
                )
                if item.checksums:
                    conn.execute(
                        insert(checksums),
                        [{"inode_id": node.id, "type": k, "value": v} for k, v in item.checksums.items()],
                    )
                if item.xattrs:
                    conn.execute(
                        insert(xattrs),
                        [{"inode_id": node.id, "name": k, "value": v} for k, v in item.xattrs.items()],
                    )
                node.checksums = dict(item.checksums)
                kinds = (EventKind.CREATE,) if node.is_dir else UPLOAD_KINDS
                self._emit(
                    conn,
                    kinds,
                    node,
                    subject,
                    detail={"checksums": item.checksums} if item.checksums else None,
                    cause=cause,
                )
                created[item.rel] = node
            self._touch(conn, parent)
            return blobs, existing is not None

    # -- attributes --------------------------------------------------------------------------------------

    def _attrib(self, conn: Connection, node: Inode, subject: Subject, changed: list[str], cause: str | None) -> None:
        self._emit(conn, (EventKind.ATTRIB,), node, subject, detail={"changed": changed}, cause=cause)

    def chmod(self, path: str, subject: Subject, mode: int, *, cause: str | None = None) -> Inode:
        if not 0 <= mode <= 0o7777:
            raise Conflict(f"Invalid mode: {mode:o}")
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            if not subject.admin and subject.uid != node.uid:
                raise Forbidden(f"Permission denied: only the owner may change the mode of {node.path}")
            conn.execute(update(inodes).where(inodes.c.id == node.id).values(mode=mode))
            node.mode = mode
            self._attrib(conn, node, subject, ["mode"], cause)
            return node

    def chown(
        self, path: str, subject: Subject, uid: int | None, gid: int | None, *, cause: str | None = None
    ) -> Inode:
        """Change owner (admin only) or group (admin, or the owner to one of its own groups)."""
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            if not subject.admin:
                if uid is not None and uid != node.uid:
                    raise Forbidden(f"Permission denied: only an admin may change the owner of {node.path}")
                if subject.uid != node.uid or (gid is not None and gid not in subject.gids):
                    raise Forbidden(f"Permission denied: cannot change the group of {node.path}")
            values = {k: v for k, v in (("uid", uid), ("gid", gid)) if v is not None}
            if values:
                conn.execute(update(inodes).where(inodes.c.id == node.id).values(**values))
                node.uid, node.gid = values.get("uid", node.uid), values.get("gid", node.gid)
            self._attrib(conn, node, subject, sorted(values), cause)
            return node

    def set_xattrs(
        self,
        path: str,
        subject: Subject,
        attrs: dict[str, str],
        *,
        how: str = "EITHER",
        cause: str | None = None,
    ) -> Inode:
        """Set extended attributes; `how` is dCache's mode: CREATE (must be new), MODIFY (must exist), EITHER."""
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            self._need_owner_or_w(subject, node)
            current = {r.name for r in conn.execute(select(xattrs.c.name).where(xattrs.c.inode_id == node.id))}
            for name, value in attrs.items():
                if name in current:
                    if how == "CREATE":
                        raise Exists(f"Extended attribute exists: {name}")
                    conn.execute(
                        update(xattrs)
                        .where(and_(xattrs.c.inode_id == node.id, xattrs.c.name == name))
                        .values(value=value)
                    )
                else:
                    if how == "MODIFY":
                        raise NotFound(f"No such extended attribute: {name}")
                    conn.execute(insert(xattrs).values(inode_id=node.id, name=name, value=value))
            self._attrib(conn, node, subject, ["xattr"], cause)
            return node

    def remove_xattrs(
        self,
        path: str,
        subject: Subject,
        names: list[str],
        *,
        missing_ok: bool = False,
        cause: str | None = None,
    ) -> Inode:
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            self._need_owner_or_w(subject, node)
            for name in names:
                n = conn.execute(
                    delete(xattrs).where(and_(xattrs.c.inode_id == node.id, xattrs.c.name == name))
                ).rowcount
                if n == 0 and not missing_ok:
                    raise NotFound(f"No such extended attribute: {name}")
            self._attrib(conn, node, subject, ["xattr"], cause)
            return node

    def change_xattrs(
        self,
        path: str,
        subject: Subject,
        set_: dict[str, str],
        remove: list[str],
        *,
        cause: str | None = None,
    ) -> Inode:
        """PROPPATCH: set and remove dead properties atomically, one ATTRIB event."""
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            self._need_owner_or_w(subject, node)
            for name in remove:
                conn.execute(delete(xattrs).where(and_(xattrs.c.inode_id == node.id, xattrs.c.name == name)))
            for name, value in set_.items():
                conn.execute(delete(xattrs).where(and_(xattrs.c.inode_id == node.id, xattrs.c.name == name)))
                conn.execute(insert(xattrs).values(inode_id=node.id, name=name, value=value))
            self._attrib(conn, node, subject, ["xattr"], cause)
            return node

    def set_labels(
        self, path: str, subject: Subject, add: list[str], remove: list[str], *, cause: str | None = None
    ) -> Inode:
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            self._need_owner_or_w(subject, node)
            current = {r.label for r in conn.execute(select(labels.c.label).where(labels.c.inode_id == node.id))}
            for label in remove:
                if label in current:
                    conn.execute(delete(labels).where(and_(labels.c.inode_id == node.id, labels.c.label == label)))
                    current.discard(label)
            for label in add:
                if label not in current:
                    conn.execute(insert(labels).values(inode_id=node.id, label=label))
                    current.add(label)
            self._attrib(conn, node, subject, ["labels"], cause)
            return node

    def set_qos(self, path: str, subject: Subject, target: str, *, cause: str | None = None) -> Inode:
        if target not in QOS_LOCALITY:
            raise Conflict(f"Unknown QoS: {target} (known: {', '.join(QOS_LOCALITY)})")
        with self.db.engine.begin() as conn:
            node = self._get(conn, path, subject)
            self._need_owner_or_w(subject, node)
            conn.execute(update(inodes).where(inodes.c.id == node.id).values(qos=target))
            node.qos = target
            self._attrib(conn, node, subject, ["qos"], cause)
            return node

    def _need_owner_or_w(self, subject: Subject, node: Inode) -> None:
        if subject.admin or subject.uid == node.uid:
            return
        self._need(subject, W, node)

    # -- pool bookkeeping ----------------------------------------------------------------------------------

    def blobs_in(self, pool: str) -> Iterator[str]:
        with self.db.reader.connect() as conn:
            for row in conn.execute(select(inodes.c.blob).where(inodes.c.pool == pool)):
                if row.blob:
                    yield row.blob

    def bytes_in(self, pool: str) -> int:
        with self.db.reader.connect() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(inodes.c.size), 0)).where(inodes.c.pool == pool)
                ).scalar_one()
            )
