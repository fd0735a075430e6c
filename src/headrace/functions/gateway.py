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

from headrace.db.engine import Database
from headrace.functions.dispatch import Actions, Dispatcher
from headrace.functions.entities import ActivationRow
from headrace.functions.kafka_transport import ActivationPublisher, ResultWaiters
from headrace.functions.store import FunctionStore

log = logging.getLogger("headrace.functions")

#: How long an API call waits for Kafka to acknowledge before it answers anyway (the row is queued).
PUBLISH_WAIT = 10.0


class RemoteFunctions(Dispatcher):
    """invoke, fire and redrive (dispatch.Dispatcher) with entities read from the database, activations
    published to the activation topic, and their records awaited on the results topic."""

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

    def waiter(self, activation_id: str, namespace: str) -> asyncio.Future[ActivationRow]:
        return self.results.wait(activation_id, namespace)

    async def send(self, rows: list[ActivationRow], actions: Actions) -> None:
        if not rows:
            return
        try:
            await asyncio.wait_for(self.publisher.publish(rows, actions), PUBLISH_WAIT)
        except Exception as exc:  # Kafka away: the producer keeps trying; the rows are queued meanwhile
            log.warning("functions: %d activations not yet acknowledged by Kafka: %s", len(rows), exc)
