"""Tape with the shipped simulator behind dCache's HSM script interface, on a real server: files in a
directory whose QoS is tape are flushed after they close, evicted under space pressure (least recently used
first, never one not yet flushed or pinned), staged back when read, moved between QoS classes; failed
flushes are retried; a SIGKILL in the middle of a flush loses nothing; every step is an event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from harness import Server, add_user, client, query_dicts
from outbox import head, rows
from tape_harness import calls, faults, locality, mkdir, set_qos, stat, tape_server, wait_for

KB = 1024


@pytest.fixture(scope="module")
def tape(tmp_path_factory: pytest.TempPathFactory) -> Server:
    srv = tape_server(tmp_path_factory.mktemp("tape")).start()
    yield srv  # type: ignore[misc]
    srv.stop()


def tape_events(server: Server, after: int, path: str) -> list[dict[str, object]]:
    out = []
    for r in rows(server.data, after=after, path_prefix=path):
        detail = json.loads(r["detail"]) if r["detail"] else {}
        if r["kind"] == "ATTRIB" and "tape" in detail:
            out.append({"path": r["path"], **detail})
    return out


def test_a_file_in_a_tape_directory_is_flushed_after_it_closes(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/flush", qos="tape")
        start = head(tape.data)
        assert door.put("/flush/a.h5", content=b"a" * 10 * KB).status_code == 201
        assert stat(api, "/flush/a.h5")["targetQos"] == "tape"  # inherited from the directory
        wait_for("the flush", lambda: locality(api, "/flush/a.h5") == "ONLINE_AND_NEARLINE")
        info = stat(api, "/flush/a.h5")
        assert info["currentQos"] == "tape"
        assert any(c.startswith("put ") and c.split()[2] == str(10 * KB) for c in calls(tape))
        stored = tape_events(tape, start, "/flush")
        assert [e["tape"] for e in stored] == ["store"]
        assert str(stored[0]["uri"]).startswith("osm://headrace/?store=T")
        # a file in a disk directory is never flushed
        assert door.put("/on-disk.txt", content=b"d").status_code == 201
        assert locality(api, "/on-disk.txt") == "ONLINE"
        # an overwrite is a new version: on disk only until it is flushed again; the old copy is removed
        puts = len([c for c in calls(tape) if c.startswith("put ")])
        assert door.put("/flush/a.h5", content=b"b" * 5 * KB).status_code == 204
        wait_for("the new version's flush", lambda: len([c for c in calls(tape) if c.startswith("put ")]) > puts)
        wait_for("the old copy's removal", lambda: any(c.startswith("remove ") for c in calls(tape)))
        wait_for("the new locality", lambda: locality(api, "/flush/a.h5") == "ONLINE_AND_NEARLINE")
