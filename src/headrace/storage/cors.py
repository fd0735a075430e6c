"""CORS on the door, for the web console (served by the frontend, on another port) as dCache's door does for
dCache View: a page of an allowed origin may send WebDAV requests with its own credentials.

Allowed: the frontend's origin (any host name, the frontend's port, or `public_api_url`), and the origins
listed in HEADRACE_DOOR_CORS_ORIGINS (comma-separated; `*` for any). The door never answers
`Access-Control-Allow-Credentials`: a page must name its credentials (an Authorization header or `?authz=`),
so a browser's remembered Basic login or client certificate is never lent to another origin's page.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.types import Send

from headrace.config import Settings

ENV = "HEADRACE_DOOR_CORS_ORIGINS"
#: The headers a console page may send, and those it may read.
ALLOW_HEADERS = (
    "Authorization, Content-Type, Content-Length, Depth, Destination, Overwrite, If, Lock-Token, Timeout, "
    "Want-Digest, Range, If-Match, If-None-Match, X-Requested-With"
)
EXPOSE_HEADERS = "ETag, Digest, Location, Content-Length, Content-Range, Last-Modified, Accept-Ranges"
MAX_AGE = "600"


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


class Cors:
    """Which origins may use the door from a browser, and the headers that say so."""

    def __init__(self, settings: Settings) -> None:
        self.api_port = settings.api_port
        self.scheme = settings.scheme
        listed = {o.strip().rstrip("/").lower() for o in os.environ.get(ENV, "").split(",") if o.strip()}
        if settings.public_api_url:
            listed.add(_origin_of(settings.public_api_url))
        self.any = "*" in listed
        self.listed = listed - {"*"}

    def allows(self, origin: str) -> bool:
        origin = origin.rstrip("/").lower()
        if self.any or origin in self.listed:
            return True
        try:
            parts = urlsplit(origin)
            return parts.scheme == self.scheme and bool(parts.hostname) and parts.port == self.api_port
        except ValueError:
            return False

    def headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]

    def preflight(self, origin: str, allow_methods: str) -> list[tuple[bytes, bytes]]:
        return [
            *self.headers(origin),
            (b"access-control-allow-methods", allow_methods.encode()),
            (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
        ]

    def preflighting(self, send: Send, origin: str, allow_methods: str) -> Send:
        """`send` with the headers of an answer to a preflight (OPTIONS with Access-Control-Request-Method)."""
        return self._adding(send, self.preflight(origin, allow_methods))

    def sending(self, send: Send, origin: str) -> Send:
        """`send` with this origin's CORS headers added to the response's start."""
        return self._adding(send, self.headers(origin))

    @staticmethod
    def _adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:

        async def with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        return with_cors
