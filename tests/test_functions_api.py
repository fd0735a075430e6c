"""OpenWhisk's REST API on a real server with real worker processes: entities and their status codes,
invoking (blocking and not), triggers and rules, activations and their filters, dead letters, and errors in
OpenWhisk's `{"error", "code"}` shape.

The module's server is shared; each test uses names of its own.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, client, wait_for

NS = "/api/v1/namespaces/_"

HELLO = """\
def main(args):
    print("hello", args.get("name"))
    return {"greeting": "hello " + str(args.get("name", "world")), "args": args}
"""


def whisk_error(r: httpx.Response, status: int) -> str:
    """The error sentence, after checking OpenWhisk's shape: the status, {"error", "code"} and JSON."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["code"], str) and body["code"]
    return str(body["error"])


def action_body(code: str, **extra: Any) -> dict[str, Any]:
    return {"exec": {"kind": "python:3", "code": code}, **extra}


def finished(api: httpx.Client, activation_id: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        r = api.get(f"{NS}/activations/{activation_id}")
        if r.status_code == 200 and r.json()["state"] in ("done", "dead"):
            return dict(r.json())
        return None

    return wait_for(probe, f"activation {activation_id} to finish")


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.api() as client:
        yield client


# -- namespaces, authentication, routes ---------------------------------------------------------------------


def test_namespaces_auth_and_unknown_routes(server: Server, api: httpx.Client, tmp_path: Path) -> None:
    assert api.get("/api/v1/namespaces").json() == ["admin"]
    assert api.get("/api/v1/namespaces/admin/actions").status_code == 200

    with client(base_url=server.api_url) as anonymous:
        r = anonymous.get(f"{NS}/actions")
        assert "requires authentication" in whisk_error(r, 401)
        assert r.headers["www-authenticate"].startswith("Basic")
        assert "invalid" in whisk_error(anonymous.get(f"{NS}/actions", auth=("admin", "wrong")), 401)
        whisk_error(anonymous.get("/api/v1/namespaces/_/no/such/route"), 401)

    assert "not authorized to access 'someone'" in whisk_error(api.get("/api/v1/namespaces/someone/actions"), 403)

    # macaroons: one with the user's full rights works; one limited to a path or activities does not
    with server.door() as door:

        def macaroon(path: str, caveats: list[str]) -> str:
            r = door.post(
                path,
                json={"caveats": caveats, "validity": "PT5M"},
                headers={"Content-Type": "application/macaroon-request"},
            )
            assert r.status_code == 200, r.text
            return str(r.json()["macaroon"])

        full, limited = macaroon("/", []), macaroon("/", ["activity:DOWNLOAD,LIST"])
    with client(base_url=server.api_url) as bearer:
        assert bearer.get("/api/v1/namespaces", headers={"Authorization": f"Bearer {full}"}).json() == ["admin"]
        r = bearer.get(f"{NS}/actions", headers={"Authorization": f"Bearer {limited}"})
        assert "limited" in whisk_error(r, 403)
        assert "invalid" in whisk_error(bearer.get(f"{NS}/actions", headers={"Authorization": "Bearer xyz"}), 401)
    assert whisk_error(api.get(f"{NS}/widgets"), 404) == "The requested resource does not exist."
    assert whisk_error(api.get(f"{NS}/actions/pkg/action"), 404) == "The requested resource does not exist."
    r = api.patch(f"{NS}/actions/x")
    assert "not allowed" in whisk_error(r, 405)
    assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET", "POST", "PUT"}
    assert "limit" in whisk_error(api.get(f"{NS}/actions", params={"limit": "many"}), 400)
    assert "0 to 200" in whisk_error(api.get(f"{NS}/actions", params={"limit": 201}), 400)
    # the dCache-shaped APIs keep their own error shape
    assert set(api.get("/api/v1/namespace/no-such-path").json()) == {"status", "title", "detail"}

    limits = api.get(f"{NS}/limits").json()
    assert limits["defaults"] == {"timeout": 60_000, "memory": 256, "logs": 10, "concurrency": 1}
    assert limits["minActionTimeout"] == 100 and limits["maxActionTimeout"] == 300_000
    assert limits["concurrentInvocations"] == 100 and limits["invocationsPerMinute"] == 120
    assert limits["scaling"]["retries"]["default"] == 2


def test_another_users_namespace_is_its_own(server: Server, api: httpx.Client) -> None:
    env = {**server.env(), "HEADRACE_LOG_LEVEL": "warning"}
    subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "user", "add", "fn-bob", "--data", str(server.data), "--key", "k1"],
        env=env,
        check=True,
        capture_output=True,
    )
    assert api.put(f"{NS}/actions/api-mine", json=action_body(HELLO)).status_code == 200
    with client(base_url=server.api_url, auth=("fn-bob", "k1"), timeout=30) as bob:
        assert bob.get("/api/v1/namespaces").json() == ["fn-bob"]
        assert [a["name"] for a in bob.get(f"{NS}/actions").json()] == []
        whisk_error(bob.get(f"{NS}/actions/api-mine"), 404)
        whisk_error(bob.get("/api/v1/namespaces/admin/actions/api-mine"), 403)
        assert bob.put(f"{NS}/actions/api-mine", json=action_body(HELLO)).status_code == 200  # a name of its own
        r = bob.post(f"{NS}/actions/api-mine", params={"blocking": "true"}, json={"name": "bob"})
        assert r.status_code == 200 and r.json()["namespace"] == "fn-bob"
        whisk_error(api.get(f"{NS}/activations/{r.json()['activationId']}"), 404)  # not admin's
        assert bob.delete(f"{NS}/actions/api-mine").status_code == 200
    assert api.get(f"{NS}/actions/api-mine").status_code == 200


# -- actions ------------------------------------------------------------------------------------------------


def test_action_crud(api: httpx.Client) -> None:
    body = action_body(
        HELLO,
        parameters=[{"key": "name", "value": "param"}],
        annotations=[{"key": "description", "value": "says hello"}],
        limits={"timeout": 5000, "memory": 128},
        scaling={"maxScale": 2, "retries": 1},
    )
    r = api.put(f"{NS}/actions/api-crud", json=body)
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["namespace"] == "admin" and made["name"] == "api-crud" and made["version"] == "0.0.1"
    assert made["exec"] == {"kind": "python:3", "code": HELLO, "main": "main", "binary": False}
    assert made["parameters"] == [{"key": "name", "value": "param"}]
    assert made["limits"] == {"timeout": 5000, "memory": 128, "logs": 10, "concurrency": 1}
    assert made["scaling"]["maxScale"] == 2 and made["scaling"]["retries"] == 1 and made["scaling"]["minScale"] == 0

    assert whisk_error(api.put(f"{NS}/actions/api-crud", json=body), 409) == "resource already exists"

    # an update keeps what the body leaves out and merges limits, as OpenWhisk does
    r = api.put(f"{NS}/actions/api-crud", params={"overwrite": "true"}, json={"limits": {"memory": 512}})
    assert r.status_code == 200, r.text
    updated = r.json()
    assert updated["version"] == "0.0.2"
    assert updated["exec"]["code"] == HELLO and updated["parameters"] == made["parameters"]
    assert updated["limits"] == {"timeout": 5000, "memory": 512, "logs": 10, "concurrency": 1}
    assert updated["annotations"] == [{"key": "description", "value": "says hello"}]

    got = api.get(f"{NS}/actions/api-crud").json()
    assert got["exec"]["code"] == HELLO and got["version"] == "0.0.2"
    assert "code" not in api.get(f"{NS}/actions/api-crud", params={"code": "false"}).json()["exec"]

    for name in ("api-crud-b", "api-crud-c"):
        assert api.put(f"{NS}/actions/{name}", json=action_body(HELLO)).status_code == 200
    listed = api.get(f"{NS}/actions", params={"limit": 200}).json()
    names = [a["name"] for a in listed]
    assert {"api-crud", "api-crud-b", "api-crud-c"} <= set(names)
    assert all("code" not in a["exec"] for a in listed)
    assert len(api.get(f"{NS}/actions", params={"limit": 2}).json()) == 2
    assert api.get(f"{NS}/actions", params={"limit": 2, "skip": 1}).json()[0]["name"] == names[1]

    r = api.delete(f"{NS}/actions/api-crud")
    assert r.status_code == 200 and r.json()["name"] == "api-crud"
    assert whisk_error(api.get(f"{NS}/actions/api-crud"), 404) == "The requested resource does not exist."
    whisk_error(api.delete(f"{NS}/actions/api-crud"), 404)
    whisk_error(api.post(f"{NS}/actions/api-crud"), 404)


def _zip(files: dict[str, str]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return base64.b64encode(buf.getvalue()).decode()


def test_action_bodies_refused(api: httpx.Client) -> None:
    syntax = "def main(args):\n    x = 1\n    return {'x': x\n"
    message = whisk_error(api.put(f"{NS}/actions/api-bad", json=action_body(syntax)), 400)
    assert "syntax error" in message and "line 3" in message, message

    message = whisk_error(
        api.put(f"{NS}/actions/api-bad", json=action_body("def handler(args):\n    return {}\n")), 400
    )
    assert "'main'" in message
    body = {"exec": {"kind": "python:3", "code": "def run(a):\n    return a\n", "main": "go"}}
    assert "'go'" in whisk_error(api.put(f"{NS}/actions/api-bad", json=body), 400)

    bad_limits = [
        ({"timeout": 50}, "The timeout limit must be an integer between 100 and 300000 milliseconds, not 50."),
        ({"memory": 100_000}, "The memory limit must be an integer between 128 and 4096 MB, not 100000."),
        ({"timeout": "soon"}, "The timeout limit must be an integer between 100 and 300000 milliseconds, not 'soon'."),
        ({"cpu": 2}, "Unknown limit 'cpu' (known: timeout, memory, logs, concurrency)."),
    ]
    for limits, sentence in bad_limits:
        assert whisk_error(api.put(f"{NS}/actions/api-bad", json=action_body(HELLO, limits=limits)), 400) == sentence
    message = whisk_error(api.put(f"{NS}/actions/api-bad", json=action_body(HELLO, scaling={"maxScale": 0})), 400)
    assert "scaling.maxScale" in message
    message = whisk_error(
        api.put(f"{NS}/actions/api-bad", json=action_body(HELLO, scaling={"minScale": 3, "maxScale": 2})), 400
    )
    assert "minScale" in message

    assert "kind" in whisk_error(
        api.put(f"{NS}/actions/api-bad", json={"exec": {"kind": "nodejs:20", "code": "x"}}), 400
    )
    assert "exec" in whisk_error(api.put(f"{NS}/actions/api-bad", json={}), 400)
    zipped = {"exec": {"kind": "python:3", "code": _zip({"main.txt": "x"}), "binary": True}}
    assert "__main__.py" in whisk_error(api.put(f"{NS}/actions/api-bad", json=zipped), 400)
    not_json = api.put(f"{NS}/actions/api-bad", content=b"{not json", headers={"Content-Type": "application/json"})
    assert "malformed" in whisk_error(not_json, 400)
    assert "parameters" in whisk_error(api.put(f"{NS}/actions/api-bad", json=action_body(HELLO, parameters={})), 400)
    assert "not valid" in whisk_error(api.put(f"{NS}/actions/%20bad", json=action_body(HELLO)), 400)
    whisk_error(api.get(f"{NS}/actions/api-bad"), 404)  # nothing was stored


# -- invoking -----------------------------------------------------------------------------------------------

CTX = """\
import os

def main(event, ctx):
    print("line one")
    print("line two")
    return {
        "id": ctx.activation_id,
        "deadline": ctx.deadline,
        "env": {k: v for k, v in os.environ.items() if k.startswith("__OW_")},
        "event": event,
    }
"""

FAILS = """\
def main(args):
    print("about to fail")
    raise ValueError("no good: " + str(args.get("why")))
"""

NOT_JSON = """\
def main(args):
    return {"when": object()}
"""

SLOW = """\
import time

def main(args):
    time.sleep(float(args.get("seconds", 2)))
    return {"slept": True}
"""


def test_invoke_blocking_and_not(api: httpx.Client) -> None:
    r = api.put(f"{NS}/actions/api-hello", json=action_body(HELLO, parameters=[{"key": "name", "value": "param"}]))
    assert r.status_code == 200

    r = api.post(f"{NS}/actions/api-hello", params={"blocking": "true"}, json={"name": "ada"})
    assert r.status_code == 200, r.text
    record = r.json()
    assert r.headers["x-openwhisk-activation-id"] == record["activationId"]
    assert len(record["activationId"]) == 32
    assert record["namespace"] == "admin" and record["name"] == "api-hello" and record["version"] == "0.0.1"
    assert record["subject"] == "admin"
    assert record["response"] == {
        "status": "success",
        "statusCode": 0,
        "success": True,
        "result": {"greeting": "hello ada", "args": {"name": "ada"}},
    }
    assert record["end"] >= record["start"] and record["duration"] == record["end"] - record["start"]
    assert len(record["logs"]) == 1 and record["logs"][0].endswith(" stdout: hello ada")
    keys = {a["key"] for a in record["annotations"]}
    assert {"path", "waitTime", "kind", "limits"} <= keys
    assert record["state"] == "done" and record["attempt"] == 1

    # the action's parameters are defaults for what the call does not give
    r = api.post(f"{NS}/actions/api-hello", params={"blocking": "true", "result": "true"})
    assert r.status_code == 200 and r.json()["greeting"] == "hello param"

    r = api.post(f"{NS}/actions/api-hello", json={"name": "later"})
    assert r.status_code == 202
    activation_id = r.json()["activationId"]
    assert r.json() == {"activationId": activation_id} and r.headers["x-openwhisk-activation-id"] == activation_id
    done = finished(api, activation_id)
    assert done["response"]["result"]["greeting"] == "hello later"
    logs = api.get(f"{NS}/activations/{activation_id}/logs").json()
    assert list(logs) == ["logs"] and logs["logs"][0].endswith("stdout: hello later")
    assert api.get(f"{NS}/activations/{activation_id}/result").json() == {
        "result": {"greeting": "hello later", "args": {"name": "later"}},
        "status": "success",
        "success": True,
    }

    # a zip with __main__.py, and main(event, ctx)
    code = _zip({"__main__.py": CTX, "helper.txt": "unused"})
    r = api.put(f"{NS}/actions/api-ctx", json={"exec": {"kind": "python:3", "code": code, "binary": True}})
    assert r.status_code == 200, r.text
    assert r.json()["exec"]["binary"] is True
    r = api.post(f"{NS}/actions/api-ctx", params={"blocking": "true"}, json={"x": 1})
    assert r.status_code == 200, r.text
    record = r.json()
    result = record["response"]["result"]
    assert result["id"] == record["activationId"] and result["event"] == {"x": 1}
    env = result["env"]
    assert env["__OW_ACTIVATION_ID"] == record["activationId"]
    assert env["__OW_ACTION_NAME"] == "/admin/api-ctx" and env["__OW_NAMESPACE"] == "admin"
    assert int(env["__OW_DEADLINE"]) == result["deadline"] > record["start"]
    assert env["__OW_API_HOST"].startswith("http://127.0.0.1:")
    assert [line.split(" ", 1)[1] for line in record["logs"]] == ["stdout: line one", "stdout: line two"]

    whisk_error(api.post(f"{NS}/actions/api-nothing", params={"blocking": "true"}), 404)
    assert "object" in whisk_error(api.post(f"{NS}/actions/api-hello", json=[1, 2]), 400)


def test_invoke_failures(api: httpx.Client) -> None:
    for name, code in (("api-fails", FAILS), ("api-not-json", NOT_JSON), ("api-slow", SLOW)):
        assert api.put(f"{NS}/actions/{name}", json=action_body(code)).status_code == 200

    r = api.post(f"{NS}/actions/api-fails", params={"blocking": "true"}, json={"why": "testing"})
    assert r.status_code == 502, r.text
    record = r.json()
    assert record["response"]["status"] == "application error" and record["response"]["statusCode"] == 1
    assert record["response"]["success"] is False
    assert record["response"]["result"] == {"error": "ValueError: no good: testing"}
    assert any(line.endswith("stdout: about to fail") for line in record["logs"])
    assert record["state"] == "done"  # a direct invoke is not retried and not dead-lettered (OpenWhisk's way)
    r = api.post(f"{NS}/actions/api-fails", params={"blocking": "true", "result": "true"})
    assert r.status_code == 502 and r.json() == {"error": "ValueError: no good: None"}

    r = api.post(f"{NS}/actions/api-not-json", params={"blocking": "true"})
    assert r.status_code == 502
    assert r.json()["response"]["status"] == "action developer error" and r.json()["response"]["statusCode"] == 2

    # the wait runs out before the action does: 202 and the id; the activation goes on
    r = api.post(f"{NS}/actions/api-slow", params={"blocking": "true", "timeout": 300}, json={"seconds": 1.5})
    assert r.status_code == 202 and list(r.json()) == ["activationId"]
    slow = r.json()["activationId"]
    assert api.get(f"{NS}/activations/{slow}").json()["state"] in ("queued", "running", "done")
    assert finished(api, slow)["response"]["result"] == {"slept": True}
    assert "timeout" in whisk_error(api.post(f"{NS}/actions/api-slow", params={"blocking": "true", "timeout": 0}), 400)


# -- sequences ----------------------------------------------------------------------------------------------


COUNT = """\
def main(args):
    print("n is", args.get("n", 0))
    return {"n": args.get("n", 0) + 1}
"""


def test_sequences(api: httpx.Client) -> None:
    for name in ("api-seq-a", "api-seq-b"):
        assert api.put(f"{NS}/actions/{name}", json=action_body(COUNT)).status_code == 200
    body = {"exec": {"kind": "sequence", "components": ["/_/api-seq-a", "/admin/api-seq-b", "api-seq-a"]}}
    r = api.put(f"{NS}/actions/api-seq", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["exec"] == {
        "kind": "sequence",
        "components": ["/admin/api-seq-a", "/admin/api-seq-b", "/admin/api-seq-a"],
    }
    assert api.get(f"{NS}/actions/api-seq").json()["exec"]["kind"] == "sequence"
    listed = {a["name"]: a for a in api.get(f"{NS}/actions", params={"limit": 200}).json()}
    assert listed["api-seq"]["exec"]["components"] == ["/admin/api-seq-a", "/admin/api-seq-b", "/admin/api-seq-a"]

    # the output of one is the input of the next; each component has a record caused by the sequence's
    r = api.post(f"{NS}/actions/api-seq", params={"blocking": "true"}, json={"n": 10})
    assert r.status_code == 200, r.text
    record = r.json()
    assert record["response"]["result"] == {"n": 13}
    parts = [api.get(f"{NS}/activations/{i}").json() for i in record["logs"]]
    assert [p["name"] for p in parts] == ["api-seq-a", "api-seq-b", "api-seq-a"]
    assert [p["response"]["result"] for p in parts] == [{"n": 11}, {"n": 12}, {"n": 13}]
    assert all(p["cause"] == record["activationId"] for p in parts)
    assert parts[1]["logs"][0].endswith("stdout: n is 11")

    nested = {"exec": {"kind": "sequence", "components": ["api-seq"]}}
    assert "is a sequence" in whisk_error(api.put(f"{NS}/actions/api-seq-nested", json=nested), 400)
    missing = {"exec": {"kind": "sequence", "components": ["/_/api-seq-a", "/_/api-seq-none"]}}
    assert "does not exist" in whisk_error(api.put(f"{NS}/actions/api-seq2", json=missing), 400)
    itself = {"exec": {"kind": "sequence", "components": ["api-seq3"]}}
    whisk_error(api.put(f"{NS}/actions/api-seq3", json=itself), 400)
    assert "components" in whisk_error(api.put(f"{NS}/actions/api-seq4", json={"exec": {"kind": "sequence"}}), 400)
    assert "someone" in whisk_error(
        api.put(f"{NS}/actions/api-seq5", json={"exec": {"kind": "sequence", "components": ["/someone/x"]}}), 403
    )


# -- triggers and rules -------------------------------------------------------------------------------------


def test_trigger_and_rule_crud(api: httpx.Client) -> None:
    assert api.put(f"{NS}/actions/api-tr-action", json=action_body(HELLO)).status_code == 200
    r = api.put(f"{NS}/triggers/api-tr", json={"parameters": [{"key": "name", "value": "from-trigger"}]})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "api-tr" and r.json()["version"] == "0.0.1"
    assert r.json()["parameters"] == [{"key": "name", "value": "from-trigger"}]
    assert whisk_error(api.put(f"{NS}/triggers/api-tr", json={}), 409) == "resource already exists"
    r = api.put(f"{NS}/triggers/api-tr", params={"overwrite": "true"}, json={"annotations": [{"key": "a", "value": 1}]})
    assert r.json()["version"] == "0.0.2" and r.json()["parameters"] == [{"key": "name", "value": "from-trigger"}]
    assert "api-tr" in [t["name"] for t in api.get(f"{NS}/triggers").json()]
    whisk_error(api.get(f"{NS}/triggers/api-tr-none"), 404)

    # no rule yet: firing runs nothing
    assert api.post(f"{NS}/triggers/api-tr", json={"x": 1}).status_code == 204

    assert whisk_error(api.put(f"{NS}/rules/api-rule", json={"trigger": "api-tr", "action": "api-none"}), 404)
    whisk_error(api.put(f"{NS}/rules/api-rule", json={"trigger": "/admin/api-tr-none", "action": "api-tr-action"}), 404)
    whisk_error(api.put(f"{NS}/rules/api-rule", json={"action": "api-tr-action"}), 400)
    r = api.put(f"{NS}/rules/api-rule", json={"trigger": "/_/api-tr", "action": "/admin/api-tr-action"})
    assert r.status_code == 200, r.text
    rule = r.json()
    assert rule["status"] == "active"
    assert rule["trigger"] == {"name": "api-tr", "path": "admin"}
    assert rule["action"] == {"name": "api-tr-action", "path": "admin"}
    assert api.get(f"{NS}/rules/api-rule").json()["status"] == "active"
    assert "api-rule" in [x["name"] for x in api.get(f"{NS}/rules").json()]
    assert api.get(f"{NS}/triggers/api-tr").json()["rules"] == {
        "admin/api-rule": {"action": {"name": "api-tr-action", "path": "admin"}, "status": "active"}
    }
    whisk_error(api.put(f"{NS}/rules/api-rule", json={"trigger": "api-tr", "action": "api-tr-action"}), 409)

    # fire: the trigger's activation names the rule's; the action runs with trigger parameters + payload
    r = api.post(f"{NS}/triggers/api-tr", json={"extra": 2})
    assert r.status_code == 202, r.text
    trigger_activation = finished(api, r.json()["activationId"])
    assert trigger_activation["name"] == "api-tr"
    assert trigger_activation["response"]["result"] == {"name": "from-trigger", "extra": 2}
    (entry,) = [json.loads(line) for line in trigger_activation["logs"]]
    assert entry["rule"] == "admin/api-rule" and entry["action"] == "admin/api-tr-action" and entry["success"]
    run = finished(api, entry["activationId"])
    assert run["cause"] == trigger_activation["activationId"]
    assert run["response"]["result"]["greeting"] == "hello from-trigger"
    assert run["response"]["result"]["args"] == {"name": "from-trigger", "extra": 2}

    # disabled, the rule runs nothing; enabled again, it does
    r = api.post(f"{NS}/rules/api-rule", json={"status": "inactive"})
    assert r.status_code == 200 and r.json()["status"] == "inactive"
    assert api.post(f"{NS}/triggers/api-tr", json={}).status_code == 204
    assert "status" in whisk_error(api.post(f"{NS}/rules/api-rule", json={"status": "paused"}), 400)
    assert api.post(f"{NS}/rules/api-rule", json={"status": "active"}).json()["status"] == "active"
    r = api.post(f"{NS}/triggers/api-tr", json={})
    assert r.status_code == 202
    whisk_error(api.post(f"{NS}/rules/api-rule-none", json={"status": "active"}), 404)

    assert api.delete(f"{NS}/rules/api-rule").status_code == 200
    whisk_error(api.get(f"{NS}/rules/api-rule"), 404)
    assert api.post(f"{NS}/triggers/api-tr", json={}).status_code == 204
    assert api.delete(f"{NS}/triggers/api-tr").status_code == 200
    whisk_error(api.delete(f"{NS}/triggers/api-tr"), 404)
    whisk_error(api.post(f"{NS}/triggers/api-tr", json={}), 404)


def test_storage_feed_triggers(api: httpx.Client) -> None:
    feed = "/whisk.system/storage/changes"
    # as `wsk trigger create T --feed F -p path ...`: the feed named in an annotation, its parameters given
    r = api.put(
        f"{NS}/triggers/api-feed-a",
        json={
            "annotations": [{"key": "feed", "value": feed}],
            "parameters": [
                {"key": "path", "value": "/raw/"},
                {"key": "pattern", "value": "*.h5"},
                {"key": "flags", "value": "IN_CLOSE_WRITE,IN_MOVED_TO"},
                {"key": "threshold", "value": 3},
            ],
        },
    )
    assert r.status_code == 200, r.text
    t = r.json()
    assert t["feed"] == feed
    assert t["feedParameters"] == {
        "path": "/raw",
        "recursive": False,
        "flags": ["IN_CLOSE_WRITE", "IN_MOVED_TO"],
        "pattern": "*.h5",
    }
    assert t["parameters"] == [{"key": "threshold", "value": 3}]  # what is not the feed's stays the trigger's
    assert {"key": "feed", "value": feed} in t["annotations"]

    # "feed" as an object of its parameters
    r = api.put(f"{NS}/triggers/api-feed-b", json={"feed": {"path": "/raw", "recursive": True, "min_size": 10}})
    assert r.status_code == 200, r.text
    assert r.json()["feedParameters"] == {
        "path": "/raw",
        "recursive": True,
        "flags": ["IN_CLOSE_WRITE"],
        "min_size": 10,
    }
    # an update that leaves the feed out keeps it
    r = api.put(f"{NS}/triggers/api-feed-b", params={"overwrite": "true"}, json={"parameters": []})
    assert r.json()["feedParameters"]["min_size"] == 10

    refused = [
        ({"feed": {"path": "/raw", "flags": ["IN_EXPLODE"]}}, "IN_EXPLODE"),
        ({"feed": {"path": "raw"}}, "absolute"),
        ({"feed": {"path": "/raw", "colour": "red"}}, "colour"),
        ({"feed": {"path": "/raw", "min_size": "big"}}, "min_size"),
        ({"feed": "/whisk.system/alarms/alarm"}, "Unknown feed"),
        ({"feed": 5}, "feed"),
    ]
    for body, word in refused:
        assert word in whisk_error(api.put(f"{NS}/triggers/api-feed-c", json=body), 400), body
    whisk_error(api.get(f"{NS}/triggers/api-feed-c"), 404)


# -- activations and dead letters ---------------------------------------------------------------------------


def test_activations_list_filters(api: httpx.Client) -> None:
    assert api.put(f"{NS}/actions/api-list-a", json=action_body(HELLO)).status_code == 200
    assert api.put(f"{NS}/actions/api-list-b", json=action_body(HELLO)).status_code == 200
    before = int(time.time() * 1000) - 1
    ids_a = [
        api.post(f"{NS}/actions/api-list-a", params={"blocking": "true"}, json={"n": i}).json()["activationId"]
        for i in range(3)
    ]
    ids_b = [api.post(f"{NS}/actions/api-list-b", params={"blocking": "true"}).json()["activationId"]]

    listed = api.get(f"{NS}/activations", params={"name": "api-list-a"}).json()
    assert [a["activationId"] for a in listed] == ids_a[::-1]  # newest first
    first = listed[0]
    assert first["statusCode"] == 0 and first["state"] == "done" and "response" not in first and "logs" not in first
    assert [a["activationId"] for a in api.get(f"{NS}/activations", params={"name": "/_/api-list-b"}).json()] == ids_b
    two = api.get(f"{NS}/activations", params={"name": "api-list-a", "limit": 2, "skip": 1}).json()
    assert [a["activationId"] for a in two] == ids_a[1::-1]
    docs = api.get(f"{NS}/activations", params={"name": "api-list-a", "docs": "true", "limit": 1}).json()
    assert docs[0]["response"]["result"]["args"] == {"n": 2} and docs[0]["logs"]
    since = api.get(f"{NS}/activations", params={"since": before, "limit": 200}).json()
    assert {*ids_a, *ids_b} <= {a["activationId"] for a in since}
    assert api.get(f"{NS}/activations", params={"name": "api-list-a", "upto": before}).json() == []
    done = api.get(f"{NS}/activations", params={"name": "api-list-a", "state": "done"}).json()
    assert len(done) == 3
    assert api.get(f"{NS}/activations", params={"name": "api-list-a", "state": "queued,running,dead"}).json() == []

    assert "state" in whisk_error(api.get(f"{NS}/activations", params={"state": "sleeping"}), 400)
    assert "0 to 200" in whisk_error(api.get(f"{NS}/activations", params={"limit": 500}), 400)
    assert "since" in whisk_error(api.get(f"{NS}/activations", params={"since": "yesterday"}), 400)
    for suffix in ("", "/logs", "/result"):
        whisk_error(api.get(f"{NS}/activations/{'0' * 32}{suffix}"), 404)


UNTIL_FLAG = """\
def main(args, ctx):
    try:
        ctx.storage.stat(args["flag"])
    except Exception as exc:
        raise RuntimeError(f"{args['flag']} is not there yet ({exc})") from None
    return {"ok": True, "flag": args["flag"]}
"""
STORAGE = [{"key": "storage", "value": True}]  # the sandbox reaches the door only when the action asks


def test_dead_letters_and_redrive(server: Server, api: httpx.Client) -> None:
    flag = "/api-dl-flag"
    body = action_body(
        UNTIL_FLAG, parameters=[{"key": "flag", "value": flag}], scaling={"retries": 0}, annotations=STORAGE
    )
    assert api.put(f"{NS}/actions/api-dl", json=body).status_code == 200
    assert api.put(f"{NS}/triggers/api-dl-t", json={}).status_code == 200
    assert api.put(f"{NS}/rules/api-dl-r", json={"trigger": "api-dl-t", "action": "api-dl"}).status_code == 200

    r = api.post(f"{NS}/triggers/api-dl-t", json={"n": 1})
    trigger_activation = finished(api, r.json()["activationId"])
    run_id = json.loads(trigger_activation["logs"][0])["activationId"]
    dead = finished(api, run_id)
    assert dead["state"] == "dead" and dead["attempt"] == 1
    assert dead["response"]["statusCode"] == 1 and "not there yet" in dead["response"]["result"]["error"]

    letters = api.get(f"{NS}/deadletters", params={"name": "api-dl"}).json()
    assert [d["activationId"] for d in letters] == [run_id]
    assert letters[0]["args"] == {"n": 1} and letters[0]["state"] == "dead"
    assert api.get(f"{NS}/activations", params={"name": "api-dl", "state": "dead"}).json()[0]["activationId"] == run_id

    assert api.post(f"{NS}/deadletters/redrive", json={"activationIds": ["f" * 32]}).json() == {"redriven": 0}
    assert "activationIds" in whisk_error(api.post(f"{NS}/deadletters/redrive", json={"activationIds": "all"}), 400)

    with server.door() as door:
        assert door.put(flag, content=b"ready").status_code in (201, 204)
    assert api.post(f"{NS}/deadletters/redrive", json={"activationIds": [run_id]}).json() == {"redriven": 1}
    again = finished(api, run_id)
    assert again["state"] == "done" and again["response"]["result"] == {"ok": True, "flag": flag}
    assert api.get(f"{NS}/deadletters", params={"name": "api-dl"}).json() == []
    assert api.post(f"{NS}/deadletters/redrive", json={}).json() == {"redriven": 0}


def test_openapi_lists_the_functions_api(api: httpx.Client) -> None:
    paths = api.get("/api/v1/openapi.json").json()["paths"]
    assert "/api/v1/namespaces/{ns}/actions/{name}" in paths
    assert "/api/v1/namespaces/{ns}/deadletters/redrive" in paths
    assert not [p for p in paths if "{rest" in p]


def test_per_minute_and_in_flight_limits_answer_429(fresh_server: Server) -> None:
    fresh_server.env_extra.update(
        {
            "HEADRACE_FN_INVOKES_PER_MINUTE": "3",
            "HEADRACE_FN_FIRES_PER_MINUTE": "2",
            "HEADRACE_FN_CONCURRENT_INVOCATIONS": "1",
        }
    )
    srv = fresh_server.start()
    with client(base_url=srv.api_url, auth=srv.auth, timeout=30) as api:
        assert api.put(f"{NS}/actions/quick", json=action_body(HELLO)).status_code == 200
        sleepy = "import time\ndef main(args):\n    time.sleep(3)\n    return {}\n"
        assert api.put(f"{NS}/actions/sleepy", json=action_body(sleepy)).status_code == 200
        assert api.put(f"{NS}/triggers/tick", json={}).status_code == 200
        first = api.post(f"{NS}/actions/sleepy").json()["activationId"]
        message = whisk_error(api.post(f"{NS}/actions/quick"), 429)  # one in flight already
        assert message == "Too many concurrent requests in flight (count: 2, allowed: 1)."
        finished(api, first)
        for _ in range(2):  # with the first, three this minute
            assert api.post(f"{NS}/actions/quick", params={"blocking": "true"}).status_code == 200
        message = whisk_error(api.post(f"{NS}/actions/quick"), 429)
        assert message == "Too many requests in the last minute (count: 4, allowed: 3)."
        for _ in range(2):
            assert api.post(f"{NS}/triggers/tick").status_code == 204  # no rule: nothing runs, but it counts
        assert "allowed: 2" in whisk_error(api.post(f"{NS}/triggers/tick"), 429)
        limits = api.get(f"{NS}/limits").json()
        assert limits["invocationsPerMinute"] == 3 and limits["firesPerMinute"] == 2
