"""Many small database calls as one: items submitted while one batch is being run are gathered into the next.

An activation's way is a few single-row statements (read its row, claim it, write its record); made one call
each, their per-call cost (a thread hand-off, a savepoint, a round trip) is most of it. A `Batcher` is given
a call that handles a list of items and returns one result per item; `submit` queues an item and returns its
result once the batch holding it has run. Batches run one after the other, in submission order, so an item's
call lands after those submitted before it.

If a batch's call raises, each of its items is run again alone, so that only the item that fails sees the
error: a batch call must therefore leave nothing done when it raises (a group-commit call's savepoint is
rolled back; a read changes nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its result


class Batcher(Generic[I, R]):
    """Items in, one `run(items)` call per batch, each item's result out."""

    def __init__(self, run: Callable[[list[I]], Awaitable[list[R]]], *, limit: int = 256) -> None:
        self._run = run
        self.limit = limit
        self._pending: list[tuple[I, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Batches run, for tests and the bench.
        self.batches = 0

    async def submit(self, item: I) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.limit], self._pending[self.limit :]
            self.batches += 1
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _fail(batch[0][1], exc)
                else:  # which item failed is not known: each alone, so that only it fails
                    for item, done in batch:
                        try:
                            (result,) = await self._run([item])
                        except Exception as one:
                            _fail(done, one)
                        else:
                            _settle(done, result)
                continue
            except BaseException:
                for _, done in batch:
                    _fail(done, RuntimeError("the batch was cancelled"))
                raise
            for (_, done), result in zip(batch, results, strict=True):
                _settle(done, result)


def _settle(done: asyncio.Future[R], result: R) -> None:
    if not done.done():
        done.set_result(result)


def _fail(done: asyncio.Future[R], exc: Exception) -> None:
    if not done.done():
        done.set_exception(exc)
