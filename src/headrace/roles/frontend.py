"""The frontend role: the namespace and events APIs, the functions API, OpenAPI and /metrics (uvicorn, h11).

Its functions back end is the in-process controller (`headrace up`), or, when invokers run the activations,
`RemoteFunctions` (database + Kafka, functions/gateway.py), or none of the invoking part at all (a
standalone frontend without Kafka: invokes, fires and redrives answer 503).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from headrace.config import Settings
from headrace.events.channels import ChannelManager
from headrace.frontend import create_app
from headrace.functions.dispatch import Dispatcher
from headrace.functions.store import FunctionStore
from headrace.roles.common import QuietServer, uvicorn_config
from headrace.storage.service import StorageService
from headrace.tape.requests import Runner, runner_enabled_from_env

if TYPE_CHECKING:
    from headrace.functions.api import Functions
    from headrace.functions.kafka_transport import ResultWaiters


class FrontendRole:
    def __init__(
        self,
        service: StorageService,
        settings: Settings,
        functions: Functions | None,
        *,
        channels_dir: Path,
        results: ResultWaiters | None = None,
    ) -> None:
        self.settings = settings
        self.channels = ChannelManager(
            service.log,
            channels_dir,
            per_user=settings.channels_per_user,
            subscriptions_per_channel=settings.subscriptions_per_channel,
            recursive_per_user=settings.recursive_watches_per_user,
            metronome_max_hz=settings.metronome_max_hz,
            metronome_user_hz=settings.metronome_user_hz,
            metronome_max_message=settings.metronome_max_message,
            users=service.users,
        )
        self.results = results
        # h11 rather than httptools: httptools lowercases response header names, and dCache's event clients
        # find a channel's `Location` case-sensitively.
        self.app = create_app(service, self.channels, functions)
        self.server = QuietServer(uvicorn_config(self.app, settings, settings.api_port, http="h11"))
        #: Runs bulk requests' targets other than stages (the tape agent's) and rolls requests up.
        self.runner = Runner(
            self.app.state.bulk_requests,
            service.users,
            service.drop_blobs,
            name=f"frontend-{settings.host}:{settings.api_port}",
            enabled=runner_enabled_from_env(),
        )

    def announce(self) -> None:
        print(f"headrace: frontend {self.settings.api_url}  (REST API, /metrics, /api/v1/openapi.json)", flush=True)

    async def start(self) -> None:
        await self.channels.start()
        await self.runner.start()
        if self.results is not None:
            await self.results.start()

    def request_stop(self) -> None:
        self.channels.shutdown_clients()
        self.server.request_stop()

    async def stop(self) -> None:
        await self.runner.stop()
        await self.channels.stop()
        if self.results is not None:
            await self.results.close()


class NoInvoker(Dispatcher):
    """The functions back end of a standalone frontend without Kafka: entities and records work (they are in
    the database), invokes, fires and redrives are refused, for nothing here could run them."""

    def __init__(self, service: StorageService) -> None:
        self.db = service.db
        self.store = FunctionStore(service.db)
        self.max_workers = 0

    def refuse(self) -> None:
        from headrace.functions.api import WhiskError

        raise WhiskError(503, "This frontend runs no activations: start it with --kafka to hand them to the invokers.")
