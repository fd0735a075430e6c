"""The Kafka side of the activation transport, for the processes that publish activations (the controller,
frontends) and those that wait for them to finish (frontends, for blocking invokes).

- `ensure_topics` creates the activation topic (`activation_partitions` partitions) and the results topic
  (one partition) if they do not exist, with the broker's default replication.
- `ActivationPublisher` publishes activation messages (functions/messages.py: key and partition per
  activation) with an idempotent producer (acks=all, never giving up on a message: while Kafka is away,
  messages wait in the producer and the rows wait in the database). `submit` returns at once; `publish`
  returns when Kafka has acknowledged. Invokers use the same producer for results (`notify`).
- `ResultWaiters` follows the results topic from its end (no consumer group: every frontend sees every
  notice) and completes the futures of the blocking invokes waiting in this process with the record read
  from the database; it also looks in the database once a second, so a notice that never came (an invoker
  killed between its record and its notice) delays an answer by a second, no more.

Blocking client calls run on threads of their own; results reach the event loop by call_soon_threadsafe.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from headrace.db.engine import Database
from headrace.functions import messages
from headrace.functions.entities import ActionRow, ActivationRow
from headrace.functions.messages import Actions
from headrace.functions.records import FINAL_STATES
from headrace.functions.store import FunctionStore
from headrace.kafka_security import client_config
from headrace.tasks import stop_task

log = logging.getLogger("headrace.kafka")


class LibrdkafkaLog:
    """librdkafka's own log lines (a connection refused at every retry) at DEBUG."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("headrace.kafka.librdkafka")

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self.logger.debug(fmt, *args)


#: librdkafka's configuration: its property names ("bootstrap.servers", ...) to their values.
KafkaConfig = dict[str, Any]


def ensure_topics(
    bootstrap: str, activation_topic: str, results_topic: str, partitions: int, timeout: float = 30.0
) -> int:
    """Create the two topics if missing; the activation topic's partition count (as it is, if it existed)."""
    config: KafkaConfig = {"bootstrap.servers": bootstrap, "logger": LibrdkafkaLog(), **client_config()}
    admin = AdminClient(config)
    deadline = time.monotonic() + timeout
    wanted = {activation_topic: partitions, results_topic: 1}
    while True:
        try:
            existing = admin.list_topics(timeout=max(1.0, deadline - time.monotonic())).topics
            missing = [
                NewTopic(t, num_partitions=n, replication_factor=-1) for t, n in wanted.items() if t not in existing
            ]
            if missing:
                for topic, fut in admin.create_topics(missing, request_timeout=10).items():
                    try:
                        fut.result()
                        log.info("kafka: created topic %s", topic)
                    except KafkaException as exc:
                        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                            raise
            md = admin.list_topics(activation_topic, timeout=10).topics.get(activation_topic)
            if md is not None and md.error is None and md.partitions:
                return len(md.partitions)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka at {bootstrap} did not answer: {exc}") from exc
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {activation_topic} not ready at {bootstrap} after {timeout:.0f} s")
        time.sleep(0.2)


def producer_config(bootstrap: str, client_id: str) -> KafkaConfig:
    return {
        "bootstrap.servers": bootstrap,
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        # An activation is one small message and someone waits for it: send at once rather than batch.
        "linger.ms": 1,
        "message.timeout.ms": 0,  # never give up: the row is queued in the database meanwhile
        "queue.buffering.max.messages": 200_000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 2000,
        "log.connection.close": False,
        "logger": LibrdkafkaLog(),
        **client_config(),
    }


class ActivationPublisher:
    """Publishes activations (and, for invokers, result notices); one producer, served by a thread of its own."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = messages.ACTIVATION_TOPIC,
        results_topic: str = messages.RESULTS_TOPIC,
        partitions: int = 8,
        lanes: int = 0,
        client_id: str = "headrace-publisher",
        db: Database | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        #: With a database: activations whose message Kafka acknowledged are marked published there (in
        #: batches, every MARK_EVERY s), and `unacknowledged` says which of this process's are in flight.
        self.store = FunctionStore(db) if db is not None else None
        self.unacknowledged: set[str] = set()
        self._acknowledged: list[str] = []
        self._marker: asyncio.Task[None] | None = None
        self.topic = topic
        self.results_topic = results_topic
        self.partitions = partitions
        self.lanes = lanes
        self.client_id = client_id
        self.published = 0
        self._producer: Producer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._backlog: deque[tuple[str, bytes, str | None, int, Callable[..., None] | None]] = deque()
        self._drainer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Create the topics if missing (learning the partition count) and the producer."""
        self._loop = asyncio.get_running_loop()
        self.partitions = await asyncio.to_thread(
            ensure_topics, self.bootstrap, self.topic, self.results_topic, self.partitions
        )
        self._producer = Producer(producer_config(self.bootstrap, self.client_id))
        self._thread = threading.Thread(target=self._serve, name="activation-producer", daemon=True)
        self._thread.start()
        if self.store is not None:
            self._marker = asyncio.create_task(self._mark_forever())

    async def close(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for what is in flight; what is not delivered is queued in the database anyway."""
        if self._drainer is not None:
            self._drainer.cancel()
        producer = self._producer
        if producer is None:
            return
        left = await asyncio.to_thread(producer.flush, timeout)
        if left:
            log.warning("kafka: %d activation messages unsent at stop; their activations stay queued", left)
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 2.0)
        self._producer = None
        await stop_task(self._marker)
        try:
            await self._mark()
        except Exception:  # left unmarked: the controller's sweep sends them again (a harmless copy)
            log.exception("kafka: could not mark %d activations published at stop", len(self._acknowledged))

    MARK_EVERY = 0.2

    async def _mark_forever(self) -> None:
        while True:
            await asyncio.sleep(self.MARK_EVERY)
            try:
                await self._mark()
            except Exception:  # the database away: marked at the next round (or swept and sent again)
                log.exception("kafka: could not mark %d activations published", len(self._acknowledged))

    async def _mark(self) -> None:
        if self.store is None or not self._acknowledged:
            return
        ids, self._acknowledged = self._acknowledged, []
        try:
            await self.store.db.write(self.store.mark_published, ids)
        except BaseException:
            self._acknowledged[:0] = ids
            raise

    def _serve(self) -> None:
        while not self._stopping.is_set():
            producer = self._producer
            if producer is None:
                return
            producer.poll(0.05)

    # -- publishing ---------------------------------------------------------------------------------------

    def submit(self, rows: list[ActivationRow], actions: Actions) -> None:
        for row in rows:
            self._send(row, actions.get((row["namespace"], row["name"])), None)

    async def publish(self, rows: list[ActivationRow], actions: Actions) -> None:
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = []
        for row in rows:
            fut: asyncio.Future[None] = loop.create_future()
            futures.append(fut)
            self._send(row, actions.get((row["namespace"], row["name"])), self._settle(fut))
        if futures:
            await asyncio.gather(*futures)

    def notify(self, row: ActivationRow) -> None:
        """A finished activation's notice on the results topic (its record is in the database already)."""
        self._produce(self.results_topic, messages.result_message(row), str(row["activation_id"]), 0, None)

    def _send(self, row: ActivationRow, action: ActionRow | None, cb: Callable[..., None] | None) -> None:
        key, partition = messages.placement(row, action, self.partitions, self.lanes)
        if self.store is not None:
            cb = self._tracked(str(row["activation_id"]), cb)
        self._produce(self.topic, messages.activation_message(row, action), key, partition, cb)
        self.published += 1

    def _tracked(self, aid: str, cb: Callable[..., None] | None) -> Callable[[KafkaError | None, Message], None]:
        """`cb`, and (on the event loop) the activation's acknowledgement noted for marking."""
        loop = self._loop
        assert loop is not None
        self.unacknowledged.add(aid)

        def settle(ok: bool) -> None:
            self.unacknowledged.discard(aid)
            if ok:
                self._acknowledged.append(aid)

        def delivered(err: KafkaError | None, msg: Message) -> None:
            loop.call_soon_threadsafe(settle, err is None)
            if cb is not None:
                cb(err, msg)

        return delivered

    def _settle(self, fut: asyncio.Future[None]) -> Callable[[KafkaError | None, Message], None]:
        loop = self._loop
        assert loop is not None

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            def settle() -> None:
                if fut.done():
                    return
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(KafkaException(err))

            loop.call_soon_threadsafe(settle)

        return delivered

    def _produce(
        self, topic: str, value: bytes, key: str | None, partition: int, cb: Callable[..., None] | None
    ) -> None:
        producer = self._producer
        if producer is None:
            raise RuntimeError("the activation publisher is not started")
        if not self._backlog:
            try:
                producer.produce(topic, value, key, partition, on_delivery=cb)
                return
            except BufferError:
                pass
        # the producer's queue is full (Kafka away for long): keep the order, and drain when it has room
        self._backlog.append((topic, value, key, partition, cb))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        producer = self._producer
        while self._backlog and producer is not None:
            topic, value, key, partition, cb = self._backlog[0]
            try:
                producer.produce(topic, value, key, partition, on_delivery=cb)
                self._backlog.popleft()
            except BufferError:
                await asyncio.sleep(0.05)


class ResultWaiters:
    """Blocking invokes of this process, completed from the results topic (or the database)."""

    POLL_DB = 1.0

    def __init__(self, bootstrap: str, db: Database, *, topic: str = messages.RESULTS_TOPIC) -> None:
        self.bootstrap = bootstrap
        self.db = db
        self.store = FunctionStore(db)
        self.topic = topic
        self.waiters: dict[str, tuple[str, asyncio.Future[ActivationRow]]] = {}
        self._consumer: Consumer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller: asyncio.Task[None] | None = None
        self._ready = threading.Event()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"headrace-results-{uuid.uuid4().hex}",  # never joined nor committed: assign() only
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "fetch.wait.max.ms": 50,
                "logger": LibrdkafkaLog(),
                **client_config(),
            }
        )
        self._thread = threading.Thread(target=self._consume, name="activation-results", daemon=True)
        self._thread.start()
        await asyncio.to_thread(self._ready.wait, 30.0)
        self._poller = asyncio.create_task(self._poll_db_forever())

    async def close(self) -> None:
        self._stopping.set()
        await stop_task(self._poller)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)

    def in_flight(self, namespace: str) -> int:
        return sum(1 for ns, _ in self.waiters.values() if ns == namespace)

    def wait(self, activation_id: str, namespace: str) -> asyncio.Future[ActivationRow]:
        fut: asyncio.Future[ActivationRow] = asyncio.get_running_loop().create_future()
        self.waiters[activation_id] = (namespace, fut)
        fut.add_done_callback(lambda _: self.waiters.pop(activation_id, None))
        return fut

    def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            parts: list[int] = []
            while not parts and not self._stopping.is_set():
                try:
                    md = consumer.list_topics(self.topic, timeout=5).topics.get(self.topic)
                    parts = sorted(md.partitions) if md is not None and md.error is None else []
                except KafkaException:
                    parts = []
                if not parts:
                    time.sleep(0.5)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])
            self._ready.set()
            while not self._stopping.is_set():
                msg = consumer.poll(0.1)
                if msg is None or msg.error() is not None:
                    continue
                body = messages.parse_result(msg.value())
                if body is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._noticed, body)
        except Exception:
            log.exception("kafka: the results follower failed; blocking invokes fall back to the database")
        finally:
            self._ready.set()
            consumer.close()

    def _noticed(self, body: messages.ResultMessage) -> None:
        if body["id"] in self.waiters and body.get("state") in FINAL_STATES:
            asyncio.get_running_loop().create_task(self._complete([body["id"]]))

    async def _complete(self, ids: list[str]) -> None:
        rows = await self.db.read(self.store.activations_by_id, ids)
        for row in rows:
            if row["state"] not in FINAL_STATES:
                continue
            _, fut = self.waiters.get(row["activation_id"], (None, None))
            if fut is not None and not fut.done():
                fut.set_result(row)

    async def _poll_db_forever(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_DB)
            if self.waiters:
                try:
                    await self._complete(list(self.waiters))
                except Exception:
                    log.exception("functions: looking for finished activations failed")
