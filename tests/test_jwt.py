"""Bearer JWTs from trusted issuers (issue 15), against a real OAuth2 provider on 127.0.0.1
(support/oidc_provider.py): its tokens on the door, the frontend's namespace and the functions API; the
precise 401s (expired, wrong audience, unknown issuer, bad signature, unknown key id); WLCG scopes confining
paths and activities; key rotation; identity tokens mapped to a non-admin user or creating one; macaroons
minted from a JWT; a bad issuers file refused as one line."""

from __future__ import annotations

import base64
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, http, wait_for
from support.oidc_provider import OidcProvider

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Please `KeySet")
logging.getLogger("werkzeug").setLevel(logging.ERROR)

WLCG_ANY = "https://wlcg.cern.ch/jwt/v1/any"


class Env:
    def __init__(self, server: Server, provider: OidcProvider, stranger: OidcProvider) -> None:
        self.server = server
        self.provider = provider
        self.stranger = stranger

    def door(self, token: str) -> httpx.Client:
        return client(base_url=self.server.door_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def api(self, token: str) -> httpx.Client:
        return client(base_url=self.server.api_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("jwt")
    provider = OidcProvider().start()
    stranger = OidcProvider().start()  # a working provider this server does not trust
    server = Server(data=base / "data", cli_config=base / "cli.json", env_extra={"HEADRACE_TOKEN_KEYS_REFETCH": "1"})
    provider.add_client("wlcg", WLCG_ANY)
    provider.add_client("door-aud", server.door_url)
    provider.add_client("other-aud", "https://elsewhere.example.org")
    provider.add_client("expired", WLCG_ANY, lifetime=-300)
    provider.add_client("app", WLCG_ANY)
    provider.add_client("wlcg-v2", WLCG_ANY, **{"wlcg.ver": "2.0"})
    provider.add_user("alice-at-idp", "pw-a", preferred_username="alice")
    provider.add_user("newcomer", "pw-n", preferred_username="New.Comer@uni.example")
    provider.add_user("nobody", "pw-x")  # no preferred_username
    stranger.add_client("wlcg", WLCG_ANY)
    issuers = base / "issuers.yaml"
    issuers.write_text(
        f"""
- issuer: {provider.issuer}
  base_path: /wl
  user: svc
  claim: preferred_username
  users: {{alice: alice}}
  create_users: true
  default_group: 4242
"""
    )
    server.args_extra = ["--token-issuers", str(issuers)]
    server.start()
    uid_of = {name: add_user(server, name)[2] for name in ("svc", "alice", "bob")}  # bob: another user's files
    with server.api() as api, server.door() as door:
        for d in ("/wl", "/wl/data", "/wl/other", "/home", "/home/alice", "/home/bob"):
            assert door.request("MKCOL", d).status_code == 201
        for path, user in (("/wl", "svc"), ("/wl/data", "svc"), ("/wl/other", "svc"), ("/home/alice", "alice"),
                           ("/home/bob", "bob")):  # fmt: skip
            r = api.post(f"/api/v1/namespace{path}", json={"action": "chown", "uid": uid_of[user]})
            assert r.status_code == 200, r.text
        assert api.post("/api/v1/namespace/home/bob", json={"action": "chmod", "mode": 0o700}).status_code == 200
        door.put("/wl/data/existing", content=b"wl-data")
        door.put("/wl/other/secret", content=b"other")
    yield Env(server, provider, stranger)
    server.stop()
    provider.stop()
    stranger.stop()


def refusal(r: httpx.Response, status: int = 401) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    if status == 401:
        assert r.headers["WWW-Authenticate"].startswith("Bearer ")
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    return str(body.get("detail") or body.get("error"))


def test_provider_token_is_accepted_by_door_frontend_and_functions_api(env: Env) -> None:
    token = env.provider.token("wlcg", "storage.read:/ storage.create:/data")
    with env.door(token) as door:
        assert door.get("/wl/data/existing").content == b"wl-data"
        assert door.put("/wl/data/new", content=b"from-jwt").status_code == 201
    with env.api(token) as api:
        r = api.get("/api/v1/namespace/wl/data", params={"children": "true"})
        assert r.status_code == 200, r.text
        assert {c["fileName"] for c in r.json()["children"]} >= {"existing", "new"}
        me = api.get("/api/v1/user").json()
        assert me["username"] == "svc"
        auth = me["authentication"]
        assert auth["method"] == "jwt" and auth["token"]["kind"] == "capability"
        assert auth["token"]["issuer"] == env.provider.issuer
        grants = {g["path"]: g["activities"] for g in auth["token"]["grants"]}
        assert "UPLOAD" in grants["/wl/data"] and "DOWNLOAD" in grants["/wl"]
        # the functions API authenticates the same token, but functions run with all of their owner's rights:
        # a token limited to paths or activities may not use it (as a limited macaroon may not)
        r = api.get("/api/v1/namespaces/_/actions")
        assert r.status_code == 403 and set(r.json()) == {"error", "code"}, r.text
        assert "capability token" in r.json()["error"]
    # a token whose audience is the server's own URL is accepted too
    with env.door(env.provider.token("door-aud", "storage.read:/")) as door:
        assert door.get("/wl/data/existing").status_code == 200


def test_precise_401s(env: Env) -> None:
    door_url, api_url = env.server.door_url, env.server.api_url
    cases: dict[str, str] = {
        "expired": env.provider.token("expired", "storage.read:/"),
        "wrong audience": env.provider.token("other-aud", "storage.read:/"),
        "unknown issuer": env.stranger.token("wlcg", "storage.read:/"),
        "wlcg.ver": env.provider.token("wlcg-v2", "storage.read:/"),
    }
    good = env.provider.token("wlcg", "storage.read:/")
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["scope"] = "storage.modify:/"  # widened by hand: the signature no longer holds
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    cases["bad signature"] = f"{head}.{forged}.{sig}"
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header["kid"] = "no-such-key"
    other_head = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    cases["unknown key id"] = f"{other_head}.{payload}.{sig}"
    for reason, token in cases.items():
        bearer = {"Authorization": f"Bearer {token}"}
        detail = refusal(http("GET", f"{door_url}/wl/data/existing", headers=bearer))
        assert reason in detail, (reason, detail)
        detail = refusal(http("GET", f"{api_url}/api/v1/namespace/wl", headers=bearer))
        assert reason in detail, (reason, detail)
        r = http("GET", f"{api_url}/api/v1/namespaces/_/actions", headers=bearer)
        assert r.status_code == 401 and set(r.json()) == {"error", "code"}, r.text
        assert reason in r.json()["error"] and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    # the dCache error shape on the door and the namespace API
    r = http("GET", f"{door_url}/wl", headers={"Authorization": f"Bearer {cases['expired']}"})
    assert set(r.json()) == {"status", "title", "detail"} and r.json()["status"] == "401"
    assert 'error_description="expired"' in r.headers["WWW-Authenticate"]


def test_wlcg_scopes_confine_paths_and_activities(env: Env) -> None:
    reader = env.provider.token("wlcg", "storage.read:/data")
    with env.door(reader) as door:
        assert door.get("/wl/data/existing").content == b"wl-data"
        # outside the scope's path (and outside the base path) is 403, not even a 404
        assert refusal(door.get("/wl/other/secret"), 403)
        assert refusal(door.get("/home/alice"), 403)
        # reading does not allow writing or deleting
        assert "UPLOAD" in refusal(door.put("/wl/data/nope", content=b"x"), 403)
        assert refusal(door.delete("/wl/data/existing"), 403)
        # the directories above the path can be found, not read: PROPFIND depth 0 of /wl works
        assert door.request("PROPFIND", "/wl", headers={"Depth": "0"}).status_code == 207
    with env.api(reader) as api:
        assert refusal(api.post("/api/v1/namespace/wl/data", json={"action": "mkdir", "name": "d"}), 403)
        children = api.get("/api/v1/namespace/wl", params={"children": "true"}).json()["children"]
        assert [c["fileName"] for c in children] == ["data"]  # /wl/other is not shown
        # events: a channel of this token may watch what its scopes reach, nothing beside it
        ch = api.post("/api/v1/events/channels")
        assert ch.status_code == 201, ch.text
        sub = f"{ch.headers['Location']}/subscriptions/inotify"
        assert api.post(sub, json={"path": "/wl/data"}, follow_redirects=False).status_code == 201
        assert refusal(api.post(sub, json={"path": "/wl/other"}), 403)
        assert refusal(api.post(sub, json={"path": "/wl", "recursive": True}), 403)
    creator = env.provider.token("wlcg", "storage.create:/data/up")
    with env.door(creator) as door:
        assert door.request("MKCOL", "/wl/data/up").status_code == 201
        assert door.put("/wl/data/up/f", content=b"c").status_code == 201
        assert refusal(door.put("/wl/data/beside", content=b"c"), 403)
        assert "DELETE" in refusal(door.delete("/wl/data/up/f"), 403)
    with env.door(env.provider.token("wlcg", "storage.modify:/data")) as door:
        assert door.put("/wl/data/modified", content=b"m").status_code == 201
        assert door.delete("/wl/data/modified").status_code == 204
        assert refusal(door.put("/wl/other/m", content=b"m"), 403)
    # SciTokens' read:/write: are capabilities too
    with env.door(env.provider.token("wlcg", "write:/data/sci read:/data")) as door:
        assert door.put("/wl/data/sci", content=b"s").status_code == 201
        assert door.get("/wl/data/existing").status_code == 200
        assert refusal(door.get("/wl/other/secret"), 403)


def test_key_rotation_at_the_provider_is_picked_up(env: Env) -> None:
    before = env.provider.token("wlcg", "storage.read:/")
    with env.door(before) as door:
        assert door.get("/wl/data/existing").status_code == 200
    env.provider.rotate()
    after = env.provider.token("wlcg", "storage.read:/")
    assert (
        json.loads(base64.urlsafe_b64decode(after.split(".")[0] + "==="))["kid"]
        != json.loads(base64.urlsafe_b64decode(before.split(".")[0] + "==="))["kid"]
    )

    def accepted() -> bool | None:
        with env.door(after) as door:
            return door.get("/wl/data/existing").status_code == 200 or None

    wait_for(accepted, "a token signed with the rotated-in key accepted", timeout=30)
    # the retired key is gone from the provider's JWKS: its tokens are refused once keys were re-fetched
    with env.door(before) as door:
        r = door.get("/wl/data/existing")
        assert "unknown key id" in refusal(r)


def test_identity_token_gets_the_mapped_users_own_rights(env: Env) -> None:
    token = env.provider.token("app", "openid profile", username="alice-at-idp", password="pw-a")
    with env.door(token) as door:
        assert door.put("/home/alice/mine", content=b"alice's").status_code == 201
        assert door.get("/home/alice/mine").content == b"alice's"
        # bob's home is 0700: alice cannot list it, nor write there, nor write in svc's /wl/data
        assert door.request("PROPFIND", "/home/bob", headers={"Depth": "1"}).status_code == 403
        assert door.put("/home/bob/intruder", content=b"x").status_code == 403
        assert door.put("/wl/data/intruder", content=b"x").status_code == 403
    with env.api(token) as api:
        # the functions API takes an identity token: alice's own namespace, not another's
        assert api.put("/api/v1/namespaces/_/triggers/jwt-t", json={}).status_code == 200
        assert [t["name"] for t in api.get("/api/v1/namespaces/alice/triggers").json()] == ["jwt-t"]
        assert api.get("/api/v1/namespaces/bob/triggers").status_code == 403
        me = api.get("/api/v1/user").json()
        assert me["username"] == "alice" and me["authentication"]["token"]["kind"] == "identity"
        assert "restrictions" not in me["authentication"]
        assert api.post("/api/v1/namespace/home/bob", json={"action": "chmod", "mode": 0o777}).status_code == 403
    # an identity token without the configured claim says so
    no_claim = env.provider.token("app", "openid", username="nobody", password="pw-x")
    assert "preferred_username" in refusal(http("GET", f"{env.server.door_url}/home", headers=_b(no_claim)))


def test_create_users_on_first_use(env: Env) -> None:
    token = env.provider.token("app", "openid", username="newcomer", password="pw-n")
    with env.api(token) as api:
        me = api.get("/api/v1/user").json()
        assert me["username"] == "new.comer-uni.example", me
        assert me["gids"] == [4242] and me["uid"] not in (0,)
        again = env.provider.token("app", "openid", username="newcomer", password="pw-n")
        with env.api(again) as api2:
            assert api2.get("/api/v1/user").json()["uid"] == me["uid"]  # the same user, not a second one
        # a new user is nobody special: bob's home stays closed to it
        assert api.get("/api/v1/namespace/home/bob", params={"children": "true"}).status_code == 403


def test_macaroon_request_with_a_jwt(env: Env) -> None:
    token = env.provider.token("wlcg", "storage.read:/data storage.create:/data")
    with env.door(token) as door:
        r = door.post(
            "/wl/data",
            json={"caveats": ["activity:DOWNLOAD,LIST"], "validity": "PT10M"},
            headers={"Content-Type": "application/macaroon-request"},
        )
    assert r.status_code == 200, r.text
    macaroon = r.json()["macaroon"]
    with env.door(macaroon) as door:
        assert door.get("/wl/data/existing").content == b"wl-data"
        assert refusal(door.get("/wl/other/secret"), 403)  # the JWT's grants travel with the macaroon
        assert refusal(door.put("/wl/data/m", content=b"m"), 403)
    # an identity token mints a macaroon for its user
    ident = env.provider.token("app", "openid", username="alice-at-idp", password="pw-a")
    with env.door(ident) as door:
        r = door.post(
            "/home/alice", json={"validity": "PT5M"}, headers={"Content-Type": "application/macaroon-request"}
        )
    assert r.status_code == 200, r.text
    with env.api(r.json()["macaroon"]) as api:
        assert api.get("/api/v1/user").json()["username"] == "alice"


def test_whoami_cli_shows_the_token(env: Env, tmp_path: Path) -> None:
    token = env.provider.token("wlcg", "storage.read:/data")
    config = tmp_path / "cli.json"
    config.write_text(json.dumps({"door": env.server.door_url, "api": env.server.api_url}))
    environ = {**env.server.env(), "HEADRACE_CONFIG": str(config), "HEADRACE_TOKEN": token}
    run = [sys.executable, "-m", "headrace.cli.main", "whoami"]
    out = subprocess.run(run, capture_output=True, text=True, env=environ)
    assert out.returncode == 0, out.stderr
    assert "svc" in out.stdout and "jwt" in out.stdout and "under /wl/data" in out.stdout
    out = subprocess.run([*run, "--json"], capture_output=True, text=True, env=environ)
    assert json.loads(out.stdout)["authentication"]["token"]["scopes"] == ["storage.read:/data"]
    bad = subprocess.run(run, capture_output=True, text=True, env={**environ, "HEADRACE_TOKEN": "eyJ.x.y"})
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("- issuer: not-a-url\n", "entry 1: issuer 'not-a-url' is not an http(s) URL"),
        ("- issuer: https://a.example\n  kind: saml\n", "kind must be one of wlcg, scitokens, oidc"),
        ("- issuer: https://a.example\n  audience: x\n", "unknown field 'audience'"),
        ("- {issuer: https://a.example\n", "not YAML"),
        ("- issuer: https://a.example\n  console: {scopes: openid}\n", "console: `client_id` is missing"),
        ("- issuer: https://a.example\n  console: {client_id: c, secret: s}\n", "console: unknown field 'secret'"),
    ],
)
def test_bad_issuers_file_is_one_line(tmp_path: Path, content: str, expected: str) -> None:
    issuers = tmp_path / "issuers.yaml"
    issuers.write_text(content)
    for command in (["up"], ["door"], ["frontend"]):
        out = subprocess.run(
            [sys.executable, "-m", "headrace.cli.main", *command, "--data", str(tmp_path / "d"),
             "--token-issuers", str(issuers)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(issuers) in lines[0], (command, out.stderr)
    missing = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "up", "--token-issuers", str(tmp_path / "none.yaml")],
        capture_output=True, text=True, timeout=60, env={**_env(), "HEADRACE_DATA": str(tmp_path / "d")},
    )  # fmt: skip
    assert missing.returncode != 0 and "No such file" in missing.stderr


def _env() -> dict[str, Any]:
    import os

    return dict(os.environ)


def _b(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_scopes_to_grants() -> None:
    from headrace.auth.issuers import Issuer
    from headrace.auth.jwt_bearer import capability_grants

    base = Issuer("https://i.example", base_path="/exp/xfel")
    grants = capability_grants(base, ["openid", "storage.read:/", "storage.stage:/p1", "storage.create:/../etc"])
    assert grants is not None
    assert [(p, sorted(a)) for p, a in grants] == [
        ("/exp/xfel", ["DOWNLOAD", "LIST", "READ_METADATA"]),
        ("/exp/xfel/p1", ["LIST", "READ_METADATA", "STAGE"]),
    ]  # a scope climbing out of the base path grants nothing; it still makes this a capability token
    assert capability_grants(base, ["openid", "profile", "read", "write"]) is None  # bare read/write: identity
    sci = Issuer("https://i.example", kind="scitokens")
    assert capability_grants(sci, ["storage.read:/"]) is None  # another profile's scope is not a capability here
    assert capability_grants(sci, ["write:/a"]) == [("/a", frozenset(
        {"UPLOAD", "MANAGE", "DELETE", "UPDATE_METADATA", "LIST", "READ_METADATA"}
    ))]  # fmt: skip
    assert capability_grants(Issuer("https://i.example", kind="oidc"), ["storage.read:/"]) is None
    only_bad = capability_grants(base, ["storage.modify:relative"])
    assert only_bad == []  # a capability token granting nothing: everything is refused, never the user's full rights


def test_whoami_route_for_keys_and_macaroons(env: Env) -> None:
    with env.server.api() as api:
        assert api.get("/api/v1/user").json()["authentication"] == {"method": "basic"}
    with env.server.door() as door:
        r = door.post(
            "/wl/data",
            json={"caveats": ["activity:DOWNLOAD"], "validity": "PT5M"},
            headers={"Content-Type": "application/macaroon-request"},
        )
    me = http("GET", f"{env.server.api_url}/api/v1/user", headers=_b(r.json()["macaroon"])).json()
    assert me["authentication"]["method"] == "macaroon"
    assert me["authentication"]["restrictions"]["paths"] == ["/wl/data"]
    assert me["authentication"]["restrictions"]["activities"] == ["DOWNLOAD"]
