"""Unix-style owner/mode checks for non-admin users, and anonymous access being off by default."""

from __future__ import annotations

from harness import Server, add_user, client, http


def test_owner_and_mode_checks(server: Server) -> None:
    alice, alice_key, alice_uid = add_user(server, "alice")
    bob, bob_key, _ = add_user(server, "bob")
    with server.door() as door, server.api() as api:
        assert door.request("MKCOL", "/home").status_code == 201
        assert door.request("MKCOL", "/home/alice").status_code == 201
        assert api.post("/api/v1/namespace/home/alice", json={"action": "chown", "uid": alice_uid}).status_code == 200
    a = client(base_url=server.door_url, auth=(alice, alice_key))
    b = client(base_url=server.door_url, auth=(bob, bob_key))
    # alice owns her directory; bob may not write into it
    assert a.put("/home/alice/mine", content=b"secret").status_code == 201
    assert b.put("/home/alice/bobs", content=b"x").status_code == 403
    assert b.request("MKCOL", "/home/bob").status_code == 403  # /home belongs to root, 0755
    # default file mode 0644: bob reads, cannot overwrite or delete
    assert b.get("/home/alice/mine").content == b"secret"
    assert b.put("/home/alice/mine", content=b"mine now").status_code == 403
    assert b.delete("/home/alice/mine").status_code == 403
    # chmod 0600 by the owner: bob can no longer read; bob cannot chmod it back
    api_a = client(base_url=server.api_url, auth=(alice, alice_key))
    api_b = client(base_url=server.api_url, auth=(bob, bob_key))
    assert api_a.post("/api/v1/namespace/home/alice/mine", json={"action": "chmod", "mode": 0o600}).status_code == 200
    r = b.get("/home/alice/mine")
    assert r.status_code == 403 and r.json()["status"] == "403"
    assert api_b.post("/api/v1/namespace/home/alice/mine", json={"action": "chmod", "mode": 0o644}).status_code == 403
    # directory 0700: bob cannot even traverse it
    assert api_a.post("/api/v1/namespace/home/alice", json={"action": "chmod", "mode": 0o700}).status_code == 200
    assert api_b.get("/api/v1/namespace/home/alice/mine").status_code == 403
    assert b.request("PROPFIND", "/home/alice", headers={"Depth": "1"}).status_code == 403
    # non-admins cannot give files away
    assert api_a.post("/api/v1/namespace/home/alice/mine", json={"action": "chown", "uid": 0}).status_code == 403
    assert a.get("/home/alice/mine").content == b"secret"


def test_anonymous_is_off_by_default(server: Server) -> None:
    r = http("GET", f"{server.door_url}/")
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    assert r.json()["detail"] == "Authentication required"
    assert http("GET", f"{server.door_url}/", auth=("admin", "wrong")).status_code == 401
