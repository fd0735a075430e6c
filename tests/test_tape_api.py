"""The WLCG Tape REST API v1 on a real server with the tape simulator, as gfal2 (gfal-bringonline,
gfal-archivepoll, gfal-evict, `gfal-xattr FILE user.status`) and FTS call it: discovery on the frontend and
on the door, stage and its polling, cancel, delete, release, archiveinfo; another user sees none of it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, http, query_dicts, wait_for
from tape_harness import locality, mkdir, tape_server

KB = 1024
TAPE = "/api/v1/tape"


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = tape_server(tmp_path_factory.mktemp("tapeapi"), HEADRACE_POOL_MAX_BYTES=str(400 * KB)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def cold(tape: Server) -> list[str]:
    """Files in a tape directory, flushed, the oldest of them evicted (NEARLINE): 720 KB through 400 KB."""
    files = [f"/cold/f{i}" for i in range(12)]
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/cold", qos="tape")
        for f in files:
            assert door.put(f, content=f.encode() * 8 * KB).status_code == 201
            wait_for(lambda f=f: locality(api, f) == "ONLINE_AND_NEARLINE", f"{f} flushed")
        return wait_for(lambda: [f for f in files if locality(api, f) == "NEARLINE"], "evicted copies")


@pytest.fixture(scope="module")
def bob(tape: Server) -> tuple[str, str]:
    name, key, _ = add_user(tape, "bob")
    return name, key


def stage(api: httpx.Client, files: list[dict[str, Any]]) -> str:
    r = api.post(f"{TAPE}/stage", json={"files": files})
    assert r.status_code == 201, r.text
    rid: str = r.json()["requestId"]
    assert r.headers["location"].endswith(f"{TAPE}/stage/{rid}")
    return rid


def poll(api: httpx.Client, rid: str) -> dict[str, Any]:
    r = api.get(f"{TAPE}/stage/{rid}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    assert data["id"] == rid  # gfal2 checks it
    return data


def by_path(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in data["files"]}


def archiveinfo(api: httpx.Client, paths: list[str]) -> dict[str, dict[str, Any]]:
    r = api.post(f"{TAPE}/archiveinfo", json={"paths": paths})
    assert r.status_code == 200, r.text
    return {i["path"]: i for i in r.json()}


def test_discovery_on_the_frontend_and_on_the_door(tape: Server) -> None:
    for base in (tape.api_url, tape.door_url):  # gfal2 asks the file URL's host and port: the door's
        r = http("GET", f"{base}/.well-known/wlcg-tape-rest-api")  # no credentials, as dCache
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["sitename"]
        assert doc["endpoints"] == [{"uri": f"{tape.api_url}{TAPE}", "version": "v1", "metadata": {}}]


def test_archiveinfo_gives_each_path_its_locality_or_an_error(tape: Server, cold: list[str]) -> None:
    with tape.api() as api, tape.door() as door:
        assert door.put("/plain.txt", content=b"x").status_code == 201
        flushed = wait_for(lambda: [f"/cold/f{i}" for i in range(12) if locality(api, f"/cold/f{i}") != "NEARLINE"],
                           "a file still on disk")  # fmt: skip
        got = archiveinfo(api, ["/plain.txt", cold[0], flushed[-1], "/cold", "/nothing"])
        assert got["/plain.txt"] == {"path": "/plain.txt", "locality": "DISK"}
        assert got[cold[0]]["locality"] == "TAPE"
        assert got[flushed[-1]]["locality"] == "DISK_AND_TAPE"
        assert got["/cold"]["locality"] == "NONE"
        assert "locality" not in got["/nothing"] and "No such file" in got["/nothing"]["error"]
        r = api.post(f"{TAPE}/archiveinfo", json={"files": []})
        assert r.status_code == 400 and r.json()["detail"] == "request had no paths."


def test_stage_poll_release_as_gfal2_does(tape: Server, cold: list[str]) -> None:
    path = cold[0]
    with tape.api() as api:
        rid = stage(api, [{"path": path, "diskLifetime": "PT1H"}, {"path": "/cold/none"}])
        assert query_dicts(tape.data, "SELECT api, arguments FROM bulk_requests WHERE id = :r", r=rid) == [
            {"api": "tape", "arguments": '{"pin_ms":3600000}'}
        ]
        done = wait_for(lambda: (d := poll(api, rid)).get("completedAt") and d, "the stage request")
        files = by_path(done)
        assert files[path]["state"] == "COMPLETED" and "error" not in files[path]  # gfal2: "error" = failure
        assert files["/cold/none"]["state"] == "FAILED" and "No such file" in files["/cold/none"]["error"]
        assert done["createdAt"] <= done["startedAt"] <= done["completedAt"]
        assert archiveinfo(api, [path])[path]["locality"] == "DISK_AND_TAPE"
        pinned = query_dicts(tape.data, "SELECT p.request_id FROM pins p JOIN inodes i ON i.id = p.inode_id "
                             "WHERE i.pnfsid = (SELECT pnfsid FROM bulk_targets WHERE request_id = :r AND "
                             "state = 'COMPLETED')", r=rid)  # fmt: skip
        assert pinned == [{"request_id": rid}]
        # gfal-evict: POST /release/{id} with the paths; the pin of that request goes
        r = api.post(f"{TAPE}/release/{rid}", json={"paths": [path]})
        assert r.status_code == 200, r.text
        wait_for(lambda: not query_dicts(tape.data, "SELECT id FROM pins WHERE request_id = :r", r=rid), "the release")
        # the release request itself is cleared once it succeeded (dCache's ephemeral request)
        wait_for(lambda: not query_dicts(tape.data, "SELECT id FROM bulk_requests WHERE activity = 'RELEASE'"),
                 "the release request cleared")  # fmt: skip
        # DELETE forgets the stage request
        assert api.delete(f"{TAPE}/stage/{rid}").status_code == 200
        assert api.get(f"{TAPE}/stage/{rid}").status_code == 404


def test_evict_without_a_request_id_releases_the_callers_pins(tape: Server, cold: list[str]) -> None:
    path = cold[-1]
    with tape.api() as api:
        rid = stage(api, [{"path": path}])
        wait_for(lambda: poll(api, rid).get("completedAt"), "the stage")
        assert query_dicts(tape.data, "SELECT request_id FROM pins WHERE request_id = :r", r=rid)
        # gfal-evict without a token sends a placeholder id
        assert api.post(f"{TAPE}/release/gfal2-placeholder-id", json={"paths": [path]}).status_code == 200
        wait_for(lambda: not query_dicts(tape.data, "SELECT id FROM pins WHERE request_id = :r", r=rid), "release")


def test_another_user_cannot_see_or_stage_what_is_not_theirs(
    tape: Server, cold: list[str], bob: tuple[str, str]
) -> None:
    with tape.api() as api, tape.door() as door, client(base_url=tape.api_url, auth=bob, timeout=60) as other:
        assert api.post("/api/v1/namespace/", json={"action": "mkdir", "name": "private"}).is_success
        assert door.put("/private/f", content=b"p").status_code == 201
        assert api.post("/api/v1/namespace/private", json={"action": "chmod", "mode": 0o700}).is_success
        rid = stage(api, [{"path": "/private/f"}])
        for r in (
            other.get(f"{TAPE}/stage/{rid}"),
            other.post(f"{TAPE}/stage/{rid}/cancel", json={"paths": ["/private/f"]}),
            other.delete(f"{TAPE}/stage/{rid}"),
        ):
            assert r.status_code == 404 and r.json()["title"] == "Not Found", r.text
        mine = stage(other, [{"path": "/private/f"}, {"path": cold[0]}])
        done = wait_for(lambda: (d := poll(other, mine)).get("completedAt") and d, "bob's stage")
        files = by_path(done)
        assert files["/private/f"]["state"] == "FAILED" and "Permission denied" in files["/private/f"]["error"]
        assert files[cold[0]]["state"] == "COMPLETED"
        info = archiveinfo(other, ["/private/f"])["/private/f"]
        assert "locality" not in info and "Permission denied" in info["error"]


def test_cancel_a_waiting_stage_and_bad_requests(server: Server) -> None:
    """On a server without tape a stage waits (SUBMITTED): cancel acts on the files named."""
    with server.api() as api, server.door() as door:
        for p in ("/s1", "/s2"):
            assert door.put(p, content=b"s").status_code == 201
        rid = stage(api, [{"path": "/s1"}, {"path": "/s2"}])
        assert {f["state"] for f in poll(api, rid)["files"]} == {"SUBMITTED"}
        r = api.post(f"{TAPE}/stage/{rid}/cancel", json={"paths": ["/s1"]})
        assert r.status_code == 200, r.text
        files = by_path(poll(api, rid))
        assert files["/s1"]["state"] == "CANCELLED" and files["/s2"]["state"] == "SUBMITTED"
        r = api.post(f"{TAPE}/stage/{rid}/cancel", json={"paths": ["/other"]})
        assert r.status_code == 400 and "/other" in r.json()["detail"]
        assert api.delete(f"{TAPE}/stage/{rid}").status_code == 200  # cancels what still runs, then forgets
        assert api.get(f"{TAPE}/stage/{rid}").status_code == 404
        for body, words in (
            ({"files": []}, "no files"),
            ({"files": [{"path": "/s1"}], "priority": 1}, "unrecognized payload"),
            ({"files": [{"name": "/s1"}]}, "has no path"),
            ({"files": [{"path": "/s1", "diskLifetime": "forever"}]}, "ISO-8601"),
        ):
            r = api.post(f"{TAPE}/stage", json=body)
            assert r.status_code == 400 and words in r.json()["detail"], (body, r.text)
        # a bulk request that is no stage is not one of the Tape API's
        r = api.post("/api/v1/bulk-requests", json={"activity": "LOG_TARGET", "target": ["/s1"]})
        bulk_id = r.headers["request-url"].rsplit("/", 1)[1]
        assert api.get(f"{TAPE}/stage/{bulk_id}").status_code == 404
        assert httpx.post(f"{server.api_url}{TAPE}/stage", json={"files": [{"path": "/s1"}]}).status_code == 401
