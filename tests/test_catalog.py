"""/whisk.system on a real `headrace up`: the catalog written at start (and not rewritten by a restart); the
utils' code run through the engine gives OpenWhisk's catalog results; storage/changes as a feed action
(the JS client's feeds.create shape) fires a function on an upload, and DELETE, PAUSE/UNPAUSE and READ go
through the lifecycle; a second user may not touch another's trigger's feed."""

from __future__ import annotations

import json
from typing import Any

import httpx

from harness import Server, add_user, client, query, wait_for
from headrace.functions import catalog

FEED = "/api/v1/namespaces/whisk.system/actions/storage/changes"


def lifecycle(c: httpx.Client, event: str, trigger: str, key: str | None, **params: Any) -> httpx.Response:
    body = {"lifecycleEvent": event, "triggerName": trigger, **params}
    if key:
        body["authKey"] = key
    return c.post(FEED, params={"blocking": "true"}, json=body)


def test_catalog_installed_once(fresh_server: Server) -> None:
    srv = fresh_server.start()
    srv.stop()
    packages = {
        r[0]: r[1] for r in query(srv.data, "SELECT name, version FROM fn_packages WHERE namespace = 'whisk.system'")
    }
    assert set(packages) == {"utils", "alarms", "storage"}
    actions = dict(query(srv.data, "SELECT name, version FROM fn_actions WHERE namespace = 'whisk.system'"))
    for name in ("utils/echo", "utils/sort", "utils/head", "utils/cat", "utils/date", "utils/split", "utils/smash",
                 "alarms/alarm", "alarms/interval", "alarms/once", "storage/changes"):  # fmt: skip
        assert name in actions
    srv.start()
    srv.stop()
    assert dict(query(srv.data, "SELECT name, version FROM fn_actions WHERE namespace = 'whisk.system'")) == actions


def test_utils_results(server: Server) -> None:
    name, key, _ = add_user(server, "utilsuser")
    c = client(base_url=server.api_url, auth=(name, key), timeout=60)

    def run(action: str, args: dict[str, Any]) -> Any:
        code = catalog.UTILS[action][1]
        r = c.put(
            f"/api/v1/namespaces/_/actions/{action}?overwrite=true", json={"exec": {"kind": "python:3", "code": code}}
        )
        assert r.status_code == 200, r.text
        r = c.post(f"/api/v1/namespaces/_/actions/{action}", params={"blocking": "true", "result": "true"}, json=args)
        assert r.status_code == 200, r.text
        return r.json()

    # the catalog's sample inputs and outputs (openwhisk-catalog packages/utils/manifest.yaml)
    assert run("echo", {"payload": "Five fuzzy felines"}) == {"payload": "Five fuzzy felines"}
    assert run("sort", {"lines": [4, 2, 3]}) == {"lines": [2, 3, 4], "length": 3}
    assert run("sort", {"lines": ["b", "a", "c"]}) == {"lines": ["a", "b", "c"], "length": 3}
    assert run("head", {"lines": [4, 2, 3], "num": 2}) == {"lines": [4, 2], "num": 2}
    assert run("head", {"lines": [4, 2, 3]}) == {"lines": [4], "num": 1}
    assert run("cat", {"lines": [4, 2, 3]}) == {"lines": [4, 2, 3], "payload": "4\n2\n3"}
    assert run("split", {"payload": "one,two,three", "separator": ","}) == {
        "lines": ["one", "two", "three"], "payload": "one,two,three"
    }  # fmt: skip
    assert run("split", {"payload": "a\r\nb\nc"})["lines"] == ["a", "b", "c"]
    assert run("smash", {"a": 1, "b": {"c": 2, "d": 3}, "$fieldName": "p"}) == {"p": {"a": 1, "b": {"c": 2, "d": 3}}}
    assert run("date", {})["date"].endswith("Z")


def test_storage_changes_feed(server: Server) -> None:
    alice, alice_key, alice_uid = add_user(server, "feeder")
    bob, bob_key, _ = add_user(server, "other")
    with server.door() as door, server.api() as api:
        assert door.request("MKCOL", "/feeder").status_code == 201
        assert api.post("/api/v1/namespace/feeder", json={"action": "chown", "uid": alice_uid}).status_code == 200
    c = client(base_url=server.api_url, auth=(alice, alice_key), timeout=60)
    d = client(base_url=server.door_url, auth=(alice, alice_key), timeout=60)
    b = client(base_url=server.api_url, auth=(bob, bob_key), timeout=60)
    code = "def main(args):\n    return {'path': args.get('path'), 'mask': args.get('mask')}\n"
    assert (
        c.put("/api/v1/namespaces/_/actions/seen", json={"exec": {"kind": "python:3", "code": code}}).status_code == 200
    )
    # wsk trigger create up --feed /whisk.system/storage/changes -p path /feeder: the trigger, then the feed
    r = c.put(
        "/api/v1/namespaces/_/triggers/up",
        json={"annotations": [{"key": "feed", "value": "/whisk.system/storage/changes"}]},
    )
    assert r.status_code == 200, r.text
    assert (
        c.put("/api/v1/namespaces/_/rules/up-seen", json={"trigger": "/_/up", "action": "/_/seen"}).status_code == 200
    )
    # another user may not attach a feed to it, read it or delete it
    assert lifecycle(b, "CREATE", "/feeder/up", None, path="/feeder").status_code == 403
    assert lifecycle(b, "CREATE", "/_/up", f"{alice}:{alice_key}", path="/").status_code in (403, 404)
    r = lifecycle(c, "CREATE", "/_/up", f"{alice}:{alice_key}", path="/feeder")
    assert r.status_code == 200, r.text
    assert r.json()["response"]["result"] == {"status": "success"}
    r = lifecycle(c, "CREATE", "/_/up", None, path="relative")
    assert r.status_code == 400 and r.json()["code"]
    read = lifecycle(c, "READ", "/_/up", None).json()["response"]["result"]
    assert read["config"]["path"] == "/feeder" and read["status"]["active"] is True
    trigger = c.get("/api/v1/namespaces/_/triggers/up").json()
    assert {"key": "feed", "value": "/whisk.system/storage/changes"} in trigger["annotations"]

    def seen(n: int) -> list[dict[str, Any]] | None:
        acts = c.get("/api/v1/namespaces/_/activations", params={"name": "seen", "docs": "true"}).json()
        done = [a for a in acts if a.get("response", {}).get("success")]
        return done if len(done) >= n else None

    assert d.put("/feeder/one.h5", content=b"x").status_code == 201
    first = wait_for(lambda: seen(1), "the feed's activation")
    assert first[0]["response"]["result"] == {"path": "/feeder/one.h5", "mask": ["IN_CLOSE_WRITE"]}
    # PAUSE: an upload fires nothing; UNPAUSE: the next one does
    assert lifecycle(c, "PAUSE", "/_/up", None).status_code == 200
    assert lifecycle(c, "READ", "/_/up", None).json()["response"]["result"]["status"]["active"] is False
    assert d.put("/feeder/paused.h5", content=b"x").status_code == 201
    assert lifecycle(c, "UNPAUSE", "/_/up", None).status_code == 200
    assert d.put("/feeder/two.h5", content=b"x").status_code == 201
    got = wait_for(lambda: seen(2), "the activation after UNPAUSE")
    paths = [a["response"]["result"]["path"] for a in got]
    assert "/feeder/two.h5" in paths and "/feeder/paused.h5" not in paths
    # UPDATE: a pattern
    assert lifecycle(c, "UPDATE", "/_/up", None, pattern="*.txt").status_code == 200
    assert lifecycle(c, "READ", "/_/up", None).json()["response"]["result"]["config"]["pattern"] == "*.txt"
    # DELETE: the trigger stays, fed by nothing
    assert lifecycle(c, "DELETE", "/_/up", None).status_code == 200
    assert lifecycle(c, "READ", "/_/up", None).status_code == 404
    assert c.get("/api/v1/namespaces/_/triggers/up").status_code == 200


def test_system_actions_for_every_user(server: Server) -> None:
    """/whisk.system is listed, readable and runnable by a non-admin user, and written by nobody: invoke
    /whisk.system/utils/sort, a sequence of /whisk.system/utils/echo, a rule pointing at it."""
    name, key, _ = add_user(server, "sysuser")
    c = client(base_url=server.api_url, auth=(name, key), timeout=60)
    listed = c.get("/api/v1/namespaces/whisk.system/packages")
    assert listed.status_code == 200, listed.text
    assert {"utils", "alarms", "storage"} <= {p["name"] for p in listed.json()}
    r = c.post(
        "/api/v1/namespaces/whisk.system/actions/utils/sort",
        params={"blocking": "true", "result": "true"},
        json={"lines": ["c", "a", "b"]},
    )
    assert (r.status_code, r.json()) == (200, {"lines": ["a", "b", "c"], "length": 3}), r.text
    # the caller's activation, as OpenWhisk records it: in the caller's namespace, the action in `path`
    r = c.post("/api/v1/namespaces/whisk.system/actions/utils/sort", params={"blocking": "true"}, json={})
    assert r.status_code == 200, r.text
    record = r.json()
    assert (record["namespace"], record["subject"]) == (name, name)
    assert {"key": "path", "value": "whisk.system/utils/sort"} in record["annotations"]
    assert c.get(f"/api/v1/namespaces/_/activations/{record['activationId']}").json()["namespace"] == name
    listed = c.get("/api/v1/namespaces/_/activations").json()
    assert len(listed) == 2 and {a["namespace"] for a in listed} == {name}
    seq = {"exec": {"kind": "sequence", "components": ["/whisk.system/utils/echo", "/whisk.system/utils/echo"]}}
    assert c.put("/api/v1/namespaces/_/actions/twice", json=seq).status_code == 200
    r = c.post("/api/v1/namespaces/_/actions/twice", params={"blocking": "true", "result": "true"}, json={"x": 1})
    assert (r.status_code, r.json()) == (200, {"x": 1}), r.text
    assert c.put("/api/v1/namespaces/_/triggers/t", json={}).status_code == 200
    rule = {"trigger": "/_/t", "action": "/whisk.system/utils/echo"}
    assert c.put("/api/v1/namespaces/_/rules/r", json=rule).status_code == 200
    fired = c.post("/api/v1/namespaces/_/triggers/t", json={"hello": "world"})
    assert fired.status_code == 202, fired.text
    trigger_id = fired.json()["activationId"]

    def echoed() -> dict[str, Any] | None:
        rec = c.get(f"/api/v1/namespaces/_/activations/{trigger_id}").json()
        lines = [json.loads(line) for line in rec.get("logs", [])]
        aid = lines[0].get("activationId") if lines else None
        if not aid:
            return None
        got = c.get(f"/api/v1/namespaces/_/activations/{aid}")
        return got.json() if got.status_code == 200 and got.json().get("end") else None

    assert wait_for(echoed, "the rule's activation")["response"]["result"] == {"hello": "world"}
    # written by nobody
    for who in (c, server.api()):
        r = who.put("/api/v1/namespaces/whisk.system/actions/utils/echo?overwrite=true", json={"exec": {"code": "x"}})
        assert r.status_code == 403 and r.json()["code"]
        assert who.delete("/api/v1/namespaces/whisk.system/packages/utils").status_code == 403
