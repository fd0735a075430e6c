"""The WebDAV door: RFC 4918 classes 1 and 2 over HTTP, with RFC 3230 digests and dCache's macaroon requests.

A plain ASGI application (no router: WebDAV dispatches on the method, not the path). Data streams both
ways in bounded chunks: an upload is written to a pool's tmp/ as it arrives and becomes visible only when
complete and committed; a download is read from the blob a chunk at a time, paced by the client.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from headrace.config import Settings
from headrace.errors import HeaderTooLarge, MethodNotAllowed
from headrace.http_common import acknowledge_lifespan, answer, client_ip, header, header_bytes, query_param
from headrace.metrics import DOOR_REQUESTS
from headrace.storage.cors import Cors
from headrace.storage.macaroon_request import MacaroonRequests
from headrace.storage.service import StorageService
from headrace.storage.webdav_base import Call
from headrace.storage.webdav_locks import Locking
from headrace.storage.webdav_props import Properties
from headrace.storage.webdav_read import Reading
from headrace.storage.webdav_tpc import ThirdPartyCopy
from headrace.storage.webdav_write import Writing

log = logging.getLogger("headrace.door")

#: The WLCG Tape REST API's discovery document (tape/tape_api.py), served without authentication as dCache does.
WELL_KNOWN_TAPE = "/.well-known/wlcg-tape-rest-api"
ALLOW = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, COPY, MOVE, PROPFIND, PROPPATCH, LOCK, UNLOCK, POST"


class Door(Reading, Writing, ThirdPartyCopy, Properties, Locking, MacaroonRequests):
    """The door's ASGI application: each method to its handler, every error in dCache's shape."""

    def __init__(self, service: StorageService, settings: Settings) -> None:
        super().__init__(service, settings)
        self.handlers: dict[str, Callable[[Call], Awaitable[Response | None]]] = {
            "GET": self.get,
            "HEAD": self.head,
            "PUT": self.put,
            "DELETE": self.delete,
            "MKCOL": self.mkcol,
            "COPY": self.copy_or_third_party,
            "MOVE": self.move,
            "PROPFIND": self.propfind,
            "PROPPATCH": self.proppatch,
            "LOCK": self.lock,
            "UNLOCK": self.unlock,
            "POST": self.post,
        }
        self._counters: dict[tuple[str, int], Any] = {}
        self.cors = Cors(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await acknowledge_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method = scope["method"]
        origin = header(scope, b"origin")
        if origin is not None and self.cors.allows(origin):  # the web console's page (storage/cors.py)
            if method == "OPTIONS" and header(scope, b"access-control-request-method") is not None:
                await Response(status_code=204, headers={"Allow": ALLOW})(
                    scope, receive, self.cors.preflighting(send, origin, ALLOW)
                )
                return
            send = self.cors.sending(send, origin)

        async def handle(tracking_send: Send) -> Response | None:
            if header_bytes(scope) > self.settings.max_header_bytes:
                raise HeaderTooLarge(f"Request headers exceed {self.settings.max_header_bytes} bytes")
            if method == "OPTIONS":
                return Response(
                    status_code=200,
                    headers={"Allow": ALLOW, "DAV": "1, 2", "MS-Author-Via": "DAV", "Content-Length": "0"},
                )
            if method == "GET" and scope["path"] == WELL_KNOWN_TAPE:  # gfal2 asks the door's host:port
                from headrace.tape.tape_api import discovery_response

                return discovery_response(self.settings)
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
            return await handler(call)

        def count(status: int) -> None:
            counter = self._counters.get((method, status))
            if counter is None:  # prometheus_client's labels() costs more than the request's other counting
                counter = DOOR_REQUESTS.labels(method, str(status))
                if len(self._counters) < 256:  # methods come from clients: keep the known few
                    self._counters[(method, status)] = counter
            counter.inc()

        await answer(scope, receive, send, handle, log=log, allow=ALLOW, on_start=count)

    async def copy_or_third_party(self, call: Call) -> Response | None:
        """A COPY within this door, or an HTTP third-party copy (a Source, or a Destination elsewhere)."""
        kind = self.third_party(call)
        if kind is None:
            return await self.copy(call)
        return await self.third_party_copy(call, kind)
