"""The frontend resources ada reads besides the namespace, on a real `headrace up` (the door's address as the
server listens on it, a user made with `headrace user add`), and `headrace stat` showing a QoS change under
way. tests/inprocess/test_ada_rest.py checks the shapes in detail."""

from __future__ import annotations

from harness import Server, add_user, client
from headrace import __version__
from test_cli import ok, put_bytes, run


def test_routes_on_a_real_server_for_admin_and_user(server: Server) -> None:
    name, key, _ = add_user(server, "adarest")
    with server.api() as admin, client(base_url=server.api_url, auth=(name, key), timeout=60) as user:
        for api, is_admin in ((admin, True), (user, False)):
            assert {c["version"] for c in api.get("/api/v1/cells").json()} == {__version__}
            (door,) = api.get("/api/v1/doors").json()
            assert (door["protocol"], door["addresses"], door["port"]) == ("http", ["127.0.0.1"], server.door_port)
            assert ("cellName" in door) is is_admin
            assert [g["name"] for g in api.get("/api/v1/poolgroups").json()] == ["default"]
            space = api.get("/api/v1/poolgroups/default/space").json()["groupSpaceData"]
            assert space["total"] >= space["free"] > 0
    with client(base_url=server.api_url, timeout=60) as anonymous:
        r = anonymous.get("/api/v1/poolgroups")
    assert r.status_code == 401 and r.json()["title"] == "Unauthorized"


def test_cli_stat_shows_a_qos_change_under_way(server: Server) -> None:
    with server.door() as door, server.api() as api:
        door.request("MKCOL", "/ada-cli")
        put_bytes(server, "/ada-cli/f", b"data")
        assert "QoS:" in ok(run(server, "stat", "/ada-cli/f")) and " -> " not in ok(run(server, "stat", "/ada-cli/f"))
        # This server has no tape: the file stays on disk, its change to tape pending.
        assert api.post("/api/v1/namespace/ada-cli/f", json={"action": "qos", "target": "tape"}).status_code == 200
    lines = ok(run(server, "stat", "/ada-cli/f")).splitlines()
    assert [line.split(None, 1)[1] for line in lines if line.startswith("QoS:")] == ["disk -> tape"]
