"""At least once across a crash: SIGKILL the server with 200 activations queued and running, start it again,
and every activation completes; none is lost, and the duplicates (runs of an activation whose first run the
crash cut off) are counted and reported."""

from __future__ import annotations

import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from harness import Server, query
from headrace.db.engine import Database
from headrace.functions.model import STORAGE_FEED, limits, scaling
from headrace.functions.store import FunctionStore

pytestmark = pytest.mark.slow

FILES = 200


def counts(data: Path) -> dict[str, int]:
    rows = query(data, "SELECT state, count(*) FROM fn_activations WHERE entity = 'action' GROUP BY state")
    return {state: int(n) for state, n in rows}


def test_sigkill_with_200_activations_in_flight_loses_none(fresh_server: Server, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    os.chown(marks, 100_000, 100_000)  # the admin's functions' uid: its sandboxes get this directory bound in
    fresh_server.env_extra["HEADRACE_SANDBOX_BIND"] = f"admin:{marks}"
    srv = fresh_server.start()
    with srv.door() as door:
        assert door.request("MKCOL", "/det").status_code == 201
    srv.stop()
    db = Database(srv.db_url)
    store = FunctionStore(db)
    code = textwrap.dedent(
        f"""
        import os, time
        def main(args):
            open(os.path.join({str(marks)!r}, args["name"] + "." + os.environ["__OW_ACTIVATION_ID"]), "w").close()
            time.sleep(0.05)
            return {{"name": args["name"]}}
        """
    )
    store.put(
        "actions",
        "admin",
        "mark",
        {
            "exec": {"kind": "python:3", "code": code, "main": "main", "binary": False},
            "parameters": [],
            "annotations": [],
            "limits": limits({"timeout": 60_000}),  # a timed-out run on a loaded machine would run twice
            "scaling": scaling({"maxScale": 4, "retries": 2}),
        },
        overwrite=False,
    )
    store.put(
        "triggers",
        "admin",
        "det",
        {"parameters": [], "annotations": [], "feed": STORAGE_FEED, "feed_params": {"path": "/det"}},
        overwrite=False,
    )
    store.put("rules", "admin", "det-mark", {"trigger": "det", "action": "mark", "status": "active"}, overwrite=False)
    db.close()

    srv.start()
    with srv.door() as door, ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: door.put(f"/det/f{i:03d}.h5", content=b"x").status_code, range(FILES)))
    assert statuses == [201] * FILES
    deadline = time.monotonic() + 120
    while counts(srv.data).get("done", 0) < 20:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    before = counts(srv.data)
    srv.kill()
    assert before.get("done", 0) < FILES, before  # the crash interrupted work in progress

    srv.start()
    deadline = time.monotonic() + 300  # only catches a hang: 200 sandboxed activations on a loaded machine
    while counts(srv.data).get("done", 0) < FILES:
        assert time.monotonic() < deadline, counts(srv.data)
        time.sleep(0.1)
    after = counts(srv.data)
    assert after == {"done": FILES}, after  # one activation per event: none lost, none made twice
    runs = [p.name.split(".")[0] for p in marks.iterdir()]
    assert sorted(set(runs)) == [f"f{i:03d}" for i in range(FILES)]
    duplicates = len(runs) - FILES
    print(f"\nstates at the kill: {before}; runs: {len(runs)} for {FILES} activations; duplicates: {duplicates}")
    assert 0 <= duplicates <= 4 + before.get("running", 0)  # only runs the kill cut off ran again
