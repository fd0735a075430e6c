"""The controller: from storage events to finished activations, at least once.

- The feed loop reads the event log from its stored position and, for every (event, active rule of a
  trigger whose storage-feed filter matches), queues one activation. The activations and the new position
  commit in one transaction, and each carries a unique (rule, event offset) key: a crash or a replay never
  makes a second one, and never skips one.
- The scheduler keeps a queue per action and starts activations while the action has fewer running than
  its maxScale (and the server fewer than its global cap); with `ordered`, activations for one path run one
  at a time in event order.
- An activation is acknowledged (done) only when its function has finished. A failed one is retried after
  an exponential backoff with jitter, up to `retries` more times, then dead-lettered; an event older than
  `maxEventAge` is dead-lettered without running. After a restart, queued activations run, and those that
  were running when the server stopped run again as their next attempt.
- The autoscaler sizes each action's warm workers: up at once (every activation takes or forks a worker),
  down to the demand after a stable window, to zero after `idleSeconds` without work, never below minScale.
- A storage event caused by an activation chain longer than `max_chain` fires nothing (and is logged).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import io
import json
import logging
import math
import os
import random
import shutil
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Connection

from headrace.db.schema import fn_activations, state
from headrace.events.model import StorageEvent
from headrace.functions import feed
from headrace.functions.invoker import ActionPool, ActionSpec, Outcome
from headrace.functions.model import STORAGE_FEED, FeedFilter, as_dict, feed_filter
from headrace.functions.store import FunctionStore, new_activation_id, now_ms
from headrace.metrics import (
    EVENT_CONSUMER_LAG,
    FN_ACTIVATIONS,
    FN_COLD_STARTS,
    FN_LATENCY,
    FN_QUEUED,
    FN_RUNNING,
    FN_WORKERS,
)
from headrace.storage.service import StorageService

log = logging.getLogger("headrace.functions")

POSITION = "functions-controller-offset"
BACKOFF_BASE_MS = 500
BACKOFF_MAX_MS = 5 * 60_000
TOKEN_VALIDITY_MS = 10 * 60_000
SCALE_DOWN_WINDOW = 10.0  # seconds a pool must have been larger than needed before it shrinks


@dataclass
class ActionQueue:
    items: deque[dict[str, Any]] = field(default_factory=deque)
    running: int = 0
    busy_keys: set[str] = field(default_factory=set)
    surplus_since: float | None = None
    last_work: float = field(default_factory=time.monotonic)


@dataclass
class FeedTrigger:
    namespace: str
    name: str
    filter: FeedFilter
    parameters: dict[str, Any]


def backoff_ms(attempt: int) -> int:
    """Full-jitter exponential backoff before attempt `attempt + 1`."""
    ceiling = min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** max(0, attempt - 1))
    return int(ceiling / 2 + random.random() * ceiling / 2)


class Controller:
    def __init__(
        self,
        service: StorageService,
        *,
        code_root: Path,
        max_chain: int = 8,
        max_workers: int = 0,
        api_url: str = "",
        door_url: str = "",
    ) -> None:
        self.service = service
        self.db = service.db
        self.log = service.log
        self.store = FunctionStore(service.db)
        self.code_root = code_root
        self.max_chain = max_chain
        self.max_workers = max_workers or default_worker_cap()
        self.api_url = api_url
        self.door_url = door_url
        self.actions: dict[tuple[str, str], dict[str, Any]] = {}
        self.triggers: list[FeedTrigger] = []
        self.rules: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.pools: dict[str, ActionPool] = {}
        self.queues: dict[tuple[str, str], ActionQueue] = {}
        self.delayed: list[tuple[int, str, dict[str, Any]]] = []  # (not_before, id, row) heap
        #: Invocations through the API waiting for their record: activation id -> (namespace, future).
        self.waiters: dict[str, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._tokens: dict[str, tuple[str, int]] = {}  # namespace -> (macaroon, valid until, ms)
        self.position = 0
        self.running_total = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._runs: set[asyncio.Task[None]] = set()

    # -- life -------------------------------------------------------------------------------------------

    async def start(self) -> None:
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
        self._tasks = [
            asyncio.create_task(self._feed_forever()),
            asyncio.create_task(self._schedule_forever()),
            asyncio.create_task(self._autoscale_forever()),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if not self.triggers:
            await self.db.write(self._store_position, self.position)
        for t in list(self._runs):
            t.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)
        for pool in self.pools.values():
            await pool.close()

    async def reload(self) -> None:
        """Re-read actions, triggers and rules (the API calls this after every change)."""
        actions, triggers, rules = await self.db.read(
            lambda: (self.store.all("actions"), self.store.all("triggers"), self.store.all("rules"))
        )
        self.actions = {(a["namespace"], a["name"]): a for a in actions}
        fed: list[FeedTrigger] = []
        for t in triggers:
            if t.get("feed") == STORAGE_FEED and t.get("feed_params") is not None:
                try:
                    f = feed_filter(t["feed_params"])
                except ValueError as exc:
                    log.warning("functions: trigger %s/%s has a bad feed filter: %s", t["namespace"], t["name"], exc)
                    continue
                fed.append(FeedTrigger(t["namespace"], t["name"], f, as_dict(t["parameters"])))
        if fed and not self.triggers and self._tasks:
            # the feed was skipping events with no trigger to fire; from here on it reads them: record where
            # it starts, so that a crash cannot replay older events into the new trigger
            await self.db.write(self._store_position, self.position)
        self.triggers = fed
        by_trigger: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in rules:
            if r["status"] == "active":
                by_trigger.setdefault((r["namespace"], r["trigger"]), []).append(r)
        self.rules = by_trigger
        live = {self._key(a) for a in actions}
        for key in [k for k in self.pools if k not in live]:
            pool = self.pools.pop(key)
            if not pool.busy:
                await pool.close()
            else:
                self.pools[key] = pool  # still running: closed by the autoscaler when idle
        self._wake.set()

    async def _load_queued(self) -> None:
        after: tuple[int, str] | None = None
        while rows := await self.db.read(self.store.queued, 1000, after):
            for row in rows:
                self._enqueue_memory(row)
            after = (rows[-1]["created"], rows[-1]["activation_id"])
        self._wake.set()

    # -- the feed ---------------------------------------------------------------------------------------

    async def _feed_forever(self) -> None:
        stored_at = time.monotonic()
        while True:
            try:
                if not self.triggers:  # nothing to fire: follow the head, store it now and then
                    head = await self.log.wait_beyond(self.position, 5.0)
                    if self.triggers:
                        continue
                    if head > self.position and time.monotonic() - stored_at >= 5.0:
                        await self.db.write(self._store_position, head)
                        stored_at = time.monotonic()
                    self.position = max(self.position, head)
                    EVENT_CONSUMER_LAG.labels("functions").set(0)
                    continue
                batch = await self.log.next_batch(self.position, 1000, 5.0)
                if not batch:
                    continue
                last = batch[-1].offset
                made = await self.db.group.run(self._enqueue_batch_in, batch, last)
                stored_at = time.monotonic()
                self.position = last
                for row in made:
                    self._enqueue_memory(row)
                if made:
                    self._wake.set()
                EVENT_CONSUMER_LAG.labels("functions").set(0 if len(batch) < 1000 else 1000)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("functions: feed failed; retrying")
                await asyncio.sleep(1.0)

    def _store_position_in(self, conn: Connection, offset: int) -> None:
        conn.execute(delete(state).where(state.c.name == POSITION))
        conn.execute(insert(state).values(name=POSITION, value=str(offset)))

    def _store_position(self, offset: int) -> None:
        with self.db.engine.begin() as conn:
            self._store_position_in(conn, offset)

    def _enqueue_batch_in(self, conn: Connection, batch: list[StorageEvent], last: int) -> list[dict[str, Any]]:
        """In the caller's transaction: the activations these events make, and the feed's new position."""
        made: list[dict[str, Any]] = []
        for ev in batch:
            for trig in self.triggers:
                flags = feed.matches(ev, trig.filter)
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
                for flag in flags:
                    args = {**trig.parameters, **feed.payload(ev, flag)}
                    for rule in rules:
                        row = self._activation_row(rule["namespace"], rule["action"], args, depth=depth)
                        if row is None:
                            continue
                        row.update(
                            rule=rule["name"],
                            trigger=trig.name,
                            event_offset=ev.offset,
                            event_time=ev.time // 1000,
                            cause=ev.cause,
                            dedup=f"{rule['id']}:{ev.offset}:{flag}",
                            order_key=args.get("path"),
                        )
                        if self.store.enqueue_in(conn, row):
                            made.append(row)
        self._store_position_in(conn, last)
        return made

    def _depth_in(self, conn: Connection, cause: str | None) -> int:
        if not cause:
            return 0
        found = conn.execute(select(fn_activations.c.depth).where(fn_activations.c.activation_id == cause)).first()
        return (int(found.depth) + 1) if found else 1

    def _activation_row(
        self, namespace: str, action: str, args: dict[str, Any], *, depth: int = 0
    ) -> dict[str, Any] | None:
        a = self.actions.get((namespace, action))
        if a is None:
            return None
        retries = int(a["scaling"].get("retries", 2))
        stamp = now_ms()
        return {
            "activation_id": new_activation_id(),
            "namespace": namespace,
            "name": action,
            "version": f"0.0.{a['version']}",
            "subject": namespace,
            "state": "queued",
            "created": stamp,
            "not_before": stamp,
            "annotations": [],
            "args": args,
            "attempt": 1,
            "max_attempts": retries + 1,
            "depth": depth,
        }

    def _enqueue_memory(self, row: dict[str, Any]) -> None:
        if row["not_before"] > now_ms():
            heapq.heappush(self.delayed, (row["not_before"], row["activation_id"], row))
            return
        self.queues.setdefault((row["namespace"], row["name"]), ActionQueue()).items.append(row)

    # -- direct invocation and triggers fired through the API ------------------------------------------

    def invocations_in_flight(self, namespace: str) -> int:
        """The namespace's invocations through the API that have not finished (OpenWhisk's in-flight count)."""
        return sum(1 for ns, _ in self.waiters.values() if ns == namespace)

    async def invoke(
        self, namespace: str, action: str, params: dict[str, Any], *, cause: str | None = None
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        """Queue one activation of `action` (no retries, as OpenWhisk); its id and a future of its record."""
        row = self._activation_row(namespace, action, params)
        if row is None:
            raise LookupError(action)
        row["max_attempts"] = 1
        row["cause"] = cause
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[row["activation_id"]] = (namespace, fut)
        await self.db.group.run(self.store.enqueue_in, row)
        self._enqueue_memory(row)
        self._wake.set()
        return row["activation_id"], fut

    async def fire(self, namespace: str, trigger: dict[str, Any], payload: dict[str, Any]) -> str | None:
        """Fire a trigger: one activation per active rule (with the action's retries); None if no rule."""
        rules = self.rules.get((namespace, trigger["name"]), [])
        if not rules:
            return None
        trigger_id = new_activation_id()
        args = {**as_dict(trigger["parameters"]), **payload}
        rows = []
        logs = []
        for rule in rules:
            row = self._activation_row(namespace, rule["action"], args)
            if row is None:
                logs.append(_rule_log(rule, None, 3, f"action {rule['action']} not found"))
                continue
            row.update(rule=rule["name"], trigger=trigger["name"], cause=trigger_id)
            rows.append(row)
            logs.append(_rule_log(rule, row["activation_id"], 0, None))
        stamp = now_ms()
        record = {
            "activation_id": trigger_id,
            "namespace": namespace,
            "name": trigger["name"],
            "entity": "trigger",
            "version": f"0.0.{trigger['version']}",
            "subject": namespace,
            "state": "done",
            "created": stamp,
            "not_before": stamp,
            "start": stamp,
            "end": stamp,
            "status_code": 0,
            "result": args,
            "logs": logs,
        }

        def write(conn: Connection) -> None:
            self.store.record_in(conn, record)
            for row in rows:
                self.store.enqueue_in(conn, row)

        await self.db.group.run(write)
        for row in rows:
            self._enqueue_memory(row)
        self._wake.set()
        return trigger_id

    async def redrive(self, namespace: str, ids: list[str] | None) -> int:
        """Dead letters back to the queue as a fresh first attempt (all of the namespace's, or those named)."""
        dead = await self.db.read(self.store.activations, namespace, limit=0, states=("dead",))
        chosen = [d for d in dead if ids is None or d["activation_id"] in ids]
        for d in chosen:
            stamp = now_ms()
            values = {"state": "queued", "attempt": 1, "not_before": stamp, "created": stamp, "status_code": None}
            await self.db.group.run(self.store.update_in, d["activation_id"], **values)
            d.update(values)
            self._enqueue_memory(d)
        self._wake.set()
        return len(chosen)

    # -- scheduling -------------------------------------------------------------------------------------

    def _capacity(self, key: tuple[str, str]) -> int:
        a = self.actions.get(key)
        if a is None:
            return 1  # finishes at once as dead
        return max(1, int(a["scaling"].get("maxScale", 4))) * max(1, int(a["limits"].get("concurrency", 1)))

    def _next(self, aq: ActionQueue, ordered: bool) -> dict[str, Any] | None:
        if not ordered:
            return aq.items.popleft()
        waiting: set[str] = set()
        for i, row in enumerate(aq.items):
            k = row.get("order_key") or row["activation_id"]
            if k in aq.busy_keys or k in waiting:
                waiting.add(k)
                continue
            del aq.items[i]
            return row
        return None

    async def _schedule_forever(self) -> None:
        while True:
            timeout = None
            now = now_ms()
            while self.delayed and self.delayed[0][0] <= now:
                _, _, row = heapq.heappop(self.delayed)
                self.queues.setdefault((row["namespace"], row["name"]), ActionQueue()).items.append(row)
            if self.delayed:
                timeout = max(0.001, (self.delayed[0][0] - now) / 1000)
            for key, aq in self.queues.items():
                ordered = bool(self.actions.get(key, {}).get("scaling", {}).get("ordered", False))
                while aq.items and aq.running < self._capacity(key) and self.running_total < self.max_workers:
                    nxt = self._next(aq, ordered)
                    if nxt is None:
                        break
                    row = nxt
                    aq.running += 1
                    self.running_total += 1
                    aq.last_work = time.monotonic()
                    if ordered:
                        aq.busy_keys.add(row.get("order_key") or row["activation_id"])
                    task = asyncio.create_task(self._run(key, aq, row, ordered))
                    self._runs.add(task)
                    task.add_done_callback(self._runs.discard)
            self._publish_metrics()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _run(self, key: tuple[str, str], aq: ActionQueue, row: dict[str, Any], ordered: bool) -> None:
        try:
            await self._attempt(key, row)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("functions: activation %s failed inside the controller", row["activation_id"])
            await self._finish(row, "dead", _internal(row, "The controller failed running the activation."))
        finally:
            aq.running -= 1
            self.running_total -= 1
            aq.last_work = time.monotonic()
            if ordered:
                aq.busy_keys.discard(row.get("order_key") or row["activation_id"])
            self._wake.set()

    async def _attempt(self, key: tuple[str, str], row: dict[str, Any]) -> None:
        action = self.actions.get(key)
        aid = row["activation_id"]
        if action is None:
            await self._finish(row, "dead", _internal(row, f"The action {key[1]} does not exist (any more).", code=2))
            return
        max_age = float(action["scaling"].get("maxEventAge", 6 * 3600)) * 1000
        if row.get("event_time") and now_ms() - int(row["event_time"]) > max_age:
            await self._finish(row, "dead", _internal(row, "The event is older than the action's maxEventAge.", code=2))
            return
        start = now_ms()
        # Recorded while the function already runs: a crash before this commits leaves the activation queued,
        # and it runs again all the same (at least once); the final update is queued after this one.
        running = asyncio.ensure_future(
            self.db.group.run(self.store.update_in, aid, state="running", start=start, attempt=row["attempt"])
        )
        limits = action["limits"]
        try:
            outcome = await self._execute(action, aid, row["args"], start)
        finally:
            await running
        FN_LATENCY.labels(action["name"]).observe((outcome.end - outcome.start) / 1000)
        if outcome.cold:
            FN_COLD_STARTS.labels(action["name"]).inc()
        annotations = [
            {"key": "path", "value": f"{action['namespace']}/{action['name']}"},
            {"key": "waitTime", "value": max(0, outcome.start - int(row["created"]))},
            {"key": "kind", "value": action["exec"].get("kind", "python:3")},
            {"key": "limits", "value": limits},
            {"key": "attempt", "value": row["attempt"]},
        ]
        if outcome.cold and outcome.init_ms is not None:
            annotations.append({"key": "initTime", "value": round(outcome.init_ms)})
        if row.get("event_offset") is not None:
            annotations.append({"key": "eventOffset", "value": row["event_offset"]})
        if row.get("trigger"):
            annotations.append({"key": "causedBy", "value": "trigger"})
        record = {
            "start": outcome.start,
            "end": outcome.end,
            "status_code": outcome.status,
            "result": outcome.result,
            "logs": outcome.logs,
            "annotations": annotations,
            "attempt": row["attempt"],
        }
        if outcome.status != 0 and row["attempt"] < row["max_attempts"]:
            wait = backoff_ms(row["attempt"])
            row["attempt"] += 1
            row["not_before"] = now_ms() + wait
            record.update(state="queued", not_before=row["not_before"], attempt=row["attempt"])
            await self.db.group.run(self.store.update_in, aid, **record)
            FN_ACTIVATIONS.labels(action["name"], "retried").inc()
            self._enqueue_memory(row)
            return
        # a direct invoke (no rule) is OpenWhisk's: done whatever its outcome; an event's goes to dead letters
        final = "done" if outcome.status == 0 or not row.get("rule") else "dead"
        await self._finish(row, final, record, outcome)

    async def _execute(self, action: dict[str, Any], aid: str, args: dict[str, Any], start: int) -> Outcome:
        """Run one action (a Python function, or a sequence of them) for activation `aid`."""
        params = {**as_dict(action["parameters"]), **args}
        if action["exec"].get("kind") == "sequence":
            return await self._sequence(action, aid, params, start)
        deadline = start + int(action["limits"].get("timeout", 60_000))
        request = {
            "id": aid,
            "args": params,
            "deadline": deadline,
            "action": f"/{action['namespace']}/{action['name']}",
            "namespace": action["namespace"],
            "env": self._env(action, aid, deadline),
        }
        return await self._pool(action).run(request)

    async def _sequence(self, seq: dict[str, Any], aid: str, args: dict[str, Any], start: int) -> Outcome:
        """Each component runs with the previous one's result; each gets an activation record of its own
        (caused by the sequence's), and the sequence's logs list their ids, as OpenWhisk's do."""
        ids: list[str] = []
        result: dict[str, Any] = args
        for name in seq["exec"]["components"]:
            ns, _, short = name.strip("/").rpartition("/")
            component = self.actions.get((ns or seq["namespace"], short))
            if component is None or component["exec"].get("kind") == "sequence":
                error = f"Sequence component {name} does not exist or is itself a sequence."
                return Outcome(2, {"error": error}, ids, start, now_ms())
            cid = new_activation_id()
            ids.append(cid)
            part = await self._execute(component, cid, result, now_ms())
            record = {
                "activation_id": cid,
                "namespace": component["namespace"],
                "name": component["name"],
                "version": f"0.0.{component['version']}",
                "subject": seq["namespace"],
                "state": "done",
                "created": part.start,
                "not_before": part.start,
                "start": part.start,
                "end": part.end,
                "status_code": part.status,
                "result": part.result,
                "logs": part.logs,
                "cause": aid,
                "annotations": [{"key": "causedBy", "value": "sequence"}],
            }
            await self.db.group.run(self.store.record_in, record)
            if part.status != 0:
                return Outcome(part.status, part.result, ids, start, part.end)
            result = part.result
        return Outcome(0, result, ids, start, now_ms())

    async def _finish(
        self, row: dict[str, Any], final: str, record: dict[str, Any], outcome: Outcome | None = None
    ) -> None:
        record = {**record, "state": final}
        await self.db.group.run(self.store.update_in, row["activation_id"], **record)
        FN_ACTIVATIONS.labels(row["name"], _status_name(int(record.get("status_code") or 0), final)).inc()
        _, fut = self.waiters.pop(row["activation_id"], (None, None))
        if fut is not None and not fut.done():
            fut.set_result({**row, **record})

    def _env(self, action: dict[str, Any], aid: str, deadline: int) -> dict[str, str]:
        env = {
            "__OW_ACTIVATION_ID": aid,
            "__OW_ACTION_NAME": f"/{action['namespace']}/{action['name']}",
            "__OW_ACTION_VERSION": f"0.0.{action['version']}",
            "__OW_NAMESPACE": action["namespace"],
            "__OW_DEADLINE": str(deadline),
            "__OW_API_HOST": self.api_url,
            "HEADRACE_DOOR_URL": self.door_url,
            "HEADRACE_API_URL": self.api_url,
        }
        token = self._token(action["namespace"], deadline)
        if token:
            env["HEADRACE_TOKEN"] = token
            if any(a.get("key") == "provide-api-key" and a.get("value") for a in action.get("annotations", [])):
                env["__OW_API_KEY"] = token
        return env

    def _token(self, namespace: str, deadline: int) -> str | None:
        """A macaroon acting as the action's owner at least until the activation's deadline (for ctx.storage).
        Minted for ten minutes at a time and reused while it outlasts the deadline."""
        cached = self._tokens.get(namespace)
        if cached is not None and cached[1] > deadline + 5000:
            return cached[0]
        try:
            user = self.service.users.get(namespace)
        except Exception:
            return None
        validity_ms = max(TOKEN_VALIDITY_MS, deadline - now_ms() + 5000 + TOKEN_VALIDITY_MS // 2)
        token = self.service.macaroons.mint(
            username=user.username,
            uid=user.uid,
            gids=tuple(user.gids),
            caveats=[],
            validity=timedelta(milliseconds=validity_ms),
        )
        self._tokens[namespace] = (token, now_ms() + validity_ms - 1000)
        return token

    # -- workers ----------------------------------------------------------------------------------------

    @staticmethod
    def _key(action: dict[str, Any]) -> str:
        return f"{action['namespace']}/{action['name']}@{action['version']}"

    def _pool(self, action: dict[str, Any]) -> ActionPool:
        key = self._key(action)
        pool = self.pools.get(key)
        if pool is None:
            code_dir = self._materialize(action)
            limits = action["limits"]
            spec = ActionSpec(
                key=key,
                code_dir=code_dir,
                main=action["exec"].get("main") or "main",
                timeout_ms=int(limits.get("timeout", 60_000)),
                memory_mb=int(limits.get("memory", 256)),
                logs_mb=int(limits.get("logs", 10)),
                concurrency=int(limits.get("concurrency", 1)),
            )
            pool = self.pools[key] = ActionPool(spec)
        return pool

    def _materialize(self, action: dict[str, Any]) -> Path:
        """The action's code as files: code_root/<namespace>/<name>/<version>/."""
        target = Path(self.code_root, str(action["namespace"]), str(action["name"]), str(action["version"]))
        if (target / ".complete").exists():
            return target
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        ex = action["exec"]
        if ex.get("binary"):
            with zipfile.ZipFile(io.BytesIO(base64.b64decode(ex["code"]))) as z:
                for member in z.namelist():
                    dest = (target / member).resolve()
                    if not str(dest).startswith(str(target.resolve())):
                        raise ValueError(f"zip member escapes the action directory: {member}")
                z.extractall(target)
        else:
            (target / "__main__.py").write_text(ex["code"])
        (target / ".complete").touch()
        return target

    async def _autoscale_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.autoscale()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("functions: autoscaler failed")

    async def autoscale(self) -> None:
        now = time.monotonic()
        current = {self._key(a): a for a in self.actions.values()}
        for key, pool in list(self.pools.items()):
            action = current.get(key)
            if action is None:  # an old version: gone once idle
                if not pool.busy:
                    del self.pools[key]
                    await pool.close()
                continue
            aq = self.queues.get((action["namespace"], action["name"]), ActionQueue())
            sc = action["scaling"]
            concurrency = max(1, int(action["limits"].get("concurrency", 1)))
            low, high = int(sc.get("minScale", 0)), int(sc.get("maxScale", 4))
            desired = min(high, max(low, math.ceil((len(aq.items) + aq.running) / concurrency)))
            if pool.size < low:
                self._background(pool.warm(low))
            if pool.size > desired:
                if aq.surplus_since is None:
                    aq.surplus_since = now
                idle = now - aq.last_work
                if desired == 0 and idle >= float(sc.get("idleSeconds", 60)):
                    pool.shrink(low)
                elif desired > 0 and now - aq.surplus_since >= SCALE_DOWN_WINDOW:
                    pool.shrink(max(desired, low))
            else:
                aq.surplus_since = None
        # actions with minScale but no pool yet
        for action in self.actions.values():
            if (
                int(action["scaling"].get("minScale", 0)) > 0
                and action["exec"].get("kind") != "sequence"
                and self._key(action) not in self.pools
            ):
                self._background(self._pool(action).warm(int(action["scaling"]["minScale"])))
        self._publish_metrics()

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)

    def _publish_metrics(self) -> None:
        for (_, name), aq in self.queues.items():
            FN_QUEUED.labels(name).set(len(aq.items))
            FN_RUNNING.labels(name).set(aq.running)
        for key, pool in self.pools.items():
            FN_WORKERS.labels(key.rsplit("/", 1)[-1].split("@")[0]).set(pool.size)


def default_worker_cap() -> int:
    """Workers the server runs at once: four per CPU, and no more than memory holds at 256 MB each."""
    cpus = os.cpu_count() or 1
    try:
        with open("/proc/meminfo") as f:
            total_kb = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable"))
        by_memory = max(1, total_kb // (256 * 1024))
    except (OSError, StopIteration, ValueError):
        by_memory = 64
    return max(2, min(4 * cpus, by_memory))


def _internal(row: dict[str, Any], message: str, code: int = 3) -> dict[str, Any]:
    stamp = now_ms()
    return {"start": stamp, "end": stamp, "status_code": code, "result": {"error": message}, "logs": []}


def _status_name(code: int, final: str) -> str:
    if final == "dead":
        return "dead"
    return {0: "success", 1: "application_error", 2: "developer_error"}.get(code, "internal_error")


def _rule_log(rule: dict[str, Any], activation_id: str | None, code: int, error: str | None) -> str:
    entry: dict[str, Any] = {
        "statusCode": code,
        "success": code == 0,
        "rule": f"{rule['namespace']}/{rule['name']}",
        "action": f"{rule['namespace']}/{rule['action']}",
    }
    if activation_id:
        entry["activationId"] = activation_id
    if error:
        entry["error"] = error
    return json.dumps(entry, separators=(",", ":"))
