"""A pool's tape agent: flushes the pool's files to the HSM, evicts cached copies under space pressure, stages
files back, carries out QoS changes and removes tape copies nobody refers to. One per pool directory, in the
process that owns it (`headrace up` for its pools, `headrace pool` for its own), as dCache's pools do.

Every step is recorded by `catalog` in one transaction with its event; the agent keeps nothing it would lose
in a crash: a flush killed half-way leaves the file ONLINE and queued (the HSM copy it may have made is not
referred to: the next flush makes another), a stage killed half-way leaves a partial upload in tmp/ (removed
at start) and its claim, which another pool takes over once the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from headrace.db.engine import Database
from headrace.metrics import TAPE_BYTES, TAPE_OPS
from headrace.storage.local_store import LocalStore
from headrace.storage.namespace import Inode, Namespace, now_ms
from headrace.storage.pool import Pool, file_checksums
from headrace.tape import catalog
from headrace.tape.config import TapeSettings
from headrace.tape.hsm import HsmError, HsmScript

log = logging.getLogger("headrace.tape")

#: The agents of this process: a request made here (a read, a QoS change) wakes them at once.
AGENTS: set[TapeAgent] = set()


class Settled:
    """Wakes the readers of this process that wait for a stage (tape.staging) when one settles here."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for f in self._waiters:
            if not f.done():
                f.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Until a stage settles in this process, or `timeout` s (one settled in another process)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)


STAGED = Settled()


def wake_all() -> None:
    for agent in AGENTS:
        agent.wake()


class StageFailed(Exception):
    pass


class TapeAgent:
    def __init__(
        self, db: Database, ns: Namespace, pool: Pool, store: LocalStore, hsm: HsmScript, cfg: TapeSettings
    ) -> None:
        self.db = db
        self.ns = ns
        self.pool = pool
        self.store = store
        self.hsm = hsm
        self.cfg = cfg
        self.me = pool.name
        #: One per loop (flush, stage, keep): a wake-up one loop consumed is not lost to another.
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        #: Staging in progress here: pnfsid -> the restore (two targets for one file share it).
        self._restores: dict[str, asyncio.Task[Inode]] = {}
        self._held: set[int] = set()  # claimed target ids, for lease renewal
        #: Restores at once (dCache's `rh set max active`); more targets are claimed, to have the next ready.
        self._stage_slots = asyncio.Semaphore(max(1, cfg.stage_concurrency))
        self._flush_slots = asyncio.Semaphore(max(1, cfg.flush_concurrency))
        self.flushes = 0  # counters for tests and `status`
        self.stages = 0
        self.evictions = 0
        self._next_expiry = 0.0

    # -- life cycle -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        AGENTS.add(self)
        loops: list[tuple[str, Callable[[], Awaitable[float | None]]]] = [
            ("flush", self.flush_round),
            ("stage", self.stage_round),
            ("keep", self.upkeep_round),
        ]
        self._tasks = [asyncio.create_task(self._loop(n, fn), name=f"tape-{n}-{self.me}") for n, fn in loops]
        self._tasks.append(asyncio.create_task(self._renew(), name=f"tape-lease-{self.me}"))

    async def stop(self) -> None:
        AGENTS.discard(self)
        for t in self._tasks:
            t.cancel()
        pending: list[asyncio.Task[Any]] = [*self._tasks, *self._restores.values()]
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []

    def wake(self) -> None:
        for event in self._wakes.values():
            event.set()

    async def _loop(self, name: str, round_: Callable[[], Awaitable[float | None]]) -> None:
        wake = self._wakes.setdefault(name, asyncio.Event())
        while True:
            delay: float | None = self.cfg.poll
            try:
                delay = await round_()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tape %s round of pool %s failed", name, self.me)
            wait = self.cfg.poll if delay is None else min(delay, self.cfg.poll)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    async def _io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.store.io, fn, *args)

    def _info(self, node: Inode) -> dict[str, object]:
        """dCache's storage info for the HSM script."""
        flags = {"flag-c": f"1:{node.checksums['ADLER32']}"} if "ADLER32" in node.checksums else {}
        return {
            "size": node.size,
            "new": "true",
            "stored": "false" if node.hsm_uri is None else "true",
            "sClass": "headrace:default",
            "cClass": "-",
            "hsm": self.hsm.hsm_type,
            "accessLatency": "NEARLINE",
            "retentionPolicy": "CUSTODIAL",
            "path": node.path,
            "uid": node.uid,
            "gid": node.gid,
            **flags,
        }

    def _hsm_facts(self) -> dict[str, str]:
        return {"type": self.hsm.hsm_type, "instance": self.hsm.instance, "provider": "script"}

    # -- flush ------------------------------------------------------------------------------------------------

    async def flush_round(self) -> float | None:
        """Flush the queue if a trigger holds (count, bytes, age); else the seconds until the oldest file's age
        will."""
        limit = max(self.cfg.flush_count, 1) * 4
        queue: list[Inode] = await self.db.read(catalog.flush_queue, self.ns, self.pool.name, limit)
        if not queue:
            return None
        waited = (now_ms() - min(n.mtime for n in queue)) / 1000
        size = sum(n.size for n in queue)
        if len(queue) < self.cfg.flush_count and size < self.cfg.flush_bytes and waited < self.cfg.flush_age:
            return max(0.01, self.cfg.flush_age - waited)
        await asyncio.gather(*(self.flush(n) for n in queue))
        return 0.0  # more may have queued meanwhile

    async def flush(self, node: Inode) -> bool:
        assert node.blob is not None
        try:
            async with self._flush_slots:  # the HSM's calls at once; the records overlap the next call
                started = time.monotonic()  # dCache's transferTime: the script's time, not the wait for a slot
                uri = await self.hsm.put(node.pnfsid, self.pool.blob_path_str(node.blob), self._info(node))
                millis = int((time.monotonic() - started) * 1000)
        except HsmError as exc:
            attempts = await self.db.write(catalog.flush_failed, self.ns, node, str(exc))
            TAPE_OPS.labels("store", "failed").inc()
            log.warning("flush of %s (%s) failed, attempt %d: %s", node.path, node.pnfsid, attempts, exc)
            return False
        ok: bool = await self.db.write(
            catalog.flushed, self.ns, node, uri, pool=self.pool.name, hsm=self._hsm_facts(), millis=millis
        )
        TAPE_OPS.labels("store", "ok" if ok else "stale").inc()
        if ok:
            TAPE_BYTES.labels("store").inc(node.size)
            self.flushes += 1
        return ok

    # -- stage ------------------------------------------------------------------------------------------------

    async def stage_round(self) -> float | None:
        room = max(1, self.cfg.stage_concurrency) * 4 - len(self._held)
        if room <= 0:
            return None
        targets: list[catalog.StageTarget] = await self.db.write(
            catalog.claim_stages, self.ns, self.me, room, int(self.cfg.lease * 1000)
        )
        for t in targets:
            self._held.add(t.id)
            task = asyncio.create_task(self._settle(t), name=f"tape-target-{t.id}")
            self._tasks.append(task)
            task.add_done_callback(self._tasks_done)
        return 0.0 if targets else None

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _settle(self, target: catalog.StageTarget) -> None:
        node: Inode | None = None
        error: str | None = None
        try:
            node = await self.db.read(catalog.file_by_pnfsid, self.ns, target.pnfsid) if target.pnfsid else None
            if node is None:
                error = f"No such file: {target.pnfsid}"
            elif node.is_dir:
                error = f"Not a file: {node.path}"
            elif node.blob is None:
                node = await self.restore(node)
        except (StageFailed, HsmError, OSError) as exc:
            error = str(exc)
        except asyncio.CancelledError:
            self._held.discard(target.id)  # the lease runs out; another pool (or this one, restarted) takes it
            raise
        except Exception as exc:
            log.exception("stage of target %d failed", target.id)
            error = f"{type(exc).__name__}: {exc}"
        try:
            await self.db.write(catalog.stage_done, self.ns, self.me, target, node, error)
        finally:
            self._held.discard(target.id)
        STAGED.notify()
        self.wake()

    async def restore(self, node: Inode) -> Inode:
        """Stage `node` into this pool (one restore per file at once); the file as it is then on disk."""
        task = self._restores.get(node.pnfsid)
        if task is None:
            task = asyncio.create_task(self._restore(node))
            self._restores[node.pnfsid] = task
            task.add_done_callback(lambda _t: self._restores.pop(node.pnfsid, None))
        return await asyncio.shield(task)

    async def _restore(self, node: Inode) -> Inode:
        if node.hsm_uri is None:
            raise StageFailed(f"{node.path} has no copy on disk or tape")
        await self.make_room(node.size)
        upload = await self._io(self.pool.start_upload)
        try:
            async with self._stage_slots:  # the HSM's calls at once; checks and records overlap the next call
                started = time.monotonic()
                await self.hsm.get(node.pnfsid, upload.tmp_path, node.hsm_uri, self._info(node))
                millis = int((time.monotonic() - started) * 1000)
            await self._io(upload.adopt)
            if upload.size != node.size:
                raise StageFailed(f"the copy of {node.path} on tape has {upload.size} bytes, not {node.size}")
            if node.checksums:
                sums = await self._io(file_checksums, upload.tmp_path, set(node.checksums))
                bad = [t for t, v in sums.items() if node.checksums.get(t) != v]
                if bad:
                    raise StageFailed(f"the copy of {node.path} on tape fails its {bad[0]} checksum")
            await self._io(upload.finish)
        except BaseException:
            await self._io(upload.abort)
            TAPE_OPS.labels("restore", "failed").inc()
            raise
        ok = await self.db.write(
            catalog.staged, self.ns, node, pool=self.pool.name, blob=upload.blob, hsm=self._hsm_facts(), millis=millis
        )
        if not ok:  # the file changed meanwhile (deleted, overwritten, staged elsewhere)
            await self._io(self.pool.remove_blob, upload.blob, upload.size)
            current = await self.db.read(catalog.file_by_pnfsid, self.ns, node.pnfsid)
            if current is None or current.blob is None:
                raise StageFailed(f"{node.path} changed while it was staged")
            return current
        TAPE_OPS.labels("restore", "ok").inc()
        TAPE_BYTES.labels("restore").inc(node.size)
        self.stages += 1
        return node

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.cfg.lease / 3))
            with contextlib.suppress(Exception):
                await self.db.write(catalog.renew, self.ns, self.me, list(self._held), int(self.cfg.lease * 1000))

    # -- eviction, QoS changes, the trash, pins ---------------------------------------------------------------

    def _capacity(self) -> tuple[int, int]:
        """(bytes held, capacity) of the pool: its cap if it has one, else its disk."""
        if self.pool.max_bytes:
            return self.pool.used_bytes + self.pool.reserved_bytes, self.pool.max_bytes
        st = os.statvfs(self.pool.root)
        total = st.f_blocks * st.f_frsize
        return total - st.f_bavail * st.f_frsize, total

    async def make_room(self, extra: int = 0) -> int:
        """Evict cached copies, least recently used first, while the pool (with `extra` more bytes) is past
        `evict_high`, down to `evict_low`; the bytes freed."""
        used, capacity = self._capacity()
        if used + extra <= self.cfg.evict_high * capacity:
            return 0
        goal = self.cfg.evict_low * capacity - extra
        freed = 0
        while used - freed > goal:
            candidates: list[Inode] = await self.db.read(catalog.eviction_candidates, self.ns, self.pool.name, 64)
            candidates = [c for c in candidates if c.blob and not self.store.reading.get(c.blob)]
            if not candidates:
                log.warning("pool %s is %d%% full and has nothing it may evict", self.me, 100 * used // capacity)
                break
            progress = False
            for node in candidates:
                blob, size = node.blob, node.size
                assert blob is not None
                if await self.db.write(catalog.evicted, self.ns, node, pool=self.pool.name):
                    await self._io(self.pool.remove_blob, blob, size)
                    freed += size
                    progress = True
                    self.evictions += 1
                    TAPE_OPS.labels("evict", "ok").inc()
                    if used - freed <= goal:
                        break
            if not progress:
                break
        return freed

    async def upkeep_round(self) -> float | None:
        await self.make_room()
        drop, stage = await self.db.read(catalog.transitions, self.ns, self.pool.name, 256)
        for node in drop:
            await self.db.write(catalog.drop_tape_copy, self.ns, node)
        for node in stage:
            await self.db.write(catalog.queue_stage, self.ns, catalog.SYSTEM.username, node, api="qos")
        if stage:
            self.wake()
        trash = await self.db.read(catalog.trash, self.ns, 64)
        done: list[int] = []
        for tid, uri in trash:
            try:
                await self.hsm.remove(uri)
                done.append(tid)
                TAPE_OPS.labels("remove", "ok").inc()
            except HsmError as exc:
                TAPE_OPS.labels("remove", "failed").inc()
                log.warning("removing tape copy %s failed: %s", uri, exc)
        if done:
            await self.db.write(catalog.trashed, self.ns, done)
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + 60
            await self.db.write(catalog.expire_pins, self.ns)
        return None
