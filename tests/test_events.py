"""The event log over the outbox, and the three renderings, on events made by real namespace changes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Server, http, new_test_database
from headrace.auth.subject import ROOT, Subject
from headrace.config import Settings
from headrace.events.access import Confinement, Directories, Reader, one_side, sides, view_seen
from headrace.events.log import EventLog
from headrace.events.model import EventKind, StorageEvent
from headrace.events.render import CLOUDEVENT_TYPES, cloudevent_json, inotify, s3_records
from headrace.storage.service import StorageService
from outbox import rows


@pytest.fixture
def service(tmp_path: Path) -> Iterator[StorageService]:
    settings = Settings(
        data_dir=tmp_path / "data",
        admin_key="k",
        fsync=False,
        cli_config=tmp_path / "cli.json",
        db_url=new_test_database(),
    )
    svc, _ = StorageService.open(settings)
    yield svc
    svc.close()


def upload(svc: StorageService, path: str, data: bytes = b"x", cause: str | None = None) -> None:
    """A completed upload straight into the namespace (no HTTP), as the door commits one."""
    pool = svc.choose_pool()
    up = pool.start_upload()
    up.write_raw(data)
    up.finish()
    with svc.db.engine.begin() as conn:
        svc.namespace.commit_upload_in(
            conn, path, ROOT, pool=pool.name, blob=up.blob, size=len(data), sums={"ADLER32": "00000001"}, cause=cause
        )


def seen_by(events: list[StorageEvent], watch: int) -> list[dict[str, object]]:
    return [p for e in events for p in inotify(e, watch)]


def test_inotify_views_of_an_upload_a_rename_and_a_delete(service: StorageService) -> None:
    ns = service.namespace
    raw = ns.mkdir("/raw", ROOT)
    proc = ns.mkdir("/proc", ROOT)
    log = EventLog(service.db)
    start = log.head() + 1
    upload(service, "/raw/r1.h5", b"abc")
    f = ns.stat("/raw/r1.h5")
    ns.rename("/raw/r1.h5", "/raw/r2.h5", ROOT)  # within one directory
    ns.rename("/raw/r2.h5", "/proc/r2.h5", ROOT)  # across directories
    ns.delete("/proc/r2.h5", ROOT)
    evs = log.read_from(start)
    assert [e.offset for e in evs] == list(range(start, start + len(evs)))
    in_raw = seen_by(evs, raw.id)
    assert [p["mask"] for p in in_raw] == [
        ["IN_CREATE"], ["IN_OPEN"], ["IN_MODIFY"], ["IN_CLOSE_WRITE"], ["IN_ATTRIB"],
        ["IN_MOVED_FROM"], ["IN_MOVED_TO"],
        ["IN_MOVED_FROM"],
    ]  # fmt: skip
    assert in_raw[0]["name"] == "r1.h5" and in_raw[5]["name"] == "r1.h5" and in_raw[6]["name"] == "r2.h5"
    assert in_raw[5]["cookie"] == in_raw[6]["cookie"] and in_raw[7]["cookie"] != in_raw[5]["cookie"]
    in_proc = seen_by(evs, proc.id)
    assert in_proc == [
        {"name": "r2.h5", "cookie": in_raw[7]["cookie"], "mask": ["IN_MOVED_TO"]},
        {"name": "r2.h5", "mask": ["IN_DELETE"]},
    ]
    # a watch on the file itself: no IN_CREATE (it did not exist), self events without a name
    on_file = seen_by(evs, f.id)
    assert [p["mask"] for p in on_file] == [
        ["IN_OPEN"], ["IN_MODIFY"], ["IN_CLOSE_WRITE"], ["IN_ATTRIB"], ["IN_MOVE_SELF"], ["IN_MOVE_SELF"],
        ["IN_DELETE_SELF"],
    ]  # fmt: skip
    assert all("name" not in p for p in on_file)


def test_directory_events_carry_in_isdir(service: StorageService) -> None:
    ns = service.namespace
    root = ns.stat("/")
    log = EventLog(service.db)
    start = log.head() + 1
    d = ns.mkdir("/runs", ROOT)
    with service.db.engine.begin() as conn:
        ns.record_read_in(conn, d, ROOT)  # a listing of /runs
    evs = log.read_from(start)
    assert seen_by(evs, root.id) == [
        {"name": "runs", "mask": ["IN_CREATE", "IN_ISDIR"]},
        {"name": "runs", "mask": ["IN_OPEN", "IN_ISDIR"]},
        {"name": "runs", "mask": ["IN_CLOSE_NOWRITE", "IN_ISDIR"]},
    ]
    assert seen_by(evs, d.id) == [{"mask": ["IN_OPEN", "IN_ISDIR"]}, {"mask": ["IN_CLOSE_NOWRITE", "IN_ISDIR"]}]


def test_cloudevents_and_s3_records(service: StorageService) -> None:
    ns = service.namespace
    ns.mkdir("/bucket", ROOT)
    log = EventLog(service.db)
    start = log.head() + 1
    upload(service, "/bucket/x.h5", b"12345")
    ns.rename("/bucket/x.h5", "/bucket/y.h5", ROOT)
    evs = log.read_from(start)
    close = next(e for e in evs if e.kind.value == "CLOSE_WRITE")
    body = json.loads(cloudevent_json(close))
    assert body["specversion"] == "1.0" and body["id"] == str(close.offset)
    assert body["type"] == CLOUDEVENT_TYPES[close.kind] == "org.headrace.storage.closed.write"
    assert body["subject"] == "/bucket/x.h5" and body["source"] == "/headrace/storage"
    assert body["data"]["size"] == 5 and body["data"]["checksums"] == {"ADLER32": "00000001"}
    assert body["time"].endswith("Z")
    assert [r["eventName"] for e in evs for r in s3_records(e)] == [
        "ObjectCreated:Put",
        "ObjectRemoved:Delete",
        "ObjectCreated:Copy",
    ]
    put = s3_records(close)[0]
    assert put["s3"]["bucket"]["name"] == "bucket" and put["s3"]["object"]["key"] == "x.h5"
    assert put["s3"]["object"]["size"] == 5
    assert set(CLOUDEVENT_TYPES) == set(type(close.kind))  # every kind has a type


def test_waiters_wake_on_commit_not_on_the_poll(service: StorageService) -> None:
    log = EventLog(service.db, poll=30.0)

    async def scenario() -> tuple[int, float]:
        head = await service.db.read(log.head)
        waiter = asyncio.create_task(log.wait_beyond(head, timeout=20.0))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await service.db.write(service.namespace.mkdir, "/woken", ROOT)
        new_head = await waiter
        return new_head - head, time.monotonic() - t0

    grew, waited = asyncio.run(scenario())
    assert grew == 1
    assert waited < 20.0  # woken by the commit; the poll interval is 30 s


def test_wait_times_out_with_the_head(service: StorageService) -> None:
    log = EventLog(service.db, poll=0.05)

    async def scenario() -> tuple[int, int]:
        head = await service.db.read(log.head)
        return head, await log.wait_beyond(head, timeout=0.2)

    before, after = asyncio.run(scenario())
    assert before == after


def test_retention_by_count_and_age_spares_what_durable_consumers_have_not_read(service: StorageService) -> None:
    from headrace.events.retention import Retention

    ns, log = service.namespace, service.log
    for i in range(30):
        ns.mkdir(f"/keep{i}", ROOT)
    head = log.head()
    relay_position = head - 20  # a durable consumer 20 events behind
    retention = Retention(log, max_age=0, max_events=10, holders=[lambda: relay_position])
    first = log.tail()
    assert asyncio.run(retention.run_once()) == relay_position + 1 - first
    assert log.tail() == relay_position + 1  # held back by the consumer, not by the limit
    relay_position = head  # it caught up: the count limit applies
    asyncio.run(retention.run_once())
    assert log.tail() == head - 9 and log.head() == head
    assert [e.offset for e in log.read_from(0)] == list(range(head - 9, head + 1))
    # by age: everything older than two seconds goes once it is older (the young one has two seconds to spare)
    time.sleep(2.5)
    ns.mkdir("/young", ROOT)
    aged = Retention(log, max_age=2.0, max_events=0)
    removed = asyncio.run(aged.run_once())
    assert removed == 10
    assert [e.path for e in log.read_from(0)] == ["/young"]
    ns.mkdir("/after", ROOT)
    assert log.read_from(0)[-1].offset == head + 2  # offsets are never reused


def test_server_applies_retention_settings(fresh_server: Server) -> None:
    fresh_server.env_extra["HEADRACE_EVENT_RETENTION_EVENTS"] = "5"
    srv = fresh_server.start()
    with srv.door() as door:
        for i in range(12):
            assert door.request("MKCOL", f"/r{i}").status_code == 201
    srv.stop()
    before = rows(srv.data)
    srv.start()  # retention runs at start, then every minute
    deadline = time.monotonic() + 60
    while len(rows(srv.data)) > 5:
        assert time.monotonic() < deadline, rows(srv.data)
        time.sleep(0.1)
    assert [r["offset"] for r in rows(srv.data)] == [r["offset"] for r in before[-5:]]
    assert "headrace_event_log_tail" in http("GET", f"{srv.api_url}/metrics").text


def test_cloudevent_json_is_byte_for_byte_the_sdks() -> None:
    from headrace.events.model import EventKind
    from headrace.events.render import cloudevent_sdk_json

    for t in (1764144000123456, 1764144000000000, 1764144000000001):
        for kind in EventKind:
            ev = StorageEvent(
                offset=7, time=t, kind=kind, is_dir=kind is EventKind.CREATE, inode_id=3, pnfsid="0000ABC",
                path='/raw/a é"x.h5', parent_id=2, name='a é"x.h5', size=10,
                detail={"checksums": {"ADLER32": "0001"}}, username="admin",
                old_path="/old" if kind is EventKind.MOVE else None, cookie="c" if kind is EventKind.MOVE else None,
                cause="ab" * 16 if kind is EventKind.DELETE else None,
            )  # fmt: skip
            assert cloudevent_json(ev) == cloudevent_sdk_json(ev)


def test_delivery_rule_judges_each_side_by_directory_permissions_read_once_per_batch(
    service: StorageService,
) -> None:
    """events.access, the rule SSE and the storage feed deliver by: an entry is seen by who may list its
    directory; a rename by its sides; the directories are read in one query and re-read when the log says
    one changed."""
    ns, log = service.namespace, EventLog(service.db)
    ns.mkdir("/acc", ROOT)
    ns.mkdir("/acc/open", ROOT)
    ns.mkdir("/acc/shut", ROOT)
    ns.chmod("/acc/shut", ROOT, 0o700)
    start = log.head() + 1
    upload(service, "/acc/shut/secret.txt")
    upload(service, "/acc/open/public.txt")
    ns.rename("/acc/open/public.txt", "/acc/shut/public.txt", ROOT)
    ns.rename("/acc/shut/secret.txt", "/acc/open/secret.txt", ROOT)
    batch = log.read_from(start)
    dirs = Directories()
    with service.db.reader.connect() as conn:
        dirs.load(conn, dirs.needed(batch))
    assert dirs.queries == 1
    user = Reader(Subject("u2", 5002, (5002,)))
    closes = {e.path: sides(user, dirs, e) for e in batch if e.kind is EventKind.CLOSE_WRITE}
    assert closes == {"/acc/shut/secret.txt": (False, False), "/acc/open/public.txt": (False, True)}
    out, into = [e for e in batch if e.kind is EventKind.MOVE]
    assert sides(user, dirs, out) == (True, False) and sides(user, dirs, into) == (False, True)
    assert sides(Reader(ROOT), dirs, out) == (True, True)
    # half a rename where it cannot be shown as such: a delete at the source, a create at the destination
    gone, new = one_side(out, True, False), one_side(into, False, True)
    assert gone is not None and (gone.kind, gone.path, gone.old_path) == (
        EventKind.DELETE,
        "/acc/open/public.txt",
        None,
    )
    assert new is not None and (new.kind, new.path, new.old_path) == (EventKind.CREATE, "/acc/open/secret.txt", None)
    assert [view_seen(f, True, False) for f in ("IN_MOVED_FROM", "IN_MOVED_TO", "IN_MOVE_SELF")] == [True, False, True]
    # a confined credential sees only within its paths, even where its user may list
    confined = Reader(Subject("u2", 5002, (5002,)), Confinement(paths=("/acc/shut",)))
    assert next(sides(confined, dirs, e) for e in batch if e.path == "/acc/open/public.txt") == (False, False)
    # opened up: the log's IN_ATTRIB on the directory makes it be read again
    start = log.head() + 1
    ns.chmod("/acc/shut", ROOT, 0o755)
    upload(service, "/acc/shut/later.txt")
    later = log.read_from(start)
    with service.db.reader.connect() as conn:
        dirs.load(conn, dirs.needed(later))
    assert dirs.queries == 2
    assert [sides(user, dirs, e) for e in later if e.kind is EventKind.CLOSE_WRITE] == [(False, True)]
    # a change above a known directory: the chain is read again, not judged with a gap in it
    start = log.head() + 1
    ns.chmod("/acc", ROOT, 0o700)
    upload(service, "/acc/shut/hidden.txt")
    hidden = log.read_from(start)
    with service.db.reader.connect() as conn:
        dirs.load(conn, dirs.needed(hidden))
    assert dirs.queries == 3
    assert [sides(user, dirs, e) for e in hidden if e.kind is EventKind.CLOSE_WRITE] == [(False, False)]
    assert [sides(Reader(ROOT), dirs, e) for e in hidden if e.kind is EventKind.CLOSE_WRITE] == [(False, True)]
