"""The controller: from storage events to finished activations, at least once.

- The feed loop reads the event log from its stored position and, for every (event, active rule of a
  trigger whose storage-feed filter matches), queues one activation. The activations and the new position
  commit in one transaction, and each carries a unique (rule, event offset) key: a crash or a replay never
  makes a second one, and never skips one.
- Queued activations go to a transport (`messages.Publisher`): embedded, this process's scheduler
  (`engine.InProcess`); with a publisher, the activation topic.
- Embedded, the scheduler (`engine.Scheduler`, the one `headrace invoker` runs too) keeps a queue per
  action and starts activations while the action has fewer running than its maxScale (and the server fewer
  than its global cap); with `ordered`, activations for one path run one at a time in event order.
- An activation is acknowledged (done) only when its function has finished. A failed one is retried after
  an exponential backoff with jitter, up to `retries` more times, then dead-lettered; an event older than
  `maxEventAge` is dead-lettered without running (those decisions: functions/engine.py). After a restart,
  queued activations run, and those that were running when the server stopped run again as their next
  attempt.
- The autoscaler sizes each action's warm workers: up at once (every activation takes or forks a worker),
  down to the demand after a stable window, to zero after `idleSeconds` without work, never below minScale.
- A storage event caused by an activation chain longer than `max_chain` fires nothing (and is logged).

With a `publisher` (the Kafka transport, `headrace controller --kafka`), nothing runs here: every queued
activation is published to the activation topic for `headrace invoker` processes, which claim, run, retry
and record them (functions/kafka_invoker.py); at start every queued activation is published again (a
duplicate is recognised by the invoker that gets it), and running ones are left to the invokers. With
`follow_entities`, actions, triggers and rules changed by other processes (frontends) are re-read before
each batch of events is matched, so a rule committed before an event always sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from headrace.auth.users import Subjects
from headrace.db.schema import fn_activations, state
from headrace.events.access import Directories, Reader
from headrace.events.model import StorageEvent
from headrace.events.sources.store import Readers, SourceStore
from headrace.functions import engine, feed, names, packages
from headrace.functions.dispatch import Dispatcher, activation_row
from headrace.functions.entities import ActionRow, ActivationFields, ActivationRow, RuleRow
from headrace.functions.invoker import ActionPool
from headrace.functions.messages import Publisher, is_ordered
from headrace.functions.model import STORAGE_FEED, FeedFilter, JSONObject, as_dict, feed_filter
from headrace.functions.runner import (
    ActionQueue,
    Runner,
    capacity,
    default_worker_cap,
    internal,
)
from headrace.functions.store import FunctionStore, Updates, now_ms
from headrace.metrics import EVENT_CONSUMER_LAG
from headrace.storage.service import StorageService

log = logging.getLogger("headrace.functions")

POSITION = "functions-controller-offset"
#: Events the feed reads on the loop (EventLog.next_batch's `inline`): a PUT's events, found at once.
FEED_INLINE = 64
# Built once: SQLAlchemy caches a statement object's SQL, while one built per batch costs more than its run.
_DELETE_POSITION = delete(state).where(state.c.name == POSITION)
_INSERT_STATE = insert(state)

__all__ = ["ActionQueue", "Controller", "default_worker_cap"]


@dataclass
class FeedTrigger:
    namespace: str
    name: str
    filter: FeedFilter
    parameters: JSONObject


class Controller(Dispatcher):
    def __init__(
        self,
        service: StorageService,
        *,
        code_root: Path,
        max_chain: int = 8,
        max_workers: int = 0,
        api_url: str = "",
        door_url: str = "",
        publisher: Publisher | None = None,
        follow_entities: bool = False,
        sweep_seconds: float = 30.0,
    ) -> None:
        self.service = service
        self.db = service.db
        self.log = service.log
        self.store = FunctionStore(service.db, via_kafka=publisher is not None)
        self.updates = Updates(service.db, self.store)
        self.code_root = code_root
        self.max_chain = max_chain
        self.max_workers = max_workers or default_worker_cap()
        self.api_url = api_url
        self.door_url = door_url
        #: Without a publisher (the Kafka transport) activations run here, on this process's scheduler.
        self.embedded = publisher is None
        #: With the Kafka transport: how often to look for activations queued without an acknowledged message.
        self.sweep_seconds = sweep_seconds
        self.follow_entities = follow_entities
        self._entity_stamp: tuple[Any, ...] | None = None
        #: One reload at a time: concurrent ones could apply out of order, an older snapshot last
        self._reload_lock = asyncio.Lock()
        self.actions: dict[tuple[str, str], ActionRow] = {}
        self.triggers: list[FeedTrigger] = []
        self.rules: dict[tuple[str, str], list[RuleRow]] = {}
        self.runner = Runner(
            service,
            code_root=code_root,
            api_url=api_url,
            door_url=door_url,
            lookup=self.action,
            max_workers=self.max_workers,
        )
        self.scheduler = engine.Scheduler(
            self.runner,
            self.max_workers,
            run=self._run,
            capacity=lambda key: capacity(self.actions.get(key)),
            ordered=lambda key: is_ordered(self.actions.get(key)),
        )
        #: Where queued activations go: this process's scheduler, or the activation topic.
        self.transport: Publisher = publisher if publisher is not None else engine.InProcess(self.scheduler)
        #: Invocations through the API waiting for their record: activation id -> (namespace, future).
        self.waiters: dict[str, tuple[str, asyncio.Future[ActivationRow]]] = {}
        self.position = 0
        #: Who the triggers' owners are and the directories' permissions, for judging events at delivery.
        self.dirs = Directories()
        self._owners = Subjects(service.users)  # the triggers' owners, judged against events
        #: The readers of the sources the current batch's events come from (a source deleted: absent).
        self._source_readers: dict[str, Readers] = {}
        self._sources = SourceStore(service.db)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pools(self) -> dict[str, ActionPool]:
        return self.runner.pools

    @property
    def queues(self) -> dict[tuple[str, str], ActionQueue]:
        return self.scheduler.queues

    @property
    def running_total(self) -> int:
        return self.scheduler.running_total

    # -- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.embedded:  # with invokers elsewhere, a running activation is theirs to finish
            requeued = await self.db.write(self.store.running_to_queued)
            if requeued:
                log.warning("functions: %d activations were running when the server stopped; they run again", requeued)
        await self.reload()
        stored = await self.db.read(self.service.get_state, POSITION)
        if stored is not None:
            self.position = int(stored)
        else:  # the first start: from now on (history fires nothing), remembered from here
            self.position = await self.db.read(self.log.head)
            await self.db.write(self._store_position, self.position)
        await self._load_queued()
        self._tasks = [asyncio.create_task(self._feed_forever())]
        if self.embedded:
            self._tasks += [
                asyncio.create_task(self.scheduler.schedule_forever()),
                asyncio.create_task(self.scheduler.autoscale_forever(lambda: self.actions)),
            ]
        else:
            self._tasks.append(asyncio.create_task(self._sweep_forever()))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if not self.triggers:
            await self.db.write(self._store_position, self.position)
        await self.scheduler.stop()
        await self.runner.close()

    def _entities_stamp(self) -> tuple[Any, ...]:
        return self.store.stamp()

    async def _follow_entities(self) -> None:
        """Re-read actions, triggers and rules if another process has changed them (`follow_entities`)."""
        if not self.follow_entities:
            return
        stamp = await self.db.read(self._entities_stamp)
        if stamp != self._entity_stamp:
            await self.reload()

    async def reload(self) -> None:
        """Re-read actions, triggers and rules (the API calls this after every change). One at a time: two
        API writes reloading side by side could read in one order and apply in the other, an action just
        created then missing (404 on its invoke) until the next change. In turn, each reload reads after
        the writes that came before it and applies after the reloads that came before it."""
        async with self._reload_lock:
            await self._reload()

    async def _reload(self) -> None:
        stamp, actions, triggers, rules, pkgs = await self.db.read(
            lambda: (
                self.store.stamp() if self.follow_entities else None,
                self.store.all("actions"),
                self.store.all("triggers"),
                self.store.all("rules"),
                self.store.all("packages"),
            )
        )
        self._entity_stamp = stamp
        # an action in a package runs with the package's parameters under its own
        in_packages = packages.by_key(pkgs)
        actions = [packages.inherit(a, in_packages) for a in actions]
        self.actions = {(a["namespace"], a["name"]): a for a in actions}
        fed: list[FeedTrigger] = []
        for t in triggers:
            params = t.get("feed_params")
            if t.get("feed") == STORAGE_FEED and params is not None:
                try:
                    f = feed_filter(params)
                except ValueError as exc:
                    log.warning("functions: trigger %s/%s has a bad feed filter: %s", t["namespace"], t["name"], exc)
                    continue
                fed.append(FeedTrigger(t["namespace"], t["name"], f, as_dict(t["parameters"])))
        if fed and not self.triggers and self._tasks:
            # the feed was skipping events with no trigger to fire; from here on it reads them: record where
            # it starts, so that a crash cannot replay older events into the new trigger
            await self.db.write(self._store_position, self.position)
        self.triggers = fed
        by_trigger: dict[tuple[str, str], list[RuleRow]] = {}
        for r in rules:
            if r["status"] == "active":
                by_trigger.setdefault((r["namespace"], r["trigger"]), []).append(r)
        self.rules = by_trigger
        # pools of versions gone: closed now if idle, else by the autoscaler when idle
        await self.runner.drop_pools_except({Runner.key(a) for a in actions})
        self.scheduler.wake.set()

    #: How long after being queued an activation without an acknowledged message counts as stranded (a
    #: frontend answers within 10 s, acknowledged or not; the marks are written every 0.2 s).
    STRANDED_AFTER_MS = 60_000

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self._sweep()
            except Exception:
                log.exception("functions: the sweep for unpublished activations failed; trying again later")

    async def _sweep(self) -> int:
        """Publish again the activations queued long ago whose message Kafka never acknowledged (their
        publisher died between its commit and the acknowledgement), except those this process has in flight."""
        rows = await self.db.read(self.store.unpublished, now_ms() - self.STRANDED_AFTER_MS)
        rows = [r for r in rows if r["activation_id"] not in self.transport.unacknowledged]
        if rows:
            await self._follow_entities()
            self.transport.submit(rows, self.actions)
            log.warning("functions: published again %d activations queued without an acknowledged message", len(rows))
        return len(rows)

    async def _load_queued(self) -> None:
        after: tuple[int, str] | None = None
        published = 0
        while rows := await self.db.read(self.store.queued, 1000, after):
            self.transport.submit(rows, self.actions)  # due or not: held until it is (here or by an invoker)
            published += len(rows)
            after = (rows[-1]["created"], rows[-1]["activation_id"])
        if published and not self.embedded:
            log.info("functions: published the %d queued activations again for the invokers", published)
        self.scheduler.wake.set()

    # -- the feed ---------------------------------------------------------------------------------------

    async def _feed_forever(self) -> None:
        stored_at = time.monotonic()
        while True:
            try:
                if not self.triggers:  # nothing to fire: follow the head, store it now and then
                    head = await self.log.wait_beyond(self.position, 5.0)
                    await self._follow_entities()  # a trigger made before these events fires for them
                    if self.triggers:
                        continue
                    if head > self.position:
                        self.dirs.known.clear()  # events passed unread: what they changed is not known
                    if head > self.position and time.monotonic() - stored_at >= 5.0:
                        await self.db.write(self._store_position, head)
                        stored_at = time.monotonic()
                    self.position = max(self.position, head)
                    EVENT_CONSUMER_LAG.labels("functions").set(0)
                    continue
                batch = await self.log.next_batch(self.position, 1000, 5.0, inline=FEED_INLINE)
                if not batch:
                    continue
                await self._follow_entities()
                if not self.triggers:
                    continue
                last = batch[-1].offset
                await self._prepare(batch)
                if self.embedded and not any(ev.cause for ev in batch):
                    # Embedded, the activations start while their rows and the new position commit: their
                    # mark as running and their record are written after the rows (the group commit keeps
                    # the order its calls were made in). A crash before the commit replays these events
                    # (the position did not move) and runs them again: at least once, as a crash in the
                    # function would. Events caused by activations need their chain's depth from the
                    # database first (the other way).
                    rows = self._rows_in(None, batch)
                    # (copies: the scheduler updates its rows in place, the writer thread reads these)
                    copies: list[ActivationRow] = [cast(ActivationRow, dict(r)) for r in rows]
                    writing = asyncio.ensure_future(self.db.group.run(self._insert_in, copies, last))
                    if rows:
                        self.transport.submit(rows, self.actions)
                    await writing
                else:
                    made = await self.db.group.run(self._enqueue_batch_in, batch, last)
                    if made:
                        self.transport.submit(made, self.actions)
                stored_at = time.monotonic()
                self.position = last
                EVENT_CONSUMER_LAG.labels("functions").set(0 if len(batch) < 1000 else 1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("functions: feed failed; retrying")
                await asyncio.sleep(1.0)

    def _store_position_in(self, conn: Connection, offset: int) -> None:
        conn.execute(_DELETE_POSITION)
        conn.execute(_INSERT_STATE, {"name": POSITION, "value": str(offset)})

    def _store_position(self, offset: int) -> None:
        with self.db.engine.begin() as conn:
            self._store_position_in(conn, offset)

    async def _prepare(self, batch: list[StorageEvent]) -> None:
        """Read what judging a batch's events takes (events.access): the triggers' owners (a namespace is its
        user's) and, unless all are administrators, the permissions of the directories the events name."""
        ids = self.dirs.needed(batch)
        owners = {t.namespace for t in self.triggers}
        unknown = self._owners.stale(owners)  # new owners, and those looked up too long ago
        remote = {ev.source for ev in batch if ev.source is not None}
        # Who may read the sources of the batch's remote events, read for each batch: a reader removed, or
        # the source deleted, fires nothing from the next batch on.
        self._source_readers = await self.db.read(self._sources.readers, remote) if remote else {}

        def judged_by_permissions() -> bool:
            return bool(ids) and not self._owners.all_admin(owners)

        if not unknown and not judged_by_permissions():
            return  # e.g. only administrators' triggers: nothing to read

        def read() -> None:
            self._owners.refresh(unknown)  # a user removed since is None: their triggers fire for nothing
            if judged_by_permissions():
                with self.db.reader.connect() as conn:
                    self.dirs.load(conn, ids)

        await self.db.read(read)

    def _enqueue_batch_in(self, conn: Connection, batch: list[StorageEvent], last: int) -> list[ActivationRow]:
        """In the caller's transaction: the activations these events make (each only as far as the trigger's
        owner may read it: feed.deliverable), and the feed's new position."""
        made = [row for row in self._rows_in(conn, batch) if self.store.enqueue_in(conn, row)]
        self._store_position_in(conn, last)
        return made

    def _insert_in(self, conn: Connection, rows: list[ActivationRow], last: int) -> None:
        """In the caller's transaction: activations made on the loop (`_rows_in` without a connection), and the
        feed's new position."""
        for row in rows:
            self.store.enqueue_in(conn, row)
        self._store_position_in(conn, last)

    def _rows_in(self, conn: Connection | None, batch: list[StorageEvent]) -> list[ActivationRow]:
        """The activations these events make; `conn` reads the depth of the activation chains that caused
        them (None: no event of the batch has a cause)."""
        made: list[ActivationRow] = []
        for ev in batch:
            readers = self._source_readers.get(ev.source) if ev.source is not None else None
            for trig in self.triggers:
                reader = Reader(self._owners.get(trig.namespace))
                readable = readers is not None and readers.admit(reader.subject)
                flags = feed.deliverable(ev, trig.filter, reader, self.dirs, source_readable=readable)
                if not flags:
                    continue
                rules = self.rules.get((trig.namespace, trig.name), [])
                if not rules:
                    continue
                depth = self._depth_in(conn, ev.cause)
                if depth > self.max_chain:
                    log.warning(
                        "functions: event %d on %s comes from an activation chain of %d (> %d): it fires nothing",
                        ev.offset, ev.path, depth, self.max_chain,
                    )  # fmt: skip
                    continue
                for flag, both_sides in flags:
                    args = {**trig.parameters, **feed.payload(ev, flag, both_sides=both_sides)}
                    # one path's events run in order; another system's path is not this namespace's
                    order_key = args.get("path") if ev.source is None else f"{ev.source}:{args.get('path')}"
                    for rule in rules:
                        row = self._activation_row(rule["namespace"], rule["action"], args, depth=depth)
                        if row is None:
                            continue
                        row.update(
                            {
                                "rule": rule["name"],
                                "trigger": trig.name,
                                "event_offset": ev.offset,
                                "event_time": ev.time // 1000,
                                "cause": ev.cause,
                                "dedup": f"{rule['id']}:{ev.offset}:{flag}",
                                "order_key": order_key,
                            }
                        )
                        made.append(row)
        return made

    def _depth_in(self, conn: Connection | None, cause: str | None) -> int:
        if not cause:
            return 0
        assert conn is not None
        found = conn.execute(select(fn_activations.c.depth).where(fn_activations.c.activation_id == cause)).first()
        return (int(found.depth) + 1) if found else 1

    def _activation_row(self, namespace: str, action: str, args: JSONObject, *, depth: int = 0) -> ActivationRow | None:
        home = names.parse(action, namespace)  # a rule's action may be in another namespace's shared package
        row = activation_row(
            self.actions.get((home.namespace, home.path)), home.namespace, home.path, args, depth=depth
        )
        if row is not None:
            row["subject"] = namespace
        return row

    # -- the API's invocations, fires and redrives (dispatch.Dispatcher): entities from memory ---------------

    async def action(self, namespace: str, name: str) -> ActionRow | None:
        return self.actions.get((namespace, name))

    async def active_rules(self, namespace: str, trigger: str) -> list[RuleRow]:
        return self.rules.get((namespace, trigger), [])

    def waiter(self, activation_id: str, namespace: str) -> asyncio.Future[ActivationRow]:
        fut: asyncio.Future[ActivationRow] = asyncio.get_running_loop().create_future()
        self.waiters[activation_id] = (namespace, fut)
        return fut

    def unwait(self, activation_id: str, future: asyncio.Future[ActivationRow]) -> None:
        self.waiters.pop(activation_id, None)
        future.cancel()

    async def send(self, rows: list[ActivationRow], actions: Mapping[tuple[str, str], ActionRow]) -> None:
        self.transport.submit(rows, actions)

    def invocations_in_flight(self, namespace: str) -> int:
        return sum(1 for ns, _ in self.waiters.values() if ns == namespace)

    # -- scheduling -------------------------------------------------------------------------------------

    async def _run(self, key: tuple[str, str], row: ActivationRow) -> None:
        try:
            await self._attempt(key, row)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("functions: activation %s failed inside the controller", row["activation_id"])
            await self._finish(row, "dead", internal("The controller failed running the activation."))

    async def _attempt(self, key: tuple[str, str], row: ActivationRow) -> None:
        aid = row["activation_id"]
        start = now_ms()

        async def mark_running() -> bool:
            await self.updates.update(aid, {"state": "running", "start": start, "attempt": row["attempt"]})
            return True

        async def write(values: ActivationFields) -> bool:
            await self.updates.update(aid, values)
            return True

        # Marked running while the function already runs: a crash before this commits leaves the activation
        # queued, and it runs again all the same (at least once); the next update is queued after this one.
        settled = await engine.attempt(
            self.runner, self.actions.get(key), key[1], row,
            start=start, claim=asyncio.ensure_future(mark_running()), write=write,
        )  # fmt: skip
        if settled is None:  # (only a fenced write or a lost claim says so: neither happens here)
            return
        if settled.retry:
            row["attempt"] = settled.values["attempt"]
            row["not_before"] = settled.values["not_before"]
            self.scheduler.later(key, row, int(row["not_before"]))
        else:
            self._answer(row, settled.values)

    async def _finish(self, row: ActivationRow, final: str, record: ActivationFields) -> None:
        """Write a final record outside an attempt (the controller failed running it)."""
        record = {**record, "state": final}
        await self.db.group.run(self.store.update_in, row["activation_id"], **record)
        engine.count_final(row["name"], record)
        self._answer(row, record)

    def _answer(self, row: ActivationRow, record: ActivationFields) -> None:
        """A blocking invoke waiting for this activation gets its final record."""
        _, fut = self.waiters.pop(row["activation_id"], (None, None))
        if fut is not None and not fut.done():
            fut.set_result({**row, **record})

    # -- workers ----------------------------------------------------------------------------------------

    async def autoscale(self) -> None:
        await self.scheduler.autoscale(self.actions)
