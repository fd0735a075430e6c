"""The WebDAV door: RFC 4918 classes 1 and 2 over HTTP, with RFC 3230 digests and dCache's macaroon requests.

A plain ASGI application (no router: WebDAV dispatches on the method, not the path). Data streams both
ways in bounded chunks: an upload is written to a pool's tmp/ as it arrives and becomes visible only when
complete and committed; a download is read from the blob a chunk at a time, paced by the client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from headrace.config import Settings
from headrace.errors import (
    HeaderTooLarge,
    HeadraceError,
    IncompleteUpload,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
)
from headrace.http.body import ClientGone
from headrace.http_common import acknowledge_lifespan, client_ip, error_response, header, header_bytes, query_param
from headrace.metrics import DOOR_REQUESTS
from headrace.storage.macaroon_request import MacaroonRequests
from headrace.storage.service import StorageService
from headrace.storage.webdav_base import Call
from headrace.storage.webdav_locks import Locking
from headrace.storage.webdav_props import Properties
from headrace.storage.webdav_read import Reading
from headrace.storage.webdav_write import Writing

log = logging.getLogger("headrace.door")

ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK, POST"


class Door(Reading, Writing, Properties, Locking, MacaroonRequests):
    """The door's ASGI application: each method to its handler, every error in dCache's shape."""

    def __init__(self, service: StorageService, settings: Settings) -> None:
        super().__init__(service, settings)
        self.handlers: dict[str, Callable[[Call], Awaitable[Response | None]]] = {
            "GET": self.get,
            "HEAD": self.head,
            "PUT": self.put,
            "DELETE": self.delete,
            "MKCOL": self.mkcol,
            "COPY": self.copy,
            "MOVE": self.move,
            "PROPFIND": self.propfind,
            "PROPPATCH": self.proppatch,
            "LOCK": self.lock,
            "UNLOCK": self.unlock,
            "POST": self.post,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        started = False

        async def tracking_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                DOOR_REQUESTS.labels(method, str(message["status"])).inc()
            await send(message)

        try:
            if header_bytes(scope) > self.settings.max_header_bytes:
                raise HeaderTooLarge(f"Request headers exceed {self.settings.max_header_bytes} bytes")
            if method == "OPTIONS":
                response: Response | None = Response(
                    status_code=200,
                    headers={"Allow": ALLOW, "DAV": "1, 2", "MS-Author-Via": "DAV", "Content-Length": "0"},
                )
            else:
                handler = self.handlers.get(method)
                if handler is None:
                    raise MethodNotAllowed(f"Method {method} is not supported here")
                principal = await self.service.auth.authenticate(
                    header(scope, b"authorization"), query_param(scope, "authz"), client_ip(scope)
                )
                path = principal.resolve(scope.get("raw_path") or scope["path"].encode())
                call = Call(scope, receive, tracking_send, principal, path)
                if_header = header(scope, b"if")
                if if_header and method != "POST":
                    call.tokens = await self._evaluate_if(call, if_header)
                response = await handler(call)
        except HeadraceError as exc:
            if started:
                log.warning("%s %s failed after the response started: %s", method, scope.get("path"), exc.detail)
                return
            headers = {"Allow": ALLOW} if isinstance(exc, MethodNotAllowed) else None
            if isinstance(exc, (PayloadTooLarge, RequestTimeout)):
                headers = {"Connection": "close"}  # the rest of the body is not read
            response = error_response(exc, headers)
        except ClientGone:
            # The HTTP server also reports a body it could not read (bad chunk framing, a body cut short
            # and half-closed) as a disconnect: answer in case the client is still there to read it.
            if not started:
                with contextlib.suppress(Exception):
                    gone = IncompleteUpload("The request body ended early or could not be read")
                    await error_response(gone)(scope, receive, tracking_send)
            return
        except Exception:
            # The HTTP server logs nothing of an exception that escapes (its log is off) and answers in plain
            # text: log what broke, and answer in dCache's shape if nothing was sent yet.
            log.exception("%s %s: internal error", method, scope.get("path"))
            if started:
                return
            response = error_response(HeadraceError("The server could not complete the request"))
        if response is not None:
            await response(scope, receive, tracking_send)
