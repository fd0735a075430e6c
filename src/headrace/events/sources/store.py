"""The `sources` table: each source's configuration and readers (the API writes them), and what running it
leaves there (position, kind state, the lease of the controller that runs it, counters, the last error).

Blocking calls on a connection or the database's engines; callers run them through `Database.read/write`.
A source is run by one controller at a time: `take` gives it to a holder for `LEASE_US` and bumps its
`generation`; every write of the running source names that generation (`sink.py`), so a holder that lost it
(another took over after its lease ran out, or the same controller restarted) is refused (`base.Fenced`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, or_, select, update

from headrace.auth.subject import Subject
from headrace.db.engine import Database
from headrace.db.schema import sources

#: How long a lease lasts without being renewed (µs); the runner renews it every few seconds.
LEASE_US = 20_000_000


def now_us() -> int:
    return time.time_ns() // 1000


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True)
class Readers:
    """Who, besides administrators, may trigger on a source's events and read its files."""

    users: tuple[str, ...] = ()
    groups: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"users": list(self.users), "groups": list(self.groups)}

    @classmethod
    def parse(cls, raw: Any) -> Readers:
        """From `{"users": [names], "groups": [gids]}` (ValueError with the sentence a client reads)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError('readers must be an object: {"users": [...], "groups": [...]}')
        unknown = sorted(set(raw) - {"users", "groups"})
        if unknown:
            raise ValueError(f"Unknown readers key {unknown[0]!r} (known: users, groups)")
        users = raw.get("users") or []
        groups = raw.get("groups") or []
        if not isinstance(users, list) or not all(isinstance(u, str) and u for u in users):
            raise ValueError("readers.users must be a list of user names")
        out_groups: list[int] = []
        if not isinstance(groups, list):
            raise ValueError("readers.groups must be a list of group ids")
        for g in groups:
            if isinstance(g, bool) or not isinstance(g, int | str) or not str(g).isdigit():
                raise ValueError(f"readers.groups must be a list of numeric group ids, not {g!r}")
            out_groups.append(int(g))
        return cls(tuple(dict.fromkeys(users)), tuple(dict.fromkeys(out_groups)))

    def admit(self, subject: Subject | None) -> bool:
        """Whether `subject` may read the source: an administrator, a reader by name or by one of their groups."""
        if subject is None:
            return False
        return subject.admin or subject.username in self.users or any(g in self.groups for g in subject.gids)


@dataclass(frozen=True)
class SourceRow:
    name: str
    kind: str
    config: dict[str, Any]
    readers: Readers
    created: int
    updated: int
    version: int
    position: str | None = None
    state: dict[str, Any] = field(default_factory=dict)
    holder: str | None = None
    lease_until: int | None = None
    generation: int = 0
    received: int = 0
    last_event: int | None = None
    last_error: str | None = None
    last_error_time: int | None = None


def _row(r: Any) -> SourceRow:
    m = r._mapping
    return SourceRow(
        name=m["name"],
        kind=m["kind"],
        config=json.loads(m["config"]),
        readers=Readers.parse(json.loads(m["readers"])),
        created=int(m["created"]),
        updated=int(m["updated"]),
        version=int(m["version"]),
        position=m["position"],
        state=json.loads(m["state"]) if m["state"] else {},
        holder=m["holder"],
        lease_until=m["lease_until"],
        generation=int(m["generation"]),
        received=int(m["received"]),
        last_event=m["last_event"],
        last_error=m["last_error"],
        last_error_time=m["last_error_time"],
    )


class SourceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading (reader connections) ------------------------------------------------------------------------

    def all(self) -> list[SourceRow]:
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(select(sources).order_by(sources.c.name))]

    def get(self, name: str) -> SourceRow | None:
        with self.db.reader.connect() as conn:
            found = conn.execute(select(sources).where(sources.c.name == name)).first()
            return _row(found) if found is not None else None

    def readers(self, names: set[str] | None = None) -> dict[str, Readers]:
        """The readers of the named sources (all with None); a source not in the answer does not exist."""
        q = select(sources.c.name, sources.c.readers)
        if names is not None:
            q = q.where(sources.c.name.in_(sorted(names)))
        with self.db.reader.connect() as conn:
            return {r.name: Readers.parse(json.loads(r.readers)) for r in conn.execute(q)}

    def stamp(self) -> list[tuple[str, int]]:
        """(name, version) of every source: what the runner compares to see that something changed."""
        with self.db.reader.connect() as conn:
            return [(r.name, int(r.version)) for r in conn.execute(select(sources.c.name, sources.c.version))]

    # -- the API's writes --------------------------------------------------------------------------------------

    def put(self, name: str, kind: str, config: Mapping[str, Any], readers: Readers) -> bool:
        """Create or replace a source's configuration (True: created). A replaced one keeps its position and
        state only if its kind stays the same; its version is bumped so that the runner restarts it."""
        now = now_us()
        with self.db.engine.begin() as conn:
            old = conn.execute(select(sources.c.kind, sources.c.version).where(sources.c.name == name)).first()
            values = {"kind": kind, "config": _json(dict(config)), "readers": _json(readers.to_json()), "updated": now}
            if old is None:
                conn.execute(
                    insert(sources).values(name=name, created=now, version=1, generation=0, received=0, **values)
                )
                return True
            if old.kind != kind:  # another kind's position would mean nothing to this one
                values.update(position=None, state=None)
            values.update(last_error=None, last_error_time=None)
            conn.execute(update(sources).where(sources.c.name == name).values(version=int(old.version) + 1, **values))
            return False

    def delete(self, name: str) -> bool:
        with self.db.engine.begin() as conn:
            return bool(conn.execute(delete(sources).where(sources.c.name == name)).rowcount)

    # -- the runner's lease ------------------------------------------------------------------------------------

    def take(self, name: str, holder: str) -> int | None:
        """Give `name` to `holder` if its lease is free, expired or already the holder's (a restarted controller
        takes its own back at once): the new generation, or None if another holds it."""
        now = now_us()
        with self.db.engine.begin() as conn:
            row = conn.execute(
                select(sources.c.generation).where(
                    sources.c.name == name,
                    or_(sources.c.holder.is_(None), sources.c.holder == holder, sources.c.lease_until < now),
                )
            ).first()
            if row is None:
                return None
            generation = int(row.generation) + 1
            conn.execute(
                update(sources)
                .where(sources.c.name == name)
                .values(holder=holder, lease_until=now + LEASE_US, generation=generation)
            )
            return generation

    def renew(self, held: Mapping[str, int], holder: str) -> set[str]:
        """Extend the leases of the sources `held` (name -> generation); those no longer held (fenced, deleted)."""
        lost: set[str] = set()
        until = now_us() + LEASE_US
        with self.db.engine.begin() as conn:
            for name, generation in held.items():
                done = conn.execute(
                    update(sources)
                    .where(sources.c.name == name, sources.c.generation == generation, sources.c.holder == holder)
                    .values(lease_until=until)
                ).rowcount
                if not done:
                    lost.add(name)
        return lost

    def release(self, name: str, generation: int) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(sources)
                .where(sources.c.name == name, sources.c.generation == generation)
                .values(holder=None, lease_until=None)
            )

    def record_error(self, name: str, generation: int, error: str) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(sources)
                .where(sources.c.name == name, sources.c.generation == generation)
                .values(last_error=error[:4000], last_error_time=now_us())
            )

    # -- the sink's -------------------------------------------------------------------------------------------

    @staticmethod
    def check_generation(conn: Connection, name: str, generation: int | None) -> dict[str, Any]:
        """The source's position and state for a write of `generation` (None: unfenced, a push through the
        API); raises LookupError when the source is gone, PermissionError when another holds it."""
        row = conn.execute(
            select(sources.c.generation, sources.c.state, sources.c.position).where(sources.c.name == name)
        ).first()
        if row is None:
            raise LookupError(name)
        if generation is not None and int(row.generation) != generation:
            raise PermissionError(name)
        return {"state": json.loads(row.state) if row.state else {}, "position": row.position}
