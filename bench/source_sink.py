"""The event sources' database sink alone: events/s into the log, exactly once, by batch size.

Run from the repository root::

    HEADRACE_TEST_DB=sqlite .venv/bin/python bench/source_sink.py [--events 20000]
    HEADRACE_TEST_DB=postgresql .venv/bin/python bench/source_sink.py

A fresh database (SQLite in a temporary directory, durable as `headrace up` runs it; or a database of the test
harness's PostgreSQL cluster), one source holding its lease, and `DatabaseSink.deliver` called in a loop with
batches of 1, 100 and 1,000 events (each call one transaction: the generation check, the lookup of the keys
already in the log, the inserts, the position and counters). Then the same events again: a kind
re-delivering after a loss, every key already there. Prints new and re-delivered events/s per batch size.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from harness import db_kind
from headrace.db.engine import Database
from headrace.events.model import EventKind
from headrace.events.sources.base import RemoteEvent
from headrace.events.sources.sink import DatabaseSink
from headrace.events.sources.store import Readers, SourceStore


def new_database() -> str:
    if db_kind() == "sqlite":
        return f"sqlite:///{Path(tempfile.mkdtemp()) / 'headrace.db'}"
    from pg_harness import session_cluster

    return session_cluster().create_database()


async def run(url: str, count: int, batch: int) -> tuple[float, float]:
    db = Database(url)
    db.migrate()
    try:
        store = SourceStore(db)
        await db.write(store.put, "bench", "bench", {}, Readers())
        generation = await db.write(store.take, "bench", "bench")
        sink = DatabaseSink(db, "bench", generation)
        events = [
            RemoteEvent(key=f"k{i}", kind=EventKind.CLOSE_WRITE, path=f"/d/{i}.h5", size=i, url=f"https://r/d/{i}.h5")
            for i in range(count)
        ]
        rates = []
        for _ in range(2):  # new, then re-delivered
            start = time.perf_counter()
            for i in range(0, count, batch):
                await sink.deliver(events[i : i + batch], str(i + batch))
            rates.append(count / (time.perf_counter() - start))
        row = await db.read(store.get, "bench")
        assert row is not None and row.received == count, row
        return rates[0], rates[1]
    finally:
        db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20000)
    args = parser.parse_args()
    for batch in (1, 100, 1000):
        count = min(args.events, 2000) if batch == 1 else args.events
        new, again = asyncio.run(run(new_database(), count, batch))
        print(f"{db_kind()} batch {batch:>4}: {new:>9,.0f} new events/s, {again:>9,.0f} re-delivered events/s")


if __name__ == "__main__":
    main()
