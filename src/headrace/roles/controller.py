"""The controller role: the processes that follow the event log once for the whole cluster. The functions
controller (storage feed → activations; run here, or published to Kafka for invokers), the Kafka event relay
(with `--kafka`), and retention (which the other two hold back). One per cluster: two would race on the
feed position (never making a second activation for an event and rule, but doing the work twice).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from headrace.config import Settings
from headrace.db.engine import Database
from headrace.events.retention import Retention
from headrace.events.sources.runner import SourceRunner
from headrace.functions import catalog
from headrace.functions.alarms import AlarmScheduler
from headrace.functions.controller import Controller
from headrace.functions.feeds import alarm_firer
from headrace.storage.service import StorageService
from headrace.tasks import stop_task

if TYPE_CHECKING:
    from headrace.events.kafka_relay import KafkaRelay
    from headrace.functions.kafka_transport import ActivationPublisher


def make_publisher(settings: Settings, client_id: str, db: Database) -> ActivationPublisher:
    """The Kafka activation publisher (Kafka's client is imported only when activations go through it); it
    marks in `db` the activations whose message Kafka acknowledged."""
    from headrace.functions.kafka_transport import ActivationPublisher

    return ActivationPublisher(
        settings.kafka,
        db=db,
        topic=settings.activation_topic,
        results_topic=settings.activation_results_topic,
        partitions=settings.activation_partitions,
        lanes=settings.activation_lanes,
        client_id=client_id,
    )


class ControllerRole:
    def __init__(
        self,
        service: StorageService,
        settings: Settings,
        *,
        publisher: ActivationPublisher | None = None,
        relay: bool = True,
        follow_entities: bool = False,
    ) -> None:
        self.service = service
        self.settings = settings
        self.publisher = publisher
        self.relay: KafkaRelay | None = None
        if relay and settings.kafka:  # Kafka is imported (and connected to) only when asked for
            from headrace.events.kafka_relay import KafkaRelay

            self.relay = KafkaRelay(service, settings.kafka, topic=settings.kafka_topic)
        self.controller = Controller(
            service,
            code_root=settings.data_dir / "functions",
            max_chain=settings.fn_max_chain,
            max_workers=settings.fn_max_workers,
            api_url=settings.api_url,
            door_url=settings.door_url,
            publisher=publisher,
            follow_entities=follow_entities,
            sweep_seconds=settings.fn_sweep_seconds,
        )
        relay_ = self.relay
        self.retention = Retention(
            service.log,
            max_age=settings.event_retention_seconds,
            max_events=settings.event_retention_events,
            holders=[lambda: relay_.position] if relay_ is not None else [],
        )
        self.retention.holders.append(lambda: self.controller.position)
        self._retention_task: asyncio.Task[None] | None = None
        #: Other systems' events into the log (events/sources): one holder name per controller, so that a
        #: restarted one takes its sources' leases back at once.
        self.sources = SourceRunner(service.db, f"controller@{socket.gethostname()}:{settings.data_dir.resolve()}")
        #: /whisk.system/alarms feeds: each due tick fired once (functions/alarms.py).
        self.alarms = AlarmScheduler(service.db, alarm_firer(service.db, self.controller))
        self._started = False

    def announce(self) -> None:
        where = f"Kafka {self.settings.kafka} topic {self.settings.activation_topic}" if self.publisher else "here"
        print(f"headrace: controller: activations run {where}", flush=True)
        if self.relay is not None:
            print(f"headrace: relay    events to Kafka {self.settings.kafka} topic {self.settings.kafka_topic}")

    async def start(self) -> None:
        if self.relay is not None:
            self.relay.start()
        if self.publisher is not None:
            await self.publisher.start()
        await catalog.install(self.service.db)  # /whisk.system, before the controller reads the entities
        await self.controller.start()
        self._started = True
        self._retention_task = asyncio.create_task(self.retention.run_forever())
        await self.sources.start()
        await self.alarms.start()

    async def stop(self) -> None:
        await self.alarms.stop()
        await self.sources.stop()
        await stop_task(self._retention_task)
        if self._started:
            await self.controller.stop()
        if self.relay is not None:
            await self.relay.close()
        if self.publisher is not None:
            await self.publisher.close()

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": "controller", "position": self.controller.position}
        if self.publisher is not None:
            out["published"] = self.publisher.published
        return out
