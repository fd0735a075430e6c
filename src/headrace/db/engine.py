"""Creating the database engine, migrating it, and running blocking database work off the event loop.

SQLite is opened in WAL mode and written by one thread (it allows one writer anyway; one thread avoids
"database is locked" retries); reads run on a few more threads. PostgreSQL gets a larger pool for both.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import ConnectionPoolEntry

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, *, durable: bool = True, writer: bool = True) -> Engine:
    """An engine for `url`; on SQLite, WAL with synchronous=FULL (durable) or NORMAL.

    A SQLite writer engine starts every transaction with BEGIN IMMEDIATE, taking the write lock up front
    so that two transactions never deadlock upgrading a read lock; reader engines begin deferred.
    """
    if url.startswith("sqlite"):
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
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

        return engine
    return create_engine(url, pool_size=16, max_overflow=16, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class GroupCommit:
    """Many small write transactions run as one: each call gets a savepoint of its own, so it succeeds or
    fails alone (its change and its events together, invariant 1), and all calls that arrive while a
    transaction is being written share the next commit: one WAL fsync for a burst instead of one each.
    A caller still returns only after its call has committed."""

    MAX_BATCH = 256

    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run `fn(conn, *args, **kwargs)` in a savepoint of the next group transaction; its result."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, args, kwargs, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.MAX_BATCH], self._pending[self.MAX_BATCH :]
            try:
                outcomes = await self.db.write(self._apply, [(fn, a, kw) for fn, a, kw, _ in batch])
            except BaseException as exc:  # the commit itself failed: nothing of the batch happened
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("write cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (*_, done), (ok, value) in zip(batch, outcomes, strict=True):
                if not done.done():
                    if ok:
                        done.set_result(value)
                    else:
                        done.set_exception(value)

    def _apply(self, calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        with self.db.engine.begin() as conn:
            for fn, args, kwargs in calls:
                try:
                    with conn.begin_nested():
                        outcomes.append((True, fn(conn, *args, **kwargs)))
                except Exception as exc:
                    outcomes.append((False, exc))
        return outcomes


class Database:
    """An engine plus the threads that run blocking database calls for async callers."""

    def __init__(self, url: str, *, durable: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url, durable=durable)
        self.is_sqlite = url.startswith("sqlite")
        self.reader = make_engine(url, durable=durable, writer=False) if self.is_sqlite else self.engine
        self._writer = ThreadPoolExecutor(1 if self.is_sqlite else 8, thread_name_prefix="db-write")
        self._readers = ThreadPoolExecutor(4 if self.is_sqlite else 8, thread_name_prefix="db-read")
        self.group = GroupCommit(self)
        #: Called on the event loop after every write through `write` (and so `group`) has committed.
        self.commit_listeners: list[Callable[[], None]] = []
        #: Event inserts in this process (bumped by the namespace inside a transaction, before it commits).
        self.event_writes = 0
        #: Bumped on the event loop after a write call whose transactions inserted events has returned, so
        #: after their commit. With one writer thread (SQLite), a log follower that finds it unchanged since
        #: before its last (empty) read knows no event of this process has been committed since and skips
        #: the read; other processes' commits are found by polling.
        self.event_epoch = 0
        self._epoch_writes = 0

    def migrate(self) -> None:
        migrate(self.engine)

    async def write(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that writes, on the writer thread(s); then tell the commit listeners."""
        try:
            return await self._run(self._writer, fn, *args, **kwargs)
        finally:
            if self.event_writes != self._epoch_writes:
                self._epoch_writes = self.event_writes
                self.event_epoch += 1
            for listener in self.commit_listeners:
                listener()

    async def read(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call that only reads."""
        return await self._run(self._readers, fn, *args, **kwargs)

    @staticmethod
    async def _run(executor: ThreadPoolExecutor, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        return await loop.run_in_executor(executor, call)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self.engine.dispose()
        self.reader.dispose()
