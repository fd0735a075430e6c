"""`GET /api/v1/console/login`: the OIDC sign-ins the console's sign-in page offers, besides API keys and
macaroons: one per trusted issuer whose entry names a `console:` client (auth/issuers.py).

Public (the page shows it before anyone is signed in) and without secrets: the console's client is a public
OAuth client, and the page runs the authorization code flow with PKCE itself (static/js/oidc.js), exchanging
the code at the token endpoint from the browser. The issuer's endpoints come from its discovery document,
fetched here through the token verifier (which reads them anyway, for the keys) rather than by the page, so the issuer
needs CORS for the console's origin on its token endpoint only. A discovery that fails is reported in the
entry's `error` (the page shows it on the button's click) and tried again after `RETRY` seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter
from starlette.responses import JSONResponse, Response

from headrace.auth.jwt_bearer import JwtVerifier
from headrace.storage.service import StorageService

ROUTE = "/api/v1/console/login"
#: Seconds a fetched discovery document is used before the issuer is asked again.
MAX_AGE = 300.0
#: Seconds before a failed discovery is tried again (the route is public: no fetch per request).
RETRY = 10.0


def _endpoint(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"its {name} is not an http(s) URL: {value!r}")
    return str(value)


class Discovery:
    """The authorization and token endpoints of the issuers, from their discovery documents (fetched by the
    token verifier, which reads the same documents for the issuers' keys), cached."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[float, dict[str, str] | str]] = {}
        self._lock = asyncio.Lock()

    async def endpoints(self, verifier: JwtVerifier, issuer: str) -> dict[str, str] | str:
        """{"authorizationEndpoint", "tokenEndpoint"}, or why they cannot be had (one line)."""
        async with self._lock:
            now = time.monotonic()
            known = self._known.get(issuer)
            if known is not None and now - known[0] < (MAX_AGE if isinstance(known[1], dict) else RETRY):
                return known[1]
            result: dict[str, str] | str
            try:
                doc = await verifier.discovery(issuer)
                result = {
                    "authorizationEndpoint": _endpoint(doc, "authorization_endpoint"),
                    "tokenEndpoint": _endpoint(doc, "token_endpoint"),
                }
            except (httpx.HTTPError, ValueError) as exc:
                url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
                result = f"The sign-in with {issuer} is not available: its discovery document {url}: {exc}"
            self._known[issuer] = (now, result)
            return result


async def offers(verifier: JwtVerifier, discovery: Discovery) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in verifier.issuers.values():
        if i.console is None:
            continue
        entry: dict[str, Any] = {
            "name": i.console.name,
            "issuer": i.issuer,
            "clientId": i.console.client_id,
            "scopes": i.console.scopes,
        }
        found = await discovery.endpoints(verifier, i.issuer)
        if isinstance(found, str):
            entry["error"] = found
        else:
            entry.update(found)
        out.append(entry)
    return out


def router(service: StorageService) -> APIRouter:
    r = APIRouter()
    discovery = Discovery()

    @r.get(ROUTE, summary="The OIDC sign-ins the console offers (public)")
    async def login() -> Response:
        verifier = service.auth.jwt
        providers = await offers(verifier, discovery) if verifier is not None else []
        return JSONResponse({"providers": providers}, headers={"Cache-Control": "no-cache"})

    return r
