"""The frontend (port 3880): dCache-shaped namespace and user APIs, OpenAPI, Prometheus metrics, health.

The storage-events SSE API (`/api/v1/events`) is mounted when a channel manager is given.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from headrace import __version__
from headrace.auth.access import Principal
from headrace.errors import (
    Forbidden,
    HeaderTooLarge,
    HeadraceError,
    PayloadTooLarge,
    RequestTimeout,
    Unauthorized,
    UnsupportedMediaType,
)
from headrace.events import api as events_api
from headrace.events.channels import ChannelManager
from headrace.events.sources import api as sources_api
from headrace.http_common import (
    addressed_as,
    authority,
    client_ip,
    content_length,
    error_response,
    header,
    header_bytes,
    problem,
    query_param,
)
from headrace.metrics import API_REQUESTS, POOL_FREE, POOL_USED, REGISTRY
from headrace.openapi import install as declare_errors
from headrace.storage import info_api, namespace_api
from headrace.storage.service import StorageService
from headrace.tape import bulk_api, tape_api
from headrace.tape.requests import RequestStore, max_active_from_env

if TYPE_CHECKING:
    from headrace.functions.api import Functions


#: The largest request body of an action PUT: OpenWhisk's limit on an action's code (48 MB).
MAX_ACTION_BODY = 48 * 1024 * 1024
#: The largest request body of every other route: JSON documents (parameters, payloads and results are 1 MB
#: each, as in OpenWhisk; a trigger or rule with annotations stays well under this).
MAX_JSON_BODY = 2 * 1024 * 1024
#: OpenWhisk's API prefix: refusals under it come in OpenWhisk's error shape, elsewhere in dCache's.
WHISK_PREFIX = "/api/v1/namespaces"
_CHANGING = frozenset({"POST", "PUT", "PATCH"})
WEB_PREFIX = "/api/v1/web/"


def body_limit(method: str, path: str) -> int:
    """The largest request body the frontend reads for `method` on `path` (413 past it)."""
    parts = path.strip("/").split("/")
    if method == "PUT" and len(parts) == 6 and path.startswith(WHISK_PREFIX + "/") and parts[4] == "actions":
        return MAX_ACTION_BODY
    return MAX_JSON_BODY


def is_json(content_type: str | None) -> bool:
    """application/json, or any `+json` type (parameters such as charset aside)."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


#: Where a remote pushes notifications (events/sources/api.py): AWS SNS posts its JSON as text/plain. They are
#: authenticated by the source's secret in a header, which a browser's cross-site request cannot set.
_NOTIFICATION = re.compile(r"^/api/v1/sources/[^/]+/[^/]+$")


def _json_or_notification(scope: Scope) -> bool:
    content_type = header(scope, b"content-type")
    if is_json(content_type):
        return True
    media = (content_type or "").split(";")[0].strip().lower()
    return scope["method"] == "POST" and media == "text/plain" and bool(_NOTIFICATION.match(scope["path"]))


class RequestGuard:
    """What every frontend request must satisfy before a route sees it, each refusal a JSON 4xx in the shape
    of the API it was sent to: headers within `max_header_bytes` (431); a state-changing request
    (POST/PUT/PATCH) with a body must say it is JSON (415: a browser's cross-site "simple" request cannot);
    a state-changing request from a browser page of another origin (its Origin header) is refused (403: a
    bodiless POST needs no JSON type); a body within the route's limit (`body_limit`: 413, from
    Content-Length at once, or as a chunked body passes it); body data at least every `body_timeout`
    seconds until it ends (408). Counts requests by status for /metrics."""

    def __init__(self, app: ASGIApp, *, max_header_bytes: int, body_timeout: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.body_timeout = body_timeout

    def _refusal(self, scope: Scope) -> HeadraceError | None:
        if header_bytes(scope) > self.max_header_bytes:
            return HeaderTooLarge(f"Request headers exceed {self.max_header_bytes} bytes")
        method = scope["method"]
        origin = header(scope, b"origin")
        web = scope["path"].startswith(WEB_PREFIX)  # web actions: public URLs, any body, any origin (CORS)
        if web:
            origin = None
        if method in _CHANGING | {"DELETE"} and origin is not None and not self._same_origin(scope, origin):
            # A browser names the page's origin on every cross-origin POST, bodiless no-cors ones included.
            return Forbidden(f"Requests from pages of another origin ({origin}) may not change anything here")
        length = content_length(scope)
        has_body = bool(length) or header(scope, b"transfer-encoding") is not None
        if method in _CHANGING and has_body and not web and not _json_or_notification(scope):
            return UnsupportedMediaType(f"A {method} body must be JSON (Content-Type: application/json)")
        limit = body_limit(method, scope["path"])
        if length is not None and length > limit:
            return PayloadTooLarge(f"The request body of {length} bytes exceeds this route's limit of {limit} bytes")
        return None

    @staticmethod
    def _same_origin(scope: Scope, origin: str) -> bool:
        parts = urlsplit(origin)
        try:
            return bool(parts.netloc) and addressed_as(scope, authority(parts.netloc, parts.scheme))
        except ValueError:
            return False

    async def _answer(self, scope: Scope, receive: Receive, send: Send, exc: HeadraceError) -> None:
        # The connection closes after a refusal: the rest of a refused body is not read.
        headers = {"Connection": "close"}
        path = scope["path"]
        if path == WHISK_PREFIX or path.startswith((WHISK_PREFIX + "/", WEB_PREFIX)):
            from headrace.functions.api import whisk_error

            await whisk_error(exc.status, exc.detail, headers)(scope, receive, send)
        else:
            await error_response(exc, headers)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        started = False

        async def counting_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                API_REQUESTS.labels(method, str(message["status"])).inc()
            await send(message)

        try:
            refusal = self._refusal(scope)
        except HeadraceError as exc:  # a malformed Content-Length
            refusal = exc
        if refusal is not None:
            await self._answer(scope, receive, counting_send, refusal)
            return
        limit = body_limit(method, scope["path"])
        received = 0
        body_done = False
        refused: HeadraceError | None = None
        started_before = False

        async def guarded_receive() -> Any:
            nonlocal received, body_done, refused, started_before
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout(self.body_timeout):
                    message = await receive()
            except TimeoutError:
                refused = RequestTimeout(f"No request body data for {self.body_timeout:g} s")
                started_before = started
                raise refused from None
            if message["type"] != "http.request":
                body_done = True
                return message
            received += len(message.get("body", b""))
            if received > limit:
                refused = PayloadTooLarge(f"The request body exceeds this route's limit of {limit} bytes")
                started_before = started
                raise refused
            body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Any) -> None:
            # Once the body is refused, the route's own answer to the failed read is replaced by the refusal.
            if refused is not None and not started_before:
                return
            await counting_send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if refused is None:
                raise
        if refused is not None and not started_before:
            await self._answer(scope, receive, counting_send, refused)


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
    # Bulk and tape requests: one store; the frontend role runs its Runner (tape/requests.py).
    app.state.bulk_requests = RequestStore(service.namespace, max_active=max_active_from_env())
    app.include_router(bulk_api.router(service, app.state.bulk_requests))
    app.include_router(tape_api.router(service, app.state.bulk_requests))
    app.include_router(info_api.router(service))
    app.include_router(sources_api.router(service))
    if channels is not None:
        app.include_router(events_api.router(service, channels))
    if controller is not None:
        from headrace.functions import api as functions_api
        from headrace.functions import feed_api

        feed_api.install(app, service, controller)  # before the functions API: /whisk.system's feed actions
        functions_api.install(app, service, controller)
    from headrace import console

    console.install(app, service, controller)

    def authentication(principal: Principal) -> dict[str, Any]:
        """How the caller was authenticated and what its token allows (`headrace whoami`)."""
        r = principal.restrictions
        out: dict[str, Any] = {"method": principal.method}
        if principal.token is not None:
            out["token"] = principal.token
        if r is not None:
            out["restrictions"] = {
                "paths": r.paths,
                "root": r.root,
                "activities": sorted(r.activities) if r.activities is not None else None,
                "grants": [[{"path": p, "activities": sorted(a)} for p, a in g] for g in r.grants],
                "before": r.before.isoformat() if r.before is not None else None,
            }
        return out

    @app.get("/api/v1/user", summary="Who the caller is")
    async def user(request: Request) -> Any:
        scope = request.scope
        authz, authorization = query_param(scope, "authz"), header(scope, b"authorization")
        if not authz and not authorization:
            return {"status": "ANONYMOUS"}
        try:
            principal = await service.auth.authenticate(authorization, authz, client_ip(scope))
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
            "authentication": authentication(principal),
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
    settings = service.settings
    app.add_middleware(RequestGuard, max_header_bytes=settings.max_header_bytes, body_timeout=settings.body_timeout)
    return app
