"""The `kafka` event source against a real Apache Kafka broker (the session's, tests/support/kafka_harness.py).

Billing records are made by headrace's own renderer (events/billing.py, what the relay publishes as dCache's
publisher does) and CloudEvents by the relay's (render.cloudevent_json), so the shapes are real. The source
runs in this process against `MemorySink`, which keeps the Sink contract (keys delivered once, the position
stored with each batch) in memory: delivery, restart, group offsets and skipping are the kind's, and what the
database sink adds is tested with the core's own tests. The last test runs the source in a real server
(its runner and the database sink) through a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import Server, add_user, http
from headrace.events import billing
from headrace.events.model import EventKind, StorageEvent
from headrace.events.render import cloudevent_json
from headrace.events.sources import kinds
from headrace.events.sources.base import SourceConfigError
from headrace.events.sources.kafka import KafkaSource
from kafka_harness import QUIET, KafkaBroker
from outbox import rows
from source_support import MemorySink

#: Tests of the kind alone, against an in-memory sink: the database plays no part.
in_memory = pytest.mark.db_independent("the source runs against an in-memory sink")


def new_topic(broker: KafkaBroker, partitions: int = 3) -> str:
    topic = f"src-{uuid.uuid4().hex[:12]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "logger": QUIET})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    return topic


def produce(broker: KafkaBroker, topic: str, values: Sequence[bytes], *, partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": broker.bootstrap, "logger": QUIET, "linger.ms": 1})
    for value in values:
        if partition is None:
            producer.produce(topic, value)
        else:
            producer.produce(topic, value, partition=partition)
    assert producer.flush(30) == 0


#: Events of "now": the log's retention (7 days by default) would remove a remote event dated long ago at once.
NOW_US = time.time_ns() // 1000


def event(offset: int, kind: EventKind, path: str, **kw: Any) -> StorageEvent:
    return StorageEvent(
        offset=offset,
        time=NOW_US + offset * 1000,
        kind=kind,
        is_dir=kw.pop("is_dir", False),
        inode_id=offset,
        pnfsid=f"0000{offset:032X}",
        path=path,
        parent_id=1,
        name=path.rsplit("/", 1)[1],
        username="alice",
        **kw,
    )


def billing_values(ev: StorageEvent, **changes: Any) -> list[bytes]:
    out = []
    for rec in billing.records(ev, door=billing.Door("door.example.org", 2880)):
        rec.update(changes)
        out.append(billing.encode(rec))
    return out


def written(i: int, path: str) -> list[bytes]:
    return billing_values(event(i + 1, EventKind.CLOSE_WRITE, path, size=i))


def run_until(source: KafkaSource, sink: MemorySink, done: Callable[[], bool], timeout: float = 60.0) -> None:
    """Run the source until `done()` (checked as it delivers), then cancel it; fail after `timeout`."""

    async def go() -> None:
        task = asyncio.create_task(source.run(sink))
        try:
            deadline = time.monotonic() + timeout
            while not done():
                if task.done():
                    task.result()  # raises what ended it
                    raise AssertionError("the source returned")
                assert time.monotonic() < deadline, f"not done in {timeout} s: {len(sink.events)} events"
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(go())


def committed(broker: KafkaBroker, topic: str, group: str, partitions: int = 3) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "logger": QUIET})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        c.close()


@in_memory
def test_billing_records_become_events(kafka: KafkaBroker) -> None:
    topic = new_topic(kafka)
    written = event(1, EventKind.CLOSE_WRITE, "/data/run1/f.h5", size=1234, detail={"transferTime": 20})
    values = [
        *billing_values(written),
        *billing_values(event(2, EventKind.CLOSE_NOWRITE, "/data/run1/f.h5", size=1234)),  # a read: passed over
        *billing_values(event(3, EventKind.CLOSE_WRITE, "/data/failed", size=5), status={"code": 10006, "msg": "x"}),
        *billing_values(event(4, EventKind.DELETE, "/data/old", size=9)),
        *billing_values(
            event(5, EventKind.ATTRIB, "/data/run1/f.h5", size=1234, detail={"tape": "store", "uri": "osm://t/1"})
        ),
        *billing_values(event(6, EventKind.ATTRIB, "/data/run1/f.h5", detail={"tape": "restore"})),
        json.dumps({"msgType": "request", "billingPath": "/data/x", "status": {"code": 0}}).encode(),  # other
        b"\x00not json",  # undecodable: skipped and counted
        json.dumps({"msgType": "transfer", "isWrite": "write", "status": {"code": 0}}).encode(),  # no path
    ]
    produce(kafka, topic, values, partition=0)
    source = kinds.build(
        "dc", "kafka", {"bootstrap": kafka.bootstrap, "topic": topic, "format": "billing", "door": "https://d:2880/"}
    )
    assert isinstance(source, KafkaSource)
    sink = MemorySink()
    run_until(source, sink, lambda: json.loads(sink.pos or "{}").get("0") == len(values))

    got = [(e.kind, e.path, e.size, e.detail.get("tape")) for e in sink.events]
    assert got == [
        (EventKind.CLOSE_WRITE, "/data/run1/f.h5", 1234, None),
        (EventKind.DELETE, "/data/old", 9, None),
        (EventKind.ATTRIB, "/data/run1/f.h5", 1234, "store"),
        (EventKind.ATTRIB, "/data/run1/f.h5", None, "restore"),
    ]
    first = sink.events[0]
    assert first.key == f"{topic}/0/0"
    assert first.time == written.time // 1000 * 1000  # billing dates have milliseconds
    assert first.url == "https://d:2880/data/run1/f.h5"
    assert first.detail["remote"]["msgType"] == "transfer"
    assert first.detail["pnfsid"] == written.pnfsid
    assert sink.events[1].url is None  # nothing to read of a removed file
    assert sink.events[2].detail["uri"] == "osm://t/1"
    assert [e.key for e in sink.events] == [f"{topic}/0/{i}" for i in (0, 3, 4, 5)]
    assert sink.states["skipped"] == 2
    assert f"{topic}/0/8" in sink.states["lastSkipped"]
    # The group sees the source's progress (committed after the batch; the commit is asynchronous)
    deadline = time.monotonic() + 30
    while committed(kafka, topic, "headrace-source-dc") != {0: len(values)}:
        assert time.monotonic() < deadline, committed(kafka, topic, "headrace-source-dc")
        time.sleep(0.2)


@in_memory
def test_cloudevents_map_back_to_their_kinds(kafka: KafkaBroker) -> None:
    topic = new_topic(kafka, partitions=1)
    events = [
        event(1, EventKind.CREATE, "/up/dir", is_dir=True),
        event(2, EventKind.CLOSE_WRITE, "/up/dir/a", size=3, detail={"checksums": [{"type": "ADLER32", "value": "1"}]}),
        event(3, EventKind.MOVE, "/up/dir/b", old_path="/up/dir/a", cookie="c1"),
        event(4, EventKind.ATTRIB, "/up/dir/b", detail={"tape": "store", "uri": "osm://x"}),
        event(5, EventKind.DELETE, "/up/dir/b"),
        event(6, EventKind.OPEN, "/up/dir/c"),
    ]
    values = [cloudevent_json(e, source="/remote/storage") for e in events]
    values.append(json.dumps({"specversion": "1.0", "id": "1", "source": "/x", "type": "com.example.other"}).encode())
    values.append(b'{"no": "cloudevent"}')
    # What this source delivered itself, relayed back to the topic it reads: passed over (no loop)
    mine = StorageEvent(**{**event(7, EventKind.CLOSE_WRITE, "/up/dir/d").__dict__, "source": "ce"})
    values.append(cloudevent_json(mine))
    assert json.loads(values[-1])["source"] == "/headrace/sources/ce"
    produce(kafka, topic, values)
    source = kinds.build("ce", "kafka", {"bootstrap": kafka.bootstrap, "topic": topic, "format": "cloudevents"})
    sink = MemorySink()
    run_until(source, sink, lambda: json.loads(sink.pos or "{}").get("0") == len(values))

    got = [(e.kind, e.path, e.is_dir, e.size, e.old_path) for e in sink.events]
    assert got == [
        (EventKind.CREATE, "/up/dir", True, None, None),
        (EventKind.CLOSE_WRITE, "/up/dir/a", False, 3, None),
        (EventKind.MOVE, "/up/dir/b", False, None, "/up/dir/a"),
        (EventKind.ATTRIB, "/up/dir/b", False, None, None),
        (EventKind.DELETE, "/up/dir/b", False, None, None),
        (EventKind.OPEN, "/up/dir/c", False, None, None),
    ]
    assert sink.events[1].detail["checksums"] == [{"type": "ADLER32", "value": "1"}]
    assert sink.events[3].detail["tape"] == "store"
    assert sink.events[3].detail["uri"] == "osm://x"
    assert sink.events[0].time == events[0].time
    assert sink.states["skipped"] == 1  # the other producer's type is passed over, not counted


@in_memory
def test_restart_resumes_without_loss_or_doubling(kafka: KafkaBroker) -> None:
    topic = new_topic(kafka)
    paths = [f"/bulk/f{i:04d}" for i in range(300)]
    produce(kafka, topic, [v for i, p in enumerate(paths) for v in written(i, p)])
    config = {"bootstrap": kafka.bootstrap, "topic": topic, "group": "g-" + topic}
    sink = MemorySink()

    def build() -> KafkaSource:
        source = kinds.build("r", "kafka", config)
        assert isinstance(source, KafkaSource)
        source.feed.BATCH = 10  # many batches: runs stop between them
        return source

    # A first run stopped part way (cancelled as the runner does)...
    sink.hold_after = 50
    run_until(build(), sink, lambda: sink.holding)
    first = len(sink.events)
    assert 50 <= first < 300
    # ...a run that fails on delivery (the database away) after some more...
    sink.fail_after = first + 20
    with pytest.raises(RuntimeError, match="went away"):
        run_until(build(), sink, lambda: False)
    # ...and more records while it was down; the next run delivers the rest.
    more = [f"/bulk/g{i:04d}" for i in range(100)]
    produce(
        kafka, topic, [v for i, p in enumerate(more) for v in billing_values(event(i + 1, EventKind.CLOSE_WRITE, p))]
    )
    run_until(build(), sink, lambda: len(sink.events) >= 400)

    assert sorted(e.path for e in sink.events) == sorted(paths + more)
    assert sink.offered == 400  # resumed at the stored position: nothing offered twice
    assert sum(json.loads(sink.pos or "{}").values()) == 400
    # Order within each partition is the broker's
    for part in range(3):
        offsets = [int(e.key.rsplit("/", 1)[1]) for e in sink.events if e.key.split("/")[1] == str(part)]
        assert offsets == sorted(offsets)

    # A source that lost its stored position (a new sink) starts at the group's committed offsets: nothing again.
    deadline = time.monotonic() + 30
    while sum(committed(kafka, topic, "g-" + topic).values()) != 400:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    produce(kafka, topic, billing_values(event(999, EventKind.CLOSE_WRITE, "/bulk/last")))
    fresh = MemorySink()
    run_until(build(), fresh, lambda: len(fresh.events) >= 1)
    assert [e.path for e in fresh.events] == ["/bulk/last"]
    # Re-delivered records (no position, a new group: from the earliest) enter once: the keys are
    # topic/partition/offset.
    config["group"] = "g2-" + topic
    sink.pos = None
    run_until(build(), sink, lambda: sum(json.loads(sink.pos or "{}").values()) == 401)
    assert len(sink.events) == 401
    assert sink.states.get("lag") in (None, 0)


@in_memory
@pytest.mark.slow
def test_the_broker_going_away_and_back(tmp_path: Path) -> None:
    """A broker of its own, killed while the source runs and started again: the source rides it out (no
    error, no restart) and goes on from where it was, nothing lost or doubled."""
    broker = KafkaBroker(tmp_path / "kafka").start()
    try:
        topic = new_topic(broker)
        produce(broker, topic, [v for i in range(50) for v in written(i, f"/k/a{i}")])
        source = kinds.build("flaky", "kafka", {"bootstrap": broker.bootstrap, "topic": topic})
        sink = MemorySink()

        async def go() -> None:
            task = asyncio.create_task(source.run(sink))
            try:
                await until(lambda: len(sink.events) == 50, task)
                await asyncio.to_thread(broker.kill)
                await asyncio.sleep(1)  # the consumer finds the broker gone
                await asyncio.to_thread(broker.start)
                await asyncio.to_thread(produce, broker, topic, [v for i in range(50) for v in written(i, f"/k/b{i}")])
                await until(lambda: len(sink.events) == 100, task)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(go())
        assert sorted(e.path for e in sink.events) == sorted(
            [f"/k/a{i}" for i in range(50)] + [f"/k/b{i}" for i in range(50)]
        )
        assert sink.offered == 100
    finally:
        broker.stop()


async def until(done: Callable[[], bool], task: asyncio.Task[None], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if task.done():
            task.result()
            raise AssertionError("the source returned")
        assert time.monotonic() < deadline, "not done in time"
        await asyncio.sleep(0.05)


@in_memory
def test_lag_is_reported(kafka: KafkaBroker) -> None:
    topic = new_topic(kafka, partitions=1)
    produce(
        kafka, topic, [v for i in range(20) for v in billing_values(event(i + 1, EventKind.CLOSE_WRITE, f"/l/{i}"))]
    )
    source = kinds.build("lag", "kafka", {"bootstrap": kafka.bootstrap, "topic": topic})
    assert isinstance(source, KafkaSource)
    source.feed.REFRESH = 0.2
    sink = MemorySink()
    run_until(source, sink, lambda: len(sink.events) == 20 and sink.states.get("lag") == 0)


@in_memory
def test_a_missing_topic_is_an_error_after_a_while(kafka: KafkaBroker) -> None:
    topic = f"missing-{uuid.uuid4().hex[:8]}"
    source = kinds.build("gone", "kafka", {"bootstrap": kafka.bootstrap, "topic": topic})
    assert isinstance(source, KafkaSource)
    source.feed.TOPIC_WAIT = 1.0
    with pytest.raises(RuntimeError, match=f"Kafka topic '{topic}' at {kafka.bootstrap}: .*(topic|partition)"):
        run_until(source, MemorySink(), lambda: False, timeout=60)


@in_memory
def test_configuration_is_checked() -> None:
    ok = {"bootstrap": "127.0.0.1:9", "topic": "t"}
    assert kinds.build("x", "kafka", ok).files() is None
    for bad, message in [
        ({"topic": "t"}, "'bootstrap' and 'topic'"),
        ({**ok, "format": "xml"}, "'format'"),
        ({**ok, "url": "http://x"}, "takes no 'url'"),
        ({**ok, "door": "ftp://x"}, "http"),
        ({**ok, "bearer": "t"}, "door"),
        ({**ok, "door": "https://d", "bearer": "t", "basic": "u:k"}, "exactly one"),
        ({**ok, "door": "https://d", "basic": "nocolon"}, "user:key"),
        ({**ok, "topic": 5}, "string"),
    ]:
        with pytest.raises(SourceConfigError, match=message):
            kinds.build("x", "kafka", bad)
    files = kinds.build("x", "kafka", {**ok, "door": "https://d:2880/", "basic": "u:k"}).files()
    assert files is not None


# -- through a real server: the runner and the database sink ---------------------------------------------------------


def source_rows(server: Server, name: str) -> list[dict[str, Any]]:
    return [r for r in rows(server.data) if r.get("source") == name]


def wait_rows(server: Server, name: str, count: int, timeout: float = 90.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = source_rows(server, name)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            with server.api() as api:
                state = api.get(f"/api/v1/sources/{name}").json()
            raise AssertionError(f"{len(found)} of {count} events; source: {state}\n{server.log()[-3000:]}")
        time.sleep(0.2)


@pytest.mark.slow
def test_server_restart_resumes_without_loss_or_doubling(fresh_server: Server, kafka: KafkaBroker) -> None:
    """A server runs the source (its controller's runner, the database sink); stopped while records keep
    coming and started again, it has every record's event once."""
    topic = new_topic(kafka)
    produce(kafka, topic, [v for i in range(200) for v in written(i, f"/dc/a{i:03d}")])
    srv = fresh_server.start()
    user, key, _ = add_user(srv, "kuser-" + uuid.uuid4().hex[:6])
    # Functions read the files through `door` (here the server's own door plays the remote dCache's)
    with srv.door() as door:
        assert door.request("MKCOL", "/dc").status_code == 201
        assert door.put("/dc/a000", content=b"remote bytes\n").status_code == 201
    config = {
        "kind": "kafka",
        "bootstrap": kafka.bootstrap,
        "topic": topic,
        "format": "billing",
        "door": srv.door_url,
        "basic": ":".join(srv.auth),
        "readers": {"users": [user]},
    }
    assert http("PUT", f"{srv.api_url}/api/v1/sources/dc", auth=(user, key), json=config).status_code == 403
    with srv.api() as api:
        assert api.put("/api/v1/sources/dc", json=config).status_code == 201
    first = wait_rows(srv, "dc", 200)
    assert json.loads(first[0]["detail"])["url"] == srv.door_url + first[0]["path"]
    r = http("GET", f"{srv.api_url}/api/v1/sources/dc/files/dc/a000", auth=(user, key), headers={"Range": "bytes=7-"})
    assert (r.status_code, r.content) == (206, b"bytes\n")
    srv.stop()
    produce(kafka, topic, [v for i in range(150) for v in written(i, f"/dc/b{i:03d}")], partition=1)
    produce(kafka, topic, [b"\xffnot a billing record"], partition=1)
    srv.start()
    got = wait_rows(srv, "dc", 350)
    with srv.api() as api:
        deadline = time.monotonic() + 30
        while True:
            state = api.get("/api/v1/sources/dc").json()["state"]
            if sum(json.loads(state["position"] or "{}").values()) == 351 and state.get("lag") == 0:
                break
            assert time.monotonic() < deadline, state
            time.sleep(0.2)
    got = source_rows(srv, "dc")
    assert len(got) == 350
    assert sorted(r["path"] for r in got) == sorted(
        [f"/dc/a{i:03d}" for i in range(200)] + [f"/dc/b{i:03d}" for i in range(150)]
    )
    assert {r["kind"] for r in got} == {"CLOSE_WRITE"}
    assert state["received"] == 350
    assert state["skipped"] == 1  # the undecodable record, counted and passed
    assert re.match(rf"{topic}/1/\d+: not JSON", state["lastSkipped"])
