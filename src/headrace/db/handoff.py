"""Running blocking calls on threads for the event loop, cheaply.

`loop.run_in_executor` costs a `concurrent.futures.Future` per call (with a `threading.Condition`, built in
Python), a second, asyncio future chained to it, and the copying of state between the two. On the
small-file path, with two or three hand-offs per request, that was a fifth of the door's GIL time (issue
12's profiles). `Handoff` keeps the one asyncio future: a worker takes the call from a queue, runs it and
settles the future on its loop with `call_soon_threadsafe` (the wake-up run_in_executor makes too).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple[
    asyncio.AbstractEventLoop,
    "asyncio.Future[Any]",
    contextvars.Context,
    Callable[..., Any],
    tuple[Any, ...],
    dict[str, Any],
]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():  # the caller was cancelled: nobody waits for the outcome
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class Handoff:
    """Up to `threads` threads (started as calls need them) that run blocking calls for coroutines. A call
    that has been queued runs even if its caller is cancelled (its outcome is dropped); `shutdown` waits for
    every queued call."""

    def __init__(self, threads: int, name: str) -> None:
        self._max = threads
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()
        self._closed = False

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on one of the threads, in a copy of the caller's context; its result or exception."""
        if self._closed:
            raise RuntimeError(f"{self._name}: shut down")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._max:
                self._start()
            elif self._idle:
                self._idle -= 1
        self._queue.put((loop, fut, contextvars.copy_context(), fn, args, kwargs))
        return await fut

    def _start(self) -> None:
        thread = threading.Thread(target=self._work, name=f"{self._name}_{len(self._threads)}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            loop, fut, ctx, fn, args, kwargs = item
            try:
                value, ok = ctx.run(fn, *args, **kwargs), True
            except BaseException as exc:  # handed to the caller, as run_in_executor does
                value, ok = exc, False
            del item
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            del fut, value
            with self._lock:
                self._idle += 1

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads (blocking)."""
        self._closed = True
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join()
