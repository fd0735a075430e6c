"""The database `Sink` (base.Sink): a source's events into the event log with its position, once each.

`deliver` is one write transaction: check that this process still holds the source (its `generation`, see
store.py; else `Fenced`), leave out the events whose key the log already holds for this source (and repeats
within the batch), insert the rest in order, and store the position, the count received and the time of the
last new event. The unique index on (source, source_key) stands behind the check. The log's followers (the
functions controller, SSE channels, the Kafka relay) are woken by the commit as for any local change: on
SQLite through the writer's commit listeners, on PostgreSQL by the outbox's NOTIFY trigger.

An event of another system becomes an outbox row with inode 0 and no parent (it names no inode of this
namespace), `pnfsid` the remote's when it says one, `name` the last component of its path, and `detail` the
kind's detail plus "url" (where functions read the file).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, Connection, Text, any_, bindparam, func, insert, select, update

from headrace.db.engine import Database
from headrace.db.schema import events, sources
from headrace.events.model import EventKind
from headrace.events.sources.base import Fenced, RemoteEvent
from headrace.events.sources.store import SourceStore, now_us
from headrace.metrics import SOURCE_EVENTS

_COLUMNS = [c.name for c in events.columns if c.name != "offset"]
_INSERT = insert(events).values({c: bindparam(c) for c in _COLUMNS})
#: Keys looked up per statement (well under either database's limit on bound parameters).
_KEYS_PER_QUERY = 500


def event_row(source: str, ev: RemoteEvent, received: int) -> dict[str, Any]:
    """The outbox row of `ev` from `source`."""
    detail: dict[str, Any] = dict(ev.detail)
    if ev.url is not None:
        detail["url"] = ev.url
    if ev.time is not None:  # the log's own time is when it arrived: retention and time lookups need it in order
        detail["remoteTime"] = ev.time
    pnfsid = detail.get("pnfsid") or detail.get("pnfsId") or ""
    path = ev.path if ev.path.startswith("/") else "/" + ev.path
    return {
        "time": received,
        "kind": ev.kind.value,
        "is_dir": ev.is_dir,
        "inode_id": 0,
        "pnfsid": str(pnfsid)[:36],
        "path": path,
        "parent_id": None,
        "name": posixpath.basename(path.rstrip("/")) or None,
        "old_path": ev.old_path,
        "old_parent_id": None,
        "old_name": (posixpath.basename(ev.old_path.rstrip("/")) or None) if ev.old_path else None,
        "cookie": None,
        "size": ev.size,
        "detail": json.dumps(detail, separators=(",", ":"), default=str) if detail else None,
        "cause": None,
        "username": None,
        "source": source,
        "source_key": ev.key,
    }


def row_event(row: Any) -> RemoteEvent:
    """The `RemoteEvent` an outbox row of a source was made of (`event_row`'s inverse)."""
    detail: dict[str, Any] = json.loads(row.detail) if row.detail else {}
    url = detail.pop("url", None)
    remote_time = detail.pop("remoteTime", None)
    return RemoteEvent(
        key=row.source_key,
        kind=EventKind(row.kind),
        path=row.path,
        is_dir=bool(row.is_dir),
        size=row.size,
        old_path=row.old_path,
        time=remote_time,
        url=url,
        detail=detail,
    )


#: PostgreSQL: the keys as one array parameter (`= ANY(:keys)`): a statement of 500 bound parameters costs
#: psycopg more to prepare than the database takes to answer it.
_KNOWN_PG = select(events.c.source_key).where(
    events.c.source == bindparam("source"), events.c.source_key == any_(bindparam("keys", type_=ARRAY(Text)))
)


def known_keys(conn: Connection, source: str, keys: list[str]) -> set[str]:
    """Those of `keys` the log already holds for `source`."""
    found: set[str] = set()
    if conn.dialect.name == "postgresql":
        found.update(r.source_key for r in conn.execute(_KNOWN_PG, {"source": source, "keys": keys}))
        return found
    for i in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = keys[i : i + _KEYS_PER_QUERY]
        q = select(events.c.source_key).where(events.c.source == source, events.c.source_key.in_(chunk))
        found.update(r.source_key for r in conn.execute(q))
    return found


def insert_new_in(conn: Connection, source: str, batch: Sequence[RemoteEvent]) -> int:
    """In the caller's transaction: the events of `batch` not yet in the log for `source`; how many."""
    if not batch:
        return 0
    known = known_keys(conn, source, list(dict.fromkeys(ev.key for ev in batch)))
    received = now_us()
    rows: list[dict[str, Any]] = []
    for ev in batch:
        if ev.key in known:
            continue
        known.add(ev.key)  # a repeat within the batch enters once too
        rows.append(event_row(source, ev, received))
    if rows:
        conn.execute(_INSERT, rows)
    return len(rows)


class DatabaseSink:
    """The sink of source `name` for the holder of `generation` (None: unfenced, for pushes through the API,
    which store no position)."""

    def __init__(self, db: Database, name: str, generation: int | None) -> None:
        self.db = db
        self.name = name
        self.generation = generation

    def _check(self, conn: Connection) -> dict[str, Any]:
        try:
            return SourceStore.check_generation(conn, self.name, self.generation)
        except LookupError:
            raise Fenced(f"The source {self.name!r} was deleted") from None
        except PermissionError:
            raise Fenced(f"The source {self.name!r} is run by another controller now") from None

    async def position(self) -> str | None:
        def read() -> str | None:
            with self.db.reader.connect() as conn:
                found: str | None = self._check(conn)["position"]
                return found

        return await self.db.read(read)

    async def deliver(self, events: Sequence[RemoteEvent], position: str | None) -> int:
        batch = list(events)
        store_position = self.generation is not None

        def write() -> int:
            with self.db.engine.begin() as conn:
                self._check(conn)
                new = insert_new_in(conn, self.name, batch)
                values: dict[str, Any] = {}
                if store_position:
                    values["position"] = position
                if new:
                    values.update(received=sources.c.received + new, last_event=now_us())
                    self.db.event_writes += 1  # before the commit: a follower that sees it unchanged may skip
                if values:
                    conn.execute(update(sources).where(sources.c.name == self.name).values(**values))
                return new

        new = await self.db.write(write)
        if new:
            SOURCE_EVENTS.labels(self.name).inc(new)
        return new

    async def state(self, key: str) -> Any:
        def read() -> Any:
            with self.db.reader.connect() as conn:
                return self._check(conn)["state"].get(key)

        return await self.db.read(read)

    async def set_state(self, key: str, value: Any) -> None:
        def write() -> None:
            with self.db.engine.begin() as conn:
                current = self._check(conn)["state"]
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value
                text = json.dumps(current, separators=(",", ":"), default=str) if current else None
                conn.execute(update(sources).where(sources.c.name == self.name).values(state=text))

        await self.db.write(write)

    async def mark(self) -> int:
        def read() -> int:
            with self.db.reader.connect() as conn:
                # the whole log's last offset (its primary key: no scan of this source's events): every
                # event this source delivered is at or below it, every one it delivers later above it
                return int(conn.execute(select(func.max(events.c.offset))).scalar() or 0)

        return await self.db.read(read)

    async def since(self, mark: int) -> list[RemoteEvent]:
        def read() -> list[RemoteEvent]:
            with self.db.reader.connect() as conn:
                q = select(events).where(events.c.source == self.name, events.c.offset > mark).order_by(events.c.offset)
                return [row_event(r) for r in conn.execute(q)]

        return await self.db.read(read)
