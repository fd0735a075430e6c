"""The supervisor of the configured sources, run by the controller role (`headrace up`, `headrace controller`).

Every `poll` seconds it reads the `sources` table and:
- stops the task of a source deleted or changed (its `version`, bumped by every PUT) since it started;
- takes the lease of each source not running here whose lease is free, expired or this holder's own (a
  restarted controller takes its sources back at once; store.py), builds it (kinds.build) and runs
  `source.run(sink)` in a task of its own, with a `DatabaseSink` fenced by the lease's generation;
- renews the leases it holds every `RENEW_SECONDS`; one it lost (another controller took the source over)
  is stopped without a word to the database.

A run that returns or raises is restarted after a backoff (1 s, doubling to 60 s; back to 1 s after a run
that lasted a minute), its error recorded as the source's `last_error`. A `SourceConfigError` is recorded
and not retried until the source is changed. `Fenced` stops the task. `stop` cancels every task and
releases the leases, so that another controller may take the sources over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from headrace.db.engine import Database
from headrace.events.sources import kinds
from headrace.events.sources.base import Fenced, SourceConfigError
from headrace.events.sources.sink import DatabaseSink
from headrace.events.sources.store import SourceRow, SourceStore, now_us
from headrace.metrics import SOURCE_ERRORS, SOURCE_RUNNING
from headrace.tasks import stop_task

log = logging.getLogger("headrace.sources")

#: How often the leases held are renewed (store.LEASE_US is how long one lasts).
RENEW_SECONDS = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0


@dataclass
class Running:
    version: int
    created: int  # a source deleted and made again under its name starts at version 1 again
    generation: int
    task: asyncio.Task[None]


def describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SourceRunner:
    def __init__(self, db: Database, holder: str, *, poll: float = 1.0) -> None:
        self.db = db
        self.store = SourceStore(db)
        self.holder = holder[:128]
        self.poll = poll
        self.running: dict[str, Running] = {}
        #: name -> the (version, created) whose configuration the kind refused: not started until it changes.
        self.refused: dict[str, tuple[int, int]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._renewed = 0.0
        self._wake = asyncio.Event()

    async def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop())

    def wake(self) -> None:
        """Look at the table now (a source was changed in this process)."""
        self._wake.set()

    async def stop(self) -> None:
        await stop_task(self._loop_task)
        self._loop_task = None
        for name in list(self.running):
            await self._stop_one(name, release=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sources: the runner's turn failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()

    async def tick(self) -> None:
        rows = {r.name: r for r in await self.db.read(self.store.all)}
        for name, run in list(self.running.items()):
            row = rows.get(name)
            if row is None or (row.version, row.created) != (run.version, run.created) or run.task.done():
                await self._stop_one(name, release=row is not None)
        loop = asyncio.get_running_loop()
        if self.running and loop.time() - self._renewed >= RENEW_SECONDS:
            held = {name: run.generation for name, run in self.running.items()}
            lost = await self.db.write(self.store.renew, held, self.holder)
            self._renewed = loop.time()
            for name in lost:
                log.warning("sources: %s is run by another controller now; stopped here", name)
                await self._stop_one(name, release=False)
        for name in [n for n, (_, created) in self.refused.items() if n not in rows or rows[n].created != created]:
            del self.refused[name]
        now = now_us()
        for row in rows.values():
            if row.name in self.running or self.refused.get(row.name) == (row.version, row.created):
                continue
            if row.holder not in (None, self.holder) and (row.lease_until or 0) > now:
                continue
            generation = await self.db.write(self.store.take, row.name, self.holder)
            if generation is None:
                continue
            task = asyncio.create_task(self._run(row, generation), name=f"source {row.name}")
            self.running[row.name] = Running(row.version, row.created, generation, task)
            SOURCE_RUNNING.labels(row.name).set(1)
            log.info("sources: running %s (%s), generation %d", row.name, row.kind, generation)

    async def _stop_one(self, name: str, *, release: bool) -> None:
        run = self.running.pop(name, None)
        if run is None:
            return
        run.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await run.task
        SOURCE_RUNNING.labels(name).set(0)
        if release:
            with contextlib.suppress(Exception):
                await self.db.write(self.store.release, name, run.generation)

    async def _record(self, name: str, generation: int, error: str) -> None:
        try:
            await self.db.write(self.store.record_error, name, generation, error)
        except Exception:
            log.exception("sources: could not record the error of %s", name)

    async def _run(self, row: SourceRow, generation: int) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_FIRST
        config: dict[str, Any] = dict(row.config)
        while True:
            started = loop.time()
            try:
                source = kinds.build(row.name, row.kind, config)
                await source.run(DatabaseSink(self.db, row.name, generation))
                error = "The source stopped receiving"
            except asyncio.CancelledError:
                raise
            except Fenced as exc:
                log.warning("sources: %s: %s; stopped here", row.name, exc)
                return
            except SourceConfigError as exc:
                log.error("sources: %s cannot run with its configuration: %s", row.name, exc)
                self.refused[row.name] = (row.version, row.created)
                await self._record(row.name, generation, describe(exc))
                return
            except Exception as exc:
                error = describe(exc)
                log.warning("sources: %s failed: %s; restarting in %g s", row.name, error, backoff)
            SOURCE_ERRORS.labels(row.name).inc()
            await self._record(row.name, generation, error)
            if loop.time() - started >= BACKOFF_MAX:
                backoff = BACKOFF_FIRST
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
