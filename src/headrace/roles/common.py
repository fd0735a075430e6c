"""What every role's process shares: HTTP servers without their own signal handling, one signal handler that
stops them all, opening the storage service for a role, and the small health/metrics server of the roles
that serve nothing else (controller, invoker)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

import uvicorn

from headrace.config import Settings
from headrace.http_common import granian_server, guarded_h11
from headrace.storage.service import StartReport, StorageService

log = logging.getLogger("headrace")

#: How often a role looks for events other processes committed, unless HEADRACE_LOG_POLL says.
ROLE_LOG_POLL = 0.05


class Serving(Protocol):
    async def serve(self) -> None: ...


class QuietServer(uvicorn.Server):
    """A uvicorn server whose signals are handled once, by `serve_all`, for all servers of the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    def request_stop(self) -> None:
        self.should_exit = True


def uvicorn_config(app: object, settings: Settings, port: int, http: str = "httptools") -> uvicorn.Config:
    """With the settings' TLS (HTTP/1.1 over TLS: uvicorn has no HTTP/2). h11 comes with a header read timeout
    and a JSON 431 (http_common.guarded_h11); httptools without."""
    protocol = guarded_h11(settings.header_timeout, settings.max_header_bytes) if http == "h11" else http
    tls = settings.server_tls()
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=port,
        http=protocol,
        lifespan="off",
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=10,
        **(tls.uvicorn() if tls is not None else {}),
    )


class GranianDoor:
    """The door on granian's embedded server (`http_common.granian_server`): the door's data path is what the
    storage benchmark holds against nginx."""

    def __init__(self, app: object, settings: Settings) -> None:
        tls = settings.server_tls()
        self.server = granian_server(
            app,
            settings.host,
            settings.door_port,
            header_timeout=settings.header_timeout,
            tls=tls.granian() if tls is not None else None,
        )

    async def serve(self) -> None:
        await self.server.serve()

    def request_stop(self) -> None:
        self.server.stop()


async def serve_all(servers: list[Serving], on_signal: list[Callable[[], None]]) -> None:
    """Serve until SIGINT/SIGTERM (which calls each of `on_signal`), or until every server has ended."""
    loop = asyncio.get_running_loop()

    def stop(*_: object) -> None:
        for f in on_signal:
            f()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    results = await asyncio.gather(*(s.serve() for s in servers), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    for s in servers:
        if isinstance(s, uvicorn.Server) and not s.started:  # its port was taken
            raise SystemExit(1)


class Waiting:
    """A `Serving` for roles without a server: ends when asked to."""

    def __init__(self) -> None:
        self.stopped = asyncio.Event()

    async def serve(self) -> None:
        await self.stopped.wait()

    def request_stop(self) -> None:
        self.stopped.set()


def health_app(status: Callable[[], dict[str, Any]]) -> Any:
    """/healthz (the role's status as JSON) and /metrics (Prometheus) for a role that serves nothing else."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from headrace.metrics import REGISTRY

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok", **status()})

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics)])


def open_service(settings: Settings, *, recover: bool) -> tuple[StorageService, StartReport]:
    """The storage service for a role; a role that follows the event log polls for other processes' events
    every HEADRACE_LOG_POLL seconds (default 0.05 s in a role, where other processes write them)."""
    service, report = StorageService.open(settings, recover=recover)
    if not recover:
        service.log.poll = settings.log_poll or ROLE_LOG_POLL
    elif settings.log_poll:
        service.log.poll = settings.log_poll
    return service, report


def run_main(settings: Settings, coro: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Configure logging and run the role's coroutine on uvloop (when installed)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.run(coro())
    except ImportError:
        asyncio.run(coro())
    except SystemExit as exc:
        sys.exit(exc.code)
