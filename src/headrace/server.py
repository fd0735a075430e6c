"""Running headrace's roles (src/headrace/roles/): `headrace up` composes all of them in one process, on one
event loop, over one storage service; `headrace door`, `frontend` and `controller` run one each (and
`headrace invoker`, roles/invoker.py, runs activations for a controller that publishes them to Kafka).

HTTP servers are uvicorn (granian for the door); uvicorn's own signal capture is replaced by one handler
that stops them all, so that SIGINT/SIGTERM end in-flight requests, drain, and record a clean stop.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from headrace.config import Settings
from headrace.roles.common import (
    QuietServer,
    Serving,
    Waiting,
    health_app,
    open_service,
    run_main,
    serve_all,
    uvicorn_config,
)
from headrace.roles.controller import ControllerRole, make_publisher
from headrace.roles.door import DoorRole
from headrace.roles.frontend import FrontendRole, NoInvoker
from headrace.storage.service import StartReport, StorageService

log = logging.getLogger("headrace")


def announce_data(settings: Settings, report: StartReport) -> None:
    print(f"headrace: data     {settings.data_dir.resolve()}", flush=True)
    if report.admin_key_generated:
        print(
            f"headrace: admin key {report.admin_key_generated}  (shown once; saved to {settings.cli_config})",
            flush=True,
        )
    if report.partial_uploads_removed or report.orphans_removed:
        print(
            f"headrace: recovered: removed {report.partial_uploads_removed} partial uploads, "
            f"{report.orphans_removed} orphaned blobs",
            flush=True,
        )


def announce(settings: Settings, report: StartReport) -> None:
    print(f"headrace: door     {settings.door_url}  (WebDAV)", flush=True)
    print(f"headrace: frontend {settings.api_url}  (REST API, /metrics, /api/v1/openapi.json)", flush=True)
    if settings.tape.enabled:
        print(f"headrace: tape     {settings.tape.describe()}", flush=True)
    announce_data(settings, report)


def _remote_functions(service: StorageService, settings: Settings, publisher: Any, on_change: Any) -> Any:
    """The functions API's back end when invokers run the activations: database + Kafka."""
    from headrace.functions.gateway import RemoteFunctions
    from headrace.functions.kafka_transport import ResultWaiters

    results = ResultWaiters(settings.kafka, service.db, topic=settings.activation_results_topic)
    return RemoteFunctions(
        service.db, publisher, results, max_workers=settings.fn_max_workers, on_change=on_change
    ), results


async def run(settings: Settings) -> None:
    """`headrace up`: every role in this process."""
    service, report = StorageService.open(settings)
    announce(settings, report)
    door = DoorRole(service, settings)
    publisher = make_publisher(settings, "headrace-up", service.db) if settings.activations == "kafka" else None
    controller = ControllerRole(service, settings, publisher=publisher)
    functions: Any = controller.controller
    results = None
    if publisher is not None:
        functions, results = _remote_functions(service, settings, publisher, controller.controller.reload)
    frontend = FrontendRole(service, settings, functions, channels_dir=settings.data_dir / "channels")
    await frontend.channels.start()
    tape = service.tape_agents()
    try:
        await frontend.runner.start()
        for agent in tape:
            await agent.start()
        await controller.start()
        if results is not None:
            await results.start()
        await serve_all([door.server, frontend.server], [frontend.request_stop, door.request_stop])
    finally:
        await frontend.runner.stop()
        await controller.stop()
        for agent in tape:
            await agent.stop()
        if results is not None:
            await results.close()
        await frontend.channels.stop()
        service.close()
    print("headrace: stopped cleanly", flush=True)


def main(settings: Settings) -> None:
    run_main(settings, lambda: run(settings))


# -- the roles one by one ---------------------------------------------------------------------------------


async def run_door(settings: Settings) -> None:
    service, report = open_service(settings, recover=False)
    door = DoorRole(service, settings)
    door.announce()
    announce_data(settings, report)
    try:
        await serve_all([door.server], [door.request_stop])
    finally:
        service.close()
    print("headrace: door stopped cleanly", flush=True)


async def run_frontend(settings: Settings, channels_dir: Path | None = None) -> None:
    service, report = open_service(settings, recover=False)
    publisher = None
    results = None
    functions: Any = NoInvoker(service)
    if settings.kafka:
        publisher = make_publisher(settings, f"headrace-frontend-{settings.api_port}", service.db)
        functions, results = _remote_functions(service, settings, publisher, None)
    where = channels_dir or settings.data_dir / "channels" / f"frontend-{settings.host}-{settings.api_port}"
    frontend = FrontendRole(service, settings, functions, channels_dir=where, results=results)
    frontend.announce()
    announce_data(settings, report)
    try:
        if publisher is not None:
            await publisher.start()
        await frontend.start()
        await serve_all([frontend.server], [frontend.request_stop])
    finally:
        await frontend.stop()
        if publisher is not None:
            await publisher.close()
        service.close()
    print("headrace: frontend stopped cleanly", flush=True)


async def run_controller(settings: Settings, *, port: int = 0, relay: bool = True) -> None:
    service, report = open_service(settings, recover=False)
    publisher = make_publisher(settings, "headrace-controller", service.db) if settings.activations == "kafka" else None
    role = ControllerRole(service, settings, publisher=publisher, relay=relay, follow_entities=True)
    role.announce()
    announce_data(settings, report)
    waiting = Waiting()
    servers: list[Serving] = [waiting]
    stoppers = [waiting.request_stop]
    if port:
        health = QuietServer(uvicorn_config(health_app(role.status), settings, port, http="h11"))
        servers.append(health)
        stoppers.append(health.request_stop)
    try:
        await role.start()
        print(f"headrace: controller ready (feed at offset {role.controller.position})", flush=True)
        await serve_all(servers, stoppers)
    finally:
        await role.stop()
        service.close()
    print("headrace: controller stopped cleanly", flush=True)


def main_role(settings: Settings, role: str, **options: Any) -> None:
    runners = {"door": run_door, "frontend": run_frontend, "controller": run_controller}
    if role == "invoker":
        from headrace.roles import invoker

        run_main(settings, lambda: invoker.run(settings, **options))
        return
    run_main(settings, lambda: runners[role](settings, **options))
