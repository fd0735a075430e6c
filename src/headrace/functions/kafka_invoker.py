"""`headrace invoker`: a member of the invokers' consumer group, running the activations published to the
activation topic on this host's warm workers (the same `Runner` as the embedded controller: zygotes,
forked workers, limits, sequences).

**Messages and records.** A message names an activation; its row in the database is the activation. For
each message the invoker claims the row (`FunctionStore.claim_in`: queued → running with `start` = now;
running but not held by this process → its invoker died: the next attempt, or dead when none is left;
done or dead → nothing to do; not due yet → held until it is), runs it, and writes the outcome fenced by
(attempt, start), so that a late writer (an invoker presumed dead, an activation handed back) changes
nothing: exactly one final record per activation. A failed attempt with attempts left is written back as
queued with its backoff and held here until due, then claimed again; its message stays uncommitted
meanwhile, so an invoker that dies takes no retry with it. After the final record of an invocation (not of
an activation a rule made: no one waits for those), a notice goes to the results topic (for blocking
invokes).

**Offsets.** Messages of one partition are run concurrently (one path's activations of an `ordered` action
one at a time, in offset order); a partition's offset is committed up to, not including, its oldest
message whose activation has not finished, and only after that activation's record has committed. A
crash re-delivers what was not committed: finished activations are skipped (their rows are final),
interrupted ones run again as their next attempt, so at most those run twice.

**Flow.** The invoker holds at most `16 x workers` activations (running, waiting for a worker, waiting for a
retry); past that it pauses its partitions, so that a backlog stays in Kafka as consumer lag (what KEDA
scales on), not in memory, and partitions given to a new member carry their backlog with them. (At 4 x
workers a draining backlog paused and resumed the partitions every few messages: each resume is a round of
fetches: the broker took 1.18 ms of CPU per activation against 1.04, bench/distributed.py, one run each.)

**Database calls in batches.** The rows of the messages received together are read in one query while they
wait for workers; claims and records go through `headrace.db.batch.Batcher`s, so those made while one batch
is being committed share the next group-commit call (one savepoint, a statement each).

**Rebalance** (cooperative-sticky: only partitions that move are revoked). On revoke, activations of those
partitions that have not started are dropped (their rows are queued; the new owner reads them again from the
committed offset), running ones get up to `invoker_revoke_grace` seconds to finish; the rest are handed
back (row queued again, same attempt, their late outcome fenced out) and run again by the new owner. Then
the finished part is committed, synchronously, before the partitions go. Lost partitions (the session
expired) are handed back without a commit. Stopping (SIGTERM) is a revoke of everything.

**Group settings**: session.timeout.ms 6000 (the broker's minimum: a killed invoker's partitions move after
at most 6 s), heartbeat.interval.ms 500 (members learn of a new member within half a second),
max.poll.interval.ms >= 30 s (the consumer thread polls every 100 ms even when paused; only a revoke blocks
it, for at most the grace), partition.assignment.strategy cooperative-sticky, auto commit off.

Blocking consumer calls run on a thread of their own; rebalance callbacks (called inside poll) block that
thread until the event loop has finished handling the revoke.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from headrace.db.batch import Batcher
from headrace.functions import engine, messages
from headrace.functions.entities import ActionRow, ActivationFields, ActivationRow
from headrace.functions.kafka_transport import ActivationPublisher, KafkaConfig, LibrdkafkaLog
from headrace.functions.records import FINAL_STATES
from headrace.functions.runner import Host, Runner, capacity
from headrace.functions.store import FunctionStore, now_ms
from headrace.kafka_security import client_config

log = logging.getLogger("headrace.invoker")

ACTION_TTL = 2.0  # seconds an action's row is reused before it is read again (updates show within this)
COMMIT_EVERY = 0.1  # seconds between asynchronous commits of finished offsets
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_MS = 500


@dataclass
class _Partition:
    """One assigned partition's messages in offset order, and which of them are finished."""

    pending: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    last: int = -1  # the newest offset received
    committed: int = -1  # the offset last asked to be committed

    def add(self, offset: int) -> None:
        if offset > self.last:
            self.pending.append(offset)
            self.last = offset

    def finish(self, offset: int) -> None:
        self.done.add(offset)
        while self.pending and self.pending[0] in self.done:
            self.done.discard(self.pending.popleft())

    def commit_point(self) -> int | None:
        """The offset to commit (the next to read after a restart), if it moved since the last commit."""
        if self.last < 0:
            return None
        point = self.pending[0] if self.pending else self.last + 1
        return point if point > self.committed else None


@dataclass
class _Job:
    """One message's activation while this invoker holds it."""

    aid: str
    namespace: str
    name: str
    partition: int
    offset: int
    order_key: str | None
    state: str = "waiting"  # waiting (for a worker) | running | later (for its retry) | gone
    row: ActivationRow | None = None  # while it runs: the row as claimed
    abandoned: bool = False
    task: asyncio.Task[None] | None = None
    #: Its row, asked for when its message came (with the others received then: one read), for its first attempt.
    ahead: asyncio.Task[ActivationRow | None] | None = None

    def queue_row(self) -> _Queued:
        """What the per-action queue holds (next_runnable reads order_key and activation_id)."""
        return {"activation_id": self.aid, "order_key": self.order_key, "job": self}


class _Queued(TypedDict):
    """A job in the scheduler's queues."""

    activation_id: str
    order_key: str | None
    job: _Job


def _fence(row: ActivationRow) -> tuple[int, int]:
    """What the writes of the attempt that claimed `row` are fenced by: (attempt, start)."""
    return int(row["attempt"]), int(row["start"] or 0)  # (a claimed row has its start)


async def _claimed() -> bool:
    """The claim of an activation claimed before its attempt began (an interrupted one taken over)."""
    return True


class KafkaInvoker:
    def __init__(
        self,
        host: Host,
        *,
        bootstrap: str,
        code_root: Path,
        api_url: str,
        door_url: str,
        max_workers: int,
        topic: str = messages.ACTIVATION_TOPIC,
        results_topic: str = messages.RESULTS_TOPIC,
        group: str = messages.INVOKER_GROUP,
        partitions: int = 8,
        revoke_grace: float = 5.0,
        client_id: str | None = None,
    ) -> None:
        self.host = host
        self.db = host.db
        self.store = FunctionStore(host.db)
        # An activation's row read, its claim and its record, each gathered with other activations' into one
        # database call (a backlog's messages arrive hundreds at a time).
        self.rows: Batcher[str, ActivationRow | None] = Batcher(
            lambda ids: self.db.read(self.store.activation_rows, ids)
        )
        self.claims: Batcher[tuple[str, int, int], bool] = Batcher(
            lambda claims: self.db.group.run(self.store.claim_queued_many_in, claims)
        )
        self.writes: Batcher[tuple[str, tuple[int, int], ActivationFields], bool] = Batcher(
            lambda writes: self.db.group.run(self.store.update_fenced_many_in, writes)
        )
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.partitions = partitions
        self.revoke_grace = revoke_grace
        self.max_workers = max_workers
        self.max_held = 16 * max_workers
        self.client_id = client_id or f"headrace-invoker-{socket.gethostname()}-{os.getpid()}"
        self.runner = Runner(
            host, code_root=code_root, api_url=api_url, door_url=door_url, lookup=self._action, max_workers=max_workers
        )
        self.publisher = ActivationPublisher(
            bootstrap, topic=topic, results_topic=results_topic, partitions=partitions, client_id=self.client_id
        )
        self.parts: dict[int, _Partition] = {}
        self.jobs: dict[str, _Job] = {}
        # every action's messages as `ordered` (one order key at a time): a message has an order key only if
        # its action is ordered, and the action may not have been read yet
        self.scheduler: engine.Scheduler[_Queued] = engine.Scheduler(
            self.runner,
            max_workers,
            run=self._run,
            capacity=self._capacity,
            ordered=lambda key: True,
            due=self._due,
            started=self._started,
            name="invoker",
        )
        self.finished = 0  # activations this invoker has finished (a final record written), for tests/bench
        self.assigned: set[int] = set()
        self._actions: dict[tuple[str, str], tuple[ActionRow | None, float]] = {}
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._stopped = asyncio.Event()
        self._commit_lock = threading.Lock()
        self._to_commit: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._paused = False
        self._paused_count = 0

    # -- life ---------------------------------------------------------------------------------------------

    def consumer_config(self) -> KafkaConfig:
        return {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "client.id": self.client_id,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "max.poll.interval.ms": int(max(30.0, self.revoke_grace + 25.0) * 1000),
            # what librdkafka fetches ahead per partition: small, the backlog belongs in Kafka
            "queued.max.messages.kbytes": 1024,
            "fetch.wait.max.ms": 100,
            "log.connection.close": False,
            "error_cb": self._on_error,
            "logger": LibrdkafkaLog(),
            **client_config(),
        }

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.publisher.start()  # creates the topics if they are missing
        self._consumer = Consumer(self.consumer_config())
        self._consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._thread = threading.Thread(target=self._consume, name="invoker-consumer", daemon=True)
        self._thread.start()
        self._tasks = [
            asyncio.create_task(self.scheduler.schedule_forever()),
            asyncio.create_task(self.scheduler.autoscale_forever(self._known_actions)),
            asyncio.create_task(self._commit_forever()),
        ]
        log.info(
            "invoker %s: group %s on %s topic %s, %d workers", self.client_id, self.group, self.bootstrap,
            self.topic, self.max_workers,
        )  # fmt: skip

    async def stop(self) -> None:
        """Finish (within the grace) or hand back what runs, commit, leave the group, stop the workers."""
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.runner.close()
        await self.publisher.close()

    # -- the consumer thread ------------------------------------------------------------------------------

    def _consume(self) -> None:
        consumer = self._consumer
        loop = self._loop
        assert consumer is not None and loop is not None
        try:
            while not self._stopping.is_set():
                self._flow(consumer)
                self._commit_now(consumer)
                room = max(1, self.max_held - len(self.jobs))
                try:
                    # poll() returns with the first message; consume(n) would wait for n of them (or the
                    # timeout): one message would wait the whole timeout. Then take what is already here.
                    first = consumer.poll(0.1)
                    msgs = [first] if first is not None else []
                    if first is not None and room > 1:
                        msgs += consumer.consume(num_messages=min(room - 1, 500), timeout=0)
                except KafkaException as exc:
                    log.warning("invoker: consume failed: %s", exc)
                    time.sleep(0.5)
                    continue
                batch = []
                for m in msgs:
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.warning("invoker: %s", err.str())
                        continue
                    batch.append((m.partition() or 0, m.offset() or 0, m.value()))
                if batch:
                    loop.call_soon_threadsafe(self._received, batch)
            # stopping: everything assigned is revoked (wait, hand back, commit), then leave the group
            assignment = [tp.partition for tp in consumer.assignment()]
            if assignment:
                self._revoke_blocking(consumer, assignment, lost=False)
        except Exception:
            log.exception("invoker: the consumer failed")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
            loop.call_soon_threadsafe(self._stopped.set)

    def _flow(self, consumer: Consumer) -> None:
        """Pause every partition while this invoker holds as much as it may, resume below half of it."""
        held = len(self.jobs)
        if self._paused and held < self.max_held // 2:
            consumer.resume(consumer.assignment())
            self._paused = False
        elif held >= self.max_held:
            assignment = consumer.assignment()
            if not self._paused or len(assignment) != self._paused_count:  # newly assigned ones too
                consumer.pause(assignment)
                self._paused, self._paused_count = True, len(assignment)

    def _commit_now(self, consumer: Consumer) -> None:
        """Commit (asynchronously) what the event loop has asked for since the last time."""
        with self._commit_lock:
            todo, self._to_commit = self._to_commit, {}
        if todo:
            try:
                consumer.commit(offsets=[TopicPartition(self.topic, p, o) for p, o in todo.items()], asynchronous=True)
            except KafkaException as exc:  # the next owner re-reads these, and skips what is final
                log.info("invoker: commit of %s failed: %s", todo, exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        log.info("invoker %s: assigned partitions %s", self.client_id, parts)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._assigned, parts)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        if parts:
            self._revoke_blocking(consumer, parts, lost=False)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        parts = [tp.partition for tp in partitions]
        if parts:
            self._revoke_blocking(consumer, parts, lost=True)

    def _revoke_blocking(self, consumer: Consumer, parts: list[int], *, lost: bool) -> None:
        loop = self._loop
        assert loop is not None
        log.info("invoker %s: %s partitions %s", self.client_id, "lost" if lost else "revoked", parts)
        fut = asyncio.run_coroutine_threadsafe(self._revoke(parts, lost=lost), loop)
        try:
            offsets = fut.result(timeout=self.revoke_grace + 20)
        except Exception:
            log.exception("invoker: handing back partitions %s failed", parts)
            offsets = {}
        # what the loop queued for these partitions is superseded by the final offsets
        with self._commit_lock:
            for p in parts:
                self._to_commit.pop(p, None)
        if offsets and not lost:
            try:
                consumer.commit(
                    offsets=[TopicPartition(self.topic, p, o) for p, o in offsets.items()], asynchronous=False
                )
            except KafkaException as exc:
                log.info("invoker: final commit of %s failed: %s", offsets, exc)

    # -- on the event loop: messages in ------------------------------------------------------------------

    def _assigned(self, parts: list[int]) -> None:
        for p in parts:
            self.parts.setdefault(p, _Partition())
            self.assigned.add(p)

    def _received(self, batch: list[tuple[int, int, bytes | None]]) -> None:
        for partition, offset, value in batch:
            part = self.parts.setdefault(partition, _Partition())
            self.assigned.add(partition)
            if offset <= part.last:
                continue  # fetched again after a seek: already held
            part.add(offset)
            body = messages.parse_activation(value)
            if body is None:
                log.warning("invoker: partition %d offset %d is no activation message; skipped", partition, offset)
                part.finish(offset)
                continue
            if body["id"] in self.jobs:  # published twice (a controller restarted): the first one runs it
                part.finish(offset)
                continue
            job = _Job(body["id"], body["ns"], body["name"], partition, offset, body.get("orderKey"))
            self.jobs[job.aid] = job
            # its row, read now with the others of this batch (the row batcher makes one query of them)
            job.ahead = asyncio.ensure_future(self.rows.submit(job.aid))
            job.ahead.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failure is read again later
            self._queue(job)
        self._request_commits()
        self.scheduler.wake.set()

    async def _row(self, job: _Job) -> ActivationRow | None:
        """The job's activation row: read ahead for its first attempt, read again for a later one."""
        ahead, job.ahead = job.ahead, None
        if ahead is not None:
            try:
                return await ahead
            except Exception:  # the read ahead failed: read it now
                log.debug("invoker: reading %s ahead failed", job.aid, exc_info=True)
        return await self.rows.submit(job.aid)

    @property
    def running_total(self) -> int:
        return self.scheduler.running_total

    def _queue(self, job: _Job) -> None:
        job.state = "waiting"
        self.scheduler.push((job.namespace, job.name), job.queue_row())

    def _due(self, key: tuple[str, str], item: _Queued) -> bool:
        """A retry came due: queued again if this invoker still holds it."""
        job = item["job"]
        if job.state != "later" or self.jobs.get(job.aid) is not job:
            return False
        job.state = "waiting"
        return True

    def _started(self, item: _Queued, task: asyncio.Task[None]) -> None:
        job = item["job"]
        job.state = "running"
        job.task = task

    def _finish(self, job: _Job) -> None:
        """The job's message is dealt with: its offset may be committed."""
        job.state = "gone"
        if self.jobs.get(job.aid) is job:
            del self.jobs[job.aid]
        part = self.parts.get(job.partition)
        if part is not None and not job.abandoned:
            part.finish(job.offset)
        self._request_commits()

    def _request_commits(self) -> None:
        points = {p: point for p, part in self.parts.items() if (point := part.commit_point()) is not None}
        if points:
            with self._commit_lock:
                self._to_commit.update(points)
            for p, point in points.items():
                self.parts[p].committed = point

    async def _commit_forever(self) -> None:
        # commits are made on the consumer thread between polls; this only keeps the loop's side moving
        while True:
            await asyncio.sleep(COMMIT_EVERY)
            self._request_commits()

    async def _revoke(self, parts: list[int], *, lost: bool) -> dict[int, int]:
        gone = set(parts)

        def held() -> list[_Job]:
            return [j for j in self.jobs.values() if j.partition in gone]

        for job in held():
            if job.state in ("waiting", "later"):  # not started: the next owner reads it again
                self._forget(job)
        running = [j.task for j in held() if j.state == "running" and j.task is not None]
        if running and not lost:
            await asyncio.wait(running, timeout=self.revoke_grace)
        handed = 0
        for job in held():
            if job.state == "running":
                await self._hand_back(job)
                handed += 1
            else:  # a retry that became due later, or one that started waiting again
                self._forget(job)
        offsets: dict[int, int] = {}
        for p in parts:
            part = self.parts.pop(p, None)
            self.assigned.discard(p)
            if part is not None and part.last >= 0:
                offsets[p] = part.pending[0] if part.pending else part.last + 1
        if handed:
            log.warning(
                "invoker %s: handed back %d running activations with partitions %s", self.client_id, handed, parts
            )
        self.scheduler.wake.set()
        return offsets

    def _forget(self, job: _Job) -> None:
        job.abandoned = True
        job.state = "gone"
        if self.jobs.get(job.aid) is job:
            del self.jobs[job.aid]
        self.scheduler.forget((job.namespace, job.name), lambda item: item["job"] is job)

    async def _hand_back(self, job: _Job) -> None:
        """Give a running activation back (queued, the same attempt): its late outcome is fenced out."""
        job.abandoned = True
        if self.jobs.get(job.aid) is job:
            del self.jobs[job.aid]
        row = job.row
        if row is None:
            return
        try:
            await self.db.group.run(
                self.store.update_fenced_in, job.aid, _fence(row), state="queued", not_before=now_ms(),
            )  # fmt: skip
        except Exception:
            # left running: the next owner takes it as interrupted (its next attempt)
            log.exception("invoker: handing back %s failed", job.aid)

    # -- scheduling ---------------------------------------------------------------------------------------

    async def _action(self, namespace: str, name: str) -> ActionRow | None:
        key = (namespace, name)
        cached = self._actions.get(key)
        if cached is not None and time.monotonic() - cached[1] < ACTION_TTL:
            return cached[0]
        row = await self.db.read(self.store.get, "actions", namespace, name)
        self._actions[key] = (row, time.monotonic())
        return row

    def _known_actions(self) -> dict[tuple[str, str], ActionRow]:
        return {k: a for k, (a, _) in self._actions.items() if a is not None}

    def _capacity(self, key: tuple[str, str]) -> int:
        cached = self._actions.get(key)
        return capacity(cached[0]) if cached else 4  # (not read yet: the action's default maxScale)

    async def _run(self, key: tuple[str, str], item: _Queued) -> None:
        job = item["job"]
        try:
            await self._attempt(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            # the database or a worker start failed: not this activation's fault; leave the message
            # uncommitted (the next owner or a restart runs it again) and hand the claim back
            log.exception("invoker: activation %s failed inside the invoker", job.aid)
            if job.state == "running" and job.row is not None and not job.abandoned:
                await self._hand_back(job)

    async def _attempt(self, job: _Job) -> None:
        row = await self._row(job)
        if job.abandoned:
            return
        if row is None or row["state"] in FINAL_STATES:
            self._finish(job)
            return
        if row["state"] == "queued" and int(row["not_before"]) > now_ms():
            self._later(job, int(row["not_before"]))
            return
        claim: asyncio.Future[bool] | None = None
        if row["state"] == "queued":
            # claimed while the function starts, as the embedded controller marks it running: the claim is
            # one commit off the latency, and if it loses (someone else took the row meanwhile, which only a
            # duplicate on another partition can), the outcome is dropped: its writes are fenced anyway
            start = now_ms()
            claim = asyncio.ensure_future(self.claims.submit((job.aid, int(row["attempt"]), start)))
            row = {**row, "state": "running", "start": start}
        else:  # running, not here: interrupted elsewhere; the claim decides (next attempt, or dead) first
            verdict, claimed = await self.db.group.run(self.store.claim_in, job.aid, now_ms())
            if verdict == "dead" and claimed is not None:
                self._notify(claimed)
            if verdict == "later" and claimed is not None:
                self._later(job, int(claimed["not_before"]))
                return
            if verdict != "run" or claimed is None:
                self._finish(job)
                return
            row = claimed
        job.row = row
        try:
            action = await self._action(job.namespace, job.name)
        except BaseException:
            if claim is not None:
                await claim
            raise
        settled = await engine.attempt(
            self.runner, action, job.name, row,
            start=_fence(row)[1],
            claim=claim if claim is not None else _claimed(),
            write=lambda values: self._write(job, row, values),
            abandoned=lambda: job.abandoned,  # handed back meanwhile: its row is queued again, fenced out
        )  # fmt: skip
        if settled is None:
            if not job.abandoned:  # the claim was lost or the write fenced out: someone else has it
                self._finish(job)
            return
        if settled.retry:
            self._later(job, int(settled.values["not_before"]))
            return
        self.finished += 1
        self._notify({**row, **settled.values})
        self._finish(job)

    def _later(self, job: _Job, due: int) -> None:
        """Hold the job (and its offset) until its retry is due."""
        job.state = "later"
        job.row = None
        self.scheduler.later((job.namespace, job.name), job.queue_row(), due)

    async def _write(self, job: _Job, row: ActivationRow, values: ActivationFields) -> bool:
        return await self.writes.submit((job.aid, _fence(row), values))

    def _notify(self, row: ActivationRow) -> None:
        """A final record's notice on the results topic, for a blocking invoke waiting in another process.
        Activations a rule made (a trigger fired, a storage event) have no one waiting: none for them."""
        if row.get("state") in FINAL_STATES and not row.get("rule"):
            try:
                self.publisher.notify(row)
            except Exception:
                log.exception("invoker: the notice of %s was not sent", row.get("activation_id"))

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("invoker: fatal Kafka error %s", err.str())
        elif err.code() not in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            log.warning("invoker: %s", err.str())

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        await self.start()
        waiter = asyncio.create_task(stop.wait())
        ended = asyncio.create_task(self._stopped.wait())
        await asyncio.wait({waiter, ended}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        ended.cancel()
        await self.stop()
