"""The Kafka relay: publishes the event log (the outbox) to Apache Kafka, at least once, in order per path.

Every event goes to the events topic (default "headrace-events") as a structured CloudEvent
(`application/cloudevents+json`), keyed by its path so that one file's events land in one partition, in
log order. Completed transfers and removals of files also go to topic "billing" as dCache billing records
(`headrace.events.billing`), without a key, as dCache publishes them.

Delivery: the relay reads the log from its stored position, produces with an idempotent producer
(acks=all; librdkafka keeps order within a partition across retries) and never gives up on a message
(no message timeout: while Kafka is down, events wait in the outbox and in the producer's bounded queue).
Its position (the newest offset whose messages are all acknowledged, and every earlier one's too) is stored
in the state table only after the acknowledgements, so a crash or restart re-sends at most what was
unacknowledged (at least once), and a clean stop waits for what is in flight and re-sends nothing.

Blocking producer and database calls run off the event loop; producer callbacks run only inside those
calls, one at a time, so the relay's bookkeeping needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from headrace.auth.users import Users
from headrace.config import Settings
from headrace.db.engine import Database
from headrace.errors import NotFound
from headrace.events import billing
from headrace.events.log import EventLog
from headrace.events.model import StorageEvent
from headrace.events.render import cloudevent_json
from headrace.kafka_security import client_config, is_auth_failure
from headrace.metrics import KAFKA_RELAY_LAG, KAFKA_RELAY_OFFSET
from headrace.tasks import stop_task

log = logging.getLogger("headrace.kafka")


class Source(Protocol):
    """What the relay needs of the storage service (`headrace.storage.service.StorageService`, which builds on
    this package: named by what it offers, not imported, so that the dependency runs one way)."""

    settings: Settings
    db: Database
    log: EventLog
    users: Users

    def get_state(self, name: str) -> str | None: ...

    def set_state(self, name: str, value: str | None) -> None: ...


DEFAULT_TOPIC = "headrace-events"
CLOUDEVENTS_HEADERS: list[tuple[str, str | bytes | None]] = [("content-type", b"application/cloudevents+json")]
#: librdkafka's transport errors: Kafka is unreachable (logged once per outage, not per retry).
_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
#: The brokers refused the credentials (SASL) or the TLS handshake failed: no retry helps until they change.
_REFUSED = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL}


def state_name(topic: str) -> str:
    """Where the relay to `topic` keeps its position in the state table."""
    return f"kafka-relay-offset:{topic}"


class _Batch:
    """Events produced together: confirmed once every one of their messages is acknowledged."""

    __slots__ = ("count", "error", "last", "remaining")

    def __init__(self, last: int, count: int) -> None:
        self.last = last
        self.count = count
        self.remaining = 0
        self.error: KafkaError | None = None

    def delivered(self, err: KafkaError | None, _msg: Message) -> None:
        self.remaining -= 1
        if err is not None and self.error is None:
            self.error = err


class _LibrdkafkaLog:
    """librdkafka's own log lines (a connection refused every retry) at DEBUG: the relay logs outages once."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("headrace.kafka.librdkafka")

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self.logger.debug(fmt, *args)


class KafkaRelay:
    """Publishes `service.log` to Kafka from its stored position; `run()` until `close()`."""

    #: Events read from the log and produced at a time.
    BATCH = 1000
    #: Unacknowledged events at most; past it the relay waits for acknowledgements (bounded memory).
    MAX_IN_FLIGHT = 20_000
    #: Store the position at most this often while busy (and always when idle or stopping).
    STORE_EVERY = 0.2

    def __init__(
        self,
        service: Source,
        bootstrap: str,
        *,
        topic: str = DEFAULT_TOPIC,
        billing_topic: str = billing.BILLING_TOPIC,
        door: billing.Door | None = None,
        cells: billing.Cells = billing.DEFAULT_CELLS,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.service = service
        self.bootstrap = bootstrap
        self.topic = topic
        self.billing_topic = billing_topic
        #: The door named in billing records' protocolInfo: by default this server's own.
        self.door = door or billing.Door(host=service.settings.host, port=service.settings.door_port)
        self.cells = cells
        self.extra_config = dict(config or {})
        #: SASL/TLS settings (HEADRACE_KAFKA_SECURITY_PROTOCOL, ...; headrace.kafka_security).
        self.security = service.settings.kafka_security
        #: The brokers' last refusal of the credentials or certificate (None: none since the last delivery).
        self.auth_error: str | None = None
        self.state_name = state_name(topic)
        #: Newest offset whose messages (and every earlier event's) Kafka has acknowledged; stored.
        self.position = 0
        self._stored = 0
        self._next = 1  # next offset to read
        self._head = 0
        self._batches: deque[_Batch] = deque()
        self._in_flight = 0
        self._stopping = asyncio.Event()
        self._down_since: float | None = None
        self._fatal: KafkaError | None = None
        self._subjects: dict[str, list[str]] = {}
        self._producer: Producer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop_timeout = 10.0
        self._failures = 0  # failed deliveries in a row (for the backoff and for logging)
        self._last_failure = ""

    @property
    def stored_position(self) -> int:
        """The position as last written to the state table."""
        return self._stored

    # -- life ----------------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        """Create the producer (bad settings fail here, not later) and run the relay as a task."""
        self._producer = self._new_producer()
        self._task = asyncio.create_task(self.run(), name="kafka-relay")
        return self._task

    async def close(self, timeout: float = 10.0) -> None:
        """Stop: wait up to `timeout` s for what is in flight, store the position, close the producer."""
        self._stop_timeout = timeout
        self._stopping.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout + 5)
        except TimeoutError:
            await stop_task(self._task)
        except Exception:  # the server's own shutdown must go on
            log.exception("kafka relay: error while stopping; it resumes from offset %d", self._stored + 1)

    async def run(self) -> None:
        if self._producer is None:
            self._producer = self._new_producer()
        stored = await self.service.db.read(self.service.get_state, self.state_name)
        self.position = self._stored = int(stored) if stored else 0
        self._next = self.position + 1
        self._head = await self.service.db.read(self.service.log.head)
        tail = await self.service.db.read(self.service.log.tail)
        if tail > self._next and self.position > 0:
            # Only possible if retention ran while the relay was off: it holds the log back only while on.
            log.warning(
                "kafka relay: events %d to %d left the log (retention) before they were relayed",
                self._next,
                tail - 1,
            )
        log.info(
            "kafka relay to %s topic %r from offset %d (log head %d)",
            self.bootstrap,
            self.topic,
            self.position,
            self._head,
        )
        try:
            await self._loop()
        finally:
            await self._finish()

    async def _loop(self) -> None:
        last_store = last_head = time.monotonic()
        while not self._stopping.is_set():
            try:
                if self._fatal is not None or (self._batches and self._batches[0].error is not None):
                    await self._restart_producer()
                    continue
                events: list[StorageEvent] = []
                if self._in_flight < self.MAX_IN_FLIGHT:
                    events = await self.service.db.read(self.service.log.read_from, self._next, self.BATCH)
                if events:
                    await asyncio.to_thread(self._produce, events)
                    self._next = events[-1].offset + 1
                    self._head = max(self._head, events[-1].offset)
                elif self._in_flight:
                    await asyncio.to_thread(self._serve, 0.05)
                self._confirm()
                now = time.monotonic()
                idle = not events and not self._in_flight
                if self.position != self._stored and (idle or now - last_store >= self.STORE_EVERY):
                    await self._store()
                    last_store = now
                if not events and now - last_head >= 1.0:  # waiting on Kafka: keep the lag gauge current
                    self._head = max(self._head, await self.service.db.read(self.service.log.head))
                    last_head = now
                self._update_metrics()
                if idle:
                    await self._wait_for_events(1.0)
            except Exception as exc:
                # A bug or a database error must not end the relay silently: say so, then start again from
                # the last acknowledged position (with a backoff, in _restart_producer).
                if self._failures == 0:
                    log.exception("kafka relay: unexpected error; re-sending from offset %d", self.position + 1)
                self._fatal = KafkaError(KafkaError._FAIL, f"unexpected error in the relay: {exc!r}")

    async def _finish(self) -> None:
        """Wait (bounded) for acknowledgements of what was produced, store the position, drop the rest."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        # While Kafka is unreachable there is nothing to wait for: what is in flight goes again next time.
        wait = min(1.0, self._stop_timeout) if self._down_since is not None else self._stop_timeout
        deadline = time.monotonic() + wait
        while self._in_flight and self._fatal is None and time.monotonic() < deadline:
            await asyncio.to_thread(self._serve_with, producer, 0.1)
            self._confirm()
            if self._batches and self._batches[0].error is not None:
                break
        if self._in_flight:
            log.warning(
                "kafka relay stopping with %d events unacknowledged; sent again from offset %d at the next start",
                self._in_flight,
                self.position + 1,
            )
        await self._store()
        await asyncio.to_thread(self._discard, producer)
        self._update_metrics()

    # -- producing (blocking; runs on a worker thread) -------------------------------------------------------

    def _new_producer(self) -> Producer:
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "client.id": "headrace-relay",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.num.messages": 10_000,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            # Never give up on a message: the outbox holds it anyway, and a timed-out message would have
            # to be re-sent out of order. Kafka being down shows as lag, not loss.
            "message.timeout.ms": 0,
            "queue.buffering.max.messages": 2 * self.MAX_IN_FLIGHT + 10_000,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 2000,
            "log.connection.close": False,  # the broker closing an idle connection is no outage
            "error_cb": self._on_error,
            "logger": _LibrdkafkaLog(),
            **client_config(self.security),
        }
        config.update(self.extra_config)
        return Producer(config)

    def _produce(self, events: list[StorageEvent]) -> None:
        producer = self._producer
        assert producer is not None
        batch = _Batch(events[-1].offset, len(events))
        cb = batch.delivered
        produce = producer.produce
        topic, billing_topic = self.topic, self.billing_topic
        sent = 0
        for ev in events:
            value = cloudevent_json(ev)
            try:
                produce(topic, value, ev.path, on_delivery=cb, headers=CLOUDEVENTS_HEADERS)
            except BufferError:
                self._produce_when_room(producer, topic, value, ev.path, cb, CLOUDEVENTS_HEADERS)
            sent += 1
            if billing.record_kind(ev) is not None:
                for rec in billing.records(ev, cells=self.cells, door=self.door, subject=self._subject(ev.username)):
                    self._produce_when_room(producer, billing_topic, billing.encode(rec), None, cb, None)
                    sent += 1
        # Delivery reports run only inside poll(), and _confirm only after this returns: counting last is safe.
        batch.remaining += sent
        self._batches.append(batch)
        self._in_flight += len(events)
        producer.poll(0)

    @staticmethod
    def _produce_when_room(
        producer: Producer,
        topic: str,
        value: bytes,
        key: str | None,
        cb: Callable[[KafkaError | None, Message], None],
        headers: list[tuple[str, str | bytes | None]] | None,
    ) -> None:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=cb, headers=headers)
                return
            except BufferError:  # the producer's queue is full: let it drain
                producer.poll(0.05)

    def _serve(self, timeout: float) -> None:
        if self._producer is not None:
            self._producer.poll(timeout)

    @staticmethod
    def _serve_with(producer: Producer, timeout: float) -> None:
        producer.poll(timeout)

    @staticmethod
    def _discard(producer: Producer) -> None:
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(0)

    def _subject(self, username: str | None) -> list[str]:
        if not username:
            return []
        found = self._subjects.get(username)
        if found is None:
            try:
                user = self.service.users.get(username)
                found = billing.principals(username, user.uid, user.gids)
            except NotFound:
                found = billing.principals(username)
            self._subjects[username] = found
        return found

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal():
            self._fatal = err
            log.error("kafka producer: fatal error %s; restarting the producer", err.str())
        elif err.code() in _REFUSED or is_auth_failure(err.str()):
            if self.auth_error is None:  # once per outage: librdkafka retries (and says so) every few 100 ms
                log.error(
                    "kafka at %s refused the relay: %s (check HEADRACE_KAFKA_SASL_* and HEADRACE_KAFKA_CA_FILE); "
                    "events wait in the outbox from offset %d",
                    self.bootstrap,
                    err.str(),
                    self.position + 1,
                )
            self.auth_error = err.str()
        elif err.code() in _DOWN:
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "kafka at %s unreachable (%s); events wait in the outbox from offset %d until it is back",
                    self.bootstrap,
                    err.str(),
                    self.position + 1,
                )
        else:
            log.warning("kafka producer: %s", err.str())

    # -- bookkeeping (on the event loop) ---------------------------------------------------------------------

    def _confirm(self) -> None:
        """Advance the position over the batches whose messages are all acknowledged without error."""
        batches = self._batches
        advanced = False
        while batches and batches[0].remaining == 0 and batches[0].error is None:
            b = batches.popleft()
            self._in_flight -= b.count
            self.position = b.last
            advanced = True
            self._failures = 0
            self.auth_error = None
        if advanced and self._down_since is not None:
            log.warning(
                "kafka at %s reachable again after %.1f s; relaying from offset %d",
                self.bootstrap,
                time.monotonic() - self._down_since,
                self.position,
            )
            self._down_since = None

    async def _restart_producer(self) -> None:
        """After a failed delivery or a fatal producer error: drop everything unacknowledged and send it
        again from the stored position with a new producer (at least once; order is kept)."""
        err = self._fatal or (self._batches[0].error if self._batches else None)
        reason = err.str() if err else "?"
        self._failures += 1
        backoff = min(30.0, 2.0 ** (self._failures - 1))
        if self._failures == 1 or reason != self._last_failure or self._failures % 20 == 0:
            log.warning(
                "kafka relay: delivery failed (%s); re-sending from offset %d in %.0f s (failure %d in a row)",
                reason,
                self.position + 1,
                backoff,
                self._failures,
            )
        self._last_failure = reason
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(self._discard, producer)
        self._batches.clear()
        self._in_flight = 0
        self._fatal = None
        self._next = self.position + 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(backoff):
                await self._stopping.wait()
        self._producer = await asyncio.to_thread(self._new_producer)

    async def _store(self) -> None:
        if self.position != self._stored:
            position = self.position
            await self.service.db.write(self.service.set_state, self.state_name, str(position))
            self._stored = position

    async def _wait_for_events(self, timeout: float) -> None:
        waiter = asyncio.create_task(self.service.log.wait_beyond(self._next - 1, timeout))
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                self._head = max(self._head, waiter.result())
        finally:
            for t in (waiter, stopper):
                if not t.done():
                    t.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.gather(waiter, stopper, return_exceptions=True)

    def _update_metrics(self) -> None:
        KAFKA_RELAY_OFFSET.labels(self.topic).set(self.position)
        KAFKA_RELAY_LAG.labels(self.topic).set(max(0, self._head - self.position))
