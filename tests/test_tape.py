"""Tape with the shipped simulator behind dCache's HSM script interface, on a real server: files in a
directory whose QoS is tape are flushed after they close, evicted under space pressure (least recently used
first, never one not yet flushed or pinned), staged back when read, moved between QoS classes; failed
flushes are retried; a SIGKILL in the middle of a flush loses nothing; every step is an event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from harness import Server, add_user, client, headrace_command, query_dicts, wait_for
from kafka_harness import KafkaBroker, read_topic
from outbox import head, rows
from pool_harness import PoolProcess, pool_db_url
from tape_harness import FAST, calls, faults, locality, mkdir, set_qos, stat, tape_server

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
        wait_for(lambda: locality(api, "/flush/a.h5") == "ONLINE_AND_NEARLINE", "the flush")
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
        wait_for(lambda: len([c for c in calls(tape) if c.startswith("put ")]) > puts, "the new version's flush")
        wait_for(lambda: any(c.startswith("remove ") for c in calls(tape)), "the old copy's removal")
        wait_for(lambda: locality(api, "/flush/a.h5") == "ONLINE_AND_NEARLINE", "the new locality")


def test_cached_copies_are_evicted_least_recently_used_first_and_staged_back_when_read(tmp_path: Path) -> None:
    srv = tape_server(tmp_path, HEADRACE_POOL_MAX_BYTES=str(200 * KB)).start()
    try:
        with srv.api() as api, srv.door() as door:
            mkdir(api, "/raw", qos="tape")
            data = {f"/raw/f{i}": bytes([i]) * 20 * KB for i in range(8)}
            for path, body in data.items():
                assert door.put(path, content=body).status_code == 201
            for path in data:
                wait_for(lambda p=path: locality(api, p) == "ONLINE_AND_NEARLINE", f"{path} on tape")
            assert door.get("/raw/f0").content == data["/raw/f0"]  # f0 is now the most recently used
            wait_for(lambda: most_recent(srv) == "f0", "f0's read recorded")
            start = head(srv.data)
            for i in (8, 9):  # 200 KB: past the 90 % mark, so cached copies go, down to 80 %
                data[f"/raw/f{i}"] = bytes([i]) * 20 * KB
                assert door.put(f"/raw/f{i}", content=data[f"/raw/f{i}"]).status_code == 201
            evicted = wait_for(
                lambda: [e["path"] for e in tape_events(srv, start, "/raw") if e["tape"] == "evict"], "an eviction"
            )
            assert "/raw/f0" not in evicted
            assert locality(api, evicted[0]) == "NEARLINE"
            assert stat(api, evicted[0])["currentQos"] == "tape"
            # a read stages it back, then answers with its bytes
            start = head(srv.data)
            r = door.get(evicted[0])
            assert r.status_code == 200 and r.content == data[evicted[0]]
            assert locality(api, evicted[0]) == "ONLINE_AND_NEARLINE"
            assert any(e["tape"] == "restore" and e["path"] == evicted[0] for e in tape_events(srv, start, "/raw"))
            assert any(c.startswith("get ") for c in calls(srv))
            # HEAD does not stage
            for path in data:
                assert door.head(path).status_code == 200
    finally:
        srv.stop()


def most_recent(srv: Server) -> str:
    rows = query_dicts(srv.data, "SELECT name, accessed FROM inodes WHERE accessed IS NOT NULL ORDER BY accessed DESC")
    return str(rows[0]["name"]) if rows else ""


def test_a_failed_flush_is_retried_and_counted(tmp_path: Path) -> None:
    srv = tape_server(tmp_path)
    faults(srv, put=2, rc=31, message="no drive free")
    srv.start()
    try:
        with srv.api() as api, srv.door() as door:
            mkdir(api, "/retry", qos="tape")
            assert door.put("/retry/x", content=b"x" * 100).status_code == 201
            # The file's stat shows the failed flush until a retry succeeds (the backoff keeps it >= 3 s).
            wait_for(lambda: "flushError" in stat(api, "/retry/x"), "a failed flush shown in the file's stat")
            failure = stat(api, "/retry/x")["flushError"]
            assert "no drive free" in failure["error"] and failure["attempts"] >= 1 and failure["notBefore"] > 0
            wait_for(lambda: locality(api, "/retry/x") == "ONLINE_AND_NEARLINE", "the flush after two failures")
            assert query_dicts(srv.data, "SELECT * FROM flush_failures") == []
            metrics = api.get("/metrics").text
            assert 'headrace_tape_operations_total{op="store",outcome="failed"} 2.0' in metrics
    finally:
        srv.stop()


def _simulator_puts() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "headrace.tape.simulator put"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_sigkill_in_the_middle_of_a_flush_loses_nothing(tmp_path: Path) -> None:
    srv = tape_server(tmp_path)
    faults(srv, put_sleep=60)  # every put hangs before it copies
    srv.start()
    body = os.urandom(64 * KB)
    with srv.api() as api, srv.door() as door:
        mkdir(api, "/crash", qos="tape")
        assert door.put("/crash/run.h5", content=body).status_code == 201
    wait_for(_simulator_puts, "the flush to start")
    srv.kill()
    for pid in _simulator_puts():  # the whole machine went down
        os.kill(pid, signal.SIGKILL)
    faults(srv)  # the tape system is back
    srv.start()
    try:
        with srv.api() as api, srv.door() as door:
            assert locality(api, "/crash/run.h5") in ("ONLINE", "ONLINE_AND_NEARLINE")  # never lost
            assert door.get("/crash/run.h5").content == body
            wait_for(lambda: locality(api, "/crash/run.h5") == "ONLINE_AND_NEARLINE", "the flush after the restart")
            assert door.get("/crash/run.h5").content == body
    finally:
        srv.stop()


def test_qos_changes_move_the_data(tape: Server) -> None:
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/moves")
        assert door.put("/moves/m", content=b"m" * 1000).status_code == 201
        assert locality(api, "/moves/m") == "ONLINE"
        assert set_qos(api, "/moves/m", "disk+tape").is_success
        info = stat(api, "/moves/m")
        assert info["targetQos"] == "disk+tape"
        wait_for(lambda: stat(api, "/moves/m")["currentQos"] == "disk+tape", "disk+tape")
        assert locality(api, "/moves/m") == "ONLINE_AND_NEARLINE"
        removes = len([c for c in calls(tape) if c.startswith("remove ")])
        assert set_qos(api, "/moves/m", "disk").is_success
        wait_for(lambda: locality(api, "/moves/m") == "ONLINE", "back to disk only")
        wait_for(lambda: len([c for c in calls(tape) if c.startswith("remove ")]) > removes, "its tape copy removed")
        assert stat(api, "/moves/m")["currentQos"] == "disk"
        r = set_qos(api, "/moves/m", "floppy")
        assert r.status_code in (400, 409) and "Unknown QoS" in r.json()["detail"]


def test_another_user_cannot_stage_or_change_what_they_may_not_read(tape: Server) -> None:
    name, key, _ = add_user(tape, "tapeuser")
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/private", qos="tape")
        assert api.post("/api/v1/namespace/private", json={"action": "chmod", "mode": 0o700}).is_success
        assert door.put("/private/p", content=b"p" * 100).status_code == 201
        wait_for(lambda: locality(api, "/private/p") == "ONLINE_AND_NEARLINE", "the flush")
    with (
        client(base_url=tape.door_url, auth=(name, key)) as door2,
        client(base_url=tape.api_url, auth=(name, key)) as api2,
    ):
        assert door2.get("/private/p").status_code == 403
        r = set_qos(api2, "/private/p", "disk")
        assert r.status_code == 403, r.text
    queued = query_dicts(tape.data, "SELECT * FROM bulk_targets WHERE owner = :o", o=name)
    assert queued == []


def test_billing_records_go_to_kafka_for_store_and_restore(tmp_path: Path, kafka: KafkaBroker) -> None:
    srv = tape_server(tmp_path, HEADRACE_KAFKA=kafka.bootstrap, HEADRACE_KAFKA_TOPIC=f"tape-{uuid.uuid4().hex[:8]}")
    srv.start()
    d = f"/bill-{uuid.uuid4().hex[:8]}"  # the billing topic outlives this test
    try:
        with srv.api() as api, srv.door() as door:
            mkdir(api, d, qos="tape")
            assert door.put(f"{d}/f", content=b"f" * 3000).status_code == 201
            wait_for(lambda: locality(api, f"{d}/f") == "ONLINE_AND_NEARLINE", "the flush")
            node = query_dicts(srv.data, "SELECT id, pool, blob FROM inodes WHERE name = 'f'")[0]
        # evict it by hand, as the agent would under pressure (the fenced catalog step), then read it back
        evict_now(srv, f"{d}/f")
        with srv.api() as api, srv.door() as door:
            assert locality(api, f"{d}/f") == "NEARLINE"
            assert door.get(f"{d}/f").content == b"f" * 3000
        assert node["blob"]

        def records() -> list[dict[str, Any]]:
            out = [json.loads(m.value() or b"{}") for m in read_topic(kafka.bootstrap, "billing")]
            return [r for r in out if r.get("billingPath") == f"{d}/f" and r["msgType"] in ("store", "restore")]

        found = wait_for(lambda: len(records()) >= 2 and records(), "store and restore records")
        # billing records have no key (as dCache's): spread over partitions, read back in no set order
        by_type = {r["msgType"]: r for r in found}
        assert sorted(by_type) == ["restore", "store"] and len(found) == 2
        assert by_type["store"]["date"] <= by_type["restore"]["date"]
        for r in found:
            assert r["hsm"] == {"type": "osm", "instance": "headrace", "provider": "script"}
            assert r["locations"][0].startswith("osm://headrace/?store=T")
            assert r["fileSize"] == 3000
    finally:
        srv.stop()


def evict_now(srv: Server, path: str) -> None:
    """Evict `path`'s cached copy through the catalog (what the agent does under space pressure)."""
    from headrace.db.engine import Database
    from headrace.storage.namespace import Namespace
    from headrace.tape import catalog

    db = Database(srv.db_url)
    try:
        ns = Namespace(db)
        node = ns.stat(path)
        assert catalog.evicted(ns, node, pool=str(node.pool))
    finally:
        db.close()


def test_a_function_runs_when_a_file_reaches_tape(tape: Server, tmp_path: Path) -> None:
    code = tmp_path / "on_tape.py"
    code.write_text(
        "def main(args):\n    return {'path': args['path'], 'tape': args.get('tape'), 'mask': args['mask']}\n"
    )
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/archived", qos="tape")
        out = subprocess.run(
            [*headrace_command(["fn", "deploy", "archived", str(code), "--path", "/archived", "--on-tape", "store"])],
            env=tape.env(),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert door.put("/archived/run.h5", content=b"r" * 10).status_code == 201

        def results() -> list[dict[str, Any]]:
            r = api.get("/api/v1/namespaces/_/activations", params={"name": "archived", "docs": "true"})
            return [a["response"]["result"] for a in r.json() if a.get("response", {}).get("result")]

        (result,) = wait_for(results, "the activation")
        assert result["path"] == "/archived/run.h5" and result["mask"] == ["IN_ATTRIB"]
        assert result["tape"]["tape"] == "store" and result["tape"]["locality"] == "ONLINE_AND_NEARLINE"


def test_a_pool_process_flushes_and_stages_its_own_files(tmp_path: Path) -> None:
    """`headrace pool` with a tape simulator: the pool process (not the door) flushes what it holds, and stages
    what a read at the door asks for, as dCache's pools do."""
    srv = Server(data=tmp_path / "data", cli_config=tmp_path / "cli.json").start()  # the door has no HSM
    tape_env = {"HEADRACE_TAPE_SIMULATOR": str(tmp_path / "tape"), **FAST}
    pool = PoolProcess(data=tmp_path / "p1", db=pool_db_url(srv), name="tp1", env_extra=tape_env).start()
    try:
        with srv.api() as api, srv.door() as door:
            wait_for(
                lambda: door.put("/probe", content=b"x").status_code == 201 and inode_pool(srv, "probe") == "tp1",
                "the pool's registration",
            )
            mkdir(api, "/remote", qos="tape")
            body = os.urandom(30 * KB)
            assert door.put("/remote/r", content=body).status_code == 201
            wait_for(lambda: locality(api, "/remote/r") == "ONLINE_AND_NEARLINE", "the pool's flush")
            evict_now(srv, "/remote/r")
            blob = query_dicts(srv.data, "SELECT blob FROM inodes WHERE name = 'r'")[0]["blob"]
            assert blob is None
            r = door.get("/remote/r")
            assert r.status_code == 200 and r.content == body
            assert locality(api, "/remote/r") == "ONLINE_AND_NEARLINE"
            assert inode_pool(srv, "r") == "tp1"
    finally:
        pool.stop()
        srv.stop()


def inode_pool(srv: Server, name: str) -> str | None:
    rows = query_dicts(srv.data, "SELECT pool FROM inodes WHERE name = :n", n=name)
    return rows[0]["pool"] if rows else None


def test_process_on_close_then_send_to_tape_from_the_function(tape: Server, tmp_path: Path) -> None:
    """The pattern docs/tape.md shows: a directory on disk, a function that processes each closed file and then
    sets its QoS to tape through ctx.storage (with its activation's own credential)."""
    code = tmp_path / "reduce.py"
    code.write_text(
        "import json\n"
        "def main(event, ctx):\n"
        "    data = ctx.storage.read(event['path'])\n"
        "    ctx.storage.write(event['path'] + '.json', json.dumps({'bytes': len(data)}))\n"
        "    ctx.storage.qos(event['path'], 'tape')\n"
        "    return {'bytes': len(data)}\n"
    )
    with tape.api() as api, tape.door() as door:
        mkdir(api, "/daq")
        out = subprocess.run(
            headrace_command(["fn", "deploy", "reduce", str(code), "--path", "/daq", "--pattern", "*.h5", "--storage"]),
            env=tape.env(),
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert door.put("/daq/run.h5", content=b"h" * 4000).status_code == 201
        wait_for(
            lambda: locality(api, "/daq/run.h5") == "ONLINE_AND_NEARLINE", "the function's QoS change and the flush"
        )
        assert json.loads(door.get("/daq/run.h5.json").content) == {"bytes": 4000}
        assert locality(api, "/daq/run.h5.json") == "ONLINE"  # written on disk, stays there


@pytest.mark.db_independent("the simulator alone: no database")
def test_the_simulator_takes_many_puts_at_once(tmp_path: Path) -> None:
    """Many puts at once into one library (the bench's peer runs so): each gets a copy of its own and exits 0.
    A copy's temporary name renamed away between the cartridge's listing and its stat (measuring how full the
    cartridge is) used to fail a put with exit 42; this run does not reliably hit that window."""
    import sys

    base = tmp_path / "hsm"
    files = []
    for i in range(32):
        f = tmp_path / f"f{i}"
        f.write_bytes(os.urandom(2 * 1024 * 1024))
        files.append(f)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headrace.tape.simulator",
                "put",
                f"0000{i:04d}",
                str(f),
                f"-hsmBase={base}",
                "-drives=4",
                "-mount=0",
                "-position=0",
                "-rate=0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, f in enumerate(files)
    ]
    outcomes = [(p.wait(60), *p.communicate()) for p in procs]
    assert [rc for rc, _, _ in outcomes] == [0] * len(files), [err for _, _, err in outcomes if err]
    uris = {out.strip() for _, out, _ in outcomes}
    assert len(uris) == len(files) and all("bfid=" in u for u in uris)
