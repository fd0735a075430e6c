"""The event log is read in commit order with no offset skipped, whatever writes it: two connections, two
processes (on SQLite and on PostgreSQL); and a follower in one process is woken promptly by events another
process commits (PostgreSQL's LISTEN/NOTIFY; SQLite finds those by polling)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from headrace.auth.subject import ROOT
from headrace.db.engine import Database
from headrace.events.log import EventLog
from headrace.storage.namespace import Namespace


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, durable=False)
    database.migrate()
    Namespace(database).bootstrap()
    yield database
    database.close()


def all_offsets(log: EventLog, after: int) -> list[int]:
    return [e.offset for e in log.read_from(after + 1, limit=1_000_000)]


def test_a_later_offset_never_commits_before_an_earlier_one(db: Database, db_url: str) -> None:
    """Writer A inserts an event and holds its transaction open; writer B, on a connection of its own,
    inserts one too. B must not commit (its offset is the later one) until A has: otherwise a follower that
    read B's offset would step past A's and never see it."""
    other = Database(db_url, durable=False)  # another writer's engine and connections
    ns_a, ns_b = Namespace(db), Namespace(other)
    log = EventLog(db)
    start = log.head()
    root = ns_a.stat("/")
    a_inserted, release_a, b_committed = threading.Event(), threading.Event(), threading.Event()

    def writer_a() -> None:
        with db.engine.begin() as conn:
            ns_a.record_read_in(conn, root, ROOT)
            a_inserted.set()
            release_a.wait(10)

    def writer_b() -> None:
        with other.engine.begin() as conn:
            ns_b.record_read_in(conn, root, ROOT)
        b_committed.set()

    a = threading.Thread(target=writer_a)
    a.start()
    assert a_inserted.wait(10)
    b = threading.Thread(target=writer_b)
    b.start()
    try:
        committed_early = b_committed.wait(1.0)
        seen = all_offsets(log, start)  # a follower reading while A is still open
        cursor = seen[-1] if seen else start
    finally:
        release_a.set()
        a.join(10)
        b.join(10)
        other.close()
    seen += all_offsets(log, cursor)
    assert seen == all_offsets(log, start)  # the follower skipped none
    assert len(seen) == 4  # OPEN and CLOSE_NOWRITE of each listing
    assert not committed_early, "a later writer committed while an earlier one held uncommitted events"


WRITER = textwrap.dedent(
    """
    import sys, threading
    from headrace.auth.subject import ROOT
    from headrace.db.engine import Database
    from headrace.storage.namespace import Namespace

    url, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    db = Database(url, durable=False)
    ns = Namespace(db)
    root = ns.stat("/")

    def work(thread):
        for i in range(count):
            if i % 4 == 0:
                ns.mkdir(f"/{tag}-{thread}-{i}", ROOT)
            else:
                with db.engine.begin() as conn:
                    ns.record_read_in(conn, root, ROOT)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    db.close()
    """
)


def test_a_follower_sees_every_offset_of_two_writing_processes_once_in_order(db: Database, db_url: str) -> None:
    log = EventLog(db, poll=0.05)
    start = log.head()
    count = 120  # transactions per thread; 4 threads per process, 2 processes
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, db_url, tag, str(count)], stderr=subprocess.PIPE)
        for tag in ("p", "q")
    ]

    async def follow() -> list[int]:
        got: list[int] = []
        offset = start
        while any(w.poll() is None for w in writers):
            batch = await log.next_batch(offset, 1000, timeout=0.2)
            got += [e.offset for e in batch]
            offset = got[-1] if got else offset
        await asyncio.sleep(0.1)
        got += [e.offset for e in await log.next_batch(offset, 1_000_000, timeout=0.5)]
        return got

    got = asyncio.run(follow())
    for w in writers:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err.decode()
    stored = all_offsets(log, start)
    # Each thread's transactions: mkdir (CREATE) every 4th, listings (OPEN + CLOSE_NOWRITE) otherwise.
    assert len(stored) == 2 * 4 * (count // 4 + 2 * (count - count // 4))
    assert got == stored  # each offset once, in order, none skipped


FOREIGN_WRITE = textwrap.dedent(
    """
    import sys
    from headrace.auth.subject import ROOT
    from headrace.db.engine import Database
    from headrace.storage.namespace import Namespace

    db = Database(sys.argv[1], durable=False)
    Namespace(db).mkdir("/from-another-process", ROOT)
    db.close()
    """
)


@pytest.mark.postgresql_only("SQLite has no cross-process notification: other processes' events are polled for")
def test_a_follower_is_woken_by_another_process_commit(db: Database, db_url: str) -> None:
    log = EventLog(db, poll=60.0)  # so long that only a notification can wake the follower in time

    async def follow() -> tuple[float, list[str]]:
        head = await db.read(log.head)
        waiting = asyncio.create_task(log.next_batch(head, 10, timeout=30.0))
        await asyncio.sleep(0)
        assert await asyncio.to_thread(db.events.listening.wait, 10)  # type: ignore[attr-defined]
        await asyncio.sleep(0.2)  # the follower has read (nothing) and waits
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", FOREIGN_WRITE, db_url)
        assert await proc.wait() == 0
        committed = time.monotonic()
        batch = await waiting
        return time.monotonic() - committed, [f"{e.kind.value} {e.path}" for e in batch]

    lag, seen = asyncio.run(follow())
    assert seen == ["CREATE /from-another-process"]
    assert lag < 30.0, f"woken {lag:.1f} s after the other process committed"
