"""Creating the database engine, migrating it, and running blocking database work off the event loop.

SQLite is opened in WAL mode and written by one thread (it allows one writer anyway; one thread avoids
"database is locked" retries); reads run on a few more threads.

PostgreSQL (psycopg 3; a plain `postgresql://` URL means it) gets the same one-writer-at-a-time discipline
across all processes on one database: every write transaction first takes a transaction-scoped advisory lock
(`WRITE_LOCK`), the counterpart of SQLite's BEGIN IMMEDIATE. It is what keeps the event log gap-free: an
event's offset comes from a sequence when its row is inserted, and without the lock a transaction that took
offset 11 could commit before one that took 10, so that a follower that had read up to 11 would never see
10. With it, offsets are taken and committed in one order. It also gives the namespace's check-then-write
transactions (READ COMMITTED: each statement sees every commit made before it) the serial schedule they
were written for, and, as every writer takes it first, it cannot deadlock with row locks. Reads take no
lock and run in autocommit mode (each statement sees a consistent snapshot; no BEGIN/ROLLBACK round trips).
Followers in any process learn of new events from `NOTIFY headrace_events`, sent by a trigger on the
outbox in the inserting transaction (migration 0003); see `EventSignal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError
from sqlalchemy.pool import ConnectionPoolEntry

from headrace.config import restrict_mode
from headrace.db import driver
from headrace.db.handoff import Handoff
from headrace.errors import BadRequest

T = TypeVar("T")

log = logging.getLogger("headrace.db")

MIGRATIONS = Path(__file__).parent / "migrations"

#: The key of the PostgreSQL advisory lock every write transaction holds until it ends ("headrac").
WRITE_LOCK = 0x68656164726163
#: The channel the outbox trigger notifies on every insert into `events` (PostgreSQL).
EVENTS_CHANNEL = "headrace_events"


def sqlalchemy_url(url: str) -> str:
    """`url` as SQLAlchemy takes it: a plain postgresql:// (or postgres://) URL means the psycopg 3 driver."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def private_sqlite_files(url: str) -> None:
    """A SQLite database (with the macaroon root key, key hashes, the pool secret) readable by this user
    alone: the file is made 0600 before SQLite first opens it (SQLite gives its -wal and -shm files the
    database file's mode), and an existing one, with its -wal and -shm, is tightened to 0600."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    path = Path(name)
    with contextlib.suppress(FileExistsError, FileNotFoundError):  # exists already; or no directory for it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for suffix in ("", "-wal", "-shm", "-journal"):
        restrict_mode(Path(f"{path}{suffix}"), 0o600)


#: How long a connection retries switching a database to WAL while other processes hold it (busy_timeout's).
WAL_SWITCH_WAIT = 30.0


def wal_mode(cur: Any) -> None:
    """`PRAGMA journal_mode=WAL` on a new SQLite connection. Switching a new database to WAL needs it to
    itself, and SQLite answers "database is locked" at once, without waiting out busy_timeout, when another
    process holds it then (roles starting together on a new database: tests/test_concurrent_start.py); the
    switch is retried until it is done, for as long as a writer waits for its lock."""
    deadline = time.monotonic() + WAL_SWITCH_WAIT
    pause = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def make_engine(url: str, *, durable: bool = True, writer: bool = True, pool_size: int = 8) -> Engine:
    """An engine for `url`: on SQLite, WAL with synchronous=FULL (durable) or NORMAL; on PostgreSQL,
    synchronous_commit on (durable) or off.

    A writer engine's transactions take the write lock up front (SQLite: BEGIN IMMEDIATE, so that two
    transactions never deadlock upgrading a read lock; PostgreSQL: `WRITE_LOCK`). Reader engines take none.
    """
    url = sqlalchemy_url(url)
    if is_sqlite(url):
        private_sqlite_files(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=8,
            max_overflow=8,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
            # pysqlite's own transaction handling is disabled; the "begin" hook below issues BEGIN.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            wal_mode(cur)
            cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    sync = "" if durable else "-c synchronous_commit=off"
    if not writer:
        return create_engine(
            url,
            isolation_level="AUTOCOMMIT",
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"options": sync} if sync else {},
        )
    # A writer waits for the write lock at most as long as a SQLite writer waits for its (busy_timeout).
    engine = create_engine(
        url,
        isolation_level="READ COMMITTED",
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"options": f"-c lock_timeout=30000 {sync}".strip()},
    )

    @event.listens_for(engine, "begin")
    def _write_lock(conn: Any) -> None:
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK})")

    return engine


#: The largest integer either database stores or compares (BIGINT; SQLite's INTEGER): SQLite's driver raises
#: OverflowError for a larger one, which `refused` answers; a check before a response starts names the bound.
MAX_INTEGER = 2**63 - 1


def refused(exc: DataError | OverflowError) -> BadRequest:
    """A value the database cannot store is the request's fault: 400, not 500. PostgreSQL refuses a string
    longer than its column, a NUL character in text, an integer out of its column's range; SQLite takes them,
    but its driver cannot bind an integer past 64 bits (OverflowError)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return BadRequest(f"The database cannot store a value of this request: {reason}")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class EventSignal(Protocol):
    """How this process's log followers are woken when events may have been committed."""

    #: True when only this process's own commits wake followers promptly (others' are found by polling): a
    #: follower may then skip a read while `Database.event_epoch` is unchanged (SQLite, one writer thread).
    local: bool

    def subscribe(self, wake: Callable[[], None]) -> None:
        """Call `wake()` on the event loop whenever events may have been committed."""

    def watch(self) -> None:
        """Start listening, on the running event loop, if not started yet (idempotent, cheap)."""

    def close(self) -> None: ...


class LocalEventSignal:
    """SQLite: followers are woken after this process's writes commit (`Database.commit_listeners`); commits
    of other processes are found by polling."""

    local = True

    def __init__(self, db: Database) -> None:
        self.db = db

    def subscribe(self, wake: Callable[[], None]) -> None:
        self.db.commit_listeners.append(wake)

    def watch(self) -> None:
        pass

    def close(self) -> None:
        pass


class PostgresEventSignal:
    """PostgreSQL: a thread LISTENs on `EVENTS_CHANNEL` on a connection of its own and wakes the followers
    on the event loop for every notification, whichever process committed the events. Notifications are
    delivered only after the commit, so a follower that reads after waking sees the events. While the
    connection is down (it is re-opened every second), followers fall back to polling."""

    local = False

    def __init__(self, url: str) -> None:
        self._conninfo = make_url(sqlalchemy_url(url)).set(drivername="postgresql").render_as_string(False)
        self._wakes: list[Callable[[], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._pending = False  # a wake-up is scheduled on the loop and has not run yet
        #: Set once the first LISTEN is in place (tests wait for it).
        self.listening = threading.Event()

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._wakes.append(wake)

    def watch(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the first loop, or a new one (a test's next asyncio.run)
            self._loop, self._pending = loop, False
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._listen, name="db-listen", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self.listening.set()
                    self._wake()  # events committed while no one listened
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake()
            except Exception as exc:  # the database went away: poll until it is back
                if not self._stop.is_set():
                    log.warning("event notifications: %s; retrying in 1 s", exc)
                    self._stop.wait(1.0)

    def _wake(self) -> None:
        loop = self._loop
        if loop is None or self._pending:
            return
        self._pending = True
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # the loop is closed
            self._pending = False

    def _wake_all(self) -> None:
        self._pending = False
        for wake in self._wakes:
            wake()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


class GroupCommit:
    """Many small write transactions run as one: each call gets a savepoint of its own, so it succeeds or
    fails alone (its change and its events together, invariant 1), and all calls that arrive while a
    transaction is being written share the next commit: one WAL fsync for a burst instead of one each.
    A caller still returns only after its call has committed."""

    MAX_BATCH = 256
    #: The most items one posted call gathers (see `post`).
    MAX_POSTED = 1024

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Each writer thread's connection, kept between batches (a checkout per batch cost more than a
        #: savepoint), and all of them, for `close`.
        self._local = threading.local()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in a savepoint of the next group transaction; its result."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, kwargs, done))
        self._start()
        return await done

    def post(self, fn: Callable[[Any, list[Any]], None], item: Any) -> None:
        """Queue `item` for `fn(conn, items)` in the next group transaction, without waiting for it: for
        records that need not hold up a response (read events). Queued in order with every other call, so
        they commit in the order they were posted relative to this process's changes; consecutive posts for
        the same `fn` share one call (one savepoint, one multi-row insert). A failure is logged. Posted
        items not yet written when the database is closed are written by `Database.close`."""
        last = self._pending[-1] if self._pending else None
        if last is not None and last[3] is None and last[0] is fn and len(last[1][0]) < self.MAX_POSTED:
            last[1][0].append(item)
        else:
            self._pending.append((fn, ([item],), {}, None))
        self._start()

    def _start(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            try:
                outcomes = await self.db.write(self._apply, [(fn, a, kw) for fn, a, kw, _ in batch])
            except BaseException as exc:  # the commit itself failed: nothing of the batch happened
                for fn, *_, done in batch:
                    if done is None:
                        log.error("posted %s not written: %s", getattr(fn, "__name__", fn), exc)
                    elif not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("write cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (fn, *_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if done is None:
                    if not ok:
                        log.error("posted %s failed: %s", getattr(fn, "__name__", fn), value)
                elif not done.done():
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)

    def write_posted(self) -> None:
        """Write the posted items no flush has taken yet, on this thread (blocking; at close)."""
        posted = [(fn, a, kw) for fn, a, kw, done in self._pending if done is None]
        self._pending = [p for p in self._pending if p[3] is not None]
        if posted:
            for ok, value in self._apply(posted):
                if not ok:
                    log.error("posted write failed at close: %s", value)

    def _apply(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]) -> list[tuple[bool, Any]]:
        # On both databases a failed statement spoils only its savepoint (PostgreSQL's "current transaction
        # is aborted" state is cleared by rolling back to it), so the other calls of the batch still commit.
        # The savepoints are plain SQL on the driver (`headrace.db.driver`): SQLAlchemy's begin_nested cost
        # about as much CPU as the call it wrapped.
        outcomes: list[tuple[bool, Any]] = []
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.invalidated:
            conn = self._local.conn = self.db.engine.connect()
            with self._conns_lock:
                self._conns.append(conn)
        try:
            with conn.begin():
                self._apply_in(conn, calls, outcomes)
        except BaseException:
            self._local.conn = None  # whatever went wrong, the next batch starts on a fresh connection
            with contextlib.suppress(Exception):
                conn.close()
            raise
        return outcomes

    @staticmethod
    def _apply_in(
        conn: Any,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        outcomes: list[tuple[bool, Any]],
    ) -> None:
        for fn, args, kwargs in calls:
            driver.raw(conn, "SAVEPOINT headrace_group")
            try:
                value = fn(conn, *args, **kwargs)
            except (DataError, OverflowError) as exc:
                driver.raw(conn, "ROLLBACK TO SAVEPOINT headrace_group")
                outcomes.append((False, refused(exc)))
            except Exception as exc:
                driver.raw(conn, "ROLLBACK TO SAVEPOINT headrace_group")
                outcomes.append((False, exc))
            else:
                driver.raw(conn, "RELEASE SAVEPOINT headrace_group")
                outcomes.append((True, value))

    def close(self) -> None:
        """Close the writer threads' connections (after the writers have stopped)."""
        with self._conns_lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()


class Database:
    """An engine plus the threads that run blocking database calls for async callers."""

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = sqlalchemy_url(url)
        self.is_sqlite = is_sqlite(self.url)
        # PostgreSQL: the write lock serialises writers anyway; a few threads let the next transaction be
        # ready the moment the lock is free, and cost a connection each.
        writers, readers = (1, 4) if self.is_sqlite else (4, 8)
        self.engine = make_engine(self.url, durable=durable, pool_size=writers)
        self.reader = make_engine(self.url, durable=durable, writer=False, pool_size=readers)
        self._writer = Handoff(writers, "db-write")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="db-read")
        self.group = GroupCommit(self)
        #: Called on the event loop after every write through `write` (and so `group`) has committed.
        self.commit_listeners: list[Callable[[], None]] = []
        #: How log followers learn of committed events (see `EventSignal`).
        self.events: EventSignal = LocalEventSignal(self) if self.is_sqlite else PostgresEventSignal(self.url)
        #: Event inserts in this process (bumped by the namespace inside a transaction, before it commits).
        self.event_writes = 0
        #: Bumped on the event loop after a write call whose transactions inserted events has returned, so
        #: after their commit. With one writer thread (SQLite), a log follower that finds it unchanged since
        #: before its last (empty) read knows no event of this process has been committed since and skips
        #: the read; other processes' commits are found by polling. Not used on PostgreSQL (`events.local`).
        self.event_epoch = 0
        self._epoch_writes = 0
        #: SQLite: each thread's reader connection for `read_short`, and all of them (closed by `close`).
        self._short = threading.local()
        self._short_conns: list[Any] = []
        self._short_lock = threading.Lock()

    def migrate(self) -> None:
        migrate(self.engine)

    async def write(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that writes, on the writer thread(s); then tell the commit listeners."""
        try:
            return await self._writer.run(fn, *args, **kwargs)
        except (DataError, OverflowError) as exc:
            raise refused(exc) from exc
        finally:
            if self.event_writes != self._epoch_writes:
                self._epoch_writes = self.event_writes
                self.event_epoch += 1
            for listener in self.commit_listeners:
                listener()

    async def read(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that only reads."""
        return await self._run(self._readers, fn, *args, **kwargs)

    async def read_short(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(conn, *args, **kwargs)` for a read of a few indexed rows (a path lookup) on a reader connection.
        On SQLite it runs right here, on the event loop, on a connection this thread keeps: handing it to a
        reader thread and back, and checking a connection out of the pool and in, cost more CPU than the
        read (and a WAL reader waits for no writer). On PostgreSQL, a network round trip, on a reader
        thread. `fn` must leave no transaction open (one is rolled back if it does)."""
        if not self.is_sqlite:
            return await self._run(self._readers, self._on_reader, fn, *args, **kwargs)
        conn = getattr(self._short, "conn", None)
        if conn is None or conn.closed:
            conn = self._short.conn = self.reader.connect()
            with self._short_lock:
                self._short_conns.append(conn)
        try:
            return fn(conn, *args, **kwargs)
        except (DataError, OverflowError) as exc:
            raise refused(exc) from exc
        finally:
            if conn.in_transaction():
                conn.rollback()

    def _on_reader(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        with self.reader.connect() as conn:
            return fn(conn, *args, **kwargs)

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        try:
            return await loop.run_in_executor(executor, call)
        except (DataError, OverflowError) as exc:
            raise refused(exc) from exc

    def close(self) -> None:
        self.events.close()
        self._writer.shutdown()
        self.group.write_posted()
        self.group.close()
        with self._short_lock:
            for conn in self._short_conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._short_conns.clear()
        self._readers.shutdown(wait=True)
        self.engine.dispose()
        self.reader.dispose()
