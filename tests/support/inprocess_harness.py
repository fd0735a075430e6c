"""Headrace's door and frontend in this process, for the fast tier (`make check`, tests/inprocess/).

`InProcess` opens a storage service on a temporary database (SQLite unless $HEADRACE_TEST_DB says
otherwise) and assembles the ASGI apps `headrace frontend`/`door` serve (roles/door.py, roles/frontend.py),
without sockets or subprocesses: requests reach them through `httpx.ASGITransport`. The apps run on an event
loop of their own thread, as a server's would, so that tests drive them with ordinary sync httpx clients
(`door()`, `api()`) and the SDK (`Client(config, transport=InProcess.transport)`) as they would a server.

The functions API is the standalone frontend's (`NoInvoker`): actions, triggers, rules and records work,
invoking answers 503 (running functions needs worker processes: the subprocess tier tests that).
`httpx.ASGITransport` reads a response whole before returning it: streams that do not end (SSE) are for the
subprocess tier too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from harness import ADMIN_KEY, new_test_database, remember_database
from headrace.config import Settings

DOOR_URL = "http://door.inprocess"
API_URL = "http://api.inprocess"
AUTH = ("admin", ADMIN_KEY)
#: A deadline that only catches a hang: a request in this process on a loaded machine takes milliseconds.
REQUEST_TIMEOUT = 60.0

T = TypeVar("T")
App = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class Bridge(httpx.BaseTransport):
    """A sync httpx transport onto ASGI apps running on `loop` (another thread's), chosen by the URL's host."""

    def __init__(self, loop: asyncio.AbstractEventLoop, apps: dict[str, Any]) -> None:
        self.loop = loop
        self.transports = {
            httpx.URL(url).host: httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)) for url, app in apps.items()
        }

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        transport = self.transports.get(request.url.host)
        if transport is None:
            raise httpx.ConnectError(f"no in-process app at {request.url.host}", request=request)
        body = request.read()

        async def forward() -> tuple[int, httpx.Headers, bytes, dict[str, Any]]:
            inner = httpx.Request(request.method, request.url, headers=request.headers, content=body)
            response = await transport.handle_async_request(inner)
            try:
                raw = b"".join([chunk async for chunk in response.stream])  # type: ignore[union-attr]
            finally:
                await response.aclose()
            return response.status_code, response.headers, raw, dict(response.extensions)

        status, headers, raw, extensions = asyncio.run_coroutine_threadsafe(forward(), self.loop).result(
            REQUEST_TIMEOUT
        )
        return httpx.Response(status, headers=headers, stream=httpx.ByteStream(raw), extensions=extensions)


class InProcess:
    """The door and the frontend over one storage service, in this process; `close()` stops them."""

    def __init__(self, base: Path, **settings: Any) -> None:
        self.settings = Settings(
            data_dir=base / "data",
            admin_key=ADMIN_KEY,
            fsync=False,
            cli_config=base / "cli.json",
            db_url=new_test_database(),
            public_door_url=DOOR_URL,
            public_api_url=API_URL,
            **settings,
        )
        remember_database(self.settings.data_dir, self.settings.db_url)  # for harness.query and tests/support/outbox.py
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="inprocess-apps", daemon=True)
        self._thread.start()
        try:
            self.run(self._start())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise
        self.transport = Bridge(self.loop, {DOOR_URL: self.door_app, API_URL: self.api_app})

    async def _start(self) -> None:
        from headrace.roles.frontend import FrontendRole, NoInvoker
        from headrace.storage.door import Door
        from headrace.storage.service import StorageService

        self.service, _ = StorageService.open(self.settings)
        self.door_app = Door(self.service, self.settings)
        self.frontend = FrontendRole(
            self.service, self.settings, NoInvoker(self.service), channels_dir=self.settings.data_dir / "channels"
        )
        self.api_app = self.frontend.app
        await self.frontend.start()

    async def _stop(self) -> None:
        try:
            await self.frontend.stop()
        finally:
            self.service.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the apps' event loop (for a test that calls the service directly) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(REQUEST_TIMEOUT)

    @property
    def data(self) -> Path:
        return self.settings.data_dir

    def door(self, **kw: Any) -> httpx.Client:
        """A client of the door (WebDAV), authenticated as admin unless `auth` says otherwise."""
        kw.setdefault("auth", AUTH)
        return httpx.Client(base_url=DOOR_URL, transport=self.transport, timeout=REQUEST_TIMEOUT, **kw)

    def api(self, **kw: Any) -> httpx.Client:
        """A client of the frontend (REST API), authenticated as admin unless `auth` says otherwise."""
        kw.setdefault("auth", AUTH)
        return httpx.Client(base_url=API_URL, transport=self.transport, timeout=REQUEST_TIMEOUT, **kw)

    def close(self) -> None:
        try:
            self.run(self._stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()
