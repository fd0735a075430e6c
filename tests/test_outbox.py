"""Invariant 1: every namespace change writes exactly its events (dCache inotify semantics), in order,
in the same transaction; failed changes write none."""

from __future__ import annotations

import zlib

from harness import Server
from outbox import head, kinds, rows, wait_rows

UPLOAD = ["CREATE", "OPEN", "MODIFY", "CLOSE_WRITE", "ATTRIB"]


def test_upload_emits_create_open_modify_close_write_attrib(server: Server) -> None:
    with server.door() as door:
        assert door.request("MKCOL", "/ob1").status_code == 201
        start = head(server.data)
        assert door.put("/ob1/run.h5", content=b"x" * 1000).status_code == 201
    evs = rows(server.data, after=start)
    assert kinds(evs) == [(k, "/ob1/run.h5") for k in UPLOAD]
    assert [r["offset"] for r in evs] == list(range(start + 1, start + 6))
    assert all(r["size"] == 1000 and r["name"] == "run.h5" and not r["is_dir"] for r in evs)
    assert len({r["pnfsid"] for r in evs}) == 1
    close = evs[3]
    assert f"{zlib.adler32(b'x' * 1000):08x}" in close["detail"]


def test_overwrite_emits_no_create_and_mkdir_one_create(server: Server) -> None:
    with server.door() as door:
        start = head(server.data)
        assert door.request("MKCOL", "/ob2").status_code == 201
        assert door.put("/ob2/f", content=b"1").status_code == 201
        assert door.put("/ob2/f", content=b"22").status_code == 204
    evs = rows(server.data, after=start)
    assert [r["kind"] for r in evs] == ["CREATE", *UPLOAD, *UPLOAD[1:]]
    assert evs[0]["is_dir"] and evs[0]["path"] == "/ob2"
    assert evs[-1]["size"] == 2


def test_read_and_list_events(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/ob3")
        door.put("/ob3/f", content=b"abc")
        start = head(server.data)
        assert door.get("/ob3/f").content == b"abc"
        assert door.request("PROPFIND", "/ob3", headers={"Depth": "1"}).status_code == 207
        # metadata only: no events
        assert door.head("/ob3/f").status_code == 200
        assert door.request("PROPFIND", "/ob3/f", headers={"Depth": "0"}).status_code == 207
    assert kinds(wait_rows(server.data, after=start, count=5)) == [
        ("OPEN", "/ob3/f"),
        ("ACCESS", "/ob3/f"),
        ("CLOSE_NOWRITE", "/ob3/f"),
        ("OPEN", "/ob3"),
        ("CLOSE_NOWRITE", "/ob3"),
    ]


def test_move_delete_and_attrib_events(server: Server) -> None:
    with server.door() as door, server.api() as api:
        door.request("MKCOL", "/ob4")
        door.request("MKCOL", "/ob4/a")
        door.request("MKCOL", "/ob4/b")
        door.put("/ob4/a/f", content=b"abc")
        start = head(server.data)
        r = door.request("MOVE", "/ob4/a/f", headers={"Destination": f"{server.door_url}/ob4/b/g"})
        assert r.status_code == 201
        assert api.post("/api/v1/namespace/ob4/b/g", json={"action": "chmod", "mode": 0o600}).status_code == 200
        assert door.delete("/ob4/b/g").status_code == 204
    evs = rows(server.data, after=start)
    assert [r["kind"] for r in evs] == ["MOVE", "ATTRIB", "DELETE"]
    move = evs[0]
    assert (move["old_path"], move["path"], move["old_name"], move["name"]) == ("/ob4/a/f", "/ob4/b/g", "f", "g")
    assert move["old_parent_id"] != move["parent_id"] and move["cookie"]
    assert evs[2]["path"] == "/ob4/b/g"


def test_recursive_delete_emits_one_delete_per_object(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/ob5")
        door.request("MKCOL", "/ob5/d")
        for i in range(3):
            door.put(f"/ob5/d/{i}", content=b"z")
        start = head(server.data)
        assert door.delete("/ob5/d").status_code == 204
        assert door.get("/ob5/d/0").status_code == 404
    evs = rows(server.data, after=start)
    assert sorted(kinds(evs)) == sorted([("DELETE", f"/ob5/d/{i}") for i in range(3)] + [("DELETE", "/ob5/d")])
    assert evs[-1]["path"] == "/ob5/d"  # children first


def test_failed_changes_write_no_events(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/ob6")
        door.put("/ob6/f", content=b"abc")
        start = head(server.data)
        assert door.request("MKCOL", "/ob6/missing/x").status_code == 409
        assert door.put("/ob6", content=b"x").status_code == 409
        assert door.put("/ob6/g", content=b"abc", headers={"Digest": "adler32=00000001"}).status_code == 400
        assert door.request("MOVE", "/ob6/f", headers={"Destination": "/ob6/f"}).status_code == 403
        assert door.request("MOVE", "/ob6/nope", headers={"Destination": "/ob6/x"}).status_code == 404
    assert rows(server.data, after=start) == []


def test_copy_emits_upload_events_for_the_copy(server: Server) -> None:
    with server.door() as door:
        door.request("MKCOL", "/ob7")
        door.put("/ob7/f", content=b"data")
        start = head(server.data)
        assert door.request("COPY", "/ob7/f", headers={"Destination": "/ob7/g"}).status_code == 201
        assert door.get("/ob7/g").content == b"data"
    evs = [r for r in rows(server.data, after=start) if r["path"] == "/ob7/g"]
    assert [r["kind"] for r in evs][:5] == UPLOAD


def test_concurrent_uploads_sharing_a_commit_succeed_or_fail_alone(server: Server) -> None:
    """Uploads that finish together share one transaction (group commit) but keep a savepoint each.
    Racing PUTs of one new name with If-None-Match: * all pass the door's early check; all but one must
    then fail at commit, without taking the other uploads of their batch down with them."""
    import concurrent.futures
    import threading

    with server.door() as door:
        door.request("MKCOL", "/ob8")
    start = head(server.data)
    body = b"y" * 300_000  # long enough that the racing uploads overlap
    barrier = threading.Barrier(24)

    def put(target: str) -> int:
        with server.door() as d:
            barrier.wait()
            return d.put(target, content=body, headers={"If-None-Match": "*"}).status_code

    statuses: dict[str, list[int]] = {}
    for round_ in range(3):
        targets = [f"/ob8/race{round_}"] * 12 + [f"/ob8/solo{round_}-{i}" for i in range(12)]
        with concurrent.futures.ThreadPoolExecutor(24) as pool:
            for target, status in zip(targets, pool.map(put, targets), strict=True):
                statuses.setdefault(target, []).append(status)
    for target, got in statuses.items():
        if "race" in target:
            assert sorted(got) == [201] + [412] * 11, (target, got)
        else:
            assert got == [201], (target, got)
    evs = rows(server.data, after=start)
    by_path: dict[str, list[str]] = {}
    for r in evs:
        by_path.setdefault(r["path"], []).append(r["kind"])
    assert by_path == {t: UPLOAD for t in statuses}  # one upload's events per name, none for refusals
