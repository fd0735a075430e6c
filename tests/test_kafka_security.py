"""Kafka security (HEADRACE_KAFKA_SECURITY_PROTOCOL, SASL_*, CA_FILE): the settings as librdkafka properties,
refused settings, and the relay of a real `headrace up` publishing to a real broker's SASL_SSL listener with
SCRAM-SHA-512 (tests/support/kafka_secure_harness.py), read back on its PLAINTEXT listener; a wrong password
is refused by the broker and said in the server's log as such, nothing delivered."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from cluster_harness import Cluster, api, deploy, own_topics
from harness import Server, client, http, settle, wait_for
from headrace.kafka_security import KafkaSecurity, KafkaSecurityError, client_config
from kafka_harness import QUIET, read_topic
from kafka_secure_harness import SCRAM_PASSWORD, SCRAM_USER, SecureKafkaBroker, secure_env

# -- the settings -------------------------------------------------------------------------------------------


def test_plaintext_adds_nothing() -> None:
    assert client_config(KafkaSecurity()) == {}


def test_sasl_ssl_properties(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    s = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "u", password_file=str(secret), ca_file=str(ca))
    assert client_config(s) == {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "u",
        "sasl.password": "from-file",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": str(ca),
    }
    plain = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "p")
    hidden = KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "s3cret-pw")
    assert client_config(plain) == {
        "security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "p",
    }  # fmt: skip
    assert client_config(KafkaSecurity("SSL")) == {
        "security.protocol": "ssl", "ssl.endpoint.identification.algorithm": "https",
    }  # fmt: skip
    assert "s3cret-pw" not in repr(hidden)


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {
        "HEADRACE_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "HEADRACE_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "HEADRACE_KAFKA_SASL_USERNAME": "alice",
        "HEADRACE_KAFKA_SASL_PASSWORD": "pw",
    }.items():
        monkeypatch.setenv(k, v)
    s = KafkaSecurity.from_env()
    assert (s.protocol, s.mechanism, s.username, s.secret()) == ("SASL_SSL", "SCRAM-SHA-512", "alice", "pw")
    assert client_config()["sasl.mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("security", "says"),
    [
        (KafkaSecurity("TLS"), "HEADRACE_KAFKA_SECURITY_PROTOCOL is one of"),
        (KafkaSecurity("SASL_SSL", "", "u", "p"), "HEADRACE_KAFKA_SASL_MECHANISM is one of"),
        (KafkaSecurity("SASL_SSL", "GSSAPI", "u", "p"), "HEADRACE_KAFKA_SASL_MECHANISM is one of"),
        (KafkaSecurity("SASL_SSL", "PLAIN", "", "p"), "needs HEADRACE_KAFKA_SASL_USERNAME"),
        (KafkaSecurity("SASL_SSL", "PLAIN", "u"), "needs HEADRACE_KAFKA_SASL_PASSWORD"),
        (KafkaSecurity("SASL_SSL", "PLAIN", "u", password_file="/nonexistent/pw"), "/nonexistent/pw"),
        (KafkaSecurity("PLAINTEXT", "PLAIN", "u", "p"), "need HEADRACE_KAFKA_SECURITY_PROTOCOL SASL_SSL"),
        (KafkaSecurity("SASL_PLAINTEXT", "PLAIN", "u", "p", ca_file="/x"), "HEADRACE_KAFKA_CA_FILE needs"),
        (KafkaSecurity("SSL", ca_file="/nonexistent/ca.pem"), "cannot be read"),
    ],
)
def test_refused(security: KafkaSecurity, says: str) -> None:
    with pytest.raises(KafkaSecurityError, match=says.replace("(", r"\(")):
        client_config(security)


def test_headrace_up_refuses_bad_settings_as_one_line(tmp_path: Path) -> None:
    env = {"HEADRACE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "HEADRACE_KAFKA_SASL_USERNAME": "u", "PATH": "/usr/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "up", "--data", str(tmp_path), "--kafka", "127.0.0.1:1"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert "HEADRACE_KAFKA_SASL_MECHANISM is one of" in out.stderr, out.stderr


# -- against the broker -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafkaBroker]:
    broker = SecureKafkaBroker(tmp_path_factory.mktemp("kafka-secure"))
    broker.start()
    yield broker
    broker.stop()


def _topic(broker: SecureKafkaBroker) -> str:
    topic = f"secure-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "logger": QUIET})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    return topic


def test_secured_listener_needs_the_credentials(secure_kafka: SecureKafkaBroker) -> None:
    good = KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", SCRAM_USER, SCRAM_PASSWORD, ca_file=str(secure_kafka.ca))
    config = {"bootstrap.servers": secure_kafka.secure_bootstrap, "logger": QUIET, **client_config(good)}
    admin = AdminClient(config)
    assert admin.list_topics(timeout=30).brokers


def _server(base: Path, broker: SecureKafkaBroker, topic: str, password: str) -> Server:
    return Server(
        data=base / "data",
        cli_config=base / "cli.json",
        args_extra=["--kafka", broker.secure_bootstrap, "--kafka-topic", topic],
        env_extra={**secure_env(broker, password), "HEADRACE_LOG_LEVEL": "info"},
    )


def test_relay_publishes_over_sasl_ssl_scram(secure_kafka: SecureKafkaBroker, tmp_path: Path) -> None:
    topic = _topic(secure_kafka)
    srv = _server(tmp_path, secure_kafka, topic, SCRAM_PASSWORD).start()
    try:
        r = http("PUT", f"{srv.door_url}/secured.txt", content=b"over SCRAM and TLS", auth=srv.auth)
        assert r.status_code == 201

        def found() -> list[dict[str, object]] | None:
            events = [json.loads(m.value() or b"{}") for m in read_topic(secure_kafka.bootstrap, topic)]
            mine = [e for e in events if e.get("subject") == "/secured.txt"]
            return mine if any(e.get("type") == "org.headrace.storage.closed.write" for e in mine) else None

        events = wait_for(found, "the upload's events on the topic")
        assert all(e["source"] for e in events)
    finally:
        srv.stop()
    assert "refused the relay" not in srv.log()


def test_wrong_password_is_a_clear_error(secure_kafka: SecureKafkaBroker, tmp_path: Path) -> None:
    topic = _topic(secure_kafka)
    srv = _server(tmp_path, secure_kafka, topic, "not-the-password").start()
    try:
        assert http("PUT", f"{srv.door_url}/refused.txt", content=b"x", auth=srv.auth).status_code == 201
        line = wait_for(
            lambda: next((ln for ln in srv.log().splitlines() if "refused the relay" in ln), None),
            "the relay's error",
        )
        assert "Authentication failed" in line and "HEADRACE_KAFKA_SASL_" in line, line
        assert settle(lambda: len(read_topic(secure_kafka.bootstrap, topic)), "the topic", quiet=1.0) == 0
    finally:
        srv.stop()


ECHO = """
def main(args):
    return {"echo": args.get("say"), "ok": True}
"""


def test_activation_transport_over_sasl_ssl_scram(secure_kafka: SecureKafkaBroker, tmp_path: Path, db_url: str) -> None:
    """A controller, a frontend and an invoker, every Kafka client of theirs (topic admin, the activation
    publisher, the invoker's consumer group, the result waiters) on the SASL_SSL listener: a blocking invoke
    through the frontend runs on the invoker and its result comes back; a non-admin user's too."""
    env = own_topics(**secure_env(secure_kafka))
    cl = Cluster(tmp_path / "cluster", db_url, secure_kafka.secure_bootstrap, env_extra=env)
    try:
        cl.controller()
        _, frontend, invoker = Cluster.start_all(
            cl.door(start=False), cl.frontend(start=False), cl.invoker("--workers", "1", start=False)
        )
        wait_for(lambda: invoker.health()["assigned"], "the invoker assigned partitions")
        deploy(frontend, "echo", ECHO)
        with api(frontend) as c:
            r = c.post("/api/v1/namespaces/_/actions/echo?blocking=true&result=true", json={"say": "scram"})
        assert r.status_code == 200, r.text + cl.logs()
        assert r.json() == {"echo": "scram", "ok": True}
        # a non-admin user, in their own namespace
        made = subprocess.run(
            [sys.executable, "-m", "headrace.cli.main", "user", "add", "kafkauser", "--data", str(cl.data), "--json"],
            capture_output=True, text=True, check=True, env={**cl.env("user-add"), "HEADRACE_DB": db_url},
        )  # fmt: skip
        key = json.loads(made.stdout)["key"]
        body = {"exec": {"kind": "python:3", "code": ECHO}}
        with client(base_url=frontend.url, auth=("kafkauser", key), timeout=60) as c:
            assert c.put("/api/v1/namespaces/_/actions/mine", json=body).status_code == 200
            r = c.post("/api/v1/namespaces/_/actions/mine?blocking=true&result=true", json={"say": "user"})
            assert r.status_code == 200, r.text
            assert r.json() == {"echo": "user", "ok": True}
            assert c.post("/api/v1/namespaces/_/actions/echo?blocking=true", json={}).status_code == 404
        assert invoker.health()["finished"] >= 2
        assert "refused" not in cl.logs().lower()
    finally:
        cl.stop()


@pytest.mark.db_independent("the source runs against an in-memory sink")
def test_kafka_source_reads_over_sasl_ssl_scram(
    secure_kafka: SecureKafkaBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `kafka` event source's consumer takes the process's HEADRACE_KAFKA_* settings: it reads a topic
    through the SASL_SSL listener (a PLAINTEXT client there would fail its handshake)."""
    from confluent_kafka import Producer

    from headrace.events.model import EventKind, StorageEvent
    from headrace.events.render import cloudevent_json
    from headrace.events.sources import kinds
    from source_support import MemorySink
    from test_source_kafka import run_until

    topic = _topic(secure_kafka)
    now = time.time_ns() // 1000
    values = [
        cloudevent_json(
            StorageEvent(
                offset=i, time=now + i, kind=EventKind.CLOSE_WRITE, is_dir=False, inode_id=i,
                pnfsid=f"0000{i:032X}", path=f"/sec/f{i}", parent_id=1, name=f"f{i}", username="alice", size=i,
            ),
            source="/remote/storage",
        )
        for i in range(1, 6)
    ]  # fmt: skip
    producer = Producer({"bootstrap.servers": secure_kafka.bootstrap, "logger": QUIET})
    for v in values:
        producer.produce(topic, v)
    assert producer.flush(30) == 0
    for k, v in secure_env(secure_kafka).items():
        monkeypatch.setenv(k, v)
    config = {"bootstrap": secure_kafka.secure_bootstrap, "topic": topic, "format": "cloudevents"}
    sink = MemorySink()
    run_until(kinds.build("sec", "kafka", config), sink, lambda: len(sink.events) == len(values))
    assert [e.path for e in sink.events] == [f"/sec/f{i}" for i in range(1, 6)]
