"""What the web console needs of the servers, without a browser: the door's CORS for the console's origin
(storage/cors.py) and the read-only scaling route (console/scaling.py), each with a second, non-admin user;
what the OIDC sign-in offers (console/login.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from headrace.auth.issuers import parse_issuers
from headrace.auth.jwt_bearer import JwtVerifier
from headrace.console.login import Discovery, offers
from support.harness import Server, add_user, http, wait_for

CODE = "def main(args):\n    return {'ok': True}\n"


def test_door_answers_the_consoles_preflight_and_marks_its_responses(server: Server) -> None:
    origin = f"http://127.0.0.1:{server.api_port}"
    pre = http(
        "OPTIONS",
        f"{server.door_url}/x",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-origin"] == origin
    assert "PUT" in pre.headers["access-control-allow-methods"]
    assert "MOVE" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    # credentials are never lent: the page names them itself
    assert "access-control-allow-credentials" not in pre.headers

    name, key, _ = add_user(server, f"cors{uuid.uuid4().hex[:6]}")
    path = f"/cors-{uuid.uuid4().hex[:8]}.txt"
    put = http("PUT", f"{server.door_url}{path}", content=b"hi", auth=server.auth, headers={"Origin": origin})
    assert put.status_code == 201
    assert put.headers["access-control-allow-origin"] == origin
    assert "ETag" in put.headers["access-control-expose-headers"]
    # an error is readable by the page too (the console shows the API's message)
    denied = http("DELETE", f"{server.door_url}{path}", auth=(name, key), headers={"Origin": origin})
    assert denied.status_code == 403
    assert denied.headers["access-control-allow-origin"] == origin
    assert denied.json()["detail"]


def test_door_gives_other_origins_no_cors(server: Server) -> None:
    # another site, and a page the door itself would serve: neither is the frontend's origin
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.door_port}"):
        pre = http(
            "OPTIONS", f"{server.door_url}/", headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"}
        )
        assert "access-control-allow-origin" not in pre.headers
        got = http("GET", f"{server.door_url}/", auth=server.auth, headers={"Origin": origin})
        assert "access-control-allow-origin" not in got.headers


def _deploy(server: Server, auth: tuple[str, str], name: str) -> None:
    put = http(
        "PUT",
        f"{server.api_url}/api/v1/namespaces/_/actions/{name}",
        auth=auth,
        json={"exec": {"kind": "python:3", "code": CODE}},
    )
    assert put.status_code == 200, put.text
    run = http(
        "POST", f"{server.api_url}/api/v1/namespaces/_/actions/{name}?blocking=true", auth=auth, json={}, timeout=60
    )
    assert run.status_code == 200, run.text


def test_scaling_shows_only_the_callers_own_actions(server: Server) -> None:
    bob = add_user(server, f"bob{uuid.uuid4().hex[:6]}")
    carol = add_user(server, f"carol{uuid.uuid4().hex[:6]}")
    _deploy(server, server.auth, "admins-action")
    _deploy(server, (bob[0], bob[1]), "bobs-action")

    def scaling(auth: tuple[str, str]) -> dict:
        r = http("GET", f"{server.api_url}/api/v1/scaling", auth=auth)
        assert r.status_code == 200, r.text
        return r.json()

    mine = wait_for(
        lambda: (s := scaling((bob[0], bob[1])))["actions"] and s, "bob's action in his scaling view", timeout=30
    )
    assert mine["namespace"] == bob[0]
    assert [a["name"] for a in mine["actions"]] == ["bobs-action"]
    entry = mine["actions"][0]
    assert set(entry) == {"name", "workers", "queued", "running", "finished"}
    assert entry["finished"] >= 1 and entry["workers"] >= 0 and entry["queued"] == 0
    names = {a["name"] for a in scaling(server.auth)["actions"]}
    assert "admins-action" in names and "bobs-action" not in names
    assert scaling((carol[0], carol[1]))["actions"] == []

    assert http("GET", f"{server.api_url}/api/v1/scaling").status_code == 401
    # a macaroon limited to a path may not see functions, as on the functions API
    minted = http(
        "POST",
        f"{server.door_url}/",
        auth=(bob[0], bob[1]),
        content=b'{"caveats": ["activity:DOWNLOAD"], "validity": "PT5M"}',
        headers={"Content-Type": "application/macaroon-request"},
    )
    assert minted.status_code == 200, minted.text
    limited = http(
        "GET", f"{server.api_url}/api/v1/scaling", headers={"Authorization": f"Bearer {minted.json()['macaroon']}"}
    )
    assert limited.status_code == 403
    assert "macaroon" in limited.json()["detail"].lower()


def test_console_assets_are_served(server: Server) -> None:
    r = http("GET", f"{server.api_url}/console", follow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    page = http("GET", f"{server.api_url}/console/")
    assert page.status_code == 200 and 'src="js/app.js"' in page.text
    js = http("GET", f"{server.api_url}/console/js/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert http("GET", f"{server.api_url}/console/js/nothing.js").status_code == 404


def test_console_login_offers_each_console_client_and_says_when_discovery_fails() -> None:
    """`GET /api/v1/console/login`'s entries (console/login.py): one per issuer with a `console:` client, and an
    issuer whose discovery document cannot be fetched reported in words rather than offered half-configured."""
    issuers = parse_issuers(
        "- issuer: http://127.0.0.1:9/realms/down\n"  # nothing listens on the discard port
        "  console: {client_id: headrace-console, scopes: [openid, profile]}\n"
        "- issuer: https://no-console.example\n"
        "- issuer: https://short.example\n"
        "  console: short-id\n"
    )
    assert issuers[2].console is not None and issuers[2].console.client_id == "short-id"
    assert issuers[2].console.scopes == "openid" and issuers[2].console.name == "short.example"

    async def offered() -> list[dict[str, Any]]:
        verifier = JwtVerifier(issuers[:2], cast(Any, None))  # discovery needs no users
        try:
            return await offers(verifier, Discovery())
        finally:
            await verifier.close()

    got = asyncio.run(offered())
    assert len(got) == 1
    entry = got[0]
    assert entry["clientId"] == "headrace-console" and entry["scopes"] == "openid profile"
    assert entry["name"] == "127.0.0.1" and "authorizationEndpoint" not in entry
    assert "http://127.0.0.1:9/realms/down/.well-known/openid-configuration" in entry["error"]
