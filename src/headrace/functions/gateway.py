"""The functions API's back end on a frontend whose activations run on `headrace invoker` processes (the Kafka
transport), with or without a controller in the same process.

Invokes, trigger fires and redrives are written to the database as the embedded controller writes them (the
activation row first: a client that gets an activation id can always read its record), then published to
the activation topic, and answered once Kafka has acknowledged them. A blocking invoke waits for the notice
on the results topic (or finds the record in the database). Entities are read from the database when
needed, so every frontend sees every other frontend's changes; the controller follows them itself
(`Controller(follow_entities=True)`), and one in this process is told at once (`on_change`).

Per-process state, and what it means with several frontends behind one name: the per-minute invoke and
fire limits and the in-flight count are counted per frontend (the namespace's effective limits are that
many times the settings), and a blocking invoke is answered by the frontend it was sent to.

If this process dies between its database commit and Kafka's acknowledgement, the activation stays queued
without a message, marked unpublished (`fn_activations.published`): the controller publishes it again, in a
sweep every HEADRACE_FN_SWEEP_SECONDS (30) for those queued a minute ago or more, and all queued ones when it
starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.engine import Connection

from headrace.db.engine import Database
from headrace.functions.engine import fire_plan, invocation_row
from headrace.functions.kafka_transport import ActivationPublisher, ResultWaiters
from headrace.functions.store import FunctionStore

log = logging.getLogger("headrace.functions")

#: How long an API call waits for Kafka to acknowledge before it answers anyway (the row is queued).
PUBLISH_WAIT = 10.0


class RemoteFunctions:
    def __init__(
        self,
        db: Database,
        publisher: ActivationPublisher,
        results: ResultWaiters,
        *,
        max_workers: int = 0,
        on_change: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.store = FunctionStore(db, via_kafka=True)
        self.publisher = publisher
        self.results = results
        self.max_workers = max_workers
        self.on_change = on_change

    async def reload(self) -> None:
        """An entity changed through this frontend."""
        if self.on_change is not None:
            await self.on_change()

    def invocations_in_flight(self, namespace: str) -> int:
        return self.results.in_flight(namespace)

    async def _publish(self, rows: list[dict[str, Any]], actions: dict[tuple[str, str], dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            await asyncio.wait_for(self.publisher.publish(rows, actions), PUBLISH_WAIT)
        except Exception as exc:  # Kafka away: the producer keeps trying; the rows are queued meanwhile
            log.warning("functions: %d activations not yet acknowledged by Kafka: %s", len(rows), exc)

    async def invoke(
        self, namespace: str, action: str, params: dict[str, Any], *, cause: str | None = None
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        a = await self.db.read(self.store.get, "actions", namespace, action)
        if a is None:
            raise LookupError(action)
        row = invocation_row(a, namespace, action, params, cause)
        fut = self.results.wait(row["activation_id"], namespace)
        try:
            await self.db.group.run(self.store.enqueue_in, row)
        except BaseException:
            fut.cancel()
            raise
        await self._publish([row], {(namespace, action): a})
        return row["activation_id"], fut

    async def fire(self, namespace: str, trigger: dict[str, Any], payload: dict[str, Any]) -> str | None:
        rules = await self.db.read(self.store.active_rules, namespace, trigger["name"])
        if not rules:
            return None
        actions: dict[tuple[str, str], dict[str, Any]] = {}
        for rule in rules:
            found = await self.db.read(self.store.get, "actions", namespace, rule["action"])
            if found is not None:
                actions[(namespace, rule["action"])] = found
        record, rows = fire_plan(namespace, trigger, payload, rules, actions)

        def write(conn: Connection) -> None:
            self.store.record_in(conn, record)
            for row in rows:
                self.store.enqueue_in(conn, row)

        await self.db.group.run(write)
        await self._publish(rows, actions)
        return str(record["activation_id"])

    async def redrive(self, namespace: str, ids: list[str] | None) -> int:
        dead = await self.db.read(self.store.activations, namespace, limit=0, states=("dead",))
        chosen = [d for d in dead if ids is None or d["activation_id"] in ids]
        actions: dict[tuple[str, str], dict[str, Any]] = {}
        for d in chosen:
            d.update(await self.db.group.run(self.store.redrive_in, d["activation_id"]))
            key = (namespace, d["name"])
            if key not in actions:
                found = await self.db.read(self.store.get, "actions", namespace, d["name"])
                if found is not None:
                    actions[key] = found
        await self._publish(chosen, actions)
        return len(chosen)
