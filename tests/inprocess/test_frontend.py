"""The frontend in this process: the dCache namespace API over what the door wrote, macaroons on both, the
functions API's entities (actions, triggers, rules) in OpenWhisk's shapes, and the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from inprocess_harness import InProcess

NS = "/api/v1/namespaces/_"
HELLO = "def main(args):\n    return {'greeting': 'hello ' + str(args.get('name', 'world'))}\n"


@pytest.fixture
def base(door: httpx.Client) -> str:
    d = f"/f-{uuid.uuid4().hex[:8]}"
    assert door.request("MKCOL", d).status_code == 201
    return d


def whisk_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"}, body
    return str(body["error"])


def test_namespace_stat_children_and_actions(door: httpx.Client, api: httpx.Client, base: str) -> None:
    door.put(f"{base}/a.h5", content=b"hello")
    door.request("MKCOL", f"{base}/sub")
    body = api.get(f"/api/v1/namespace{base}", params={"children": "true", "checksum": "true"}).json()
    assert body["fileType"] == "DIR" and len(body["pnfsId"]) == 36
    kids = {c["fileName"]: c for c in body["children"]}
    assert kids["sub"]["fileType"] == "DIR" and kids["a.h5"]["size"] == 5
    assert kids["a.h5"]["checksums"] == [{"type": "ADLER32", "value": "062c0215"}]
    page = api.get(f"/api/v1/namespace{base}", params={"children": "true", "limit": 1, "offset": 1}).json()
    assert [c["fileName"] for c in page["children"]] == ["sub"]

    ok = {"status": "success"}
    assert api.post(f"/api/v1/namespace{base}", json={"action": "mkdir", "name": "d"}).json() == ok
    assert api.post(f"/api/v1/namespace{base}/a.h5", json={"action": "mv", "destination": "d/b.h5"}).json() == ok
    assert door.get(f"{base}/d/b.h5").content == b"hello"
    r = api.post(f"/api/v1/namespace{base}/d/b.h5", json={"action": "chmod", "mode": 0o640})
    assert r.status_code == 200
    attrs = {"action": "set-xattr", "attributes": {"run": "42"}, "mode": "CREATE"}
    assert api.post(f"/api/v1/namespace{base}/d/b.h5", json=attrs).status_code == 200
    assert api.post(f"/api/v1/namespace{base}/d/b.h5", json=attrs).status_code == 412  # CREATE: it exists
    st = api.get(f"/api/v1/namespace{base}/d/b.h5", params={"xattr": "true"}).json()
    assert st["extendedAttributes"] == {"run": "42"} and st["mode"] == 0o640
    assert api.delete(f"/api/v1/namespace{base}/d/b.h5").json() == ok
    r = api.get(f"/api/v1/namespace{base}/d/b.h5")
    assert r.status_code == 404 and set(r.json()) == {"status", "title", "detail"}
    assert door.head(f"{base}/d/b.h5").status_code == 404


def mint(door: httpx.Client, at: str, caveats: list[str], **headers: str) -> str:
    r = door.post(
        at,
        json={"caveats": caveats, "validity": "PT10M"},
        headers={"Content-Type": "application/macaroon-request", **headers},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["macaroon"])


def test_a_macaroon_holds_on_the_door_and_the_frontend(apps: InProcess, door: httpx.Client, base: str) -> None:
    door.request("MKCOL", f"{base}/home")
    door.put(f"{base}/home/f", content=b"inside")
    door.put(f"{base}/outside", content=b"outside")
    token = mint(door, "/", [f"root:{base}/home", "activity:DOWNLOAD,LIST,READ_METADATA,UPLOAD"])
    bearer = {"Authorization": f"Bearer {token}"}
    with apps.door(auth=None, headers=bearer) as t_door, apps.api(auth=None, headers=bearer) as t_api:
        assert t_door.get("/f").content == b"inside"  # '/f' under the token is {base}/home/f
        assert t_door.put("/new", content=b"n").status_code == 201
        assert t_door.get("/outside").status_code == 404
        assert t_door.delete("/f").status_code in (401, 403)  # no DELETE activity
        kids = t_api.get("/api/v1/namespace/", params={"children": "true"}).json()["children"]
        assert sorted(c["fileName"] for c in kids) == ["f", "new"]
        me = t_api.get("/api/v1/user").json()
        assert me["rootDirectory"] == f"{base}/home" and me["username"] == "admin"
        # a token minted from this one keeps its limits: it cannot widen them
        narrower = mint(t_door, "/", ["activity:DOWNLOAD"], Authorization=f"Bearer {token}")
    with apps.door(auth=None, headers={"Authorization": f"Bearer {narrower}"}) as n_door:
        assert n_door.get("/f").content == b"inside"
        assert n_door.put("/other", content=b"x").status_code in (401, 403)
    assert door.get(f"{base}/home/new").content == b"n"


def action(code: str = HELLO, **extra: Any) -> dict[str, Any]:
    return {"exec": {"kind": "python:3", "code": code}, **extra}


def test_action_entities_in_openwhisks_shapes(api: httpx.Client) -> None:
    body = action(parameters=[{"key": "name", "value": "p"}], limits={"timeout": 5000, "memory": 128})
    made = api.put(f"{NS}/actions/ip-crud", json=body).json()
    assert made["namespace"] == "admin" and made["name"] == "ip-crud" and made["version"] == "0.0.1"
    assert made["exec"] == {"kind": "python:3", "code": HELLO, "main": "main", "binary": False}
    assert made["limits"] == {"timeout": 5000, "memory": 128, "logs": 10, "concurrency": 1}
    assert whisk_error(api.put(f"{NS}/actions/ip-crud", json=body), 409) == "resource already exists"
    updated = api.put(f"{NS}/actions/ip-crud", params={"overwrite": "true"}, json={"limits": {"memory": 512}}).json()
    assert updated["version"] == "0.0.2" and updated["exec"]["code"] == HELLO
    assert updated["limits"] == {"timeout": 5000, "memory": 512, "logs": 10, "concurrency": 1}
    assert "ip-crud" in [a["name"] for a in api.get(f"{NS}/actions").json()]
    assert api.get(f"{NS}/actions/ip-crud").json()["parameters"] == [{"key": "name", "value": "p"}]
    # refused bodies: OpenWhisk's error shape, nothing stored
    r = api.put(f"{NS}/actions/ip-bad", json=action(limits={"timeout": 50}))
    assert "timeout limit" in whisk_error(r, 400)
    whisk_error(api.get(f"{NS}/actions/ip-bad"), 404)
    assert "not allowed" in whisk_error(api.patch(f"{NS}/actions/ip-crud"), 405)
    assert api.delete(f"{NS}/actions/ip-crud").status_code == 200
    whisk_error(api.get(f"{NS}/actions/ip-crud"), 404)


def test_triggers_and_rules(api: httpx.Client) -> None:
    assert api.put(f"{NS}/actions/ip-act", json=action()).status_code == 200
    r = api.put(f"{NS}/triggers/ip-tr", json={"parameters": [{"key": "k", "value": 1}]})
    assert r.status_code == 200 and r.json()["name"] == "ip-tr"
    r = api.put(f"{NS}/rules/ip-rule", json={"trigger": "ip-tr", "action": "ip-act"})
    assert r.status_code == 200, r.text
    rule = api.get(f"{NS}/rules/ip-rule").json()
    assert rule["status"] == "active" and rule["trigger"]["name"] == "ip-tr" and rule["action"]["name"] == "ip-act"
    assert api.post(f"{NS}/rules/ip-rule", json={"status": "inactive"}).status_code == 200
    assert api.get(f"{NS}/rules/ip-rule").json()["status"] == "inactive"
    assert "status" in whisk_error(api.post(f"{NS}/rules/ip-rule", json={"status": "paused"}), 400)
    whisk_error(api.put(f"{NS}/rules/ip-none", json={"trigger": "no-such", "action": "ip-act"}), 404)
    assert "ip-rule" in [x["name"] for x in api.get(f"{NS}/rules").json()]
    for kind, name in (("rules", "ip-rule"), ("triggers", "ip-tr"), ("actions", "ip-act")):
        assert api.delete(f"{NS}/{kind}/{name}").status_code == 200


def test_without_an_invoker_invoking_is_refused_clearly(api: httpx.Client) -> None:
    assert api.put(f"{NS}/actions/ip-run", json=action()).status_code == 200
    assert "runs no activations" in whisk_error(api.post(f"{NS}/actions/ip-run", json={}), 503)
    assert api.get(f"{NS}/activations").status_code == 200


def test_openapi_health_and_metrics(api: httpx.Client) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/namespace/{path}" in doc["paths"]
    assert {"/api/v1/namespaces/{ns}/actions/{name}", "/api/v1/events/channels"} <= set(doc["paths"])
    assert api.get("/healthz", auth=None).status_code == 200
    assert "headrace_" in api.get("/metrics").text
