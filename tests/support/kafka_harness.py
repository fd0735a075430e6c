"""A real Apache Kafka broker (KRaft, one node as broker and controller) on free 127.0.0.1 ports.

The jars come from scripts/install-kafka.sh (Maven Central, cached; run here if `make test-deps` has not).
`KafkaBroker(workdir).start()` writes server.properties, formats the data directory once with the
StorageTool and starts `java -cp 'libs/*' kafka.Kafka server.properties`; `stop()`/`kill()` and `start()`
again reuse the same ports and data, so a test can take the broker away and bring it back.

`Consumer`-side helpers (`consume`) read whole topics by assignment (no consumer group to wait for).
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from harness import ManagedProcess, free_port, kill_at_exit

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-kafka.sh"

LOG4J2 = """\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
"""


class _Quiet:
    """Swallows librdkafka's log lines (a refused connection is logged at every retry)."""

    def log(self, *_args: Any) -> None:
        pass


QUIET = _Quiet()


def kafka_libs() -> Path:
    """The broker's lib directory: $HEADRACE_KAFKA_LIBS, or what scripts/install-kafka.sh installs."""
    given = os.environ.get("HEADRACE_KAFKA_LIBS")
    if given:
        return Path(given)
    out = subprocess.run([str(INSTALL_SCRIPT)], check=True, capture_output=True, text=True, timeout=600)
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class KafkaBroker(ManagedProcess):
    workdir: Path
    libs: Path = field(default_factory=kafka_libs)
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    #: Partitions of auto-created topics: more than one, so that "in order per key" means something.
    partitions: int = 3
    heap: str = "512m"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xmx{self.heap}",
            "-Xss1m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
            "-cp",
            f"{self.libs}/*",
            main,
            *args,
        ]

    def _configure(self) -> Path:
        """server.properties (`_settings()`) and the data directory formatted (`_format_args()` added to the
        StorageTool's format), the first time; the same file after."""
        props = self.workdir / "server.properties"
        if props.exists():
            return props
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "log4j2.properties").write_text(LOG4J2)
        settings = self._settings()
        props.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        fmt = subprocess.run(
            # `=`: a base64url id may begin with "-", which the tool would take for an option (1 start in 32)
            self._java(
                "kafka.tools.StorageTool", "format", f"--cluster-id={cluster}", "-c", str(props), *self._format_args()
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if fmt.returncode != 0:
            raise RuntimeError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        return props

    def _format_args(self) -> list[str]:
        """What the StorageTool's format is given besides the cluster id and the properties."""
        return []

    def _settings(self) -> dict[str, str]:
        """The broker's server.properties, written once into the work directory (which exists by then)."""
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash the controller refuses the restarted broker's registration until the old one's
            # session expires (9 s by default): keep that short, so a killed broker is back in ~3 s.
            "broker.session.timeout.ms": "2000",
            "broker.heartbeat.interval.ms": "500",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.retention.check.interval.ms": "600000",
        }

    def start(self, timeout: float = 180.0) -> KafkaBroker:
        """Start the broker (formatting its storage the first time); return once it answers metadata."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        props = self._configure()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._java("kafka.Kafka", str(props)), stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )
        kill_at_exit(self.proc)  # a crashed test or script leaves no broker behind
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kafka exited with {self.proc.returncode}:\n{self.log()[-8000:]}")
            if self._ready():
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"kafka did not become ready in {timeout} s:\n{self.log()[-8000:]}")

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": QUIET})
        try:
            return bool(admin.list_topics(timeout=2).brokers)
        except Exception:
            return False


def consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",  # required by the client; offsets are never committed
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            "logger": QUIET,
        }
    )


def partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET})
    md = admin.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        return []
    return sorted(md.partitions)


def read_topic(bootstrap: str, topic: str, timeout: float = 20.0) -> list[Message]:
    """Every message now in `topic`, partition by partition in offset order (a consumer without a group)."""
    deadline = time.monotonic() + timeout
    parts = partitions(bootstrap, topic)
    while not parts and time.monotonic() < deadline:
        time.sleep(0.2)
        parts = partitions(bootstrap, topic)
    if not parts:
        return []
    c = consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, 0) for p in parts])  # 0 = the beginning (nothing is deleted)
        open_parts = set(parts)
        out: list[Message] = []
        while open_parts and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    open_parts.discard(msg.partition() or 0)
                    continue
                raise RuntimeError(f"consuming {topic}: {err}")
            out.append(msg)
        if open_parts:
            raise RuntimeError(f"consuming {topic}: partitions {sorted(open_parts)} not read to the end in time")
        return out
    finally:
        c.close()


def wait_for_count(bootstrap: str, topic: str, count: int, timeout: float = 60.0, *, key: Any = None) -> list[Message]:
    """Read `topic` until it holds at least `count` messages (matching `key(msg)` if given) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = read_topic(bootstrap, topic, timeout=max(5.0, deadline - time.monotonic()))
        found = [m for m in msgs if key is None or key(m)]
        if len(found) >= count or time.monotonic() > deadline:
            return msgs
        time.sleep(0.3)
