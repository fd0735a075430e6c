"""gfal2 (CERN's grid file access library, the client FTS and gfal-* use) against a real `headrace up` with the
tape simulator, through its WLCG Tape REST API client: `user.status` (archiveinfo), bring-online and its
polling (stage of a file whose disk copy was evicted), archive polling, release by request id and evict
without one (gfal2's placeholder id), the discovery facts gfal2 keeps (`taperestapi.*`), and a missing file.

gfal2 asks `/.well-known/wlcg-tape-rest-api` at the host and port of the file's URL (the door's) and calls
the endpoint it names (the frontend's), with the same bearer token: a non-admin user's macaroon here.

gfal2's Python bindings come from Debian (python3-gfal2, gfal2-plugin-http) for the system's python3; without
them the test is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness import add_user, http, query, wait_for
from tape_harness import locality, tape_server

from .tools import run

pytestmark = pytest.mark.interop

KB = 1024
SYSTEM_PYTHON = "/usr/bin/python3"

SCRIPT = r"""
import gfal2, json, os, sys, time

ctx = gfal2.creat_context()
token = os.environ["TOKEN"]
for prefix in os.environ["PREFIXES"].split():
    ctx.cred_set(prefix, ctx.cred_new("BEARER", token))
base, cold, warm, disk = os.environ["BASE"], os.environ["COLD"], os.environ["WARM"], os.environ["DISK"]
out = {}
out["status"] = {p: ctx.getxattr(base + p, "user.status") for p in (cold, warm, disk)}
out["api"] = [ctx.getxattr(base + disk, "taperestapi." + k) for k in ("version", "uri", "sitename")]
status, request = ctx.bring_online(base + cold, 3600, 60, True)
out["bring_online"] = status
polls = []
for _ in range(600):
    polls.append(ctx.bring_online_poll(base + cold, request))
    if polls[-1] != 0:
        break
    time.sleep(0.1)
out["polls"] = polls
out["staged_status"] = ctx.getxattr(base + cold, "user.status")
out["archive_poll"] = ctx.archive_poll(base + warm)
out["release"] = ctx.release(base + cold, request)
out["evict"] = ctx.release(base + warm, "")
try:
    ctx.getxattr(base + disk + ".missing", "user.status")
    out["missing"] = "found"
except gfal2.GError as exc:
    out["missing"] = str(exc)
try:
    out["disk_archive_poll"] = ctx.archive_poll(base + disk)
except gfal2.GError as exc:
    out["disk_archive_poll"] = str(exc)
out["request"] = request
print(json.dumps(out))
"""


def _gfal2() -> None:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("no system python3")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gfal2"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("gfal2's Python bindings are not installed (apt-get install python3-gfal2 gfal2-plugin-http)")


def test_gfal2_stages_polls_and_releases_through_the_tape_rest_api(tmp_path: Path) -> None:
    _gfal2()
    srv = tape_server(tmp_path, HEADRACE_POOL_MAX_BYTES=str(400 * KB)).start()
    try:
        name, key, uid = add_user(srv, "grid")
        with srv.api() as api:
            for parent, sub in (("/", "grid"), ("/grid", "tape"), ("/grid", "disk")):
                r = api.post(f"/api/v1/namespace{parent}", json={"action": "mkdir", "name": sub})
                assert r.is_success, r.text
            for d in ("/grid", "/grid/tape", "/grid/disk"):
                assert api.post(f"/api/v1/namespace{d}", json={"action": "chown", "uid": uid}).is_success
            assert api.post("/api/v1/namespace/grid/tape", json={"action": "qos", "target": "tape"}).is_success
        r = http(
            "POST",
            f"{srv.door_url}/grid/",
            auth=(name, key),
            headers={"Content-Type": "application/macaroon-request"},
            json={"caveats": ["path:/grid", "activity:DOWNLOAD,UPLOAD,LIST,READ_METADATA,STAGE"], "validity": "PT1H"},
        )
        assert r.status_code == 200, r.text
        token = r.json()["macaroon"]
        bearer = {"Authorization": f"Bearer {token}"}
        files = [f"/grid/tape/f{i:02d}" for i in range(12)]
        with srv.api() as api:
            for f in files:  # 600 KB through a 400 KB pool: the oldest cached copies are evicted
                body = (f.encode() * 4 * KB)[: 50 * KB]
                # a full pool (507) makes room once the eviction after the last flush has run
                put = lambda f=f, b=body: http("PUT", srv.door_url + f, headers=bearer, content=b).status_code  # noqa: E731
                wait_for(lambda put=put: put() == 201, f"{f} stored")
                wait_for(lambda f=f: locality(api, f) == "ONLINE_AND_NEARLINE", f"{f} flushed")
            cold = wait_for(lambda: [f for f in files if locality(api, f) == "NEARLINE"], "an evicted copy")[0]
            warm = files[-1]
            assert http("PUT", srv.door_url + "/grid/disk/d", headers=bearer, content=b"d").status_code == 201
        door = srv.door_url.replace("http://", "dav://")
        env = {
            **os.environ,
            "TOKEN": token,
            "PREFIXES": f"{srv.door_url}/ {srv.api_url}/ {door}/",
            "BASE": door,
            "COLD": cold,
            "WARM": warm,
            "DISK": "/grid/disk/d",
        }
        out = json.loads(run([SYSTEM_PYTHON, "-c", SCRIPT], env=env, timeout=180).stdout.strip().splitlines()[-1])
        assert out["status"] == {cold: "NEARLINE", warm: "ONLINE_AND_NEARLINE", "/grid/disk/d": "ONLINE"}
        assert out["api"][:2] == ["v1", f"{srv.api_url}/api/v1/tape"] and out["api"][2]
        assert out["bring_online"] == 0 and out["polls"][-1] == 1, out
        assert out["staged_status"] == "ONLINE_AND_NEARLINE"
        assert out["archive_poll"] == 1
        assert out["release"] == 0 and out["evict"] == 0
        assert "No such file or directory" in out["missing"]
        assert out["disk_archive_poll"] == 0  # not yet archived (a file on disk only): poll again
        with srv.api() as api:
            # the stage was the user's, through the Tape REST API; its pin is gone after the release
            stage = api.get(f"/api/v1/tape/stage/{out['request']}").json()
            assert [(f["path"], f["state"]) for f in stage["files"]] == [(cold, "COMPLETED")]
        assert query(srv.data, "SELECT owner FROM bulk_requests WHERE id = :r", r=out["request"]) == [("grid",)]
        wait_for(lambda: not query(srv.data, "SELECT id FROM pins WHERE owner = 'grid'"), "the releases")
    finally:
        srv.stop()
