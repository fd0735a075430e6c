"""dCache's macaroon requests: POST with `Content-Type: application/macaroon-request` mints a token
confined to the path it was asked at."""

from __future__ import annotations

import json
from urllib.parse import quote

from starlette.responses import Response

from headrace.auth.macaroons import check_caveat, parse_validity
from headrace.errors import BadRequest, MethodNotAllowed
from headrace.storage.webdav_base import Call, DoorBase


class MacaroonRequests(DoorBase):
    async def post(self, call: Call) -> Response | None:
        ctype = (call.header("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/macaroon-request":
            raise MethodNotAllowed("POST is only for macaroon requests (Content-Type: application/macaroon-request)")
        raw = await self._small_body(call)
        try:
            req = json.loads(raw or b"{}")
        except ValueError as exc:
            raise BadRequest(f"Macaroon request is not JSON: {exc}") from exc
        if not isinstance(req, dict):
            raise BadRequest("Macaroon request must be a JSON object")
        unknown = set(req) - {"caveats", "validity"}
        if unknown:
            raise BadRequest(f"Unknown fields in macaroon request: {', '.join(sorted(unknown))}")
        caveats_in = req.get("caveats", [])
        if not isinstance(caveats_in, list) or not all(isinstance(c, str) for c in caveats_in):
            raise BadRequest("caveats must be a list of strings")
        caveats = [check_caveat(c) for c in caveats_in]
        validity = parse_validity(str(req.get("validity", "PT1H")))
        # The token is confined to the path it was asked at; a token minted from a token keeps its limits.
        if call.path != "/":
            caveats.insert(0, f"path:{call.path}")
        if call.principal.restrictions is not None:
            caveats = call.principal.restrictions.caveats + caveats
        subject = call.subject
        token = self.service.macaroons.mint(
            username=subject.username,
            uid=subject.uid,
            gids=subject.gids,
            caveats=caveats,
            validity=validity,
            cause=call.cause,
        )
        scheme = call.scope.get("scheme", "http")
        host = call.header("host") or f"{self.settings.host}:{self.settings.door_port}"
        base = f"{scheme}://{host}/"
        target = f"{scheme}://{host}{quote(call.principal.external(call.path), safe='/')}"
        body = {
            "macaroon": token,
            "uri": {
                "targetWithMacaroon": f"{target}?authz={token}",
                "baseWithMacaroon": f"{base}?authz={token}",
                "target": target,
                "base": base,
            },
        }
        return Response(json.dumps(body), status_code=200, media_type="application/json")
