"""OpenWhisk web actions on a real `headrace up` (issue 17): each extension, projections, raw HTTP,
require-whisk-auth with and without credentials, final parameters, a binary body both ways, not exported,
the per-namespace rate limit, and OpenWhisk's error shape; a second, non-admin user's web action."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client

NS = "/api/v1/namespaces/_"
LIMIT = 40  # invocations per minute per namespace on this module's server

ECHO = """
def main(args):
    return {"body": {k: v for k, v in args.items()}}
"""
HTTP = """
import base64
def main(args):
    kind = args.get("kind", "text")
    if kind == "png":
        return {"statusCode": 201, "headers": {"Content-Type": "image/png", "X-N": 3},
                "body": base64.b64encode(bytes(range(256))).decode()}
    if kind == "json":
        return {"statusCode": 200, "body": {"a": [1, 2]}}
    if kind == "empty":
        return {"headers": {"X-Empty": "yes"}}
    if kind == "fail":
        raise RuntimeError("boom")
    return {"headers": {"Content-Type": "text/plain"}, "body": "plain " + args.get("__ow_method", "")}
"""
VALUES = """
def main(args):
    return {"html": "<p>hi</p>", "text": "t", "svg": "<svg/>", "deep": {"x": {"y": 7}}, "body": "<b>b</b>"}
"""
RAW = """
import base64
def main(args):
    return {"body": {"query": args["__ow_query"], "body": args["__ow_body"], "path": args["__ow_path"]}}
"""


def web_action(code: str, **annotations: Any) -> dict[str, Any]:
    notes = [{"key": "web-export", "value": True}] + [
        {"key": k.replace("_", "-"), "value": v} for k, v in annotations.items()
    ]
    return {"exec": {"kind": "python:3", "code": code}, "annotations": notes}


def err(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "code"}, body
    return str(body["error"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base: Path = tmp_path_factory.mktemp("web")
    srv = Server(
        data=base / "data", cli_config=base / "cli.json", env_extra={"HEADRACE_FN_INVOKES_PER_MINUTE": str(LIMIT)}
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with server.api() as c:
        assert c.put(f"{NS}/actions/echo", json=web_action(ECHO)).status_code == 200
        assert c.put(f"{NS}/actions/http", json=web_action(HTTP)).status_code == 200
        assert c.put(f"{NS}/actions/values", json=web_action(VALUES)).status_code == 200
        assert c.put(f"{NS}/actions/raw", json=web_action(RAW, raw_http=True)).status_code == 200
        assert c.put(f"{NS}/actions/secret", json=web_action(ECHO, require_whisk_auth="s3cret")).status_code == 200
        assert c.put(f"{NS}/actions/authed", json=web_action(ECHO, require_whisk_auth=True)).status_code == 200
        hidden = {"exec": {"kind": "python:3", "code": ECHO}}
        assert c.put(f"{NS}/actions/hidden", json=hidden).status_code == 200
        fixed = web_action(ECHO, final=True) | {"parameters": [{"key": "fixed", "value": 1}]}
        assert c.put(f"{NS}/actions/fixed", json=fixed).status_code == 200
        assert c.put(f"{NS}/packages/site", json={}).status_code == 200
        assert c.put(f"{NS}/actions/site/page", json=web_action(VALUES)).status_code == 200
        yield c


@pytest.fixture(scope="module")
def anon(server: Server) -> Iterator[httpx.Client]:
    with client(base_url=server.api_url + "/api/v1/web", timeout=60) as c:
        yield c


def test_extensions_and_projections(api: httpx.Client, anon: httpx.Client) -> None:
    r = anon.get("/admin/default/echo.json", params={"a": "1"})
    assert r.status_code == 200, r.text
    body = r.json()["body"]
    assert body["a"] == "1" and body["__ow_method"] == "get" and body["__ow_path"] == ""
    assert "host" in body["__ow_headers"] and r.headers["x-openwhisk-activation-id"]
    r = anon.post("/admin/default/echo.json/body", json={"b": [1]})
    assert r.json()["b"] == [1] and r.json()["__ow_method"] == "post" and r.json()["__ow_path"] == "/body"
    r = anon.get("/admin/default/values.html")
    assert r.headers["content-type"].startswith("text/html") and r.text == "<b>b</b>"
    assert anon.get("/admin/default/values.html/html").text == "<p>hi</p>"
    r = anon.get("/admin/default/values.svg/svg")
    assert r.headers["content-type"].startswith("image/svg+xml") and r.text == "<svg/>"
    assert anon.get("/admin/default/values.text/text").text == "t"
    assert anon.get("/admin/default/values.json/deep/x").json() == {"y": 7}
    assert anon.get("/admin/site/page.json/deep").json() == {"x": {"y": 7}}
    assert "requested property" in err(anon.get("/admin/default/values.json/nothing"), 404)
    assert "text/html" in err(anon.get("/admin/default/values.html/deep"), 400)
    assert "application/json" in err(anon.get("/admin/default/values.json/text"), 400)


def test_http_results_and_binary_bodies(anon: httpx.Client) -> None:
    r = anon.get("/admin/default/http.http", params={"kind": "png"})
    assert r.status_code == 201 and r.headers["content-type"] == "image/png"
    assert r.content == bytes(range(256)) and r.headers["x-n"] == "3"
    r = anon.get("/admin/default/http", params={"kind": "json"})  # no extension: .http
    assert r.status_code == 200 and r.json() == {"a": [1, 2]}
    r = anon.get("/admin/default/http.http", params={"kind": "empty"})
    assert r.status_code == 204 and r.headers["x-empty"] == "yes"
    r = anon.put("/admin/default/http.http")
    assert r.text == "plain put" and r.headers["content-type"].startswith("text/plain")
    # an application error: its "error" field is what is served (a string is no http result)
    assert "message/http" in err(anon.get("/admin/default/http.http", params={"kind": "fail"}), 400)
    # a binary request body reaches the action base64-encoded
    data = bytes(range(256))
    r = anon.post("/admin/default/echo.json/body", content=data, headers={"Content-Type": "application/octet-stream"})
    assert base64.b64decode(r.json()["__ow_body"]) == data


def test_raw_http(anon: httpx.Client) -> None:
    r = anon.post("/admin/default/raw.json/body", params={"a": "1", "b": "2"}, content=b"hello",
                  headers={"Content-Type": "text/plain"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json() == {"query": "a=1&b=2", "body": "hello", "path": "/body"}
    r = anon.post("/admin/default/raw.json/body", json={"k": 1})
    assert base64.b64decode(r.json()["body"]) == b'{"k":1}'


def test_auth_final_and_not_exported(server: Server, api: httpx.Client, anon: httpx.Client) -> None:
    assert "authentication" in err(anon.get("/admin/default/secret.json"), 401)
    err(anon.get("/admin/default/secret.json", headers={"X-Require-Whisk-Auth": "wrong"}), 401)
    r = anon.get("/admin/default/secret.json", headers={"X-Require-Whisk-Auth": "s3cret"})
    assert r.status_code == 200, r.text
    err(anon.get("/admin/default/authed.json"), 401)
    err(anon.get("/admin/default/authed.json", auth=("admin", "wrong")), 401)
    name, key, _ = add_user(server, "web-bob")
    r = anon.get("/admin/default/authed.json", auth=(name, key))  # any valid credential
    assert r.status_code == 200 and r.json()["body"]["__ow_user"] == name
    assert "not allowed" in err(anon.get("/admin/default/fixed.json", params={"fixed": "2"}), 400)
    assert "not allowed" in err(anon.get("/admin/default/echo.json", params={"__ow_method": "x"}), 400)
    assert anon.get("/admin/default/fixed.json").json()["body"]["fixed"] == 1
    assert err(anon.get("/admin/default/hidden.json"), 404) == "The requested resource does not exist."
    err(anon.get("/admin/default/nothing.json"), 404)
    err(anon.get("/nobody/default/echo.json"), 404)
    err(anon.get("/admin"), 404)
    # the second user's own web action, served under their namespace
    with client(base_url=server.api_url, auth=(name, key), timeout=60) as bob:
        assert bob.put(f"{NS}/actions/mine", json=web_action(VALUES)).status_code == 200
    assert anon.get(f"/{name}/default/mine.text/text").text == "t"


def test_rate_limit_per_namespace(server: Server, anon: httpx.Client) -> None:
    name, key, _ = add_user(server, "web-rate")
    with client(base_url=server.api_url, auth=(name, key), timeout=60) as own:
        assert own.put(f"{NS}/actions/v", json=web_action(VALUES)).status_code == 200
    codes = [anon.get(f"/{name}/default/v.text/text").status_code for _ in range(LIMIT + 3)]
    assert codes.count(200) == LIMIT and codes[-1] == 429, codes
    assert "Too many requests" in err(anon.get(f"/{name}/default/v.text/text"), 429)
