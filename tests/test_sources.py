"""Event sources' core (issue 14): the sources API and who may do what with it, the sink's exactly-once delivery
and position across a kill -9, storage-feed triggers on a source's events (and not a non-reader's), reading a
source's files, and the `headrace source` CLI.

Real `headrace up` servers with a kind for tests only (tests/support/fixture_source.py, registered through
$HEADRACE_SOURCE_KINDS): it follows a JSON-lines file a test appends to and serves files from a directory.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, query, query_dicts, wait_for
from sse_reader import SseReader
from test_cli import ok, one_line_error, run

SUPPORT = Path(__file__).parent / "support"
SRC = "/api/v1/sources"
NS = "/api/v1/namespaces/_"


def fixture_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p)
    return {"HEADRACE_SOURCE_KINDS": "fixture=fixture_source", "PYTHONPATH": path}


def new_server(base: Path) -> Server:
    return Server(data=base / "data", cli_config=base / "cli.json", env_extra=fixture_env())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = new_server(tmp_path_factory.mktemp("sources")).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def alice(srv: Server) -> tuple[str, str]:
    name, key, _ = add_user(srv, "srcalice")
    return name, key


@pytest.fixture(scope="module")
def bob(srv: Server) -> tuple[str, str]:
    name, key, _ = add_user(srv, "srcbob")
    return name, key


class Remote:
    """The fixture kind's remote: a directory with events.jsonl and files/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "files").mkdir(parents=True, exist_ok=True)
        self.log = root / "events.jsonl"
        self.log.touch()

    def emit(self, *events: dict[str, Any]) -> None:
        with self.log.open("a") as f:
            for ev in events:
                f.write(json.dumps(ev) + "\n")

    def file(self, path: str, data: bytes) -> None:
        target = self.root / "files" / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def problem(r: httpx.Response, status: int, detail: str = "") -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert body["status"] == str(status) and detail in body["detail"], body
    return dict(body)


def remote_rows(server: Server, name: str) -> list[dict[str, Any]]:
    return query_dicts(
        server.data,
        'SELECT "offset", kind, path, source_key, inode_id, parent_id, name, old_path, detail FROM events '
        'WHERE source = :s ORDER BY "offset"',
        s=name,
    )


def received(server: Server, name: str) -> int:
    rows = query(server.data, "SELECT received FROM sources WHERE name = :n", n=name)
    return int(rows[0][0]) if rows else -1


def test_admin_puts_gets_and_deletes_a_source(srv: Server, tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r1")
    with srv.api() as api:
        body = {"kind": "fixture", "root": str(remote.root), "readers": {"users": ["srcalice"], "groups": [4242]}}
        r = api.put(f"{SRC}/one", json=body)
        assert r.status_code == 201, r.text
        assert r.headers["location"].endswith(f"{SRC}/one")
        got = r.json()
        assert got["name"] == "one" and got["kind"] == "fixture" and got["root"] == str(remote.root)
        assert got["readers"] == {"users": ["srcalice"], "groups": [4242]}
        assert got["version"] == 1
        state = wait_for(lambda: (s := api.get(f"{SRC}/one").json()["state"])["running"] and s, "source running")
        assert state["received"] == 0 and state["lastError"] is None
        remote.emit({"key": "k1", "kind": "CLOSE_WRITE", "path": "/d/a.h5", "size": 3})
        # (the kind reports its lag in its state after each delivery)
        state = wait_for(lambda: "lag" in (s := api.get(f"{SRC}/one").json()["state"]) and s, "one event received")
        assert state["received"] == 1 and state["position"] == "1" and state["lag"] == 0 and state["lastEvent"] > 0
        assert [s["name"] for s in api.get(SRC).json()] == ["one"]

        r = api.put(f"{SRC}/one", json={**body, "batch": 2})
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 2 and r.json()["batch"] == 2
        assert r.json()["state"]["received"] == 1  # a replaced source keeps its position and counters

        assert api.delete(f"{SRC}/one").status_code == 204
        problem(api.get(f"{SRC}/one"), 404, "No such source")
        problem(api.delete(f"{SRC}/one"), 404)
        # its events stay in the log
        assert [r["path"] for r in remote_rows(srv, "one")] == ["/d/a.h5"]


def test_credentials_are_never_shown(srv: Server, alice: tuple[str, str], tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r2")
    with srv.api() as api:
        body = {"kind": "fixture", "root": str(remote.root), "bearer": "tok-s3cr3t", "basic": "u:pw-s3cr3t",
                "readers": {"users": [alice[0]]}}  # fmt: skip
        r = api.put(f"{SRC}/secretive", json=body)
        assert r.status_code == 201 and r.json()["bearer"] == "***" and r.json()["basic"] == "***", r.text
        shown = api.get(f"{SRC}/secretive").json()
        with client(base_url=srv.api_url, auth=alice) as a:
            texts = [r.text, api.get(SRC).text, json.dumps(shown), a.get(SRC).text, a.get(f"{SRC}/secretive").text]
        assert not [t for t in texts if "s3cr3t" in t], texts
        # what GET showed, PUT back: "***" keeps the stored credentials
        assert api.put(f"{SRC}/secretive", json=shown).status_code == 200
        config = json.loads(query(srv.data, "SELECT config FROM sources WHERE name = 'secretive'")[0][0])
        assert config["bearer"] == "tok-s3cr3t" and config["basic"] == "u:pw-s3cr3t"
        assert api.delete(f"{SRC}/secretive").status_code == 204
    from headrace.events.sources.api import masked

    assert masked(
        {"bearer": "tok", "basic": "u:k", "secret": "s3", "token_file": "/etc/t", "sasl_password": "pw",
         "url": "https://user:pw@example.org/api/v1", "path": "/x"}
    ) == {
        "bearer": "***", "basic": "***", "secret": "***", "token_file": "/etc/t", "sasl_password": "***",
        "url": "https://user:***@example.org/api/v1", "path": "/x",
    }  # fmt: skip


def test_non_admin_may_not_manage_and_sees_only_what_they_read(
    srv: Server, alice: tuple[str, str], bob: tuple[str, str], tmp_path: Path
) -> None:
    remote = Remote(tmp_path / "r3")
    with srv.api() as api:
        assert api.put(f"{SRC}/for-alice", json={"kind": "fixture", "root": str(remote.root),
                                                 "readers": {"users": [alice[0]]}}).status_code == 201  # fmt: skip
        assert api.put(f"{SRC}/for-admins", json={"kind": "fixture", "root": str(remote.root)}).status_code == 201
    with client(base_url=srv.api_url, auth=alice) as a, client(base_url=srv.api_url, auth=bob) as b:
        problem(a.put(f"{SRC}/mine", json={"kind": "fixture", "root": "/tmp"}), 403, "administrators")
        problem(a.delete(f"{SRC}/for-alice"), 403, "administrators")
        assert [s["name"] for s in a.get(SRC).json()] == ["for-alice"]
        assert a.get(f"{SRC}/for-alice").status_code == 200
        problem(a.get(f"{SRC}/for-admins"), 404)
        assert b.get(SRC).json() == []
        problem(b.get(f"{SRC}/for-alice"), 404)
        problem(b.get(f"{SRC}/for-alice/files/x"), 404)
    with client(base_url=srv.api_url) as anonymous:
        assert anonymous.get(SRC).status_code == 401
    with srv.api() as api:
        for name in ("for-alice", "for-admins"):
            assert api.delete(f"{SRC}/{name}").status_code == 204


def test_bad_requests_are_400_with_a_reason(srv: Server) -> None:
    with srv.api() as api:
        problem(api.put(f"{SRC}/x", json={"kind": "nonsense"}), 400, "Unknown source kind 'nonsense'")
        problem(api.put(f"{SRC}/x", json={"root": "/tmp"}), 400, '"kind"')
        problem(api.put(f"{SRC}/x", json={"kind": "fixture"}), 400, "needs root")
        problem(api.put(f"{SRC}/x", json={"kind": "fixture", "root": "/tmp", "colour": 1}), 400, "colour")
        problem(api.put(f"{SRC}/-x", json={"kind": "fixture", "root": "/tmp"}), 400, "not valid")
        problem(api.put(f"{SRC}/{'x' * 65}", json={"kind": "fixture", "root": "/tmp"}), 400, "not valid")
        problem(api.put(f"{SRC}/x", json={"kind": "fixture", "root": "/tmp", "readers": ["a"]}), 400, "readers")
        r = api.put(f"{SRC}/x", json={"kind": "fixture", "root": "/tmp", "readers": {"groups": ["staff"]}})
        problem(r, 400, "group ids")
        problem(api.put(f"{SRC}/x", content=b"[1]", headers={"content-type": "application/json"}), 400, "object")
        assert api.get(f"{SRC}/x").status_code == 404


def test_an_event_delivered_twice_enters_the_log_once(srv: Server, tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r4")
    remote.emit(
        {"key": "a", "path": "/run/a.h5", "size": 1},
        {"key": "b", "path": "/run/b.h5", "size": 2},
        {"key": "a", "path": "/run/a.h5", "size": 1},  # the remote said it again
        {"key": "c", "kind": "MOVE", "path": "/run/c.h5", "old_path": "/run/b.h5"},
    )
    with srv.api() as api:
        body = {"kind": "fixture", "root": str(remote.root), "batch": 3}
        assert api.put(f"{SRC}/twice", json=body).status_code == 201
        wait_for(lambda: api.get(f"{SRC}/twice").json()["state"]["position"] == "4", "all four lines read")
        rows = remote_rows(srv, "twice")
        assert [(r["source_key"], r["path"]) for r in rows] == [("a", "/run/a.h5"), ("b", "/run/b.h5"),
                                                                 ("c", "/run/c.h5")]  # fmt: skip
        move = rows[2]
        assert move["kind"] == "MOVE" and move["old_path"] == "/run/b.h5" and move["name"] == "c.h5"
        assert move["inode_id"] == 0 and move["parent_id"] is None
        assert json.loads(rows[0]["detail"])["url"] == "fixture:///run/a.h5"
        assert received(srv, "twice") == 3
        # replayed from the start (as after a lost position): nothing enters twice
        assert api.put(f"{SRC}/twice", json={**body, "replay": True}).status_code == 200
        remote.emit({"key": "d", "path": "/run/d.h5"})
        wait_for(lambda: [r["source_key"] for r in remote_rows(srv, "twice")] == ["a", "b", "c", "d"], "d after replay")
        assert received(srv, "twice") == 4
        assert api.delete(f"{SRC}/twice").status_code == 204


def test_a_failing_source_is_restarted_and_a_refused_configuration_is_not(srv: Server, tmp_path: Path) -> None:
    failing, refused = Remote(tmp_path / "r5"), Remote(tmp_path / "r5b")

    def runs(remote: Remote) -> int:
        log = remote.root / "runs.log"
        return len(log.read_text().splitlines()) if log.exists() else 0

    with srv.api() as api:
        assert api.put(f"{SRC}/failing", json={"kind": "fixture", "root": str(failing.root),
                                               "fail": "the remote is down"}).status_code == 201  # fmt: skip
        assert api.put(f"{SRC}/refused", json={"kind": "fixture", "root": str(refused.root),
                                               "refuse": "no such topic"}).status_code == 201  # fmt: skip
        state = wait_for(lambda: api.get(f"{SRC}/failing").json()["state"]["lastError"], "an error recorded")
        assert state == "RuntimeError: the remote is down"
        wait_for(lambda: runs(failing) >= 2, "the failing source restarted (after 1 s)")
        error = wait_for(lambda: api.get(f"{SRC}/refused").json()["state"]["lastError"], "the refusal recorded")
        assert error == "SourceConfigError: no such topic"
        # by the time the failing one has been restarted twice more (after 2 s, 4 s), the refused one never was
        wait_for(lambda: runs(failing) >= 4, "the failing source restarted with backoff", timeout=90)
        assert runs(refused) == 1
        # until it is changed
        assert api.put(f"{SRC}/refused", json={"kind": "fixture", "root": str(refused.root)}).status_code == 200
        wait_for(lambda: runs(refused) == 2, "the changed source started")
        for name in ("failing", "refused"):
            assert api.delete(f"{SRC}/{name}").status_code == 204


def test_the_position_survives_a_kill(tmp_path: Path) -> None:
    server = new_server(tmp_path).start()
    remote = Remote(tmp_path / "r6")
    try:
        with server.api() as api:
            body = {"kind": "fixture", "root": str(remote.root), "pace": 0.01}  # a few seconds for all 300
            assert api.put(f"{SRC}/durable", json=body).status_code == 201
        remote.emit(*({"key": f"k{i}", "path": f"/f/{i}.h5", "size": i} for i in range(300)))
        wait_for(lambda: received(server, "durable") >= 40, "some events delivered")
        server.stop(signal.SIGKILL)  # between deliveries, or in one: each commits with its position
        cut = received(server, "durable")
        print(f"killed with {cut} of 300 events delivered")
        assert 40 <= cut <= 300
        remote.emit(*({"key": f"k{i}", "path": f"/f/{i}.h5", "size": i} for i in range(300, 320)))
        server.start()
        wait_for(lambda: received(server, "durable") == 320, "every event after the restart", timeout=120)
        rows = remote_rows(server, "durable")
        assert [r["source_key"] for r in rows] == [f"k{i}" for i in range(320)]  # none lost, none doubled, in order
        with server.api() as api:
            assert api.get(f"{SRC}/durable").json()["state"]["position"] == "320"
    finally:
        server.stop()


ECHO = """\
def main(args):
    return {"path": args.get("path"), "source": args.get("source"), "url": args.get("url"),
            "mask": args.get("mask"), "size": args.get("size")}
"""


def _activations(api: httpx.Client, name: str, *, done: bool = True) -> list[dict[str, Any]]:
    """The activations of `name` (only the finished ones with `done`)."""
    r = api.get(f"{NS}/activations", params={"name": name, "docs": "true", "limit": 200})
    assert r.status_code == 200, r.text
    return [a for a in r.json() if a.get("state") == "done" or not done]


def _deploy(api: httpx.Client, name: str, feed: dict[str, Any], code: str = ECHO, storage: bool = False) -> None:
    action: dict[str, Any] = {"exec": {"kind": "python:3", "code": code}}
    if storage:
        action["annotations"] = [{"key": "storage", "value": True}]
    r = api.put(f"{NS}/actions/{name}?overwrite=true", json=action)
    assert r.status_code == 200, r.text
    r = api.put(f"{NS}/triggers/{name}-t?overwrite=true", json={"feed": feed})
    assert r.status_code == 200, r.text
    r = api.put(f"{NS}/rules/{name}-r?overwrite=true", json={"trigger": f"/_/{name}-t", "action": f"/_/{name}"})
    assert r.status_code == 200, r.text


def test_a_trigger_on_a_source_fires_for_its_readers_only(
    srv: Server, alice: tuple[str, str], bob: tuple[str, str], tmp_path: Path
) -> None:
    remote = Remote(tmp_path / "r7")
    both = {"users": [alice[0], bob[0]]}
    with srv.api() as api, srv.door() as door:
        assert api.put(f"{SRC}/beam", json={"kind": "fixture", "root": str(remote.root),
                                            "readers": both}).status_code == 201  # fmt: skip
        assert door.request("MKCOL", "/scan").status_code == 201
        assert api.post("/api/v1/namespace/scan", json={"action": "chmod", "mode": 0o777}).status_code == 200
    feed = {"path": "/scan", "source": "beam"}
    with client(base_url=srv.api_url, auth=alice) as a, client(base_url=srv.api_url, auth=bob) as b:
        _deploy(a, "src-echo", feed)
        _deploy(b, "src-spy", feed)
        r = a.get(f"{NS}/triggers/src-echo-t").json()
        assert {"key": "source", "value": "beam"} in r["parameters"] or "beam" in json.dumps(r), r
        # bob stops being a reader: his trigger fires for nothing from then on
        with srv.api() as api:
            r = api.put(f"{SRC}/beam", json={"kind": "fixture", "root": str(remote.root),
                                             "readers": {"users": [alice[0]]}})  # fmt: skip
            assert r.status_code == 200, r.text
        # a local file at the same path fires neither (they follow the source, not this namespace)
        with client(base_url=srv.door_url, auth=alice) as door_a:
            assert door_a.put("/scan/x.h5", content=b"local").status_code == 201
        remote.emit({"key": "x1", "path": "/scan/x.h5", "size": 9, "url": "https://remote.example/scan/x.h5"})
        remote.emit({"key": "y1", "path": "/scan/y.h5", "size": 4})
        done = wait_for(lambda: len(acts := _activations(a, "src-echo")) >= 2 and acts, "alice's activations")
        results = sorted((x["response"]["result"] for x in done), key=lambda r: r["path"])
        assert results == [
            {"path": "/scan/x.h5", "source": "beam", "url": "https://remote.example/scan/x.h5",
             "mask": ["IN_CLOSE_WRITE"], "size": 9},
            {"path": "/scan/y.h5", "source": "beam", "url": "fixture:///scan/y.h5", "mask": ["IN_CLOSE_WRITE"],
             "size": 4},
        ]  # fmt: skip
        # a local trigger on /scan fired for the local file, proving the feed read past all of these events
        _deploy(a, "src-local", {"path": "/scan"})
        with client(base_url=srv.door_url, auth=alice) as door_a:
            assert door_a.put("/scan/z.h5", content=b"local").status_code == 201
        local = wait_for(lambda: _activations(a, "src-local"), "the local trigger's activation")
        assert [x["response"]["result"]["path"] for x in local] == ["/scan/z.h5"]
        assert local[0]["response"]["result"]["source"] is None
        assert len(_activations(a, "src-echo")) == 2
        # (bob's would have been made with alice's, in one pass of the feed over the same events)
        assert _activations(b, "src-spy", done=False) == []
        # creating a trigger on a source one may not read, or one there is not
        r = b.put(f"{NS}/triggers/src-no?overwrite=true", json={"feed": {"path": "/", "source": "beam"}})
        assert r.status_code == 403 and set(r.json()) == {"error", "code"}, r.text
        r = b.put(f"{NS}/triggers/src-no?overwrite=true", json={"feed": {"path": "/", "source": "nowhere"}})
        assert r.status_code == 404 and set(r.json()) == {"error", "code"}, r.text
    with srv.api() as api:
        assert api.delete(f"{SRC}/beam").status_code == 204


def test_reading_a_sources_files(srv: Server, alice: tuple[str, str], bob: tuple[str, str], tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r8")
    remote.file("/d/data.bin", bytes(range(256)) * 4)
    remote.file("/d/forbidden.bin", b"no")
    remote.file("/d/broken.bin", b"no")
    with srv.api() as api:
        assert api.put(f"{SRC}/store8", json={"kind": "fixture", "root": str(remote.root),
                                             "readers": {"users": [alice[0]]}}).status_code == 201  # fmt: skip
        r = api.get(f"{SRC}/store8/files/d/data.bin")
        assert r.status_code == 200 and r.content == bytes(range(256)) * 4
        assert r.headers["content-length"] == "1024"
    with client(base_url=srv.api_url, auth=alice) as a, client(base_url=srv.api_url, auth=bob) as b:
        r = a.get(f"{SRC}/store8/files/d/data.bin", headers={"Range": "bytes=10-19"})
        assert r.status_code == 206 and r.content == bytes(range(10, 20))
        assert r.headers["content-range"] == "bytes 10-19/1024"
        r = a.get(f"{SRC}/store8/files/d/data.bin", headers={"Range": "bytes=1020-"})
        assert r.status_code == 206 and r.content == bytes(range(252, 256))
        problem(a.get(f"{SRC}/store8/files/d/none.bin"), 404, "No such file")
        problem(a.get(f"{SRC}/store8/files/d/forbidden.bin"), 403, "refused")
        problem(a.get(f"{SRC}/store8/files/d/broken.bin"), 502, "the remote went away")
        problem(a.get(f"{SRC}/store8/files/d/data.bin", headers={"Range": "bytes=5000-"}), 416)
        problem(b.get(f"{SRC}/store8/files/d/data.bin"), 404, "No such source")
    # a token of a reader narrows: without DOWNLOAD, or confined to paths of this namespace, it reads nothing
    from test_auth_attacks import mint

    for caveats, status in ((["activity:DOWNLOAD"], 200), (["activity:LIST"], 403), (["path:/home"], 403)):
        token = mint(srv, alice, caveats=caveats)
        with client(base_url=srv.api_url, headers={"Authorization": f"Bearer {token}"}) as t:
            r = t.get(f"{SRC}/store8/files/d/data.bin")
            assert r.status_code == status, (caveats, r.text)
    # the SDK's client reads them the same way
    from headrace.client import Client, ClientConfig, HeadraceClientError

    with Client(ClientConfig(door=srv.door_url, api=srv.api_url, username=alice[0], key=alice[1])) as c:
        assert c.read_bytes("/d/data.bin", source="store8") == bytes(range(256)) * 4
        with pytest.raises(HeadraceClientError, match="No such file"):
            c.read_bytes("/d/none.bin", source="store8")
    with srv.api() as api:
        assert api.delete(f"{SRC}/store8").status_code == 204


READER = """\
def main(event, ctx):
    whole = ctx.storage.read(event["path"], source=event["source"])
    with ctx.storage.open(event["path"], source=event["source"]) as f:
        f.seek(4)
        part = f.read(4)
    with open(ctx.storage.local_path(event["path"], source=event["source"]), "rb") as f:
        copied = f.read()
    return {"whole": whole.decode(), "part": part.decode(), "copied": copied == whole}
"""


def test_a_function_reads_a_remote_file_through_ctx_storage(
    srv: Server, alice: tuple[str, str], tmp_path: Path
) -> None:
    remote = Remote(tmp_path / "r9")
    remote.file("/in/frame.txt", b"0123456789")
    with srv.api() as api:
        assert api.put(f"{SRC}/reads", json={"kind": "fixture", "root": str(remote.root),
                                             "readers": {"users": [alice[0]]}}).status_code == 201  # fmt: skip
    with client(base_url=srv.api_url, auth=alice) as a:
        _deploy(a, "src-reader", {"path": "/in", "source": "reads"}, code=READER, storage=True)
        remote.emit({"key": "f1", "path": "/in/frame.txt", "size": 10})
        done = wait_for(lambda: _activations(a, "src-reader"), "the reader's activation")
        assert done[0]["response"]["result"] == {"whole": "0123456789", "part": "4567", "copied": True}, done[0]
    with srv.api() as api:
        assert api.delete(f"{SRC}/reads").status_code == 204


def test_the_source_cli(srv: Server, alice: tuple[str, str], tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r10")
    out = ok(run(srv, "source", "add", "cli1", "--kind", "fixture", "--root", str(remote.root),
                 "--reader", alice[0], "--reader-group", "4711"))  # fmt: skip
    assert out == "source cli1 added (fixture)\n"
    data = json.loads(ok(run(srv, "source", "add", "cli1", "--kind", "fixture", "--root", str(remote.root),
                             "-o", "batch=5", "--json")))  # fmt: skip
    assert data["batch"] == 5 and data["version"] == 2 and data["readers"] == {"users": [], "groups": []}
    remote.emit({"key": "c1", "path": "/c/1.h5"})
    wait_for(lambda: json.loads(ok(run(srv, "source", "get", "cli1", "--json")))["state"]["received"] == 1, "one")
    text = ok(run(srv, "source", "get", "cli1"))
    assert "kind: fixture" in text and "received: 1 events" in text and "position: 1" in text, text
    listed = json.loads(ok(run(srv, "source", "list", "--json")))
    assert "cli1" in [s["name"] for s in listed]
    assert ok(run(srv, "source", "list")).startswith("cli1")
    assert "nonsense" in one_line_error(run(srv, "source", "add", "cli2", "--kind", "nonsense"))
    assert "--bearer" in one_line_error(run(srv, "source", "add", "cli2", "--kind", "fixture", "--bearer", "t",
                                            "--basic", "u:k"), code=2)  # fmt: skip
    env = {"HEADRACE_USER": alice[0], "HEADRACE_KEY": alice[1]}
    assert "administrators" in one_line_error(run(srv, "source", "rm", "cli1", env=env))
    # a function on the source's events
    code = tmp_path / "echo.py"
    code.write_text(ECHO)
    ok(run(srv, "fn", "deploy", "cli-echo", str(code), "--path", "/c", "--source", "cli1"))
    with srv.api() as api:
        feed = api.get(f"{NS}/triggers/cli-echo-trigger").json()["feedParameters"]
        assert feed["source"] == "cli1" and feed["path"] == "/c", feed
    assert "from cli1" in ok(run(srv, "fn", "list"))
    assert "--path" in one_line_error(run(srv, "fn", "deploy", "cli-x", str(code), "--source", "cli1"), code=2)
    assert json.loads(ok(run(srv, "source", "rm", "cli1", "--json"))) == {"status": "success", "name": "cli1"}
    assert "No such source" in one_line_error(run(srv, "source", "get", "cli1"))


def test_sse_watches_never_see_remote_events(srv: Server, tmp_path: Path) -> None:
    remote = Remote(tmp_path / "r11")
    with srv.api() as api, srv.door() as door:
        assert door.request("MKCOL", "/ssesrc").status_code == 201
        r = api.post("/api/v1/events/channels")
        assert r.status_code == 201, r.text
        ch = r.headers["Location"]
        r = api.post(f"{ch}/subscriptions/inotify", json={"path": "/", "recursive": True})
        assert r.status_code == 201, r.text
        reader = SseReader(ch, srv.auth)
        try:
            assert api.put(f"{SRC}/sse", json={"kind": "fixture", "root": str(remote.root)}).status_code == 201
            remote.emit({"key": "s1", "kind": "CLOSE_WRITE", "path": "/ssesrc/remote.h5", "size": 1})
            wait_for(lambda: received(srv, "sse") == 1, "the remote event in the log")
            assert door.put("/ssesrc/local.h5", content=b"x").status_code == 201
            # (names below a recursive watch are relative to its directory)
            reader.until(
                lambda f: f["event"] == "inotify" and f["data"]["event"] == {
                    "name": "ssesrc/local.h5", "mask": ["IN_CLOSE_WRITE"]}
            )  # fmt: skip
            assert not any("remote.h5" in line for line in reader.lines), reader.lines
        finally:
            reader.close()
            assert api.delete(f"{SRC}/sse").status_code == 204


def test_remote_events_render_with_their_source_and_give_no_billing_record() -> None:
    from headrace.events import billing
    from headrace.events.model import EventKind, StorageEvent
    from headrace.events.render import cloudevent_json, cloudevent_sdk_json, event_data

    ev = StorageEvent(
        offset=7, time=1_700_000_000_000_000, kind=EventKind.CLOSE_WRITE, is_dir=False, inode_id=0, pnfsid="",
        path="/bucket/a.h5", parent_id=None, name="a.h5", size=5, detail={"url": "https://s3.example/bucket/a.h5"},
        source="lab-s3", source_key="k",
    )  # fmt: skip
    ce = json.loads(cloudevent_json(ev))
    assert ce["source"] == "/headrace/sources/lab-s3" and ce["subject"] == "/bucket/a.h5"
    assert ce["data"]["source"] == "lab-s3" and ce["data"]["url"] == "https://s3.example/bucket/a.h5"
    assert "pnfsId" not in ce["data"]
    assert cloudevent_json(ev) == cloudevent_sdk_json(ev)
    assert billing.record_kind(ev) is None
    local = StorageEvent(
        offset=8, time=1_700_000_000_000_000, kind=EventKind.CLOSE_WRITE, is_dir=False, inode_id=3,
        pnfsid="0000ABC", path="/a.h5", parent_id=1, name="a.h5", size=5,
    )  # fmt: skip
    assert json.loads(cloudevent_json(local))["source"] == "/headrace/storage"
    assert "source" not in event_data(local) and billing.record_kind(local) == "transfer"


def test_a_remote_event_is_logged_at_its_arrival_with_the_remotes_time_beside() -> None:
    """The log's time is when the event arrived (retention and time lookups need the log in time order): an
    S3 record dated 1970 must not be trimmed at the next retention pass. The remote's own time rides along."""
    from headrace.events.model import EventKind, StorageEvent
    from headrace.events.render import event_data
    from headrace.events.sources.base import RemoteEvent
    from headrace.events.sources.sink import event_row

    received = 1_800_000_000_000_000
    row = event_row("lab-s3", RemoteEvent(key="k", kind=EventKind.CLOSE_WRITE, path="/b/a", time=0), received)
    assert row["time"] == received and json.loads(row["detail"])["remoteTime"] == 0
    ev = StorageEvent(
        offset=1, time=received, kind=EventKind.CLOSE_WRITE, is_dir=False, inode_id=0, pnfsid="", path="/b/a",
        parent_id=None, name="a", detail=json.loads(row["detail"]), source="lab-s3", source_key="k",
    )  # fmt: skip
    assert event_data(ev)["remoteTime"] == "1970-01-01T00:00:00.000Z"


def test_one_controller_at_a_time_runs_a_source_and_a_stale_one_is_fenced(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runners (two controllers) on one database: one takes the source; when its lease has run out the
    other takes it over, and the first one's sink is refused (Fenced) instead of writing beside it."""
    import asyncio

    from headrace.db.engine import Database
    from headrace.events.model import EventKind
    from headrace.events.sources.base import Fenced, RemoteEvent
    from headrace.events.sources.runner import SourceRunner
    from headrace.events.sources.sink import DatabaseSink
    from headrace.events.sources.store import Readers, SourceStore

    monkeypatch.setenv("HEADRACE_SOURCE_KINDS", "fixture=fixture_source")
    monkeypatch.syspath_prepend(str(SUPPORT))
    remote = Remote(tmp_path / "r12")
    db = Database(db_url)
    db.migrate()
    store = SourceStore(db)

    async def scenario() -> None:
        await db.write(store.put, "shared", "fixture", {"root": str(remote.root)}, Readers())
        first, second = SourceRunner(db, "ctl-a", poll=0.05), SourceRunner(db, "ctl-b", poll=0.05)
        await first.tick()
        await second.tick()
        assert list(first.running) == ["shared"] and second.running == {}
        gen_a = first.running["shared"].generation
        remote.emit({"key": "one", "path": "/x/1"})
        while (await db.read(store.get, "shared")).received < 1:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        # ctl-a stops renewing (a hung process): once its lease has passed, ctl-b takes the source over
        await db.write(lambda: _expire(db, "shared"))
        await second.tick()
        assert list(second.running) == ["shared"]
        assert second.running["shared"].generation == gen_a + 1
        stale = DatabaseSink(db, "shared", gen_a)
        with pytest.raises(Fenced):
            await stale.deliver([RemoteEvent(key="two", kind=EventKind.CLOSE_WRITE, path="/x/2")], "2")
        await first.tick()  # its renewal finds the source gone to another: it stops its task
        assert first.running == {}
        remote.emit({"key": "two", "path": "/x/2"})
        while (await db.read(store.get, "shared")).received < 2:  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
        row = await db.read(store.get, "shared")
        assert row is not None and row.holder == "ctl-b" and row.position == "2"
        await first.stop()
        await second.stop()
        row = await db.read(store.get, "shared")
        assert row is not None and row.holder is None  # released at stop: another may take it at once

    try:
        asyncio.run(scenario())
    finally:
        db.close()


def _expire(db: Any, name: str) -> None:
    from sqlalchemy import update

    from headrace.db.schema import sources

    with db.engine.begin() as conn:
        conn.execute(update(sources).where(sources.c.name == name).values(lease_until=0))
