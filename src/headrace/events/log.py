"""The event log: the outbox read as an ordered, offset-addressed sequence, with readers woken on commit.

Offsets are the outbox's own primary key: monotonically increasing, never reused (SQLite AUTOINCREMENT, a
PostgreSQL sequence), and committed in offset order (one writer at a time: see headrace.db.engine), so a
follower that has read up to an offset has seen every event below it. Followers are woken by the database's
`EventSignal`: on SQLite when a write transaction of this process commits, commits made by other processes
being seen within `poll` seconds; on PostgreSQL by LISTEN/NOTIFY, whichever process committed, with `poll`
as the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from sqlalchemy import bindparam, delete, func, select

from headrace.db import driver
from headrace.db.engine import Database
from headrace.db.schema import events
from headrace.events.model import EventKind, StorageEvent

_HEAD = select(func.coalesce(func.max(events.c.offset), 0))


# Built once: every follower reads after every commit, and a statement built per read cost 0.2 ms of CPU
# more than this one (SQLAlchemy caches a statement object's SQL), a third of reading one event.
_READ_FROM = (
    select(events).where(events.c.offset >= bindparam("offset")).order_by(events.c.offset).limit(bindparam("limit"))
)


def _event(row: Any) -> StorageEvent:
    m = row._mapping
    return StorageEvent(
        offset=m["offset"],
        time=m["time"],
        kind=EventKind(m["kind"]),
        is_dir=bool(m["is_dir"]),
        inode_id=m["inode_id"],
        pnfsid=m["pnfsid"],
        path=m["path"],
        parent_id=m["parent_id"],
        name=m["name"],
        old_path=m["old_path"],
        old_parent_id=m["old_parent_id"],
        old_name=m["old_name"],
        cookie=m["cookie"],
        size=m["size"],
        detail=json.loads(m["detail"]) if m["detail"] else None,
        cause=m["cause"],
        username=m["username"],
        source=m["source"],
        source_key=m["source_key"],
    )


class EventLog:
    def __init__(self, db: Database, *, poll: float = 1.0) -> None:
        self.db = db
        self.poll = poll
        self._committed = asyncio.Event()
        self._read_at: dict[int, int] = {}  # offset -> db.event_epoch when a read past it found nothing
        self._head_at: tuple[int, int, float] | None = None  # (db.event_epoch, head, loop time) of the last read
        db.events.subscribe(self.notify)

    def read_from(self, offset: int, limit: int = 1000) -> list[StorageEvent]:
        """Up to `limit` events with offset >= `offset`, in order. Blocking."""
        with self.db.reader.connect() as conn:
            return [_event(r) for r in conn.execute(_READ_FROM, {"offset": offset, "limit": limit})]

    def head(self) -> int:
        """The newest offset (0 for an empty log). Blocking."""
        with self.db.reader.connect() as conn:
            return self.head_in(conn)

    @staticmethod
    def head_in(conn: Any) -> int:
        """`head` on the caller's reader connection, on the driver (every follower asks after every commit)."""
        cur = driver.execute(conn, "log-head", lambda: _HEAD, {})
        try:
            return int(cur.fetchone()[0])
        finally:
            cur.close()

    def tail(self) -> int:
        """The oldest offset still held (head + 1 for an empty log). Blocking."""
        with self.db.reader.connect() as conn:
            oldest = conn.execute(select(func.min(events.c.offset))).scalar_one()
            if oldest is not None:
                return int(oldest)
            return int(conn.execute(select(func.coalesce(func.max(events.c.offset), 0))).scalar_one()) + 1

    def first_after(self, time_us: int) -> int | None:
        """The offset of the oldest event written at or after `time_us` (None if there is none). Blocking."""
        with self.db.reader.connect() as conn:
            q = select(func.min(events.c.offset)).where(events.c.time >= time_us)
            found = conn.execute(q).scalar_one()
            return None if found is None else int(found)

    def trim_in(self, conn: Any, below: int, batch: int) -> int:
        """Delete up to `batch` of the oldest events with offsets below `below`; how many went."""
        oldest = conn.execute(select(func.min(events.c.offset))).scalar_one()
        if oldest is None or oldest >= below:
            return 0
        result = conn.execute(delete(events).where(events.c.offset < min(below, int(oldest) + batch)))
        return int(result.rowcount or 0)

    def notify(self) -> None:
        """Wake every waiter (called on the event loop when events may have been committed)."""
        self._committed.set()
        self._committed = asyncio.Event()

    async def next_batch(self, offset: int, limit: int, timeout: float, *, inline: int = 0) -> list[StorageEvent]:
        """Events after `offset` (at most `limit`), waiting up to `timeout` for the first to be committed.
        One read per wake-up: the cheapest way for a follower to keep up. With `inline` and a local log
        (SQLite), up to `inline` events are read on the loop itself, without the hand-off to a reader thread
        and back (for a follower whose latency counts: a read of a few fresh rows from SQLite's page cache
        takes less than the two hand-offs, which on a busy process wait for the GIL)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last_poll = loop.time()
        self.db.events.watch()
        while True:
            committed = self._committed  # taken before reading: no commit can slip between
            epoch = self.db.event_epoch
            known_empty = self.db.events.local and self._read_at.get(offset) == epoch
            if not known_empty or loop.time() - last_poll >= self.poll:
                last_poll = loop.time()
                if inline and self.db.events.local:
                    batch = self.read_from(offset + 1, min(limit, inline))
                else:
                    batch = await self.db.read(self.read_from, offset + 1, limit)
                if batch:
                    return batch
                self._read_at[offset] = epoch  # nothing past `offset` as of this epoch
                if len(self._read_at) > 64:
                    self._read_at.clear()
            left = deadline - loop.time()
            if left <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.poll, left)):
                    await committed.wait()

    async def _head_now(self, now: float) -> int:
        """The head, read again only when this process has committed events since the last read (the event
        epoch, with one SQLite writer) or the poll interval has passed (other processes' commits); on
        PostgreSQL, on every call (a follower is woken by a notification of any process's commit)."""
        epoch = self.db.event_epoch
        cached = self._head_at
        if self.db.events.local and cached is not None and cached[0] == epoch and now - cached[2] < self.poll:
            return cached[1]
        head = await self.db.read_short(self.head_in)
        self._head_at = (epoch, head, now)
        return head

    async def wait_beyond(self, offset: int, timeout: float) -> int:
        """Wait until the log holds an event past `offset` or `timeout` passes; the head either way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.db.events.watch()
        while True:
            committed = self._committed  # taken before reading the head: no commit can slip between
            head = await self._head_now(loop.time())
            left = deadline - loop.time()
            if head > offset or left <= 0:
                return head
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(self.poll, left)):
                    await committed.wait()
