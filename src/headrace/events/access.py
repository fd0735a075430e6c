"""Who may see which storage event: the one rule SSE channels and the storage feed deliver by.

dCache lets a user watch only what they may read, and so does Linux inotify (a watch needs read permission on
the watched directory). headrace checks every event at delivery, not only when the watch or trigger was made,
so a recursive watch or a feed on `/` sees only what its owner could list:

- An event about the entry at `path` in directory `parent` (its name, size, checksums, who made it) is seen
  by a user who may *list* `parent`: read and search (r-x) on `parent`, search (--x) on every directory above
  it. Events on the target itself (IN_ATTRIB, IN_DELETE_SELF, ... without a name) follow the same rule: a
  file's attributes need search on its parent chain and its name needs read on its parent. The root itself is
  seen by everyone.
- A credential confined by a macaroon (`path:`, `root:`, `activity:`) sees, on top of that, only entries
  within its paths or on the way to them (as a listing shows them), within its root, and only if it may
  LIST or READ_METADATA.
- A rename has two sides, checked apart: out of a directory the user may list into one they may not, they
  see only the IN_MOVED_FROM (as if the destination were not watched); into one they may list from one they
  may not, only the IN_MOVED_TO. IN_MOVE_SELF on a watched target is seen if either side is.
  Renderings that cannot express half a move (CloudEvents) show it as a delete or a create (`one_side`).

Permissions are those at delivery (the namespace as it is when the event is handed out). They are read per
batch of events, one query for all directories the batch names and their ancestors, and kept across batches
until an event of the log says a directory changed (created, attributes, moved); a directory deleted since
keeps its last known permissions, so that events about its last entries are still judged.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from headrace.auth.macaroons import Restrictions
from headrace.auth.subject import R, Subject, X
from headrace.db.schema import inodes
from headrace.events.model import EventKind, StorageEvent
from headrace.storage.paths import is_within

#: Activities of which a confined credential needs one to see events (listing or reading attributes).
SEE_ACTIVITIES = frozenset({"LIST", "READ_METADATA"})
#: Directories whose permissions are remembered between batches (the cache starts over past this).
CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class Confinement:
    """What a macaroon narrows its bearer to, as far as seeing events goes: its root, its paths (all must
    hold) and its activities. Time (`before:`) and address (`ip:`) caveats bind the request, not the channel."""

    root: str = "/"
    paths: tuple[str, ...] = ()
    activities: frozenset[str] | None = None
    #: A capability JWT's grants (`grants:` caveats): per set, the paths any one of which admits a path.
    grants: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, r: Restrictions | None) -> Confinement | None:
        """The confinement of a credential's restrictions; None for a credential that is not confined."""
        if r is None:
            return None
        c = cls(
            r.root,
            tuple(sorted(set(p for p in r.paths if p != "/"))),
            frozenset(r.activities) if r.activities is not None else None,
            tuple(tuple(sorted({p for p, acts in g if acts & SEE_ACTIVITIES})) for g in r.grants),
        )
        return None if c == cls() else c

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"root": self.root, "paths": list(self.paths)}
        if self.activities is not None:
            out["activities"] = sorted(self.activities)
        if self.grants:
            out["grants"] = [list(g) for g in self.grants]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> Confinement | None:
        if not raw:
            return None
        acts = raw.get("activities")
        grants = tuple(tuple(g) for g in raw.get("grants", ()))
        return cls(str(raw["root"]), tuple(raw.get("paths", ())), frozenset(acts) if acts is not None else None, grants)

    def allows(self, path: str) -> bool:
        """Whether an event about the namespace path `path` may be shown to the bearer."""
        if self.activities is not None and not self.activities & SEE_ACTIVITIES:
            return False
        if not is_within(path, self.root):
            return False
        if not all(is_within(path, p) or is_within(p, path) for p in self.paths):
            return False
        return all(any(is_within(path, p) or is_within(p, path) for p in g) for g in self.grants)


def may_use(confinement: Confinement | None, requester: Confinement | None) -> bool:
    """Whether a credential confined by `requester` may use a channel made under `confinement`: an unconfined
    credential of the owner may use every channel of theirs; a confined one only those made under the same
    confinement (a channel made with wider rights could show it what it may not see)."""
    return requester is None or requester == confinement


@dataclass(frozen=True)
class Reader:
    """Whom an event is delivered to: a user (None if that user is gone) and the credential's confinement."""

    subject: Subject | None
    confinement: Confinement | None = None

    @property
    def sees_everything(self) -> bool:
        return self.subject is not None and self.subject.admin and self.confinement is None


@dataclass(frozen=True)
class _Dir:
    parent_id: int | None
    mode: int
    uid: int
    gid: int


class Directories:
    """Directory permissions for judging events, read in one query per batch (see the module docstring)."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self.known: dict[int, _Dir] = {}
        #: Decisions of this batch: id(subject) -> directory id -> listable (subjects live as long as the batch)
        self._decided: dict[int, dict[int, bool]] = {}
        self.queries = 0  # for tests and benchmarks: how many lookups were made

    def needed(self, batch: list[StorageEvent]) -> list[int]:
        """Forget what the batch says has changed; the directories (ids) it names that must be read."""
        self._decided.clear()
        if len(self.known) > self.limit:
            self.known.clear()
        for ev in batch:
            if ev.is_dir and ev.kind in (EventKind.ATTRIB, EventKind.MOVE, EventKind.CREATE):
                self.known.pop(ev.inode_id, None)
        want: set[int] = set()
        complete: set[int] = set()  # directories whose whole chain up to the root is known
        for ev in batch:
            for d in (ev.parent_id, ev.old_parent_id):
                if d is not None and d not in complete and d not in want:
                    if self._chain_known(d):
                        complete.add(d)
                    else:
                        want.add(d)  # read with its ancestors: one forgotten above it counts too
        return sorted(want)

    def _chain_known(self, dir_id: int) -> bool:
        d = self.known.get(dir_id)
        for _ in range(100_000):
            if d is None:
                return False
            if d.parent_id is None:
                return True
            d = self.known.get(d.parent_id)
        return False

    def load(self, conn: Connection, ids: list[int]) -> None:
        """Read directories `ids` and every directory above them (one recursive query)."""
        if not ids:
            return
        self.queries += 1
        base = (
            select(inodes.c.id, inodes.c.parent_id, inodes.c.mode, inodes.c.uid, inodes.c.gid)
            .where(inodes.c.id.in_(ids))
            .cte("chain", recursive=True)
        )
        up = inodes.alias("up")
        chain = base.union(
            select(up.c.id, up.c.parent_id, up.c.mode, up.c.uid, up.c.gid).join(base, up.c.id == base.c.parent_id)
        )
        for row in conn.execute(select(chain)):
            self.known[int(row.id)] = _Dir(
                int(row.parent_id) if row.parent_id is not None else None, int(row.mode), int(row.uid), int(row.gid)
            )

    def _may(self, subject: Subject, want: int, d: _Dir) -> bool:
        return subject.may(want, mode=d.mode, uid=d.uid, gid=d.gid)

    def listable(self, subject: Subject, dir_id: int) -> bool:
        """r-x on the directory, --x on every one above it (unknown directories: no)."""
        decided = self._decided.get(id(subject))
        if decided is None:
            decided = self._decided[id(subject)] = {}
        found = decided.get(dir_id)
        if found is None:
            d = self.known.get(dir_id)
            found = decided[dir_id] = d is not None and self._may(subject, R, d) and self._searchable(subject, d)
        return found

    def _searchable(self, subject: Subject, d: _Dir) -> bool:
        seen = 0
        while True:
            if not self._may(subject, X, d):
                return False
            if d.parent_id is None:
                return True
            parent = self.known.get(d.parent_id)
            seen += 1
            if parent is None or seen > 10_000:  # unknown above, or a cycle: no
                return False
            d = parent


def may_read(reader: Reader, dirs: Directories, path: str, parent_id: int | None) -> bool:
    """Whether `reader` may see an event about the entry at `path` (a namespace path) in directory
    `parent_id`. THE check of event delivery: SSE channels and storage-feed triggers both use it."""
    if reader.subject is None:
        return False
    if reader.confinement is not None and not reader.confinement.allows(path):
        return False
    if parent_id is None or reader.subject.admin:
        return True
    return dirs.listable(reader.subject, parent_id)


def sides(reader: Reader, dirs: Directories, ev: StorageEvent) -> tuple[bool, bool]:
    """(old side seen, new side seen) of an event: for a rename, its source and destination; for any other
    event the old side is False and the new side is the event's one place."""
    if reader.sees_everything:
        return ev.kind is EventKind.MOVE and ev.old_path is not None, True
    new = may_read(reader, dirs, ev.path, ev.parent_id)
    old = False
    if ev.kind is EventKind.MOVE and ev.old_path is not None:
        old = may_read(reader, dirs, ev.old_path, ev.old_parent_id)
    return old, new


def view_seen(flag: str, old: bool, new: bool) -> bool:
    """Whether a reader who sees these sides of an event (`sides`) sees its inotify view `flag`: the source
    of a rename is its old side, IN_MOVE_SELF either side, everything else the event's (new) place."""
    if flag == "IN_MOVED_FROM":
        return old
    if flag == "IN_MOVE_SELF":
        return old or new
    return new


def one_side(ev: StorageEvent, old: bool, new: bool) -> StorageEvent | None:
    """The event as a reader who sees only these sides of it gets it where half a move cannot be expressed:
    a rename seen only at its source is a delete there, seen only at its destination a create there."""
    if ev.kind is not EventKind.MOVE:
        return ev if new else None
    if old and new:
        return ev
    if old:
        assert ev.old_path is not None
        return replace(
            ev, kind=EventKind.DELETE, path=ev.old_path, parent_id=ev.old_parent_id,
            name=ev.old_name or posixpath.basename(ev.old_path),
            old_path=None, old_parent_id=None, old_name=None, cookie=None,
        )  # fmt: skip
    if new:
        return replace(ev, kind=EventKind.CREATE, old_path=None, old_parent_id=None, old_name=None, cookie=None)
    return None
