"""Helpers for the source-kind tests: an in-memory Sink with base.Sink's contract (a key delivered once, the
position stored with each batch, JSON state), and a source run on an event loop of its own thread, so that
sync tests drive real servers around it and wait for what it delivers."""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Sequence
from typing import Any

from headrace.events.sources.base import RemoteEvent, Sink, Source


class MemorySink:
    """base.Sink in memory: what a database sink would hold, kept across source restarts by the test. Keys already
    held are skipped, as the database sink's unique index does; a state is stored and handed back as a copy (a
    JSON value), as the database keeps it. The source may run on another thread than the test's: `lock` guards
    what deliver and set_state change.

    `fail_after`/`hold_after` (a number of events held) make the next deliver past it raise once (a database gone
    away) or wait until cancelled (a process stopped between receiving and storing: `holding` meanwhile)."""

    def __init__(self) -> None:
        self.events: list[RemoteEvent] = []
        self.keys: set[str] = set()
        self.pos: str | None = None
        self.states: dict[str, Any] = {}
        self.batches = 0
        self.offered = 0  # events handed to deliver, re-deliveries included
        self.redelivered = 0  # of those, the ones whose key was already held
        self.fail_after: int | None = None
        self.hold_after: int | None = None
        self.holding = False
        self.lock = threading.Lock()

    async def position(self) -> str | None:
        return self.pos

    async def deliver(self, events: Sequence[RemoteEvent], position: str | None) -> int:
        if self.fail_after is not None and len(self.events) >= self.fail_after:
            self.fail_after = None
            raise RuntimeError("the database went away")
        if self.hold_after is not None and len(self.events) >= self.hold_after:
            self.holding = True
            try:
                await asyncio.Event().wait()
            finally:
                self.hold_after, self.holding = None, False
        new = 0
        with self.lock:
            self.offered += len(events)
            for ev in events:
                if ev.key in self.keys:
                    self.redelivered += 1
                    continue
                self.keys.add(ev.key)
                self.events.append(ev)
                new += 1
            self.pos = position
            self.batches += 1
        return new

    async def state(self, key: str) -> Any:
        return self.state_now(key)

    async def set_state(self, key: str, value: Any) -> None:
        with self.lock:
            self.states[key] = json.loads(json.dumps(value))

    async def mark(self) -> int:
        return len(self.events)

    async def since(self, mark: int) -> list[RemoteEvent]:
        return list(self.events[mark:])

    def state_now(self, key: str) -> Any:
        with self.lock:
            return copy.deepcopy(self.states.get(key))

    def seen(self) -> list[RemoteEvent]:
        with self.lock:
            return list(self.events)

    def of(self, kind: str, path: str | None = None) -> list[RemoteEvent]:
        return [e for e in self.seen() if e.kind.value == kind and (path is None or e.path == path)]


class Running:
    """`source.run(sink)` on a thread's event loop until `stop()` (or until it returns or raises: `error`)."""

    def __init__(self, source: Source, sink: Sink) -> None:
        self.source = source
        self.sink = sink
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.source.run(self.sink))
        self._ready.set()
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()
            self.done.set()

    def stop(self) -> None:
        if not self.done.is_set() and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the source did not stop"

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
