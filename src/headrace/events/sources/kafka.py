"""The `kafka` source kind: a Kafka topic of dCache billing records or of CloudEvents, read with a consumer group.

Configuration: `bootstrap` (brokers), `topic`, `group` (the consumer group; default "headrace-source-NAME"),
`format` ("billing": dCache billing records as dCache's Kafka publisher writes them, headrace's too
(events/billing.py); "cloudevents": structured-mode JSON CloudEvents as headrace's relay writes them), and
optionally `door` (a WebDAV base URL through which functions read the files) with `bearer`, `token_file` or
`basic` ("user:key") credentials for it.

Delivery, exactly once into the log: every message's events carry the key "topic/partition/offset" and are
delivered per batch together with the position, the JSON of {partition: next offset}, in one transaction (the
sink skips keys it already holds). On start the consumer is assigned every partition of the topic at the
stored position; a partition without one starts at the group's committed offset, else at the earliest.
After each delivered batch the offsets are committed to the group as well, so that Kafka's own tools see the
source's progress (the stored position, not the group's, is what the source resumes from). A record that
cannot be decoded is skipped and counted (sink state "skipped", "lastSkipped"), never retried in a loop;
billing records of other kinds (reads, failed transfers, ...) are passed over. The sink state "lag" is the
messages between the position and the partitions' high-water marks, updated every few seconds.

`Feed` is the consuming loop itself, with the decoding given: the `s3` kind reads MinIO's notifications
from a topic through it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from headrace import extras
from headrace.events.model import EventKind
from headrace.events.render import CLOUDEVENT_TYPES, TAPE_TYPES
from headrace.events.sources.base import RemoteEvent, RemoteFiles, Sink, SourceConfigError
from headrace.events.sources.remote_http import CREDENTIAL_KEYS, Credentials, DoorFiles
from headrace.kafka_security import client_config

if TYPE_CHECKING:
    from confluent_kafka import Consumer, Message, TopicPartition

log = logging.getLogger("headrace.sources.kafka")

T = TypeVar("T")

FORMATS = ("billing", "cloudevents")
KEYS = {"bootstrap", "topic", "group", "format", "door", "bearer", "token_file", "basic"}


class Undecodable(ValueError):
    """A record that is not what the source's format says (not JSON, no path, ...): skipped and counted."""


#: Turns one message's value (and its key "topic/partition/offset") into events; [] for a record passed over.
Decoder = Callable[[bytes | None, str], Sequence[RemoteEvent]]


# -- configuration helpers shared with the s3 kind --------------------------------------------------------------


def text_option(name: str, config: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        if required:
            raise SourceConfigError(f"Source {name!r}: {key!r} is required.")
        return None
    if not isinstance(value, str):
        raise SourceConfigError(f"Source {name!r}: {key!r} must be a string.")
    return value


def reject_unknown(name: str, kind: str, config: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(config) - known)
    if unknown:
        raise SourceConfigError(
            f"Source {name!r}: kind {kind!r} takes no {', '.join(map(repr, unknown))} "
            f"(it takes {', '.join(sorted(known))})."
        )


def http_url(name: str, key: str, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SourceConfigError(f"Source {name!r}: {key!r} must be an http(s) URL, not {value!r}.")
    return value.rstrip("/")


# -- reading files through a WebDAV door ------------------------------------------------------------------------


class _Anonymous(Credentials):
    """No credentials: a door that lets anyone read."""

    def __init__(self) -> None:
        self.kind = "none"
        self.value = ""

    def headers(self) -> dict[str, str]:
        return {}


def door_files(name: str, config: Mapping[str, Any]) -> DoorFiles | None:
    """Functions read the files through `door` (a WebDAV base) with `bearer`, `token_file` or `basic`, if given."""
    door = http_url(name, "door", text_option(name, config, "door"))
    given = [k for k in CREDENTIAL_KEYS if config.get(k) not in (None, "")]
    if door is None:
        if given:
            raise SourceConfigError(f"Source {name!r}: credentials are for reading files through 'door', not given.")
        return None
    try:
        creds = Credentials(config) if given else _Anonymous()
    except SourceConfigError as exc:
        raise SourceConfigError(f"Source {name!r}: {exc}") from exc
    return DoorFiles(door, creds)


# -- decoding -----------------------------------------------------------------------------------------------------


def _json_object(value: bytes | None) -> dict[str, Any]:
    if not value:
        raise Undecodable("an empty record")
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise Undecodable(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise Undecodable("not a JSON object")
    return obj


def iso_time_us(value: Any) -> int | None:
    """µs since the epoch of an ISO-8601 date (dCache's billing dates, CloudEvents' `time`), None if absent."""
    if not isinstance(value, str) or not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return int(when.timestamp() * 1_000_000)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _abs_path(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    return "/" + value.lstrip("/")


def billing_events(record: dict[str, Any], key: str, door: DoorFiles | None = None) -> list[RemoteEvent]:
    """The event of one dCache billing record: a completed write (transfer, isWrite "write", status 0) is
    CLOSE_WRITE, a "remove" DELETE, a "store"/"restore" (tape) ATTRIB with detail "tape"; others none."""
    msg_type = record.get("msgType")
    if not isinstance(msg_type, str):
        raise Undecodable("a billing record without msgType")
    status = record.get("status")
    code = status.get("code", 0) if isinstance(status, dict) else 0
    if msg_type not in ("transfer", "remove", "store", "restore") or code != 0:
        return []
    if msg_type == "transfer" and record.get("isWrite") != "write":
        return []
    path = _abs_path(record.get("billingPath")) or _abs_path(record.get("transferPath"))
    if path is None:
        raise Undecodable(f"a {msg_type} record without billingPath or transferPath")
    detail: dict[str, Any] = {"remote": record}
    if isinstance(record.get("pnfsid"), str):
        detail["pnfsid"] = record["pnfsid"]
    checksums = record.get("checksums")
    if isinstance(checksums, dict | list) and checksums:
        detail["checksums"] = checksums
    size = _int(record.get("fileSize"))
    if msg_type == "transfer":
        kind = EventKind.CLOSE_WRITE
        size = size if size is not None else _int(record.get("transferSize"))
        if isinstance(record.get("transferTime"), int | float):
            detail["transferTime"] = record["transferTime"]
    elif msg_type == "remove":
        kind = EventKind.DELETE
    else:
        kind = EventKind.ATTRIB
        detail["tape"] = msg_type
        locations = record.get("locations")
        if isinstance(locations, list) and locations and isinstance(locations[0], str):
            detail["uri"] = locations[0]
    return [
        RemoteEvent(
            key=key,
            kind=kind,
            path=path,
            size=size,
            time=iso_time_us(record.get("date")),
            url=door.url(path) if door is not None and kind is not EventKind.DELETE else None,
            detail=detail,
        )
    ]


#: CloudEvents `type` -> (kind, tape step): headrace's names (render.py), and the same below org.dcache.
_TYPES: dict[str, tuple[EventKind, str | None]] = {
    **{t: (k, None) for k, t in CLOUDEVENT_TYPES.items()},
    **{t: (EventKind.ATTRIB, step) for step, t in TAPE_TYPES.items()},
}
_TYPES.update({"org.dcache." + t.removeprefix("org.headrace."): v for t, v in list(_TYPES.items())})


def cloudevent_events(obj: dict[str, Any], key: str, door: DoorFiles | None = None) -> list[RemoteEvent]:
    """The event of one structured-mode CloudEvent as headrace's relay writes them (render.cloudevent_json)."""
    ce_type = obj.get("type")
    if not isinstance(ce_type, str) or "specversion" not in obj:
        raise Undecodable("not a structured-mode CloudEvent (no specversion or type)")
    data = obj.get("data")
    data = data if isinstance(data, dict) else {}
    found = _TYPES.get(ce_type)
    if found is None:
        try:
            found = (EventKind(str(data.get("kind"))), None)
        except ValueError:
            return []  # another producer's event type: not a storage event
    kind, tape_step = found
    path = _abs_path(data.get("path")) or _abs_path(obj.get("subject"))
    if path is None:
        raise Undecodable(f"a {ce_type} event without a path (data.path or subject)")
    detail: dict[str, Any] = {"remote": obj}
    for name in ("checksums", "pnfsId", "cause", "user"):
        if data.get(name) is not None:
            detail[name] = data[name]
    tape = data.get("tape")
    if isinstance(tape, dict):
        detail.update({k: v for k, v in tape.items() if k in ("tape", "locality", "uri", "pool")})
    if tape_step is not None:
        detail["tape"] = tape_step
    is_dir = data.get("isDir") is True
    old_path = _abs_path(data.get("oldPath")) if kind is EventKind.MOVE else None
    if kind is EventKind.MOVE and old_path is None:
        raise Undecodable("a move without oldPath")
    readable = not is_dir and kind not in (EventKind.DELETE,)
    return [
        RemoteEvent(
            key=key,
            kind=kind,
            path=path,
            is_dir=is_dir,
            size=_int(data.get("size")),
            old_path=old_path,
            time=iso_time_us(obj.get("time")) or iso_time_us(data.get("time")),
            url=door.url(path) if door is not None and readable else None,
            detail=detail,
        )
    ]


def decoder(fmt: str, door: DoorFiles | None, name: str) -> Decoder:
    """The decoder of `fmt`. CloudEvents that this source delivered itself (CloudEvents `source`
    /headrace/sources/NAME, as headrace's relay names them) are passed over: a headrace whose relay publishes to
    the topic its own source reads would otherwise take its events back again and again."""
    if fmt == "billing":

        def billing(value: bytes | None, key: str) -> Sequence[RemoteEvent]:
            return billing_events(_json_object(value), key, door)

        return billing
    own = f"/headrace/sources/{name}"

    def cloudevents(value: bytes | None, key: str) -> Sequence[RemoteEvent]:
        obj = _json_object(value)
        if obj.get("source") == own:
            return []
        return cloudevent_events(obj, key, door)

    return cloudevents


# -- the consuming loop -------------------------------------------------------------------------------------------


def parse_position(stored: str | None) -> dict[int, int]:
    """{partition: next offset} from the stored JSON (an unreadable one counts as none)."""
    if not stored:
        return {}
    try:
        raw = json.loads(stored)
        return {int(p): int(o) for p, o in raw.items() if int(o) >= 0}
    except (ValueError, TypeError, AttributeError):
        log.warning("kafka source: ignoring an unreadable stored position %r", stored[:200])
        return {}


def render_position(positions: Mapping[int, int]) -> str:
    return json.dumps({str(p): o for p, o in sorted(positions.items())}, separators=(",", ":"))


#: Kafka error codes while a group's coordinator is being found or loaded: wait, then ask again.
_COORDINATOR_WAIT = {14, 15, 16}  # COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR


class _LibrdkafkaLog:
    def __init__(self) -> None:
        self.logger = logging.getLogger("headrace.kafka.librdkafka")

    def log(self, _level: int, fmt: str, *args: Any) -> None:
        self.logger.debug(fmt, *args)


class Feed:
    """Consumes `topic` into a sink, batch by batch, with the position {partition: next offset}."""

    #: Messages read (and delivered in one transaction) at most at a time.
    BATCH = 500
    #: How long one read waits for messages (s): also how quickly a cancelled feed stops.
    POLL = 0.5
    #: How often the lag is brought up to date and new partitions looked for (s).
    REFRESH = 5.0
    #: How long to wait for the topic to exist (s) before failing (the runner starts the source again later).
    TOPIC_WAIT = 30.0

    def __init__(
        self,
        name: str,
        *,
        bootstrap: str,
        topic: str,
        group: str,
        decode: Decoder,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self.decode = decode
        self.extra_config = dict(config or {})
        self.positions: dict[int, int] = {}
        self.skipped = 0
        self.lag: int | None = None
        # One thread per feed: the consumer is used from it alone, and close() runs after any read in progress.
        self._executor: ThreadPoolExecutor | None = None
        self._consumer: Consumer | None = None

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kw))

    def _new_consumer(self) -> Consumer:
        from confluent_kafka import Consumer

        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "client.id": f"headrace-source-{self.name}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 5000,
            "log.connection.close": False,
            "logger": _LibrdkafkaLog(),
            **client_config(),  # HEADRACE_KAFKA_SECURITY_PROTOCOL, SASL_*, CA_FILE (headrace.kafka_security)
        }
        config.update(self.extra_config)
        return Consumer(config)

    async def run(self, sink: Sink) -> None:
        extras.require("confluent_kafka", needed_for=f"the kafka source {self.name!r}")
        self.positions = parse_position(await sink.position())
        self.skipped = int(await sink.state("skipped") or 0)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"source-{self.name}")
        try:
            self._consumer = await self._call(self._new_consumer)
            parts = await self._wait_for_partitions()
            await self._call(self._assign, parts, initial=True)
            log.info(
                "source %s: consuming %s topic %r as group %r from %s",
                self.name,
                self.bootstrap,
                self.topic,
                self.group,
                render_position(self.positions),
            )
            await self._loop(sink, set(parts))
        finally:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                # Queued behind a read in progress (same thread); the source's task is being torn down, so the
                # close must not be interrupted halfway.
                await asyncio.shield(self._call(consumer.close))
            self._executor.shutdown(wait=False)

    async def _wait_for_partitions(self) -> list[int]:
        """The topic's partitions, once it is there; RuntimeError (shown as the source's last error, and
        the source started again with a backoff) when it has not been found for TOPIC_WAIT seconds."""
        said = False
        deadline = time.monotonic() + self.TOPIC_WAIT
        while True:
            parts, reason = await self._call(self._partitions)
            if parts:
                return parts
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kafka topic {self.topic!r} at {self.bootstrap}: {reason}")
            if not said:
                log.info("source %s: waiting for topic %r at %s: %s", self.name, self.topic, self.bootstrap, reason)
                said = True
            await asyncio.sleep(1.0)

    def _partitions(self) -> tuple[list[int], str]:
        """The topic's partitions (none: not there, or the brokers unreachable, and why)."""
        assert self._consumer is not None
        try:
            md = self._consumer.list_topics(self.topic, timeout=10)
        except Exception as exc:  # KafkaException: brokers unreachable
            return [], f"no answer from the brokers ({exc})"
        found = md.topics.get(self.topic)
        if found is None:
            return [], "no such topic"
        if found.error is not None:
            return [], found.error.str()
        return sorted(found.partitions), ""

    def _assign(self, parts: Sequence[int], *, initial: bool) -> None:
        """Assign `parts` at the stored position, else the group's committed offset, else the earliest."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        assert self._consumer is not None
        unknown = [p for p in parts if p not in self.positions]
        committed: dict[int, int] = {}
        if unknown:
            for tp in self._committed([TopicPartition(self.topic, p) for p in unknown]):
                if tp.error is None and tp.offset >= 0:
                    committed[tp.partition] = tp.offset
        tps = [TopicPartition(self.topic, p, self.positions.get(p, committed.get(p, OFFSET_BEGINNING))) for p in parts]
        if initial:
            self._consumer.assign(tps)
        else:
            self._consumer.incremental_assign(tps)

    def _committed(self, tps: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets, asked again while the group's coordinator is not there yet (a new
        broker creating its offsets topic answers NOT_COORDINATOR for a while)."""
        from confluent_kafka import KafkaError, KafkaException

        assert self._consumer is not None
        deadline = time.monotonic() + 60
        while True:
            try:
                return self._consumer.committed(tps, timeout=10)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                waiting = isinstance(err, KafkaError) and (err.retriable() or err.code() in _COORDINATOR_WAIT)
                if not waiting or time.monotonic() > deadline:
                    raise
                log.debug("source %s: committed offsets: %s", self.name, exc)
                time.sleep(0.5)

    async def _loop(self, sink: Sink, assigned: set[int]) -> None:
        last_refresh = time.monotonic()
        errors_said: set[str] = set()
        while True:
            assert self._consumer is not None
            msgs = await self._call(self._consumer.consume, self.BATCH, self.POLL)
            if msgs:
                await self._deliver(sink, msgs, errors_said)
            if time.monotonic() - last_refresh >= self.REFRESH:
                last_refresh = time.monotonic()
                parts, _ = await self._call(self._partitions)
                new = [p for p in parts if p not in assigned]
                if new:
                    log.info("source %s: topic %r has new partitions %s", self.name, self.topic, new)
                    await self._call(self._assign, new, initial=False)
                    assigned.update(new)
                await self._update_lag(sink, sorted(assigned))

    async def _deliver(self, sink: Sink, msgs: Sequence[Message], errors_said: set[str]) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        events: list[RemoteEvent] = []
        positions = dict(self.positions)
        skipped = self.skipped
        last_skip: str | None = None
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                if err.str() not in errors_said:  # transient (the broker away): librdkafka retries by itself
                    errors_said.add(err.str())
                    log.warning("source %s: %s", self.name, err.str())
                continue
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            if offset < positions.get(partition, -1):
                continue  # already delivered (a re-read after a seek): the sink would skip it anyway
            key = f"{msg.topic()}/{partition}/{offset}"
            try:
                events.extend(self.decode(msg.value(), key))
            except Undecodable as exc:
                skipped += 1
                last_skip = f"{key}: {exc}"
                log.warning("source %s: skipped record %s", self.name, last_skip)
            positions[partition] = offset + 1
        if positions == self.positions:
            return
        await sink.deliver(events, render_position(positions))
        changed = {p: o for p, o in positions.items() if self.positions.get(p) != o}
        self.positions = positions
        if skipped != self.skipped:
            self.skipped = skipped
            await sink.set_state("skipped", skipped)
            await sink.set_state("lastSkipped", last_skip)
        assert self._consumer is not None
        offsets = [TopicPartition(self.topic, p, o) for p, o in sorted(changed.items())]
        try:
            await self._call(self._consumer.commit, offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # the group's offsets are for show: the sink's position is what counts
            log.debug("source %s: commit: %s", self.name, exc)

    async def _update_lag(self, sink: Sink, parts: Sequence[int]) -> None:
        lag = await self._call(self._lag, parts)
        if lag is not None and lag != self.lag:
            self.lag = lag
            await sink.set_state("lag", lag)

    def _lag(self, parts: Sequence[int]) -> int | None:
        from confluent_kafka import TopicPartition

        assert self._consumer is not None
        total = 0
        for p in parts:
            tp = TopicPartition(self.topic, p)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True) or (-1, -1)
                if high < 0:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=2) or (-1, -1)
            except Exception:
                return None
            if high < 0:
                return None
            total += max(0, high - max(low, self.positions.get(p, low)))
        return total


# -- the kind -----------------------------------------------------------------------------------------------------


def feed_options(name: str, config: Mapping[str, Any], *, required: bool) -> tuple[str, str, str] | None:
    """(bootstrap, topic, group) of a Kafka-reading kind; None when neither bootstrap nor topic is given and
    they are not `required`."""
    bootstrap = text_option(name, config, "bootstrap")
    topic = text_option(name, config, "topic")
    if not required and bootstrap is None and topic is None:
        return None
    if bootstrap is None or topic is None:
        raise SourceConfigError(f"Source {name!r}: 'bootstrap' and 'topic' are both required.")
    group = text_option(name, config, "group") or f"headrace-source-{name}"
    return bootstrap, topic, group


class KafkaSource:
    def __init__(self, name: str, feed: Feed, files: DoorFiles | None) -> None:
        self.name = name
        self.feed = feed
        self._files = files

    def files(self) -> RemoteFiles | None:
        return self._files

    async def run(self, sink: Sink) -> None:
        await self.feed.run(sink)


def build(name: str, config: Mapping[str, Any]) -> KafkaSource:
    reject_unknown(name, "kafka", config, KEYS)
    options = feed_options(name, config, required=True)
    assert options is not None
    bootstrap, topic, group = options
    fmt = text_option(name, config, "format") or "billing"
    if fmt not in FORMATS:
        raise SourceConfigError(f"Source {name!r}: 'format' is one of {', '.join(FORMATS)}, not {fmt!r}.")
    files = door_files(name, config)
    feed = Feed(name, bootstrap=bootstrap, topic=topic, group=group, decode=decoder(fmt, files, name))
    return KafkaSource(name, feed, files)
