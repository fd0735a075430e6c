"""The Kafka relay against a real Apache Kafka broker, read back with a real Kafka consumer.

Each test has a topic of its own. Every message is compared byte for byte with the CloudEvent rendered from
its outbox row; order is checked per key (path) and partition. Tests that take Kafka away use a broker of
their own (`flaky_kafka`); the session's `kafka` broker stays up for everyone else.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

from harness import Server, http, query, settle
from headrace.events.log import _event
from headrace.events.model import EventKind, StorageEvent
from headrace.events.render import cloudevent_json
from kafka_harness import QUIET, KafkaBroker, read_topic
from outbox import head, rows

pytestmark = pytest.mark.slow  # about a minute: broker restarts

RELAY_STATE = "kafka-relay-offset:"


# -- helpers ----------------------------------------------------------------------------------------------


class _Row:
    """An outbox row as `headrace.events.log._event` reads it (through `_mapping`)."""

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping


def outbox_events(data: Path) -> list[StorageEvent]:
    return [_event(_Row(r)) for r in rows(data)]


def relay_server(base: Path, bootstrap: str, topic: str) -> Server:
    # The topic is made first when the broker is up (as an operator would): in 2 of 6 parallel test passes the
    # first event sent to a topic the broker auto-created under heavy load never reached it (open, see the
    # issue-6 note). With the broker down this gives up after 3 s and the relay's first send creates it.
    with contextlib.suppress(Exception):
        admin = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET})
        admin.create_topics([NewTopic(topic, 3, 1)])[topic].result(3)
    return Server(
        data=base / "data", cli_config=base / "cli.json", args_extra=["--kafka", bootstrap, "--kafka-topic", topic]
    )


def topic_name() -> str:
    return f"events-{uuid.uuid4().hex[:12]}"


def stored_position(data: Path, topic: str) -> int:
    found = query(data, "SELECT value FROM state WHERE name = :name", name=RELAY_STATE + topic)
    return int(found[0][0]) if found else 0


def wait_relayed(bootstrap: str, topic: str, offsets: set[int], timeout: float = 60.0) -> list[Message]:
    """The topic's messages once every offset in `offsets` is among them (fails after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = read_topic(bootstrap, topic, timeout=30)
        seen = {int(json.loads(m.value() or b"{}")["id"]) for m in msgs}
        if offsets <= seen:
            return msgs
        if time.monotonic() > deadline:
            missing = sorted(offsets - seen)
            raise AssertionError(f"{len(missing)} events never reached {topic}: {missing[:20]}...")
        time.sleep(0.3)


def check_relayed(msgs: list[Message], events: list[StorageEvent]) -> Counter[int]:
    """Every event arrived exactly as rendered from its outbox row, with key = path and the CloudEvents
    content type, each key in one partition and in log order there. Returns how often each offset came."""
    by_offset = {e.offset: e for e in events}
    counts: Counter[int] = Counter()
    per_key: dict[bytes, list[int]] = defaultdict(list)
    partition_of: dict[bytes, int | None] = {}
    for m in msgs:  # read_topic gives each partition in offset order
        offset = int(json.loads(m.value() or b"{}")["id"])
        ev = by_offset.get(offset)
        assert ev is not None, f"message for offset {offset}, which is not in the outbox"
        assert m.value() == cloudevent_json(ev)
        key = m.key()
        assert isinstance(key, bytes)
        assert key == ev.path.encode()
        assert dict(m.headers() or []) == {"content-type": b"application/cloudevents+json"}
        assert partition_of.setdefault(key, m.partition()) == m.partition(), f"{key!r} spread over partitions"
        counts[offset] += 1
        per_key[key].append(offset)
    assert set(counts) == set(by_offset), f"missing: {sorted(set(by_offset) - set(counts))[:20]}"
    for key, offsets in per_key.items():
        first_seen = list(dict.fromkeys(offsets))  # a re-sent suffix repeats earlier offsets: drop those
        assert first_seen == sorted(first_seen), f"{key!r} out of order: {offsets}"
        expected = [e.offset for e in events if e.path.encode() == key]
        assert first_seen == expected
    return counts


def metric(srv: Server, name: str, topic: str) -> float:
    text = http("GET", f"{srv.api_url}/metrics", timeout=10).text
    m = re.search(rf'^{name}{{topic="{re.escape(topic)}"}} (\S+)$', text, re.M)
    assert m is not None, f"{name} not in /metrics"
    return float(m.group(1))


def write_files(srv: Server, directory: str, count: int, *, start: int = 0) -> None:
    with srv.door() as c:
        if start == 0:
            assert c.request("MKCOL", directory).status_code == 201
        for i in range(start, start + count):
            assert c.put(f"{directory}/f{i:04d}", content=f"data {i}".encode()).status_code == 201


class Writer(threading.Thread):
    """Uploads files into one directory until stopped (through broker restarts: the door never needs Kafka)."""

    def __init__(self, srv: Server, directory: str) -> None:
        super().__init__(daemon=True)
        self.srv, self.directory = srv, directory
        self.done = threading.Event()
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.srv.door() as c:
                assert c.request("MKCOL", self.directory).status_code == 201
                while not self.done.is_set() and self.count < 2000:
                    path = f"{self.directory}/f{self.count:04d}"
                    assert c.put(path, content=b"x" * 100).status_code == 201
                    self.count += 1
                    if self.count % 3 == 0:
                        assert c.get(path).status_code == 200
                    time.sleep(0.002)  # leave the broker some CPU to restart with (2 cores)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> int:
        self.done.set()
        self.join(30)
        assert self.error is None, self.error
        return self.count


@pytest.fixture(scope="module")
def flaky_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A broker these tests stop, kill and start again (not started here: each test says when)."""
    broker = KafkaBroker(tmp_path_factory.mktemp("flaky-kafka"))
    yield broker
    broker.stop()


@pytest.fixture
def kafka_server(tmp_path: Path) -> Iterator[list[Server]]:
    """Servers a test starts; all stopped at the end."""
    servers: list[Server] = []
    yield servers
    for srv in servers:
        if srv.proc is not None:
            srv.stop()


# -- every event, in order --------------------------------------------------------------------------------


def test_every_event_arrives_once_in_order_per_key(
    kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]
) -> None:
    topic = topic_name()
    srv = relay_server(tmp_path, kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    write_files(srv, "/a", 20)
    with srv.door() as c:
        for i in range(0, 20, 2):
            assert c.get(f"/a/f{i:04d}").status_code == 200
        assert c.request("MOVE", "/a/f0001", headers={"Destination": f"{srv.door_url}/a/moved"}).status_code == 201
        assert c.put("/a/f0002", content=b"overwritten").status_code == 204
        assert c.delete("/a/f0003").status_code == 204
        assert c.request("PROPFIND", "/a", headers={"Depth": "1"}).status_code == 207
    with srv.api() as api:
        assert api.post("/api/v1/namespace/a/f0004", json={"action": "chmod", "mode": 0o600}).status_code == 200
    events = settle(lambda: outbox_events(srv.data), "the outbox")  # read events commit just after the response
    msgs = wait_relayed(kafka.bootstrap, topic, {e.offset for e in events})
    counts = check_relayed(msgs, events)
    assert set(counts.values()) == {1}, "a running relay sends each event once"
    assert {e.kind for e in events} >= {EventKind.MOVE, EventKind.DELETE, EventKind.CLOSE_NOWRITE, EventKind.ATTRIB}
    # The relay's position and lag are stored and exported.
    deadline = time.monotonic() + 60
    while stored_position(srv.data, topic) < events[-1].offset and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_position(srv.data, topic) == events[-1].offset
    assert metric(srv, "headrace_kafka_relay_offset", topic) == events[-1].offset
    assert metric(srv, "headrace_kafka_relay_lag", topic) == 0


def test_without_kafka_nothing_needs_it(fresh_server: Server) -> None:
    srv = fresh_server.start()
    write_files(srv, "/plain", 2)
    text = http("GET", f"{srv.api_url}/metrics", timeout=10).text
    assert "headrace_kafka_relay_offset{" not in text
    assert srv.proc is not None
    maps = Path(f"/proc/{srv.proc.pid}/maps").read_text()
    assert "confluent_kafka" not in maps and "rdkafka" not in maps, "Kafka's client was loaded without --kafka"


# -- billing records --------------------------------------------------------------------------------------


def test_billing_records_for_transfers_and_removals(
    kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]
) -> None:
    topic = topic_name()
    srv = relay_server(tmp_path, kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    d = f"/bill-{uuid.uuid4().hex[:8]}"
    with srv.door() as c:
        assert c.request("MKCOL", d).status_code == 201
        for name, body in (("a", b"12345"), ("b", b"1234567890"), ("c", b"")):
            assert c.put(f"{d}/{name}", content=body).status_code == 201
        assert c.put(f"{d}/a", content=b"123").status_code == 204  # overwrite: a second write
        assert c.get(f"{d}/a").content == b"123"
        assert c.get(f"{d}/b").status_code == 200
        assert c.request("PROPFIND", d, headers={"Depth": "1"}).status_code == 207  # a listing: no record
        assert c.delete(f"{d}/b").status_code == 204
        assert c.request("MKCOL", f"{d}/sub").status_code == 201
        assert c.delete(f"{d}/sub").status_code == 204  # a directory: no record
    events = [e for e in settle(lambda: outbox_events(srv.data), "the outbox") if e.path.startswith(d)]
    wait_relayed(kafka.bootstrap, topic, {e.offset for e in events})

    def ours(m: Message) -> dict[str, Any] | None:
        rec: dict[str, Any] = json.loads(m.value() or b"{}")
        return rec if rec.get("billingPath", "").startswith(d + "/") else None

    records = [r for r in (ours(m) for m in read_topic(kafka.bootstrap, "billing")) if r is not None]
    summary = Counter((r["msgType"], r.get("isWrite"), r["billingPath"]) for r in records)
    assert summary == Counter(
        {
            ("transfer", "write", f"{d}/a"): 2,
            ("transfer", "write", f"{d}/b"): 1,
            ("transfer", "write", f"{d}/c"): 1,
            ("transfer", "read", f"{d}/a"): 1,
            ("transfer", "read", f"{d}/b"): 1,
            ("remove", None, f"{d}/b"): 1,
        }
    )
    pnfsids = {e.path: e.pnfsid for e in events if not e.is_dir}
    for r in records:
        assert r["version"] == "1.0"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["date"])
        assert r["status"] == {"code": 0, "msg": ""}
        assert r["pnfsid"] == pnfsids[r["billingPath"]]
        assert r["storageInfo"] == "disk@headrace"
        assert r["cellDomain"] == "headrace"
        assert r["subject"] == ["UidPrincipal[0]", "GidPrincipal[0,primary]", "UserNamePrincipal[admin]"]
        assert None not in r.values()
        if r["msgType"] == "transfer":
            assert r["cellType"] == "pool"
            assert r["transferPath"] == r["billingPath"]
            assert r["transferSize"] == r["fileSize"]
            assert r["isP2p"] is False
            assert r["transferTime"] == 0
            assert r["protocolInfo"] == {
                "protocol": "Http",
                "versionMajor": 1,
                "versionMinor": 1,
                "port": srv.door_port,
                "host": "127.0.0.1",
            }
        else:
            assert r["cellType"] == "PnfsManager"
            assert r["fileSize"] == 10
    sizes = sorted(r["fileSize"] for r in records if r["msgType"] == "transfer" and r["isWrite"] == "write")
    assert sizes == [0, 3, 5, 10]
    assert all(m.key() is None for m in read_topic(kafka.bootstrap, "billing"))


# -- restarts ---------------------------------------------------------------------------------------------


def test_relay_restart_neither_loses_nor_floods(kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]) -> None:
    topic = topic_name()
    srv = relay_server(tmp_path, kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    write_files(srv, "/r", 30)
    first = outbox_events(srv.data)
    wait_relayed(kafka.bootstrap, topic, {e.offset for e in first})
    # A clean stop waits for what is in flight and stores the position: the restart sends nothing twice.
    assert srv.stop() == 0
    assert stored_position(srv.data, topic) == head(srv.data)
    srv.start()
    write_files(srv, "/r", 30, start=30)
    events = outbox_events(srv.data)
    counts = check_relayed(wait_relayed(kafka.bootstrap, topic, {e.offset for e in events}), events)
    assert set(counts.values()) == {1}

    # A crash (SIGKILL) during writes: what was acknowledged and stored is never sent again; only events
    # after the stored position may come twice (at least once).
    writer = Writer(srv, "/crash")
    writer.start()
    time.sleep(1.0)
    srv.kill()
    writer.done.set()
    writer.join(30)
    position = stored_position(srv.data, topic)
    srv.start()
    write_files(srv, "/after", 5)
    events = outbox_events(srv.data)
    counts = check_relayed(wait_relayed(kafka.bootstrap, topic, {e.offset for e in events}), events)
    assert all(n == 1 for off, n in counts.items() if off <= position)
    assert all(n <= 2 for n in counts.values())


@pytest.mark.db_independent("a broker outage: the relay's handling of Kafka, not of the database")
def test_broker_restart_during_writes(flaky_kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]) -> None:
    flaky_kafka.start()
    topic = topic_name()
    srv = relay_server(tmp_path, flaky_kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    writer = Writer(srv, "/w")
    writer.start()
    time.sleep(1.0)
    flaky_kafka.stop()  # a controlled shutdown while events are being produced
    time.sleep(1.0)
    flaky_kafka.start()
    time.sleep(1.0)
    flaky_kafka.kill()  # and a crash
    time.sleep(0.5)
    flaky_kafka.start()
    time.sleep(1.0)
    assert writer.stop() > 0
    time.sleep(0.3)
    events = outbox_events(srv.data)
    counts = check_relayed(wait_relayed(flaky_kafka.bootstrap, topic, {e.offset for e in events}), events)
    # The idempotent producer keeps its retries across the broker's restarts from becoming duplicates.
    assert set(counts.values()) == {1}


# -- Kafka down -------------------------------------------------------------------------------------------


@pytest.mark.db_independent("a broker outage: the relay's handling of Kafka, not of the database")
def test_kafka_down_at_start(flaky_kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]) -> None:
    flaky_kafka.stop()
    topic = topic_name()
    srv = relay_server(tmp_path, flaky_kafka.bootstrap, topic).start()  # starts and serves without Kafka
    kafka_server.append(srv)
    write_files(srv, "/down", 20)
    events = outbox_events(srv.data)
    deadline = time.monotonic() + 60
    while "unreachable" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_position(srv.data, topic) == 0
    assert metric(srv, "headrace_kafka_relay_lag", topic) > 0
    time.sleep(2.0)  # librdkafka retries meanwhile; the relay says so once, not at every retry
    assert srv.log().count("unreachable") == 1
    flaky_kafka.start()
    counts = check_relayed(wait_relayed(flaky_kafka.bootstrap, topic, {e.offset for e in events}), events)
    assert set(counts.values()) == {1}
    deadline = time.monotonic() + 60
    while "reachable again" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "reachable again" in srv.log()


@pytest.mark.db_independent("a broker outage: the relay's handling of Kafka, not of the database")
def test_kafka_down_mid_run(flaky_kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]) -> None:
    if not flaky_kafka.running:
        flaky_kafka.start()
    topic = topic_name()
    srv = relay_server(tmp_path, flaky_kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    write_files(srv, "/mid", 10)
    before = outbox_events(srv.data)
    wait_relayed(flaky_kafka.bootstrap, topic, {e.offset for e in before})
    flaky_kafka.kill()
    write_files(srv, "/mid", 20, start=10)  # the door does not wait for Kafka
    events = outbox_events(srv.data)
    time.sleep(1.0)
    assert stored_position(srv.data, topic) <= before[-1].offset  # nothing counted as sent while down
    assert metric(srv, "headrace_kafka_relay_lag", topic) >= len(events) - len(before)
    flaky_kafka.start()
    counts = check_relayed(wait_relayed(flaky_kafka.bootstrap, topic, {e.offset for e in events}), events)
    assert set(counts.values()) == {1}
    deadline = time.monotonic() + 60
    while metric(srv, "headrace_kafka_relay_lag", topic) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(srv, "headrace_kafka_relay_lag", topic) == 0
    assert stored_position(srv.data, topic) == events[-1].offset
    assert srv.log().count("unreachable") == 1  # one outage, one line


# -- a delivery Kafka refuses -----------------------------------------------------------------------------


def test_refused_delivery_is_sent_again_from_the_position(
    kafka: KafkaBroker, tmp_path: Path, kafka_server: list[Server]
) -> None:
    """A message the topic refuses (too large for it) stops the position there; nothing after it is skipped,
    and once the topic takes it, everything arrives in order (what had gone through may come twice)."""
    topic = topic_name()
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap, "logger": QUIET})
    admin.create_topics([NewTopic(topic, 3, 1, config={"max.message.bytes": "2000"})])[topic].result(30)
    srv = relay_server(tmp_path, kafka.bootstrap, topic).start()
    kafka_server.append(srv)
    write_files(srv, "/big", 5)
    first = outbox_events(srv.data)
    wait_relayed(kafka.bootstrap, topic, {e.offset for e in first})
    # A path of ~3,000 random characters: its CloudEvents cannot fit the topic's 2,000 bytes, compressed or not.
    deep = "/big"
    with srv.door() as c:
        for _ in range(12):
            deep += "/" + secrets.token_hex(125)
            assert c.request("MKCOL", deep).status_code == 201
        assert c.put(f"{deep}/file", content=b"x").status_code == 201
    write_files(srv, "/big", 5, start=5)
    events = outbox_events(srv.data)
    refused = next(e.offset for e in events if e.path == f"{deep}/file")
    deadline = time.monotonic() + 60
    while "delivery failed" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "delivery failed" in srv.log()
    assert stored_position(srv.data, topic) < refused
    bigger = ConfigEntry("max.message.bytes", "1048588", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[bigger])
    admin.incremental_alter_configs([resource])[resource].result(30)
    counts = check_relayed(wait_relayed(kafka.bootstrap, topic, {e.offset for e in events}), events)
    assert all(n == 1 for off, n in counts.items() if off < first[-1].offset)
    deadline = time.monotonic() + 60
    while stored_position(srv.data, topic) < events[-1].offset and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stored_position(srv.data, topic) == events[-1].offset
