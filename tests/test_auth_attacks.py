"""Attacks on authentication (issue 10), each performed against a real server by a second, non-admin user:
forging an identity by appending a caveat to one's own macaroon, claiming an activation as the cause of a
change, using a token after the root key was rotated or its user removed, flooding the server with wrong
keys; and the modes of the data directory, the database and the CLI config after `headrace up`."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from pymacaroons import Macaroon

from harness import ADMIN_KEY, Server, add_user, client, db_kind, execute, headrace_command, http, query, wait_for
from headrace.auth.macaroons import MacaroonAuthority

ADMIN_DIR = "/admin-only"


def mint(server: Server, auth: tuple[str, str] | None, at: str = "/", caveats: list[str] | None = None,
         bearer: str | None = None) -> str:  # fmt: skip
    """A macaroon from the door, asked for as `auth` (Basic) or with the token `bearer`."""
    headers = {"Content-Type": "application/macaroon-request"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    r = http(
        "POST",
        f"{server.door_url}{at}",
        json={"caveats": caveats or [], "validity": "PT10M"},
        headers=headers,
        auth=auth,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])


def append(token: str, *caveats: str) -> str:
    """What any holder can do without a key: add first-party caveats to the end."""
    m = Macaroon.deserialize(token)
    for caveat in caveats:
        m.add_first_party_caveat(caveat)
    return str(m.serialize())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def root_key(server: Server) -> str:
    return str(query(server.data, "SELECT value FROM state WHERE name = 'macaroon-root-key'")[0][0])


@pytest.fixture(scope="module")
def user2(server: Server) -> tuple[str, str]:
    name, key, _ = add_user(server, "user2")
    with server.door() as door:
        assert door.request("MKCOL", ADMIN_DIR).status_code == 201
        assert door.put(f"{ADMIN_DIR}/payroll.xlsx", content=b"salaries").status_code == 201
        assert door.request("MKCOL", "/shared").status_code == 201
    with server.api() as api:
        assert api.post(f"/api/v1/namespace{ADMIN_DIR}", json={"action": "chmod", "mode": 0o700}).status_code == 200
        assert api.post("/api/v1/namespace/shared", json={"action": "chmod", "mode": 0o777}).status_code == 200
    return name, key


def test_an_appended_identity_caveat_is_refused(server: Server, user2: tuple[str, str]) -> None:
    own = mint(server, user2)
    assert http("GET", f"{server.api_url}/api/v1/user", headers=bearer(own)).json()["username"] == "user2"
    assert http("GET", f"{server.door_url}{ADMIN_DIR}/payroll.xlsx", headers=bearer(own)).status_code == 403

    forged = append(own, "id:0;0;admin")
    r = http("GET", f"{server.api_url}/api/v1/user", headers=bearer(forged))
    assert r.status_code == 401, r.text
    assert r.json() == {
        "status": "401",
        "title": "Unauthorized",
        "detail": "Invalid macaroon: an identity or cause caveat out of its place",
    }
    assert http("GET", f"{server.door_url}{ADMIN_DIR}/payroll.xlsx", headers=bearer(forged)).status_code == 401
    assert http("PROPFIND", f"{server.door_url}{ADMIN_DIR}", headers=bearer(forged)).status_code == 401
    assert http("MKCOL", f"{server.door_url}{ADMIN_DIR}/mine", headers=bearer(forged)).status_code == 401
    assert http("GET", f"{server.door_url}/?authz={forged}").status_code == 401
    # a second identity caveat is refused even when it repeats the first, after narrowing caveats too
    assert (
        http("GET", f"{server.api_url}/api/v1/user", headers=bearer(append(own, "id:1000;1000;user2"))).status_code
        == 401
    )
    assert (
        http(
            "GET", f"{server.api_url}/api/v1/user", headers=bearer(append(own, "path:/shared", "id:0;0;admin"))
        ).status_code
        == 401
    )
    # and the door will not mint one on request either
    r = http(
        "POST",
        f"{server.door_url}/",
        json={"caveats": ["id:0;0;admin"]},
        headers={"Content-Type": "application/macaroon-request"},
        auth=user2,
    )
    assert r.status_code == 400 and "the server alone sets id: caveats" in r.json()["detail"]
    with server.door() as door:
        assert door.request("PROPFIND", f"{ADMIN_DIR}/mine").status_code == 404


def test_appended_caveats_still_narrow(server: Server, user2: tuple[str, str]) -> None:
    own = mint(server, user2)
    assert http("PUT", f"{server.door_url}/shared/n1", content=b"1", headers=bearer(own)).status_code == 201
    confined = append(own, "path:/shared/sub")
    assert http("GET", f"{server.door_url}/shared/n1", headers=bearer(confined)).status_code == 403
    read_only = append(own, "activity:DOWNLOAD,LIST")
    assert http("GET", f"{server.door_url}/shared/n1", headers=bearer(read_only)).content == b"1"
    assert http("PUT", f"{server.door_url}/shared/n2", content=b"2", headers=bearer(read_only)).status_code == 403
    expired = append(own, "before:2000-01-01T00:00:00Z")
    assert http("GET", f"{server.door_url}/shared/n1", headers=bearer(expired)).status_code == 401
    unknown = append(own, "home:/")
    assert http("GET", f"{server.door_url}/shared/n1", headers=bearer(unknown)).status_code == 401


def _cause_of(server: Server, path: str) -> list[tuple[object, ...]]:
    return query(server.data, "SELECT cause FROM events WHERE path = :p AND kind = 'CLOSE_WRITE'", p=path)


def test_the_cause_of_a_change_comes_from_the_token_alone(server: Server, user2: tuple[str, str]) -> None:
    claimed = "ab" * 16
    # a plain user naming an activation as the cause of their change: not recorded
    headers = {"X-Headrace-Cause": claimed}
    assert http("PUT", f"{server.door_url}/shared/c1", content=b"x", headers=headers, auth=user2).status_code == 201
    assert _cause_of(server, "/shared/c1") == [(None,)]
    own = mint(server, user2)
    r = http("PUT", f"{server.door_url}/shared/c2", content=b"x", headers={**headers, **bearer(own)})
    assert r.status_code == 201
    assert _cause_of(server, "/shared/c2") == [(None,)]
    # appending a cause caveat to one's token: refused
    r = http("PUT", f"{server.door_url}/shared/c3", content=b"x", headers=bearer(append(own, f"cause:{claimed}")))
    assert r.status_code == 401
    # a token minted for an activation (as the function runner mints it): that activation is the cause,
    # whatever a header says, and so it is of a token minted from that token
    aid = "cd" * 16
    info = query(server.data, "SELECT uid, gids FROM users WHERE username = 'user2'")[0]
    gids = tuple(int(g) for g in str(info[1]).split(","))
    minted = MacaroonAuthority(root_key(server)).mint(
        username="user2", uid=int(str(info[0])), gids=gids, caveats=[], validity=timedelta(minutes=5), cause=aid
    )
    r = http("PUT", f"{server.door_url}/shared/c4", content=b"x", headers={**headers, **bearer(minted)})
    assert r.status_code == 201
    assert _cause_of(server, "/shared/c4") == [(aid,)]
    derived = mint(server, None, "/shared", bearer=minted)
    assert http("PUT", f"{server.door_url}/shared/c5", content=b"x", headers=bearer(derived)).status_code == 201
    assert _cause_of(server, "/shared/c5") == [(aid,)]
    # the frontend's namespace API the same: a change names the token's cause, never the header's
    chmod = {"action": "chmod", "mode": 0o640}
    before = query(server.data, 'SELECT max("offset") FROM events')[0][0]
    for token, path in ((own, "/shared/c2"), (minted, "/shared/c4")):
        r = http("POST", f"{server.api_url}/api/v1/namespace{path}", json=chmod, headers={**headers, **bearer(token)})
        assert r.status_code == 200, r.text
    causes = query(server.data, "SELECT path, cause FROM events WHERE \"offset\" > :o AND kind = 'ATTRIB'", o=before)
    assert sorted(causes) == [("/shared/c2", None), ("/shared/c4", aid)]


def test_a_removed_user_s_token_is_refused(server: Server) -> None:
    name, key, _ = add_user(server, "leaver")
    token = mint(server, (name, key))
    assert http("GET", f"{server.api_url}/api/v1/user", headers=bearer(token)).status_code == 200
    execute(server.data, "DELETE FROM users WHERE username = :u", [{"u": name}])
    wait_for(
        lambda: http("GET", f"{server.api_url}/api/v1/user", headers=bearer(token)).status_code == 401,
        "the removed user's token to be refused",
    )
    assert http("GET", f"{server.door_url}/", auth=(name, key)).status_code == 401


def test_rotating_the_root_key_refuses_every_earlier_token(fresh_server: Server) -> None:
    server = fresh_server.start()
    name, key, _ = add_user(server, "user2")
    old = mint(server, (name, key))
    old_admin = mint(server, server.auth)
    assert http("GET", f"{server.door_url}/", headers=bearer(old)).status_code == 200
    key_before = root_key(server)
    out = subprocess.run(
        headrace_command(["token", "rotate-key", "--data", str(server.data)]),
        env=server.env(),
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("headrace: macaroon root key replaced")
    assert root_key(server) != key_before
    wait_for(
        lambda: http("GET", f"{server.door_url}/", headers=bearer(old)).status_code == 401,
        "the running server to refuse a token signed with the old key",
    )
    r = http("GET", f"{server.api_url}/api/v1/user", headers=bearer(old_admin))
    assert r.status_code == 401 and r.json()["detail"] == "Invalid macaroon: its signature does not hold"
    # new tokens work; API keys were never affected
    new = mint(server, (name, key))
    assert http("GET", f"{server.api_url}/api/v1/user", headers=bearer(new)).json()["username"] == "user2"
    assert http("GET", f"{server.door_url}/", auth=(name, key)).status_code == 200
    # after a restart too, the old tokens stay refused and the new ones work
    server.stop()
    server.start()
    assert http("GET", f"{server.door_url}/", headers=bearer(old)).status_code == 401
    assert http("GET", f"{server.door_url}/", headers=bearer(new)).status_code == 200


def test_rotate_key_without_a_database_is_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run(
        headrace_command(["token", "rotate-key", "--data", str(tmp_path / "none")]),
        env={k: v for k, v in os.environ.items() if k != "HEADRACE_DB"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"headrace: no headrace database in {tmp_path / 'none'} (run `headrace up` once)"
    ]


def from_address(address: str, base_url: str, auth: tuple[str, str]) -> httpx.Client:
    """A client whose connections come from `address` (any 127.0.0.0/8 address reaches 127.0.0.1)."""
    return client(base_url=base_url, auth=auth, transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.fixture
def limited(fresh_server: Server) -> Iterator[Server]:
    fresh_server.env_extra["HEADRACE_AUTH_FAILURES"] = "5"
    yield fresh_server.start()


def test_a_wrong_key_flood_is_answered_429_and_others_get_in(limited: Server) -> None:
    server = limited
    name, key, _ = add_user(server, "user2")
    other, other_key, _ = add_user(server, "user3")
    stored = dict(query(server.data, "SELECT username, key_hash FROM users"))
    assert str(stored["user2"]).startswith("sha256$")  # a generated key: fast hash
    assert str(stored["admin"]).startswith("pbkdf2$")  # chosen (HEADRACE_ADMIN_KEY): stretched
    assert http("GET", f"{server.door_url}/", auth=(other, other_key)).status_code == 200  # found right once
    with from_address("127.0.0.2", server.door_url, (name, "wrong")) as attacker:
        assert [attacker.get("/").status_code for _ in range(5)] == [401] * 5
        r = attacker.get("/")
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        body = r.json()
        assert body["status"] == "429" and body["title"] == "Too Many Requests"
        assert body["detail"].startswith("Too many failed logins from 127.0.0.2: 5 in the last 60 s; try again in ")
        # with the right key too: the address is refused before any key is looked at ...
        assert attacker.get("/", auth=(name, key)).status_code == 429
        # ... unless the server has found that key right before (a user sharing the attacker's address)
        assert attacker.get("/", auth=(other, other_key)).status_code == 200
    # the same limit on the frontend, in its shapes
    with from_address("127.0.0.2", server.api_url, (name, "wrong")) as attacker:
        r = attacker.get("/api/v1/namespace/")
        assert r.status_code == 429 and r.json()["status"] == "429" and "retry-after" in r.headers
        r = attacker.get("/api/v1/namespaces/_/actions")
        assert r.status_code == 429 and set(r.json()) == {"error", "code"} and "retry-after" in r.headers
    # other users, and the attacked user elsewhere (a random key: guessing it cannot pay), get in
    assert http("GET", f"{server.door_url}/", auth=(other, other_key)).status_code == 200
    assert http("GET", f"{server.api_url}/api/v1/user", auth=(name, key)).json()["username"] == "user2"


def test_failed_logins_at_a_chosen_key_lock_the_name_not_its_known_key(limited: Server) -> None:
    server = limited
    assert http("GET", f"{server.door_url}/", auth=server.auth).status_code == 200  # admin's key now known
    for address in ("127.0.0.3", "127.0.0.4", "127.0.0.5"):
        with from_address(address, server.door_url, ("admin", "guess")) as guesser:
            codes = [guesser.get("/").status_code for _ in range(2)]
            assert set(codes) <= {401, 429}
    with from_address("127.0.0.6", server.door_url, ("admin", "another guess")) as guesser:
        r = guesser.get("/")
    assert r.status_code == 429 and r.json()["detail"].startswith("Too many failed logins as admin: 5 in the last")
    # the key found right before still works from anywhere not refused
    assert http("GET", f"{server.door_url}/", auth=server.auth).status_code == 200
    with from_address("127.0.0.7", server.api_url, server.auth) as admin:
        assert admin.get("/api/v1/user").json()["username"] == "admin"


def test_at_rest_modes_after_up(fresh_server: Server) -> None:
    old = os.umask(0)  # the most permissive umask: the modes must not depend on it
    try:
        server = fresh_server.start()
    finally:
        os.umask(old)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    def check() -> None:
        assert mode(server.data) == 0o700
        assert mode(server.cli_config) == 0o600
        if db_kind() == "sqlite":
            files = [server.data / f"headrace.db{s}" for s in ("", "-wal", "-shm")]
            assert all(f.exists() for f in files)
            assert {f.name: oct(mode(f)) for f in files} == {f.name: oct(0o600) for f in files}

    check()
    # what an older version (or a careless hand) left readable is tightened at the next start
    server.stop()
    os.chmod(server.data, 0o755)
    os.chmod(server.cli_config, 0o644)
    if db_kind() == "sqlite":
        os.chmod(server.data / "headrace.db", 0o644)
    server.start()
    check()


def test_separate_roles_follow_a_rotated_key(tmp_path: Path, db_url: str) -> None:
    """A door and a frontend as processes of their own, on one database: a token minted at the door works
    at the frontend, and after `rotate-key` (run against the database) both refuse it."""
    from cluster_harness import Cluster

    cluster = Cluster(tmp_path / "cluster", db_url)
    try:
        door_role = cluster.door()
        frontend_role = cluster.frontend()
        token = mint_at(door_role.url)
        assert http("GET", f"{frontend_role.url}/api/v1/user", headers=bearer(token)).json()["username"] == "admin"
        env = {**cluster.env("cli"), "HEADRACE_DB": db_url}
        out = subprocess.run(
            headrace_command(["token", "rotate-key", "--data", str(cluster.data)]), env=env, capture_output=True
        )
        assert out.returncode == 0, out.stderr
        for url in (f"{door_role.url}/", f"{frontend_role.url}/api/v1/user"):
            wait_for(lambda url=url: http("GET", url, headers=bearer(token)).status_code == 401, f"401 from {url}")
        fresh = mint_at(door_role.url)
        assert http("GET", f"{frontend_role.url}/api/v1/user", headers=bearer(fresh)).status_code == 200
    finally:
        cluster.stop()


def mint_at(door_url: str) -> str:
    r = http(
        "POST",
        f"{door_url}/",
        json={"validity": "PT10M"},
        headers={"Content-Type": "application/macaroon-request"},
        auth=("admin", ADMIN_KEY),
    )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])
