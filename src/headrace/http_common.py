"""Small HTTP helpers shared by the door, the pool server and the frontend: error bodies and the error
envelope of an ASGI application (`answer`), client address, header access, a JSON object body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from headrace.errors import (
    BadRequest,
    HeadraceError,
    IncompleteUpload,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
)
from headrace.http.body import ClientGone


async def acknowledge_lifespan(receive: Any, send: Any) -> None:
    """An ASGI lifespan with nothing to start or stop: acknowledge startup, return at shutdown."""
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def granian_server(
    app: Any, host: str, port: int, *, header_timeout: float = 30.0, tls: dict[str, Any] | None = None
) -> Any:
    """An embedded granian server for a data path (the door, a pool): its Rust HTTP layer moves request bodies
    ~5x faster than uvicorn's (1.6 GB/s vs 0.29 GB/s draining a 1 GiB PUT on this machine). `serve()` runs
    it, `stop()` ends it. A connection whose request head has not arrived `header_timeout` seconds after
    the server began reading it is closed. `tls`: `ServerTLS.granian()`'s arguments (HTTP/1.1 and HTTP/2 by
    ALPN). granian is imported only when one is made."""
    from granian.constants import Interfaces
    from granian.http import HTTP1Settings
    from granian.server.embed import Server as Embedded

    http1 = HTTP1Settings(header_read_timeout=max(1, round(header_timeout * 1000)))
    return Embedded(
        app,
        address=host,
        port=port,
        interface=Interfaces.ASGINL,
        log_enabled=False,
        backlog=1024,
        http1_settings=http1,
        **(tls or {}),
    )


#: On every response carrying a file's content (or a listing): a browser neither guesses an active type for
#: it nor runs it as a page of the server's origin (an uploaded .html or .svg stays inert: no script, no
#: forms, an opaque origin without the door's cookies or storage).
CONTENT_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}

WWW_AUTHENTICATE = 'Basic realm="headrace", Bearer realm="headrace"'


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> Response:
    """dCache's error shape: {"status": "<code as string>", "title", "detail"}."""
    body = json.dumps({"status": str(status), "title": title, "detail": detail}, separators=(",", ":"))
    h = dict(headers or {})
    if status == 401:
        h.setdefault("WWW-Authenticate", WWW_AUTHENTICATE)
    return Response(body, status_code=status, media_type="application/json", headers=h)


def error_response(exc: HeadraceError, headers: dict[str, str] | None = None) -> Response:
    return problem(exc.status, exc.title, exc.detail, {**exc.headers, **(headers or {})})


async def answer(
    scope: Mapping[str, Any],
    receive: Any,
    send: Any,
    handle: Callable[[Any], Awaitable[Response | None]],
    *,
    log: logging.Logger,
    allow: str = "",
    on_start: Callable[[int], None] | None = None,
) -> None:
    """Run `handle(send)` and send the response it returns (None: it answered itself), every error in dCache's
    JSON shape: a HeadraceError as its status (with Allow: `allow` on a 405, Connection: close when the body
    is left unread); a body that could not be read as 400 if the client is still there; anything else logged
    with its traceback (the HTTP server's own log is off) and answered as a 500 that tells nothing of it. An
    error after the response started is logged, and the connection cut. `on_start(status)` sees each start."""
    started = False
    method = scope.get("method")

    async def tracking_send(message: MutableMapping[str, Any]) -> None:
        nonlocal started
        if message["type"] == "http.response.start":
            started = True
            if on_start is not None:
                on_start(int(message["status"]))
        await send(message)

    try:
        response = await handle(tracking_send)
    except HeadraceError as exc:
        if started:
            log.warning("%s %s failed after the response started: %s", method, scope.get("path"), exc.detail)
            return
        headers = {"Allow": allow} if isinstance(exc, MethodNotAllowed) and allow else None
        if isinstance(exc, (PayloadTooLarge, RequestTimeout)):
            headers = {"Connection": "close"}  # the rest of the body is not read
        response = error_response(exc, headers)
    except ClientGone:
        # The HTTP server also reports a body it could not read (bad chunk framing, a body cut short
        # and half-closed) as a disconnect: answer in case the client is still there to read it.
        if not started:
            with contextlib.suppress(Exception):
                gone = IncompleteUpload("The request body ended early or could not be read")
                await error_response(gone)(dict(scope), receive, tracking_send)
        return
    except Exception:
        log.exception("%s %s: internal error", method, scope.get("path"))
        if started:
            return
        response = error_response(HeadraceError("The server could not complete the request"))
    if response is not None:
        await response(dict(scope), receive, tracking_send)


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return None


def content_length(scope: Mapping[str, Any]) -> int | None:
    """The request's Content-Length; None if absent; BadRequest if it is not a non-negative integer."""
    raw = header(scope, b"content-length")
    if raw is None:
        return None
    try:
        n = int(raw)
    except ValueError as exc:
        raise BadRequest(f"Invalid Content-Length: {raw!r}") from exc
    if n < 0:
        raise BadRequest(f"Invalid Content-Length: {raw!r}")
    return n


def header_bytes(scope: Mapping[str, Any]) -> int:
    return sum(len(k) + len(v) + 4 for k, v in scope["headers"]) + len(scope.get("raw_path") or b"")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def authority(netloc: str, scheme: str) -> tuple[str, int | None]:
    """(lower-case host, port) of a URL authority; the port None when absent or the scheme's default.
    ValueError for a port that is not a number."""
    parts = urlsplit(f"//{netloc.rpartition('@')[2]}")
    port = parts.port
    if port is not None and port == _DEFAULT_PORTS.get(scheme.lower()):
        port = None
    return (parts.hostname or "").lower(), port


def addressed_as(scope: Mapping[str, Any], wanted: tuple[str, int | None], *also: tuple[str, str]) -> bool:
    """Whether the authority `wanted` is the one the client addressed this request to (Host, or a proxy's
    X-Forwarded-Host), or one of `also` ((netloc, scheme) pairs: a public URL). Schemes are not compared,
    for a TLS terminator in front changes them; a port left out stands for the scheme's default."""
    scheme = str(scope.get("scheme", "http"))
    candidates = [(header(scope, b"host"), scheme), (header(scope, b"x-forwarded-host"), scheme), *also]
    for value, its_scheme in candidates:
        for one in (value or "").split(","):
            with contextlib.suppress(ValueError):
                if one.strip() and authority(one.strip(), its_scheme) == wanted:
                    return True
    return False


def client_ip(scope: Mapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def query_param(scope: Mapping[str, Any], name: str) -> str | None:
    qs = scope.get("query_string") or b""
    if not qs:
        return None
    values = parse_qs(qs.decode("latin-1"), keep_blank_values=True).get(name)
    return values[0] if values else None


async def json_object_body(request: Request, *, empty: str, not_object: str) -> dict[str, Any]:
    """The request's body as a JSON object; BadRequest with `empty` when the body is blank, "Malformed JSON: ..."
    when it does not parse (nested past the parser's limit included) and `not_object` when it is no object."""
    raw = await request.body()
    if not raw.strip():
        raise BadRequest(empty)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest(not_object)
    return body


def principal_of(service: Any) -> Any:
    """A FastAPI dependency that authenticates the request against `service.auth` (401 on failure)."""

    async def dependency(request: Request) -> Any:
        scope = request.scope
        authorization, authz = header(scope, b"authorization"), query_param(scope, "authz")
        return await service.auth.authenticate(authorization, authz, client_ip(scope))

    return dependency


def guarded_h11(header_timeout: float, max_header_bytes: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with what it lacks: a header read timeout (a connection whose request head has
    not all arrived `header_timeout` seconds after its first byte, or after the connection opened, is closed)
    and a 431 with a JSON body, not h11's text/plain 400, for a request head that keeps growing past
    `max_header_bytes` (the frontend's RequestGuard answers heads just past it, once parsed)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    cap = max_header_bytes + 8 * 1024  # a head this large is refused here without being parsed

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # h11 must not refuse first: it would answer a text/plain 400; one read (256 KiB) past the cap
            self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=cap + 256 * 1024)
            self.head_timer: asyncio.TimerHandle | None = None
            self.head_bytes = 0

        def _await_head(self) -> None:
            self.head_bytes = 0
            self.head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def _head_done(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def _head_timed_out(self) -> None:
            self.head_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            waiting = self.conn.their_state is h11.IDLE
            if waiting and self.head_timer is None:
                self._await_head()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._head_done()
            elif waiting:
                self.head_bytes += len(data)
                if self.head_bytes > cap and not self.transport.is_closing():
                    self._head_done()
                    body = json.dumps(
                        {
                            "status": "431",
                            "title": "Request Header Fields Too Large",
                            "detail": f"Request headers exceed {max_header_bytes} bytes",
                        }
                    ).encode()
                    self.transport.write(
                        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                        b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                    )
                    self.transport.close()

    return GuardedH11Protocol
