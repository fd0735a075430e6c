"""Retention of the event log: events older than a maximum age, or past a maximum count, are removed in small
batches, except those a durable consumer (the Kafka relay, the functions controller) has not read yet.

SSE channels are not durable consumers here, as in dCache: a channel that falls behind the log's tail is told
EVENT_LOSS by its replay, and the log is not held back for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from headrace.events.log import EventLog
from headrace.metrics import EVENT_LOG_HEAD, EVENT_LOG_TAIL

log = logging.getLogger("headrace.events")

BATCH = 10_000


@dataclass
class Retention:
    log: EventLog
    max_age: float = 7 * 86400.0  # seconds; 0 keeps events whatever their age
    max_events: int = 10_000_000  # 0 keeps any number
    interval: float = 60.0
    #: Offsets durable consumers have read through; nothing past the smallest is removed.
    holders: list[Callable[[], int]] = field(default_factory=list)

    def cutoff(self) -> int:
        """Events with offsets below this may go. Blocking (reads the log)."""
        head = self.log.head()
        below = 0
        if self.max_events > 0:
            below = max(below, head - self.max_events + 1)
        if self.max_age > 0:
            first_young = self.log.first_after(int((time.time() - self.max_age) * 1e6))
            below = max(below, head + 1 if first_young is None else first_young)
        for holder in self.holders:
            below = min(below, holder() + 1)
        return below

    def _trim_batch(self, below: int) -> int:
        with self.log.db.engine.begin() as conn:
            return self.log.trim_in(conn, below, BATCH)

    async def run_once(self) -> int:
        """Remove what the limits allow, a batch per write transaction so that writers are not held up."""
        db = self.log.db
        below = await db.read(self.cutoff)
        removed = 0
        while (n := await db.write(self._trim_batch, below)) > 0:
            removed += n
        EVENT_LOG_HEAD.set(await db.read(self.log.head))
        EVENT_LOG_TAIL.set(await db.read(self.log.tail))
        if removed:
            log.info("events: retention removed %d events from the log", removed)
        return removed

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("events: retention failed; trying again later")
            await asyncio.sleep(self.interval)
