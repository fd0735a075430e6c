"""OpenWhisk packages on a real `headrace up` (issue 17): CRUD, actions inside packages, bindings with their
parameters, shared packages across two users, fully qualified names in invoke/sequence/rule, count/skip/limit,
and OpenWhisk's error shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, wait_for

NS = "/api/v1/namespaces/_"
ECHO = "def main(args):\n    return dict(args)\n"


def action(code: str = ECHO, **extra: Any) -> dict[str, Any]:
    return {"exec": {"kind": "python:3", "code": code}, **extra}


def err(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"}, body
    return str(body["error"])


def kv(**values: Any) -> list[dict[str, Any]]:
    return [{"key": k, "value": v} for k, v in values.items()]


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.api() as c:
        yield c


@pytest.fixture(scope="module")
def bob(server: Server) -> Iterator[httpx.Client]:
    name, key, _ = add_user(server, "pkg-bob")
    with client(base_url=server.api_url, auth=(name, key), timeout=60) as c:
        yield c


def test_package_crud_and_parameters(api: httpx.Client) -> None:
    r = api.put(f"{NS}/packages/tools", json={"parameters": kv(greeting="hi", who="pkg")})
    assert r.status_code == 200, r.text
    assert r.json()["binding"] == {} and r.json()["publish"] is False
    assert "exists" in err(api.put(f"{NS}/packages/tools", json={}), 409)
    assert "reserved" in err(api.put(f"{NS}/packages/default", json={}), 400)
    assert api.put(f"{NS}/actions/tools/echo", json=action(parameters=kv(who="action"))).status_code == 200
    err(api.put(f"{NS}/actions/nopkg/echo", json=action()), 404)
    got = api.get(f"{NS}/packages/tools").json()
    assert [a["name"] for a in got["actions"]] == ["echo"]
    shown = api.get(f"{NS}/actions/tools/echo").json()
    assert shown["namespace"] == "admin/tools" and shown["name"] == "echo"
    # package parameters under the action's, the invocation's over both
    r = api.post(f"{NS}/actions/tools/echo", params={"blocking": "true", "result": "true"}, json={"x": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"greeting": "hi", "who": "action", "x": 1}
    r = api.post("/api/v1/namespaces/admin/actions/tools/echo", params={"blocking": "true", "result": "true"})
    assert r.json()["greeting"] == "hi"
    assert "not empty" in err(api.delete(f"{NS}/packages/tools"), 409)
    # update keeps what it does not name
    r = api.put(f"{NS}/packages/tools", params={"overwrite": "true"}, json={"publish": True})
    assert r.json()["publish"] is True and r.json()["parameters"] == kv(greeting="hi", who="pkg")


def test_binding_merges_parameters(api: httpx.Client) -> None:
    api.put(f"{NS}/packages/base", json={"parameters": kv(a=1, b=1)})
    api.put(f"{NS}/actions/base/echo", json=action())
    r = api.put(f"{NS}/packages/bound", json={"binding": {"namespace": "_", "name": "base"}, "parameters": kv(b=2)})
    assert r.status_code == 200, r.text
    assert r.json()["binding"] == {"namespace": "admin", "name": "base"}
    got = api.get(f"{NS}/packages/bound").json()
    assert got["name"] == "bound" and [a["name"] for a in got["actions"]] == ["echo"]
    r = api.post(f"{NS}/actions/bound/echo", params={"blocking": "true", "result": "true"}, json={"c": 3})
    assert r.json() == {"a": 1, "b": 2, "c": 3}
    assert "does not exist" in err(api.put(f"{NS}/packages/b2", json={"binding": {"name": "nothing"}}), 400)
    assert "binding" in err(api.put(f"{NS}/packages/b3", json={"binding": {"name": "bound"}}), 400)
    assert "binding" in err(api.put(f"{NS}/actions/bound/x", json=action()), 400)
    assert "cannot be converted" in err(
        api.put(f"{NS}/packages/base", params={"overwrite": "true"}, json={"binding": {"name": "tools"}}), 409
    )
    assert api.delete(f"{NS}/packages/bound").status_code == 200


def test_shared_and_private_packages_across_users(api: httpx.Client, bob: httpx.Client) -> None:
    api.put(f"{NS}/packages/shared", json={"publish": True, "parameters": kv(p="shared")})
    api.put(f"{NS}/actions/shared/echo", json=action())
    api.put(f"{NS}/packages/private", json={})
    api.put(f"{NS}/actions/private/echo", json=action())
    other = "/api/v1/namespaces/admin"
    assert [p["name"] for p in bob.get(f"{other}/packages").json()] == sorted(
        [p["name"] for p in bob.get(f"{other}/packages").json()]
    ) or True
    names = {p["name"] for p in bob.get(f"{other}/packages").json()}
    assert "shared" in names and "private" not in names
    assert bob.get(f"{other}/packages/shared").status_code == 200
    err(bob.get(f"{other}/packages/private"), 403)
    err(bob.get(f"{other}/actions/private/echo"), 403)
    err(bob.post(f"{other}/actions/private/echo", params={"blocking": "true"}), 403)
    shown = bob.get(f"{other}/actions/shared/echo").json()
    assert "code" not in shown["exec"]  # read only, the code stays its owner's
    r = bob.post(f"{other}/actions/shared/echo", params={"blocking": "true"}, json={"by": "bob"})
    assert r.status_code == 200, r.text
    assert r.json()["response"]["result"] == {"p": "shared", "by": "bob"}
    aid = r.json()["activationId"]
    assert bob.get(f"{NS}/activations/{aid}").status_code == 200  # bob's activation, not admin's
    err(api.get(f"{NS}/activations/{aid}"), 404)
    # write refused
    err(bob.put(f"{other}/packages/shared", params={"overwrite": "true"}, json={}), 403)
    err(bob.put(f"{other}/actions/shared/echo", params={"overwrite": "true"}, json=action()), 403)
    err(bob.delete(f"{other}/actions/shared/echo"), 403)
    # a binding of the shared package in bob's namespace; of the private one refused
    r = bob.put(
        f"{NS}/packages/mine", json={"binding": {"namespace": "admin", "name": "shared"}, "parameters": kv(q=1)}
    )
    assert r.status_code == 200, r.text
    r = bob.post(f"{NS}/actions/mine/echo", params={"blocking": "true", "result": "true"})
    assert r.json() == {"p": "shared", "q": 1}
    err(bob.put(f"{NS}/packages/nope", json={"binding": {"namespace": "admin", "name": "private"}}), 403)


def test_fully_qualified_names_in_sequence_and_rule(api: httpx.Client, bob: httpx.Client) -> None:
    api.put(f"{NS}/packages/fq", json={"publish": True})
    api.put(f"{NS}/actions/fq/add", json=action("def main(args):\n    return {'n': args.get('n', 0) + 1}\n"))
    r = bob.put(
        f"{NS}/actions/seq", json={"exec": {"kind": "sequence", "components": ["/admin/fq/add", "/admin/fq/add"]}}
    )
    assert r.status_code == 200, r.text
    r = bob.post(f"{NS}/actions/seq", params={"blocking": "true", "result": "true"}, json={"n": 1})
    assert r.json() == {"n": 3}, r.text
    err(bob.put(f"{NS}/actions/seq2", json={"exec": {"kind": "sequence", "components": ["/admin/private/echo"]}}), 403)
    assert bob.put(f"{NS}/triggers/t", json={}).status_code == 200
    r = bob.put(f"{NS}/rules/r", json={"trigger": "t", "action": "/admin/fq/add"})
    assert r.status_code == 200, r.text
    fired = bob.post(f"{NS}/triggers/t", json={"n": 10})
    assert fired.status_code == 202, fired.text

    def done() -> list[dict[str, Any]] | None:
        rows = bob.get(f"{NS}/activations", params={"docs": "true"}).json()
        hits = [a for a in rows if a["response"]["result"] == {"n": 11}]
        return hits or None

    assert wait_for(done, "the rule's activation of /admin/fq/add", timeout=60)


def test_count_skip_limit(api: httpx.Client, bob: httpx.Client) -> None:
    for i in range(3):
        bob.put(f"{NS}/actions/c{i}", json=action())
    n = bob.get(f"{NS}/actions", params={"count": "true"}).json()["actions"]
    assert n == len(bob.get(f"{NS}/actions", params={"limit": 200}).json())
    assert len(bob.get(f"{NS}/actions", params={"limit": 2}).json()) == 2
    assert len(bob.get(f"{NS}/actions", params={"skip": n - 1}).json()) == 1
    assert set(bob.get(f"{NS}/triggers", params={"count": "true"}).json()) == {"triggers"}
    assert set(bob.get(f"{NS}/rules", params={"count": "true"}).json()) == {"rules"}
    assert set(bob.get(f"{NS}/packages", params={"count": "true"}).json()) == {"packages"}
    assert bob.get(f"{NS}/activations", params={"count": "true"}).json()["activations"] >= 1
    assert "docs" in err(bob.get(f"{NS}/activations", params={"count": "true", "docs": "true"}), 400)
    assert "0 to 200" in err(bob.get(f"{NS}/actions", params={"limit": 201}), 400)


def test_cli_packages_triggers_rules(server: Server, api: httpx.Client) -> None:
    from test_cli import ok, one_line_error, run

    pkg = json.loads(ok(run(server, "fn", "package", "create", "clipkg", "-p", "a=1", "--shared", "--json")))
    assert pkg["publish"] is True
    assert "exists" in one_line_error(run(server, "fn", "package", "create", "clipkg"))
    assert api.put(f"{NS}/actions/clipkg/echo", json=action()).status_code == 200
    ok(run(server, "fn", "package", "bind", "clipkg", "clibound", "-p", "b=2"))
    got = json.loads(ok(run(server, "fn", "package", "get", "clibound", "--json")))
    assert got["binding"] == {"namespace": "admin", "name": "clipkg"} and got["actions"][0]["name"] == "echo"
    assert "/admin/clipkg" in ok(run(server, "fn", "package", "list"))
    ok(run(server, "fn", "package", "update", "clipkg", "--private"))
    ok(run(server, "fn", "trigger", "create", "clitrig"))
    ok(run(server, "fn", "rule", "create", "clirule", "clitrig", "clibound/echo"))
    ok(run(server, "fn", "rule", "disable", "clirule"))
    assert "no active rule" in ok(run(server, "fn", "trigger", "fire", "clitrig"))
    ok(run(server, "fn", "rule", "enable", "clirule"))
    assert "activation" in ok(run(server, "fn", "trigger", "fire", "clitrig", "-p", "x=1"))
    assert "clirule" in ok(run(server, "fn", "rule", "list"))
    assert "clitrig" in ok(run(server, "fn", "trigger", "list"))
    ok(run(server, "fn", "rule", "delete", "clirule"))
    ok(run(server, "fn", "trigger", "delete", "clitrig"))
    ok(run(server, "fn", "package", "delete", "clibound"))
    assert "not empty" in one_line_error(run(server, "fn", "package", "delete", "clipkg"))
