"""dCache's bulk API (`/api/v1/bulk-requests`) on a real server, as ada calls it: PIN/UNPIN of a file, of a
directory (TARGETS: the directory SKIPPED, its files done) and by request id; status, list, cancel, clear;
RELEASE, UPDATE_QOS, DELETE, LOG_TARGET run by the frontend's runner; STAGE of a file only on tape, done by
the pool's tape agent (the tape simulator). Another user sees none of it and stages nothing they cannot read;
a user's targets not yet final are bounded (429); a request survives a restart and is finished after it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness import Server, add_user, client, execute, query_dicts, wait_for
from tape_harness import locality, mkdir, tape_server

KB = 1024
BULK = "/api/v1/bulk-requests"


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the tape simulator, its pool small enough that cached copies of tape files are evicted."""
    srv = tape_server(tmp_path_factory.mktemp("bulk"), HEADRACE_POOL_MAX_BYTES=str(400 * KB)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bob(tape: Server) -> tuple[str, str]:
    name, key, _ = add_user(tape, "bob")
    return name, key


def as_user(srv: Server, user: tuple[str, str]) -> httpx.Client:
    return client(base_url=srv.api_url, auth=user, timeout=60)


def submit(api: httpx.Client, activity: str, targets: list[str], **more: Any) -> str:
    r = api.post(BULK, json={"activity": activity, "target": targets, **more})
    assert r.status_code == 201, r.text
    url = r.headers["request-url"]
    assert url.startswith(str(api.base_url).rstrip("/") + BULK + "/")
    return url.rsplit("/", 1)[1]


def info(api: httpx.Client, rid: str) -> dict[str, Any]:
    r = api.get(f"{BULK}/{rid}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def finished(api: httpx.Client, rid: str) -> dict[str, Any]:
    return wait_for(lambda: (d := info(api, rid))["status"] in ("COMPLETED", "CANCELLED") and d, f"request {rid}")


def states(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(t["target"], t["state"]) for t in data["targets"]]


def put_files(door: httpx.Client, paths: list[str], size: int = KB) -> None:
    for p in paths:
        assert door.put(p, content=p.encode() * (size // len(p) + 1)).status_code in (201, 204)


def pins_of(srv: Server, name: str) -> list[dict[str, Any]]:
    return query_dicts(
        srv.data,
        "SELECT p.owner, p.request_id, p.expires FROM pins p JOIN inodes i ON i.id = p.inode_id WHERE i.name = :n",
        n=name,
    )


def test_pin_and_unpin_a_file_and_a_directory_as_ada_does(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/ada")
        put_files(door, ["/ada/a.h5", "/ada/b.h5"])
        # ada --stage FILE: PIN with its lifetime in ada's form ("7" DAYS), expand NONE
        t0 = int(time.time() * 1000)
        rid = submit(api, "PIN", ["/ada/a.h5"], arguments={"lifetime": "7", "lifetimeUnit": "DAYS"},
                     expand_directories="NONE")  # fmt: skip
        done = finished(api, rid)
        assert done["status"] == "COMPLETED" and done["uid"] == rid
        assert states(done) == [("/ada/a.h5", "COMPLETED")]
        assert done["arrivedAt"] <= done["startedAt"] <= done["lastModified"]
        target = done["targets"][0]
        assert target["submittedAt"] <= target["startedAt"] <= target["finishedAt"]
        (pin,) = pins_of(tape, "a.h5")
        assert pin["owner"] == "admin" and pin["request_id"] == rid
        assert abs(pin["expires"] - (t0 + 7 * 86_400_000)) < 120_000

        # ada --stage DIR: expand TARGETS, the directory itself SKIPPED first, then its files
        rdir = submit(api, "PIN", ["/ada"], arguments={"lifetime": "1", "lifetimeUnit": "HOURS"},
                      expand_directories="TARGETS")  # fmt: skip
        done = finished(api, rdir)
        assert states(done) == [("/ada", "SKIPPED"), ("/ada/a.h5", "COMPLETED"), ("/ada/b.h5", "COMPLETED")]
        assert len(pins_of(tape, "a.h5")) == 2

        # ada --unstage FILE --request-id: only that request's pin goes
        runpin = submit(api, "UNPIN", ["/ada/a.h5"], arguments={"id": rdir}, expand_directories="NONE")
        assert states(finished(api, runpin)) == [("/ada/a.h5", "COMPLETED")]
        assert [p["request_id"] for p in pins_of(tape, "a.h5")] == [rid]
        # ada --unstage FILE: all of the caller's pins of it
        assert finished(api, submit(api, "UNPIN", ["/ada/a.h5"], arguments={}))["status"] == "COMPLETED"
        assert pins_of(tape, "a.h5") == []

        # ada --delete-request, then --stat-request finds nothing (a JSON 404 without "uid")
        assert api.delete(f"{BULK}/{rid}").status_code == 204
        gone = api.get(f"{BULK}/{rid}")
        assert gone.status_code == 404 and gone.json()["status"] == "404" and "uid" not in gone.json()


def test_a_missing_target_fails_at_once_and_the_others_go_ahead(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/miss")
        put_files(door, ["/miss/here"])
        rid = submit(api, "PIN", ["/miss/nothere", "/miss/here", "/miss/here"])  # duplicates count once
        done = finished(api, rid)
        assert states(done) == [("/miss/nothere", "FAILED"), ("/miss/here", "COMPLETED")]
        failed = done["targets"][0]
        assert failed["errorType"] == "FileNotFoundCacheException"
        assert "No such file or directory" in failed["errorMessage"]


def test_update_qos_delete_log_target_and_release(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/acts")
        put_files(door, ["/acts/q1", "/acts/q2", "/acts/del", "/acts/log"])
        rid = submit(api, "UPDATE_QOS", ["/acts/q1", "/acts/q2"], arguments={"targetQos": "disk+tape"})
        assert [s for _, s in states(finished(api, rid))] == ["COMPLETED", "COMPLETED"]
        wait_for(lambda: locality(api, "/acts/q1") == "ONLINE_AND_NEARLINE", "q1 flushed after its QoS change")
        bad = api.post(BULK, json={"activity": "UPDATE_QOS", "target": ["/acts/q1"], "arguments": {"targetQos": "x"}})
        assert bad.status_code == 400 and "targetQos" in bad.json()["detail"]

        rid = submit(api, "DELETE", ["/acts/del"])
        assert states(finished(api, rid)) == [("/acts/del", "COMPLETED")]
        assert api.get("/api/v1/namespace/acts/del").status_code == 404

        assert states(finished(api, submit(api, "LOG_TARGET", ["/acts/log"]))) == [("/acts/log", "COMPLETED")]

        pin = submit(api, "PIN", ["/acts/log"])
        finished(api, pin)
        assert len(pins_of(tape, "log")) == 1
        release = submit(api, "RELEASE", ["/acts/log"], arguments={"id": pin})
        assert states(finished(api, release)) == [("/acts/log", "COMPLETED")]
        assert pins_of(tape, "log") == []


def test_stage_of_a_file_only_on_tape_is_done_by_the_tape_agent(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/cold", qos="tape")
        files = [f"/cold/f{i}" for i in range(12)]
        for f in files:  # 720 KB through a 400 KB pool: cached copies of the oldest are evicted
            put_files(door, [f], size=60 * KB)
            wait_for(lambda f=f: locality(api, f) == "ONLINE_AND_NEARLINE", f"{f} flushed")
        cold = wait_for(
            lambda: [f for f in files if locality(api, f) == "NEARLINE"], "a cached copy evicted", timeout=120
        )
        path = cold[0]
        rid = submit(api, "STAGE", [path], arguments={"diskLifetime": "PT2H"})
        assert (
            query_dicts(tape.data, "SELECT arguments FROM bulk_requests WHERE id = :r", r=rid)[0]["arguments"]
            == '{"diskLifetime":"PT2H","pin_ms":7200000}'
        )
        done = finished(api, rid)
        assert states(done) == [(path, "COMPLETED")], done
        assert locality(api, path) == "ONLINE_AND_NEARLINE"
        (pin,) = pins_of(tape, path.rsplit("/", 1)[1])
        assert pin["request_id"] == rid

        # a PIN of a file only on tape is a stage too (ada --stage)
        again = wait_for(
            lambda: [f for f in files if f != path and locality(api, f) == "NEARLINE"], "another evicted copy"
        )
        rid = submit(api, "PIN", [again[0]], arguments={"lifetime": 60, "lifetimeUnit": "SECONDS"})
        assert query_dicts(tape.data, "SELECT activity FROM bulk_targets WHERE request_id = :r", r=rid) == [
            {"activity": "STAGE"}
        ]
        assert states(finished(api, rid)) == [(again[0], "COMPLETED")]


def test_delete_of_a_tree_removes_directories_after_what_they_hold(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/tree")
        mkdir(api, "/tree/sub")
        mkdir(api, "/tree/keep")
        put_files(door, ["/tree/a", "/tree/sub/b", "/tree/keep/c"])
        # expand NONE on a directory with entries: it cannot go (dCache: not empty)
        done = finished(api, submit(api, "DELETE", ["/tree/sub"]))
        assert states(done) == [("/tree/sub", "FAILED")] and "not empty" in done["targets"][0]["errorMessage"]
        # skipDirs: the files go, the directories stay
        done = finished(api, submit(api, "DELETE", ["/tree/keep"], expand_directories="ALL",
                                    arguments={"skipDirs": "true"}))  # fmt: skip
        assert states(done) == [("/tree/keep", "SKIPPED"), ("/tree/keep/c", "COMPLETED")]
        assert api.get("/api/v1/namespace/tree/keep").status_code == 200
        # ALL: files, then each directory after what it holds
        done = finished(api, submit(api, "DELETE", ["/tree"], expand_directories="ALL"))
        assert states(done) == [
            ("/tree/a", "COMPLETED"),
            ("/tree/keep", "COMPLETED"),
            ("/tree/sub/b", "COMPLETED"),
            ("/tree/sub", "COMPLETED"),
            ("/tree", "COMPLETED"),
        ]
        assert api.get("/api/v1/namespace/tree").status_code == 404


def test_another_user_neither_sees_nor_stages_what_is_not_theirs(tape: Server, bob: tuple[str, str]) -> None:
    with tape.api() as api, tape.door() as door, as_user(tape, bob) as other:
        mkdir(api, "/priv")
        put_files(door, ["/priv/secret", "/priv/open"])
        assert api.post("/api/v1/namespace/priv/secret", json={"action": "chmod", "mode": 0o600}).is_success
        mine = submit(api, "PIN", ["/priv/open"])
        finished(api, mine)
        # admin's request is absent for bob: status, cancel, clear, list
        for r in (
            other.get(f"{BULK}/{mine}"),
            other.patch(f"{BULK}/{mine}", json={"action": "cancel"}),
            other.delete(f"{BULK}/{mine}"),
        ):
            assert r.status_code == 404 and r.json()["title"] == "Not Found", r.text
        assert mine not in [r["uid"] for r in other.get(BULK).json()]
        assert mine in [r["uid"] for r in api.get(BULK).json()]  # the admin sees all
        # bob's stage of a file he cannot read: that target FAILED, the readable one pinned for bob
        rid = submit(other, "PIN", ["/priv/secret", "/priv/open"])
        done = finished(other, rid)
        assert states(done) == [("/priv/secret", "FAILED"), ("/priv/open", "COMPLETED")]
        assert done["targets"][0]["errorType"] == "PermissionDeniedCacheException"
        assert sorted(p["owner"] for p in pins_of(tape, "open")) == ["admin", "bob"]
        # bob cannot delete or change the QoS of admin's file through a bulk request either
        rid = submit(other, "DELETE", ["/priv/open"])
        assert [t["errorType"] for t in finished(other, rid)["targets"]] == ["PermissionDeniedCacheException"]
        assert api.get("/api/v1/namespace/priv/open").status_code == 200
        rid = submit(other, "UPDATE_QOS", ["/priv/open"], arguments={"targetQos": "tape"})
        assert finished(other, rid)["targets"][0]["state"] == "FAILED"
        # bob's own listing: only his, filtered by status
        listed = other.get(BULK, params={"status": "completed"}).json()
        assert listed and all(r["owner"] == "bob" and r["status"] == "COMPLETED" for r in listed)
        # the admin clears bob's request
        assert api.delete(f"{BULK}/{rid}").status_code == 204
        assert other.get(f"{BULK}/{rid}").status_code == 404


def test_bad_requests_are_precise_json(tape: Server) -> None:
    with tape.api() as api:
        cases = [
            ({"activity": "PIN"}, "no targets"),
            ({"activity": "FLY", "target": ["/x"]}, "Unknown activity"),
            ({"activity": "PIN", "target": ["/x"], "expand_directories": "deep"}, "expand_directories"),
            ({"activity": "PIN", "target": ["/x"], "surprise": 1}, "unsupported arguments"),
            ({"activity": "PIN", "target": ["/x"], "expandDirectories": "none", "expand_directories": "all"}, "more"),
            ({"activity": "PIN", "target": ["/x"], "arguments": {"lifetime": "7", "lifetimeUnit": "YEARS"}}, "Unit"),
        ]
        for body, words in cases:
            r = api.post(BULK, json=body)
            assert r.status_code == 400 and words in r.json()["detail"], (body, r.text)
        assert api.patch(f"{BULK}/nope", json={"action": "cancel"}).status_code == 404
        r = api.patch(f"{BULK}/nope", json={"action": "pause"})
        assert r.status_code == 400 and "not supported" in r.json()["detail"]
        assert api.post(BULK, content=b"[]", headers={"Content-Type": "application/json"}).status_code == 400
        anonymous = httpx.post(f"{tape.api_url}{BULK}", json={"activity": "PIN", "target": ["/x"]})
        assert anonymous.status_code == 401


def test_cancel_and_clear_while_staging_waits(server: Server) -> None:
    """On a server without tape, a STAGE target waits (CREATED): cancel and clear act on it."""
    with server.api() as api, server.door() as door:
        put_files(door, ["/wait1", "/wait2", "/wait3"])
        rid = submit(api, "STAGE", ["/wait1", "/wait2", "/wait3"])
        assert {s for _, s in states(info(api, rid))} == {"CREATED"}
        r = api.patch(f"{BULK}/{rid}", json={"action": "cancel", "paths": ["/wait2"]})
        assert r.status_code == 200, r.text
        assert states(info(api, rid)) == [("/wait1", "CREATED"), ("/wait2", "CANCELLED"), ("/wait3", "CREATED")]
        r = api.patch(f"{BULK}/{rid}", json={"action": "cancel", "paths": ["/elsewhere"]})
        assert r.status_code == 400 and "/elsewhere" in r.json()["detail"]
        r = api.delete(f"{BULK}/{rid}")  # still running: not cleared without cancelIfRunning
        assert r.status_code == 400 and "cancelIfRunning" in r.json()["detail"]
        assert api.patch(f"{BULK}/{rid}", json={"action": "cancel"}).status_code == 200
        done = info(api, rid)
        assert done["status"] == "CANCELLED" and {s for _, s in states(done)} == {"CANCELLED"}
        assert api.delete(f"{BULK}/{rid}").status_code == 204
        other = submit(api, "STAGE", ["/wait1"])
        assert api.delete(f"{BULK}/{other}", params={"cancelIfRunning": "true"}).status_code == 204
        assert api.get(f"{BULK}/{other}").status_code == 404


def test_a_request_survives_a_restart_and_the_limit_holds(tmp_path: Path) -> None:
    """With the runner off (HEADRACE_BULK_RUNNER=0) requests wait; the limit on a user's targets not yet final
    holds (429 with a JSON body, nothing made); after a restart with the runner on, the requests and their
    targets are there and are finished, a target the runner had begun before a crash included."""
    srv = Server(data=tmp_path / "data", cli_config=tmp_path / "cli.json",
                 env_extra={"HEADRACE_BULK_RUNNER": "0", "HEADRACE_BULK_MAX_ACTIVE": "3"})  # fmt: skip
    srv.start()
    try:
        with srv.api() as api, srv.door() as door:
            put_files(door, ["/r1", "/r2", "/r3"])
            first = submit(api, "PIN", ["/r1", "/r2"])
            second = submit(api, "LOG_TARGET", ["/r3", "/absent"])  # the absent one FAILED: not active
            over = api.post(BULK, json={"activity": "PIN", "target": ["/r1"]})
            assert over.status_code == 429, over.text
            assert over.json()["title"] == "Too Many Requests" and "limit of 3" in over.json()["detail"]
            assert len(api.get(BULK).json()) == 2
            assert info(api, first)["status"] == "QUEUED"
        srv.stop()
        # as if the runner had claimed a target and the process had died before it finished it
        execute(srv.data, "UPDATE bulk_targets SET state = 'RUNNING', claimed_by = :me, lease = :far "
                "WHERE path = '/r2'", [{"me": f"frontend-127.0.0.1:{srv.api_port}", "far": 2**50}])  # fmt: skip
        srv.env_extra["HEADRACE_BULK_RUNNER"] = "1"
        srv.start()
        with srv.api() as api:
            assert states(finished(api, first)) == [("/r1", "COMPLETED"), ("/r2", "COMPLETED")]
            assert states(finished(api, second)) == [("/r3", "COMPLETED"), ("/absent", "FAILED")]
            assert len(pins_of(srv, "r2")) == 1
            assert api.post(BULK, json={"activity": "PIN", "target": ["/r1"]}).status_code == 201
    finally:
        srv.stop()


def test_macaroons_with_activity_caveats(tape: Server) -> None:
    """A token allowing STAGE stages (as ada's macaroons with storage.stage do), through its root view; one
    without STAGE, or for other paths, gets those targets FAILED with a permission error."""
    from test_tokens import mint

    with tape.api() as api, tape.door() as door:
        mkdir(api, "/tok")
        mkdir(api, "/tok/in")
        put_files(door, ["/tok/in/f", "/tok/out"])
    stager = mint(tape, "/", ["root:/tok", "path:/tok/in", "activity:STAGE,READ_METADATA,LIST"])
    with client(base_url=tape.api_url, headers={"Authorization": f"Bearer {stager}"}, timeout=60) as tok:
        rid = submit(tok, "PIN", ["/in/f", "/out"])
        done = finished(tok, rid)
        # paths as the token names them; /out (= /tok/out) is outside the token's paths
        assert states(done) == [("/in/f", "COMPLETED"), ("/out", "FAILED")]
        assert done["targets"][1]["errorType"] == "PermissionDeniedCacheException"
    reader = mint(tape, "/", ["activity:DOWNLOAD,READ_METADATA,LIST"])
    with client(base_url=tape.api_url, headers={"Authorization": f"Bearer {reader}"}, timeout=60) as tok:
        done = finished(tok, submit(tok, "PIN", ["/tok/in/f"]))
        assert done["targets"][0]["state"] == "FAILED"
        assert "does not allow STAGE" in done["targets"][0]["errorMessage"]


def test_cancel_on_failure_and_clear_on_failure(server: Server) -> None:
    with server.api() as api, server.door() as door:
        put_files(door, ["/cof1", "/cof2"])
        # a stage waits on a server without tape; the missing target failed at once: the rest is cancelled
        rid = submit(api, "STAGE", ["/cof1", "/cof-missing", "/cof2"], cancelOnFailure=True)
        done = finished(api, rid)
        assert done["status"] == "CANCELLED"
        assert states(done) == [("/cof1", "CANCELLED"), ("/cof-missing", "FAILED"), ("/cof2", "CANCELLED")]
        # without it the others wait
        rid = submit(api, "STAGE", ["/cof1", "/cof-missing"])
        assert states(info(api, rid)) == [("/cof1", "CREATED"), ("/cof-missing", "FAILED")]
        assert api.delete(f"{BULK}/{rid}", params={"cancelIfRunning": "true"}).status_code == 204
        # clear_on_failure: a request that completed with a failure is forgotten; clear_on_success keeps it then
        gone = submit(api, "LOG_TARGET", ["/cof1", "/cof-missing"], clear_on_failure=True)
        wait_for(lambda: api.get(f"{BULK}/{gone}").status_code == 404, "the failed request cleared")
        kept = submit(api, "LOG_TARGET", ["/cof1", "/cof-missing"], clearOnSuccess=True)
        assert finished(api, kept)["status"] == "COMPLETED"
        ok = submit(api, "LOG_TARGET", ["/cof1"], clearOnSuccess=True)
        wait_for(lambda: api.get(f"{BULK}/{ok}").status_code == 404, "the successful request cleared")
