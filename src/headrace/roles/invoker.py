"""The invoker role: a member of the invokers' consumer group that runs activations on this host's warm
workers (functions/kafka_invoker.py). It needs the shared database (activation rows, actions' code, users for
the functions' tokens) and Kafka; of the data directory only a code cache (`DATA/functions/`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from headrace.auth.macaroons import MacaroonAuthority, load_root_key
from headrace.auth.users import Users
from headrace.config import Settings
from headrace.db.engine import Database
from headrace.functions.runner import default_worker_cap
from headrace.roles.common import QuietServer, Waiting, health_app, serve_all, uvicorn_config

log = logging.getLogger("headrace.invoker")


@dataclass
class InvokerHost:
    """What running activations needs of the storage service (functions/runner.py's `Host`)."""

    db: Database
    users: Users
    macaroons: MacaroonAuthority


async def run(settings: Settings, *, workers: int = 0, port: int = 0) -> None:
    from headrace.functions.kafka_invoker import KafkaInvoker

    db = Database(settings.database_url, durable=settings.fsync)
    await asyncio.to_thread(db.migrate)
    macaroons = MacaroonAuthority(await asyncio.to_thread(load_root_key, db))
    macaroons.follow(lambda: load_root_key(db))  # it mints the functions' tokens: with the current key
    host = InvokerHost(db, Users(db), macaroons)
    invoker = KafkaInvoker(
        host,
        bootstrap=settings.kafka,
        code_root=settings.data_dir / "functions",
        api_url=settings.api_url,
        door_url=settings.door_url,
        max_workers=workers or settings.fn_max_workers or default_worker_cap(),
        topic=settings.activation_topic,
        results_topic=settings.activation_results_topic,
        group=settings.invoker_group,
        partitions=settings.activation_partitions,
        revoke_grace=settings.invoker_revoke_grace,
    )

    def status() -> dict[str, Any]:
        return {
            "role": "invoker",
            "client": invoker.client_id,
            "assigned": sorted(invoker.assigned),
            "held": len(invoker.jobs),
            "running": invoker.running_total,
            "finished": invoker.finished,
        }

    waiting = Waiting()
    servers: list[Any] = [waiting]
    health: QuietServer | None = None
    if port:
        health = QuietServer(uvicorn_config(health_app(status), settings, port, http="h11"))
        servers.append(health)
    await invoker.start()
    print(
        f"headrace: invoker  {invoker.client_id}: group {settings.invoker_group} at {settings.kafka}, "
        f"{invoker.max_workers} workers, sandbox {invoker.runner.sandbox.settings.mode}"
        + (f", /healthz on {settings.host}:{port}" if port else ""),
        flush=True,
    )
    stoppers = [waiting.request_stop] + ([health.request_stop] if health is not None else [])
    try:
        await serve_all(servers, stoppers)
    finally:
        await invoker.stop()
        db.close()
    print("headrace: invoker stopped cleanly", flush=True)
