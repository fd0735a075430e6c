"""The frontend (port 3880): dCache-shaped namespace and user APIs, OpenAPI, Prometheus metrics, health.

The storage-events SSE API (`/api/v1/events`) is mounted when a channel manager is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from headrace import __version__
from headrace.errors import HeaderTooLarge, HeadraceError, Unauthorized
from headrace.events import api as events_api
from headrace.events.channels import ChannelManager
from headrace.http_common import client_ip, error_response, header, header_bytes, problem, query_param
from headrace.metrics import API_REQUESTS, POOL_FREE, POOL_USED, REGISTRY
from headrace.openapi import install as declare_errors
from headrace.storage import namespace_api
from headrace.storage.service import StorageService

if TYPE_CHECKING:
    from headrace.functions.api import Functions


class HeaderLimit:
    """Refuse requests whose headers exceed the limit with 431 and a JSON body; count requests by status."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if header_bytes(scope) > self.limit:
            await error_response(HeaderTooLarge(f"Request headers exceed {self.limit} bytes"))(scope, receive, send)
            return
        method = scope["method"]

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                API_REQUESTS.labels(method, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def create_app(
    service: StorageService, channels: ChannelManager | None = None, controller: Functions | None = None
) -> FastAPI:
    app = FastAPI(
        title="headrace frontend",
        version=__version__,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )

    @app.exception_handler(HeadraceError)
    async def on_error(_: Request, exc: HeadraceError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> Response:
        return problem(400, "Bad Request", "; ".join(str(e.get("msg")) for e in exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not Found", 405: "Method Not Allowed"}
        detail = exc.detail if isinstance(exc.detail, str) else "Error"
        return problem(exc.status_code, titles.get(exc.status_code, "Error"), detail)

    app.include_router(namespace_api.router(service))
    if channels is not None:
        app.include_router(events_api.router(service, channels))
    if controller is not None:
        from headrace.functions import api as functions_api

        functions_api.install(app, service, controller)

    @app.get("/api/v1/user", summary="Who the caller is")
    async def user(request: Request) -> Any:
        scope = request.scope
        authz, authorization = query_param(scope, "authz"), header(scope, b"authorization")
        if not authz and not authorization:
            return {"status": "ANONYMOUS"}
        try:
            principal = service.auth.authenticate(authorization, authz, client_ip(scope))
        except Unauthorized:
            raise
        s = principal.subject
        home = service.users.get(s.username).home if s.username != "anonymous" else "/"
        return {
            "status": "AUTHENTICATED",
            "uid": s.uid,
            "gids": list(s.gids),
            "username": s.username,
            "homeDirectory": home,
            "rootDirectory": principal.root,
        }

    @app.get("/healthz", summary="Liveness and readiness")
    async def healthz() -> Any:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        for name, pool in service.pools.items():
            POOL_USED.labels(name).set(pool.used_bytes)
            POOL_FREE.labels(name).set(pool.free_bytes())
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    declare_errors(app)
    app.add_middleware(HeaderLimit, limit=service.settings.max_header_bytes)
    return app
