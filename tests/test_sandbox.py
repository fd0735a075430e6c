"""The function sandbox (issue 10, findings 2 and 4), attacked from inside: a function deployed by the
non-admin user2 and invoked blocking cannot see the server's secrets, files or network, runs as an
unprivileged uid, and its memory, pids and time limits hold for its whole process tree, zygote included."""

from __future__ import annotations

import json
import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from harness import ADMIN_KEY, Server, add_user, client, wait_for

NS = "/api/v1/namespaces/_"

PROBE = textwrap.dedent(
    """
    import os, socket, subprocess, sys, time

    def main(args, ctx):
        what = args["what"]
        if what == "env":
            return {"env": dict(os.environ)}
        if what == "read":
            out = {}
            for p in args["paths"]:
                try:
                    if os.path.isdir(p):
                        out[p] = "listed " + ",".join(os.listdir(p))
                    else:
                        with open(p, "rb") as f:
                            out[p] = "read %d bytes" % len(f.read())
                except OSError as exc:
                    out[p] = "refused " + type(exc).__name__
            return out
        if what == "connect":
            out = {}
            for port in args["ports"]:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=3).close()
                    out[str(port)] = "connected"
                except OSError as exc:
                    out[str(port)] = "refused " + type(exc).__name__
            return out
        if what == "id":
            return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups()}
        if what == "storage":
            out = {}
            for p in args["paths"]:
                try:
                    out[p] = "listed " + ",".join(ctx.storage.list(p))
                except Exception as exc:
                    out[p] = "refused " + str(exc)
            ctx.storage.write(args["write"], b"from the sandbox")
            return out
        if what == "hog_children":  # child processes, each within its rlimit, together past the cgroup's limit
            code = "import time; b = b'x' * (120 * 1024 * 1024); time.sleep(3)"
            kids = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(6)]
            return {"returncodes": [k.wait() for k in kids]}
        if what == "forkbomb":
            kids, refused = [], None
            for _ in range(5000):
                try:
                    pid = os.fork()
                except OSError as exc:
                    refused = type(exc).__name__
                    break
                if pid == 0:
                    time.sleep(600)
                    os._exit(0)
                kids.append(pid)
            return {"forked": len(kids), "refused": refused}
        if what == "child_then_loop":  # a child, a grandchild orphaned, then past the deadline
            subprocess.Popen(["sleep", args["marker"]])
            subprocess.Popen(["sh", "-c", "sleep %s & exit 0" % args["orphan"]]).wait()
            while True:
                time.sleep(0.05)
        if what == "hold_connections":  # many connections to the door's socket at once, each asked one request
            path = os.path.join(os.environ["HEADRACE_SOCKET_DIR"], "door.sock")
            conns = []
            for _ in range(args["n"]):
                c = socket.socket(socket.AF_UNIX)
                c.connect(path)
                conns.append(c)
            answered = closed = 0
            for c in conns:
                try:
                    c.sendall(b"OPTIONS / HTTP/1.1\\r\\nHost: door\\r\\n\\r\\n")
                    first = c.recv(12)
                except OSError:
                    first = b""
                if first.startswith(b"HTTP/1.1"):
                    answered += 1
                else:
                    closed += 1
            for c in conns:
                c.close()
            return {"answered": answered, "closed": closed}
        if what == "child":
            subprocess.Popen(["sleep", args["marker"]])
            return {"started": True}
        return {"unknown": what}
    """
)


@pytest.fixture(scope="module")
def user2(server: Server) -> tuple[str, str, int]:
    return add_user(server, "user2")


@pytest.fixture
def api2(server: Server, user2: tuple[str, str, int]) -> Iterator[httpx.Client]:
    with client(base_url=server.api_url, auth=user2[:2], timeout=60) as c:
        yield c


def deploy(api: httpx.Client, name: str, code: str = PROBE, **extra: Any) -> None:
    body = {"exec": {"kind": "python:3", "code": code}, **extra}
    r = api.put(f"{NS}/actions/{name}", params={"overwrite": "true"}, json=body)
    assert r.status_code == 200, r.text


def invoke(api: httpx.Client, name: str, **args: Any) -> dict[str, Any]:
    r = api.post(f"{NS}/actions/{name}", params={"blocking": "true"}, json=args)
    assert r.status_code in (200, 500, 502), r.text
    return dict(r.json())


def result(api: httpx.Client, name: str, **args: Any) -> dict[str, Any]:
    rec = invoke(api, name, **args)
    assert rec["response"]["statusCode"] == 0, rec
    return dict(rec["response"]["result"])


def sandbox_of(record: dict[str, Any]) -> dict[str, Any]:
    return dict(next(a["value"] for a in record["annotations"] if a["key"] == "sandbox"))


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in cmd:
                found.append(int(pid))
    return found


def test_the_function_sees_no_secret_file_or_other_namespace(server: Server, api2: httpx.Client) -> None:
    with server.door() as door:  # an admin file in a pool, and admin's own action's code on disk
        assert door.put("/admin-secret.txt", content=b"payroll").status_code == 201
    with server.api() as admin:
        deploy(admin, "admins-action", "def main(args):\n    return {}\n")
        assert admin.post(f"{NS}/actions/admins-action", params={"blocking": "true"}, json={}).status_code == 200
    deploy(api2, "probe")

    rec = invoke(api2, "probe", what="env")
    env = rec["response"]["result"]["env"]
    assert "HEADRACE_ADMIN_KEY" not in env and ADMIN_KEY not in json.dumps(env)
    assert not any(k in env for k in ("HEADRACE_DB", "HEADRACE_CONFIG", "HEADRACE_POOL_SECRET"))
    assert "HEADRACE_TOKEN" not in env  # no storage access asked for: no credential either
    assert sandbox_of(rec)["isolation"] == "bubblewrap" and sandbox_of(rec)["limits"] in ("cgroup-v1", "cgroup-v2")

    blobs = [str(p) for p in (server.data / "pools").rglob("*") if p.is_file()]
    assert blobs
    secrets = [
        str(server.data),
        str(server.data / "headrace.db"),
        *blobs,
        str(server.cli_config),
        str(server.data / "functions" / "admin"),
        str(server.data / "functions" / "admin" / "admins-action"),
        f"/proc/{server.proc.pid if server.proc else 1}/environ",
        __file__,  # the server's working directory (this checkout): only its Python parts are shown
    ]
    seen = result(api2, "probe", what="read", paths=secrets)
    assert all(v.startswith("refused") for v in seen.values()), seen
    # what it does see: its own code, read-only, and a private /tmp
    own = result(api2, "probe", what="read", paths=["/action", "/tmp"])
    assert own["/action"].startswith("listed") and "__main__.py" in own["/action"]


def test_no_socket_reaches_the_server_or_the_database(server: Server, api2: httpx.Client) -> None:
    deploy(api2, "probe")
    ports = [urlsplit(server.door_url).port, urlsplit(server.api_url).port]
    if server.db.startswith("postgresql"):
        ports.append(urlsplit(server.db.replace("+psycopg", "")).port or 5432)
    seen = result(api2, "probe", what="connect", ports=ports)
    assert all(v.startswith("refused") for v in seen.values()), seen


def test_it_runs_as_an_unprivileged_uid_of_its_owner(server: Server, api2: httpx.Client, user2: Any) -> None:
    deploy(api2, "probe")
    rec = invoke(api2, "probe", what="id")
    got = rec["response"]["result"]
    assert got["uid"] == got["euid"] == got["gid"] == sandbox_of(rec)["uid"] != 0
    assert got["uid"] == 100_000 + user2[2] and got["groups"] == []


def test_storage_only_through_its_sockets_as_its_owner(server: Server, api2: httpx.Client) -> None:
    with server.door() as door, server.api() as admin:
        assert door.request("MKCOL", "/admin-only").status_code == 201
        assert door.request("MKCOL", "/shared").status_code == 201
        assert admin.post("/api/v1/namespace/admin-only", json={"action": "chmod", "mode": 0o700}).status_code == 200
        assert admin.post("/api/v1/namespace/shared", json={"action": "chmod", "mode": 0o777}).status_code == 200
    deploy(api2, "probe-storage", annotations=[{"key": "storage", "value": True}])
    rec = invoke(api2, "probe-storage", what="storage", paths=["/admin-only", "/shared"], write="/shared/by-user2")
    assert rec["response"]["statusCode"] == 0, rec
    seen = rec["response"]["result"]
    assert seen["/admin-only"].startswith("refused") and " 403 " in seen["/admin-only"]
    assert seen["/shared"].startswith("listed")
    with server.api() as admin:
        written = admin.get("/api/v1/namespace/shared/by-user2").json()
    assert written["fileType"] == "REGULAR"
    # still no TCP to the door or frontend: the sockets are the only way out
    ports = [urlsplit(server.door_url).port, urlsplit(server.api_url).port]
    seen = result(api2, "probe-storage", what="connect", ports=ports)
    assert all(v.startswith("refused") for v in seen.values()), seen
    env = result(api2, "probe-storage", what="env")["env"]
    assert env["HEADRACE_SOCKET_DIR"] == "/run/headrace" and env.get("HEADRACE_TOKEN")


def test_a_function_holds_a_bounded_number_of_storage_connections(server: Server, api2: httpx.Client) -> None:
    """Each forwarded connection costs the server file descriptors: one pool holds at most 64 per socket at
    once (HEADRACE_SANDBOX_CONNECTIONS); the rest are closed unread, and closed ones free their slots."""
    deploy(api2, "probe-conns", annotations=[{"key": "storage", "value": True}], limits={"timeout": 60_000})
    seen = result(api2, "probe-conns", what="hold_connections", n=100)
    assert seen == {"answered": 64, "closed": 36}, seen
    # the function closed them: the next activation of the pool has every slot again
    seen = result(api2, "probe-conns", what="hold_connections", n=64)
    assert seen == {"answered": 64, "closed": 0}, seen


def test_each_activation_gets_its_own_confined_short_lived_credential(server: Server, api2: httpx.Client) -> None:
    from pymacaroons import Macaroon

    storage = {"key": "storage", "value": {"path": "/shared", "activities": ["DOWNLOAD", "LIST", "UPLOAD"]}}
    deploy(api2, "probe-confined", annotations=[storage], limits={"timeout": 20_000})
    with server.door() as door, server.api() as admin:
        door.request("MKCOL", "/shared")
        door.request("MKCOL", "/elsewhere")
        admin.post("/api/v1/namespace/shared", json={"action": "chmod", "mode": 0o777})
        admin.post("/api/v1/namespace/elsewhere", json={"action": "chmod", "mode": 0o777})
    one, two = invoke(api2, "probe-confined", what="env"), invoke(api2, "probe-confined", what="env")
    tokens = [r["response"]["result"]["env"]["HEADRACE_TOKEN"] for r in (one, two)]
    assert tokens[0] != tokens[1]
    caveats = [c.caveat_id for c in Macaroon.deserialize(tokens[0]).first_party_caveats()]
    assert caveats[0].startswith("id:") and caveats[0].endswith(";user2")
    assert "path:/shared" in caveats and "activity:DOWNLOAD,LIST,UPLOAD" in caveats
    before = next(c for c in caveats if c.startswith("before:")).removeprefix("before:")
    from datetime import datetime

    deadline_s = (one["start"] + 20_000) / 1000
    assert datetime.fromisoformat(before.replace("Z", "+00:00")).timestamp() <= deadline_s + 6  # deadline + grace
    assert caveats[1] == f"cause:{one['activationId']}"  # server-vouched: right after the identity
    # confined to its path: the sibling directory is out of reach, even though the owner could write there
    rec = invoke(api2, "probe-confined", what="storage", paths=["/elsewhere"], write="/elsewhere/x")
    assert rec["response"]["statusCode"] == 1 and " 403 " in rec["response"]["result"]["error"]


def test_the_import_has_its_own_time_limit(server: Server, api2: httpx.Client) -> None:
    slow = "import time\ntime.sleep(30)\ndef main(args):\n    return {}\n"
    deploy(api2, "slow-import", slow, limits={"timeout": 1000})
    started = time.monotonic()
    rec = invoke(api2, "slow-import")
    assert rec["response"]["statusCode"] == 2
    assert rec["response"]["result"]["error"] == "Initialization has failed: the action did not load within 10 seconds."
    assert time.monotonic() - started < 30  # it was not waited for


def test_without_bubblewrap_activations_fail_clearly_unless_the_operator_says_none(tmp_path: Path) -> None:
    bare = Server(data=tmp_path / "a" / "data", cli_config=tmp_path / "a" / "cli.json")
    bare.env_extra["PATH"] = str(tmp_path)  # no bwrap on it
    with_none = Server(data=tmp_path / "b" / "data", cli_config=tmp_path / "b" / "cli.json")
    with_none.env_extra["HEADRACE_SANDBOX"] = "none"
    for srv in (bare, with_none):
        (srv.data.parent).mkdir(parents=True)
        srv.start()
        try:
            with srv.api() as api:
                deploy(api, "hello", "def main(args):\n    return {'ok': True}\n")
                rec = invoke(api, "hello")
        finally:
            srv.stop()
        if srv is bare:
            assert rec["response"]["statusCode"] == 3
            assert "bubblewrap" in rec["response"]["result"]["error"]
            assert "HEADRACE_SANDBOX=none" in rec["response"]["result"]["error"]
        else:
            assert rec["response"]["result"] == {"ok": True}
            assert sandbox_of(rec)["isolation"] == "none"


def test_memory_limit_holds_for_the_zygotes_import(server: Server, api2: httpx.Client) -> None:
    hog = "import time\nHOG = b'x' * (700 * 1024 * 1024)\ntime.sleep(30)\ndef main(args):\n    return {}\n"
    deploy(api2, "import-hog", hog, limits={"memory": 128, "timeout": 1000})
    rec = invoke(api2, "import-hog")
    assert rec["response"]["statusCode"] == 2
    assert "exceeded its memory limit of 128 MB while loading" in rec["response"]["result"]["error"]
    assert httpx.get(f"{server.api_url}/healthz").status_code == 200
    deploy(api2, "probe")
    assert result(api2, "probe", what="id")["uid"] != 0  # the server runs functions as before


def test_memory_limit_holds_for_a_workers_child_process(server: Server, api2: httpx.Client) -> None:
    deploy(api2, "child-hog", limits={"memory": 128}, scaling={"maxScale": 2})
    rec = invoke(api2, "child-hog", what="hog_children")
    code = rec["response"]["statusCode"]
    # 720 MB in all: the cgroup's OOM killer ends children (or, had it picked the worker, the activation fails)
    assert (code == 0 and -9 in rec["response"]["result"]["returncodes"]) or code == 2, rec


def test_a_fork_bomb_is_contained(server: Server, api2: httpx.Client) -> None:
    deploy(api2, "forkbomb", scaling={"maxScale": 1})
    got = result(api2, "forkbomb", what="forkbomb")
    assert got["refused"] == "BlockingIOError" and got["forked"] < 5000
    assert httpx.get(f"{server.api_url}/healthz").status_code == 200
    r = api2.delete(f"{NS}/actions/forkbomb")
    assert r.status_code == 200


def test_children_die_with_the_timeout_kill_and_with_the_action(server: Server, api2: httpx.Client) -> None:
    marker, orphan = f"{time.time() % 1000:.6f}1", f"{time.time() % 1000:.6f}2"
    deploy(api2, "lingers", limits={"timeout": 2000})
    rec = invoke(api2, "lingers", what="child_then_loop", marker=marker, orphan=orphan)
    assert rec["response"]["statusCode"] == 2 and "time limit" in rec["response"]["result"]["error"]
    wait_for(lambda: not processes_with(marker) and not processes_with(orphan), "the child and the orphan to go")

    marker = f"{time.time() % 1000:.6f}3"
    assert result(api2, "lingers", what="child", marker=marker)["started"]
    assert processes_with(marker)  # it outlives its activation while the action exists...
    assert api2.delete(f"{NS}/actions/lingers").status_code == 200
    wait_for(lambda: not processes_with(marker), "the child to go with its action")  # ... but not the action


def test_min_scale_above_the_worker_cap_is_clamped(fresh_server: Server) -> None:
    fresh_server.env_extra["HEADRACE_FN_MAX_WORKERS"] = "3"
    srv = fresh_server.start()
    _, key, _ = add_user(srv, "user2")
    name = f"warm{uuid.uuid4().hex[:6]}"
    with client(base_url=srv.api_url, auth=("user2", key), timeout=60) as api:
        deploy(api, name, scaling={"minScale": 40, "maxScale": 40})

        def workers() -> int:
            text = httpx.get(f"{srv.api_url}/metrics", auth=srv.auth).text
            line = next((x for x in text.splitlines() if x.startswith(f'headrace_fn_workers{{action="{name}"')), "")
            return int(float(line.split()[-1])) if line else 0

        wait_for(lambda: workers() >= 3, "minScale's workers")
        time.sleep(3)  # three more autoscaler rounds: none forks past the cap
        assert workers() == 3
