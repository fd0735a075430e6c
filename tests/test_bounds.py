"""What one user may send the door and the frontend is bounded, and each refusal is a precise JSON 4xx (issue 10):
path depth and length (414) without per-depth statement growth, request bodies per route (413), bodies that
must say they are JSON (415), header and body read timeouts (connection closed, 408), over-long header sets
(431); and the smaller findings: Want-Digest needs read permission, file content is served inert (nosniff,
CSP sandbox), MOVE to another server is 502 (a COPY there is a third-party push), OpenWhisk entity names as
OpenWhisk validates them.

Each test performs the attack against real servers on 127.0.0.1 and fails without its fix.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import Server, add_user, client, query
from pool_harness import PoolProcess
from test_bad_input import BASIC, Reply, parse_reply

NS = "/api/v1/namespaces/_"
JSON = {"Content-Type": "application/json"}


def problem(r: Any, status: int) -> dict[str, str]:
    """dCache's error shape with the expected status."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["status"] == str(status) and body["title"] and body["detail"], body
    return dict(body)


def whisk(r: Any, status: int) -> str:
    """OpenWhisk's error shape with the expected status; the sentence."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "code"}, body
    return str(body["error"])


def exchange(port: int, head: bytes, body: bytes = b"", timeout: float = 30.0) -> Reply:
    """Send a request head (and body) verbatim on a new connection and read the whole answer until the
    server closes (every refusal here closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head + body)
        return parse_reply(_read_to_close(s))


def _read_to_close(s: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def head(method: str, target: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: {BASIC}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- path depth and length ---------------------------------------------------------------------------------


def test_deep_paths_work_to_the_bound_and_beyond_it_are_414(server: Server) -> None:
    """100 levels (past SQLite's 64-table join and three of the lookup's 32-name chunks) work; 257 names or
    4097 bytes are 414 at the door and the frontend, with no lookup run."""
    deep = "/deep" + "/d" * 99
    with server.door() as door, server.api() as api:
        for depth in range(1, 101):
            assert door.request("MKCOL", "/deep" + "/d" * (depth - 1)).status_code == 201, depth
        assert door.put(f"{deep}/f", content=b"bottom").status_code == 201
        assert door.get(f"{deep}/f").content == b"bottom"
        r = door.request("PROPFIND", deep, headers={"Depth": "1"})
        assert r.status_code == 207 and f"{deep}/f" in r.text
        assert api.get(f"/api/v1/namespace{deep}/f").json()["size"] == 6
        too_deep = "/a" * 257
        problem(door.request("PROPFIND", too_deep, headers={"Depth": "1"}), 414)
        problem(door.get(too_deep), 414)
        problem(door.request("MKCOL", too_deep), 414)
        problem(door.request("MOVE", f"{deep}/f", headers={"Destination": f"{server.door_url}{too_deep}"}), 414)
        problem(api.get(f"/api/v1/namespace{too_deep}"), 414)
        too_long = "/" + "/".join(["n" * 200] * 21)  # 21 names, 4221 bytes
        problem(door.request("PROPFIND", too_long), 414)
        problem(api.get(f"/api/v1/namespace{too_long}"), 414)
        assert door.get(f"{deep}/f").content == b"bottom"


def test_lookups_compile_a_bounded_number_of_statements(db_url: str) -> None:
    """Looking up paths of every depth to the bound compiles at most two chain statements per chunk depth
    (from the root, from a directory), not one per depth (2.4 GB of them at depth ~1900)."""
    from headrace.auth.subject import ROOT
    from headrace.db.engine import Database
    from headrace.errors import NotFound
    from headrace.storage import namespace as nsmod
    from headrace.storage.namespace import CHAIN_LEVELS, Namespace
    from headrace.storage.paths import MAX_DEPTH

    db = Database(db_url, durable=False)
    db.migrate()
    ns = Namespace(db)
    ns.bootstrap()
    ns.mkdir("/x", ROOT)
    try:
        for depth in range(1, MAX_DEPTH + 1):
            with pytest.raises(NotFound):
                ns.stat("/x" * depth + "/missing") if depth < MAX_DEPTH else ns.stat("/x" * (depth - 1) + "/y")
        for depth in range(2, MAX_DEPTH + 1):
            # an existing prefix as deep as the path, so that every chunk runs
            ns.mkdir("/x" * depth, ROOT)
        assert ns.stat("/x" * MAX_DEPTH).is_dir
        dialect = db.engine.dialect.name
        kept = [k for k in nsmod._CHAIN_SQL if k[0] == dialect]
        assert 0 < len(kept) <= 2 * CHAIN_LEVELS
        assert nsmod._chain.cache_info().currsize <= 2 * CHAIN_LEVELS
    finally:
        db.close()


# -- request bodies ------------------------------------------------------------------------------------------


def test_frontend_body_limits(server: Server) -> None:
    """A 300 MB POST is refused from its Content-Length, before any of it is read; a chunked body is cut off
    where it passes the route's limit; the action PUT has OpenWhisk's larger limit."""
    port = server.api_port
    big = {"Content-Type": "application/json", "Content-Length": "300000000"}
    r = exchange(port, head("POST", "/api/v1/namespace/", big))
    assert r.status == 413 and r.json()["status"] == "413", r
    r = exchange(port, head("POST", f"{NS}/actions/anything", big))
    assert r.status == 413 and set(r.json()) == {"error", "code"}, r
    # chunked: 2 MiB + 1 byte in 64 KiB chunks, then the client holds (no last chunk)
    chunk = b"x" * 65536
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(32)) + b"1\r\n \r\n"
    chunked = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
    r = exchange(port, head("POST", "/api/v1/namespace/", chunked), body)
    assert r.status == 413 and r.json()["status"] == "413", r
    r = exchange(port, head("PUT", f"{NS}/triggers/big", chunked), body)
    assert r.status == 413 and set(r.json()) == {"error", "code"}, r
    with server.api() as api:
        whisk(api.get(f"{NS}/triggers/big"), 404)
        # an action of 3 MiB (over the JSON limit, within the action limit of 48 MiB) is taken
        code = "def main(args):\n    return {}\n" + "#" * (3 * 1024 * 1024) + "\n"
        action = {"exec": {"kind": "python:3", "code": code}}
        assert api.put(f"{NS}/actions/bounds-big", json=action).status_code == 200
        assert api.delete(f"{NS}/actions/bounds-big").status_code == 200


def test_door_non_put_bodies_are_bounded(server: Server) -> None:
    port = server.door_port
    r = exchange(port, head("PROPFIND", "/", {"Content-Length": str(2 * 1024 * 1024), "Depth": "0"}), b"<" * 100)
    assert r.status == 413 and r.json()["status"] == "413", r
    mac = {"Content-Type": "application/macaroon-request", "Content-Length": str(2 * 1024 * 1024)}
    r = exchange(port, head("POST", "/", mac), b"{" * 100)
    assert r.status == 413 and r.json()["status"] == "413", r


def test_state_changing_bodies_must_be_json(server: Server) -> None:
    """A browser's cross-site "simple" request (text/plain, a form) carries a body no JSON type: 415, and
    nothing changes. Bodiless POSTs (a new channel, as dCache's sample client makes it) stay accepted, but
    not from a page of another origin (403)."""
    with server.api() as api, server.door() as door:
        door.request("MKCOL", "/ctype")
        mkdir = json.dumps({"action": "mkdir", "name": "csrf"})
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            headers = {"Content-Type": ctype}
            problem(api.post("/api/v1/namespace/ctype", content=mkdir, headers=headers), 415)
            whisk(api.put(f"{NS}/triggers/csrf", content="{}", headers=headers), 415)
            whisk(api.post(f"{NS}/actions/csrf", content="{}", headers=headers), 415)
        problem(api.post("/api/v1/namespace/ctype", content=mkdir), 415)  # no Content-Type at all
        assert api.get("/api/v1/namespace/ctype/csrf").status_code == 404
        whisk(api.get(f"{NS}/triggers/csrf"), 404)
        ok = {"Content-Type": "application/json; charset=utf-8"}
        assert api.post("/api/v1/namespace/ctype", content=mkdir, headers=ok).status_code == 200
        r = api.post("/api/v1/events/channels")  # no body
        assert r.status_code == 201
        api.delete(r.headers["Location"])
        # A bodiless cross-site POST (fetch with mode no-cors) carries the page's Origin: refused
        evil = {"Origin": "https://evil.example"}
        problem(api.post("/api/v1/events/channels", headers=evil), 403)
        whisk(api.post(f"{NS}/deadletters/redrive", headers=evil), 403)
        whisk(api.delete(f"{NS}/triggers/none", headers=evil), 403)
        assert api.get("/api/v1/events/channels", headers=evil).status_code == 200  # reading changes nothing
        r = api.post("/api/v1/events/channels", headers={"Origin": server.api_url})  # the frontend's own page
        assert r.status_code == 201
        api.delete(r.headers["Location"])


# -- timeouts and header size --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with one-second header and body read timeouts."""
    base = tmp_path_factory.mktemp("impatient")
    env = {"HEADRACE_HEADER_TIMEOUT": "1", "HEADRACE_BODY_TIMEOUT": "1"}
    srv = Server(data=base / "data", cli_config=base / "cli.json", env_extra=env).start()
    yield srv
    srv.stop()


@pytest.mark.parametrize("which", ["door", "frontend"])
def test_slow_headers_are_cut_off(impatient: Server, which: str) -> None:
    """Half a request line, then nothing: the server closes the connection after its header timeout (1 s
    here); the socket's own timeout is the test's bound on waiting for that close, 15 s: longer than any
    scheduling delay, shorter than granian's 30 s default, which the door would otherwise keep."""
    port = impatient.door_port if which == "door" else impatient.api_port
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET /healthz HT")
        assert _read_to_close(s) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1\r\n")  # headers begun, never ended
        assert _read_to_close(s) == b""
    if which == "frontend":  # granian (the door's server) starts its header timer at the first byte
        with socket.create_connection(("127.0.0.1", port), timeout=15) as s:  # connected, silent
            assert _read_to_close(s) == b""


def test_pool_server_cuts_off_slow_headers(db_url: str, tmp_path: Path) -> None:
    """The pool process (granian, like the door) closes a connection whose request line stalls."""
    pool = PoolProcess(tmp_path / "pool", db_url, "pool-slow", env_extra={"HEADRACE_HEADER_TIMEOUT": "1"})
    pool.start()
    try:
        with socket.create_connection(("127.0.0.1", pool.port), timeout=15) as s:
            s.sendall(b"GET /healthz HT")
            assert _read_to_close(s) == b""
    finally:
        pool.stop()


def test_missing_bodies_time_out_with_408(impatient: Server) -> None:
    """A body announced and not sent: 408 JSON after the body timeout (1 s), at the frontend and at the door."""
    frontend = {"Content-Type": "application/json", "Content-Length": "100"}
    r = exchange(impatient.api_port, head("POST", "/api/v1/namespace/", frontend), b'{"action"', timeout=60)
    assert r.status == 408 and r.json()["status"] == "408", r
    r = exchange(impatient.api_port, head("PUT", f"{NS}/triggers/slow", frontend), b"{", timeout=60)
    assert r.status == 408 and set(r.json()) == {"error", "code"}, r
    door = {"Content-Length": "100", "Depth": "0"}
    r = exchange(impatient.door_port, head("PROPFIND", "/", door), b"<?xml", timeout=60)
    assert r.status == 408 and r.json()["status"] == "408", r


def test_over_long_header_sets_are_431_json(server: Server) -> None:
    for size in (20 * 1024, 64 * 1024, 200 * 1024):
        r = exchange(server.api_port, head("GET", "/healthz", {"X-Big": "b" * size}))
        assert r.status == 431 and r.json()["status"] == "431", (size, r)


# -- smaller findings ----------------------------------------------------------------------------------------


def test_want_digest_needs_read_permission(server: Server) -> None:
    """HEAD with Want-Digest would hash (and tell the digest of) a file the caller may not read."""
    name, key, _ = add_user(server, "wdigest")
    with server.door() as door, server.api() as api:
        door.request("MKCOL", "/wd")
        assert door.put("/wd/secret", content=b"payroll").status_code == 201
        assert api.post("/api/v1/namespace/wd/secret", json={"action": "chmod", "mode": 0o700}).status_code == 200
    inode = query(server.data, "SELECT id FROM inodes WHERE name = 'secret'")[0][0]
    with client(base_url=server.door_url, auth=(name, key)) as other:
        assert other.head("/wd/secret", headers={"Want-Digest": "sha-256"}).status_code == 403
        problem(other.get("/wd/secret"), 403)
        assert other.head("/wd/secret").status_code == 200  # metadata alone stays visible, as before
    assert query(server.data, "SELECT type FROM checksums WHERE inode_id = :i AND type = 'sha-256'", i=inode) == []
    with server.door() as door:
        assert door.head("/wd/secret", headers={"Want-Digest": "sha-256"}).headers["digest"].startswith("sha-256=")


def test_file_content_is_served_inert(server: Server) -> None:
    page = b"<html><script>fetch('/api/v1/user').then(r => r.text()).then(alert)</script></html>"
    with server.door() as door:
        door.request("MKCOL", "/inert")
        assert door.put("/inert/page.html", content=page).status_code == 201
        assert door.put("/inert/pic.svg", content=b"<svg xmlns='http://www.w3.org/2000/svg'/>").status_code == 201
        for r in (door.get("/inert/page.html"), door.head("/inert/page.html"), door.get("/inert/pic.svg"),
                  door.get("/inert/page.html", headers={"Range": "bytes=0-5"}), door.get("/inert/")):  # fmt: skip
            assert r.status_code in (200, 206)
            assert r.headers["x-content-type-options"] == "nosniff"
            assert r.headers["content-security-policy"] == "sandbox"


def test_copy_and_move_to_another_server_are_502(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/xhost")
        door.put("/xhost/f", content=b"data")
        for dest in ("http://elsewhere.example/xhost/g", f"http://127.0.0.2:{server.door_port}/xhost/g",
                     f"http://127.0.0.1:{server.door_port + 1}/xhost/g"):  # fmt: skip
            problem(door.request("MOVE", "/xhost/f", headers={"Destination": dest}), 502)
            # A COPY there is an HTTP third-party push (tests/test_tpc.py): here to a server that is not there.
            r = door.request("COPY", "/xhost/f", headers={"Destination": dest})
            assert r.status_code == 202 and r.text.rstrip().splitlines()[-1].startswith("failure:"), r.text
        assert door.get("/xhost/g").status_code == 404 and door.get("/xhost/f").content == b"data"
        # the same server: by the Host the client used, a proxy's X-Forwarded-Host, or an absolute path
        r = door.request("COPY", "/xhost/f", headers={"Destination": f"{server.door_url}/xhost/g"})
        assert r.status_code == 201
        proxied = {"Destination": "https://storage.example/xhost/h", "X-Forwarded-Host": "storage.example"}
        assert door.request("COPY", "/xhost/f", headers=proxied).status_code == 201
        assert door.request("MOVE", "/xhost/f", headers={"Destination": "/xhost/i"}).status_code == 201
        assert door.get("/xhost/i").content == b"data"


def test_entity_names_are_openwhisk_names(server: Server) -> None:
    """An action named '..' (or '.', or '-x') is 400: its code would be laid out outside its namespace."""
    action = {"exec": {"kind": "python:3", "code": "def main(args):\n    return {}\n"}}
    with server.api() as api:
        for name in ("%2E%2E", "%2E", "-x", "@x", "x%20", "x%0A", "a" * 257):
            assert "not valid" in whisk(api.put(f"{NS}/actions/{name}", json=action), 400), name
            whisk(api.put(f"{NS}/triggers/{name}", json={}), 400)
            whisk(api.put(f"{NS}/rules/{name}", json={"trigger": "t", "action": "a"}), 400)
        whisk(api.put(f"{NS}/rules/r", json={"trigger": "..", "action": "a"}), 400)
        whisk(api.get("/api/v1/namespaces/%2E%2E/actions"), 400)
        assert all(a["name"] not in ("..", ".") for a in api.get(f"{NS}/actions").json())
        for name in ("a", "a.b", "a b", "_x", "x@y-z.", "a" * 256):
            assert api.put(f"{NS}/actions/{name}", json=action).status_code == 200, name
            assert api.delete(f"{NS}/actions/{name}").status_code == 200
