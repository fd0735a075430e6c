"""One canonical storage event, rendered the three ways clients expect. Pure functions, no I/O.

- `inotify(event, watch)`: what a dCache inotify watch on one inode receives (zero, one or two payloads:
  a rename within one watched directory gives it both IN_MOVED_FROM and IN_MOVED_TO);
- `cloudevent(event)`: a CloudEvents 1.0 event (structured JSON); `id` is the offset, `subject` the path,
  `type` one of CLOUDEVENT_TYPES;
- `s3_records(event)`: S3 event-notification records, for tools written against S3.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from headrace.events.model import EventKind, StorageEvent

# The CloudEvents `type` of each kind: the one place these names are defined (docs/events.md lists them).
CLOUDEVENT_TYPES: dict[EventKind, str] = {
    EventKind.CREATE: "org.headrace.storage.created",
    EventKind.OPEN: "org.headrace.storage.opened",
    EventKind.ACCESS: "org.headrace.storage.accessed",
    EventKind.MODIFY: "org.headrace.storage.modified",
    EventKind.CLOSE_WRITE: "org.headrace.storage.closed.write",
    EventKind.CLOSE_NOWRITE: "org.headrace.storage.closed.nowrite",
    EventKind.ATTRIB: "org.headrace.storage.attributes",
    EventKind.DELETE: "org.headrace.storage.deleted",
    EventKind.MOVE: "org.headrace.storage.moved",
}

# A tape step (an ATTRIB whose detail names it, headrace.tape) has a type of its own.
TAPE_TYPES: dict[str, str] = {
    "store": "org.headrace.storage.tape.stored",
    "restore": "org.headrace.storage.tape.restored",
    "evict": "org.headrace.storage.tape.evicted",
    "remove": "org.headrace.storage.tape.removed",
}


def cloudevent_type(event: StorageEvent) -> str:
    if event.kind is EventKind.ATTRIB and event.detail and "tape" in event.detail:
        return TAPE_TYPES.get(str(event.detail["tape"]), CLOUDEVENT_TYPES[event.kind])
    return CLOUDEVENT_TYPES[event.kind]


# Kinds whose inotify flag is the same in the parent (with a name) and on the target (without).
PLAIN_FLAGS: dict[EventKind, str] = {
    EventKind.OPEN: "IN_OPEN",
    EventKind.ACCESS: "IN_ACCESS",
    EventKind.MODIFY: "IN_MODIFY",
    EventKind.CLOSE_WRITE: "IN_CLOSE_WRITE",
    EventKind.CLOSE_NOWRITE: "IN_CLOSE_NOWRITE",
    EventKind.ATTRIB: "IN_ATTRIB",
}


def inotify(event: StorageEvent, watch: int) -> list[dict[str, Any]]:
    """The dCache inotify payloads a watch on inode `watch` gets for `event`, in the order Linux gives them."""
    isdir = ["IN_ISDIR"] if event.is_dir else []
    out: list[dict[str, Any]] = []
    if event.kind is EventKind.MOVE:
        if event.old_parent_id == watch:
            out.append({"name": event.old_name, "cookie": event.cookie, "mask": ["IN_MOVED_FROM", *isdir]})
        if event.parent_id == watch:
            out.append({"name": event.name, "cookie": event.cookie, "mask": ["IN_MOVED_TO", *isdir]})
        if event.inode_id == watch:
            out.append({"mask": ["IN_MOVE_SELF"]})
    elif event.kind is EventKind.DELETE:
        if event.parent_id == watch:
            out.append({"name": event.name, "mask": ["IN_DELETE", *isdir]})
        if event.inode_id == watch:
            out.append({"mask": ["IN_DELETE_SELF"]})
    elif event.kind is EventKind.CREATE:
        if event.parent_id == watch:
            out.append({"name": event.name, "mask": ["IN_CREATE", *isdir]})
    else:
        flag = PLAIN_FLAGS[event.kind]
        if event.parent_id == watch:
            out.append({"name": event.name, "mask": [flag, *isdir]})
        if event.inode_id == watch:
            out.append({"mask": [flag, *isdir]})
    return out


def event_data(event: StorageEvent) -> dict[str, Any]:
    """The fields of an event as functions and CloudEvents consumers see them (null fields omitted)."""
    data: dict[str, Any] = {
        "path": event.path,
        "name": event.name,
        "kind": event.kind.value,
        "isDir": event.is_dir,
        "pnfsId": event.pnfsid,
        "size": event.size,
        "offset": event.offset,
        "time": _iso(event.time),
        "user": event.username,
    }
    if event.detail and "checksums" in event.detail:
        data["checksums"] = event.detail["checksums"]
    if event.kind is EventKind.MOVE:
        data["oldPath"] = event.old_path
        data["cookie"] = event.cookie
    if event.detail and "tape" in event.detail:
        data["tape"] = {k: event.detail[k] for k in ("tape", "locality", "uri", "pool") if k in event.detail}
    if event.cause:
        data["cause"] = event.cause
    if event.source is not None:  # another system's event: where it came from and where its file is read
        data["source"] = event.source
        data["url"] = (event.detail or {}).get("url")
        if event.detail and "remoteTime" in event.detail:  # when the remote says it happened
            data["remoteTime"] = _iso(int(event.detail["remoteTime"]))
        if not event.pnfsid:
            del data["pnfsId"]
    return {k: v for k, v in data.items() if v is not None}


def event_source(event: StorageEvent, default: str) -> str:
    """The CloudEvents `source` of an event: `default` for this namespace's, /headrace/sources/NAME for the
    events of another system that source NAME delivered (events/sources)."""
    return f"/headrace/sources/{event.source}" if event.source is not None else default


def cloudevent(event: StorageEvent, *, source: str = "/headrace/storage") -> CloudEvent:
    return CloudEvent(
        {
            "id": str(event.offset),
            "source": event_source(event, source),
            "type": cloudevent_type(event),
            "subject": event.path,
            "time": datetime.fromtimestamp(event.time / 1e6, UTC),
            "datacontenttype": "application/json",
        },
        event_data(event),
    )


def cloudevent_json(event: StorageEvent, *, source: str = "/headrace/storage") -> bytes:
    """Structured-mode CloudEvents JSON (application/cloudevents+json), byte for byte what the CloudEvents SDK
    writes for `cloudevent(event)` (tests hold the two equal), built directly: the relay renders every event
    and the SDK's object model costs it more than half its time."""
    return json.dumps(
        {
            "id": str(event.offset),
            "source": event_source(event, source),
            "type": cloudevent_type(event),
            "subject": event.path,
            "time": datetime.fromtimestamp(event.time / 1e6, UTC).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "specversion": "1.0",
            "data": event_data(event),
        }
    ).encode()


def cloudevent_sdk_json(event: StorageEvent, *, source: str = "/headrace/storage") -> bytes:
    """The same through the CloudEvents SDK: the reference `cloudevent_json` is tested against."""
    return bytes(JSONFormat().write(cloudevent(event, source=source)))


def cloudevent_dict(event: StorageEvent, *, source: str = "/headrace/storage", **extensions: str) -> dict[str, Any]:
    """The structured-mode CloudEvent as a JSON-ready dict, with extension attributes added."""
    out: dict[str, Any] = json.loads(cloudevent_json(event, source=source))
    out.update(extensions)
    return out


def s3_records(event: StorageEvent, *, region: str = "") -> list[dict[str, Any]]:
    """S3 notification records: a completed write is ObjectCreated:Put, a file deleted ObjectRemoved:Delete,
    a rename (S3 has none) ObjectRemoved:Delete of the old key then ObjectCreated:Copy of the new.
    The bucket is the top-level directory; other kinds and directories give no record."""
    if event.is_dir:
        return []
    if event.kind is EventKind.CLOSE_WRITE:
        return [_s3(event, "ObjectCreated:Put", event.path, region, with_size=True)]
    if event.kind is EventKind.DELETE:
        return [_s3(event, "ObjectRemoved:Delete", event.path, region, with_size=False)]
    if event.kind is EventKind.MOVE and event.old_path:
        return [
            _s3(event, "ObjectRemoved:Delete", event.old_path, region, with_size=False),
            _s3(event, "ObjectCreated:Copy", event.path, region, with_size=True),
        ]
    return []


def _s3(event: StorageEvent, name: str, path: str, region: str, *, with_size: bool) -> dict[str, Any]:
    bucket, _, key = path.lstrip("/").partition("/")
    obj: dict[str, Any] = {"key": key, "sequencer": f"{event.offset:016X}"}
    if with_size:
        obj["size"] = event.size
        obj["eTag"] = f"{event.pnfsid}"
    return {
        "eventVersion": "2.1",
        "eventSource": "headrace:s3",
        "awsRegion": region,
        "eventTime": _iso(event.time),
        "eventName": name,
        "userIdentity": {"principalId": event.username or ""},
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket}, "object": obj},
    }


def _iso(time_us: int) -> str:
    return datetime.fromtimestamp(time_us / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
