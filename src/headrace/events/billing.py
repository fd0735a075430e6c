"""dCache billing records (the JSON dCache publishes to Kafka topic "billing") made from storage events.
Pure functions, no I/O.

- `transfer`: data moved, one per completed upload (CLOSE_WRITE of a file, `isWrite` "write") and one per
  completed read (CLOSE_NOWRITE of a file, `isWrite` "read");
- `remove`: a file deleted (DELETE of a file).

Directories give no record (a listing is CLOSE_NOWRITE on a directory; dCache bills no data for it), and
neither do the other kinds. Records are compact JSON with null fields omitted, as dCache writes them.

Transfer facts that the event does not carry are filled as dCache fills them for an instant transfer:
`transferTime` 0 unless the event's `detail` has one (ms), `queuingTime` 0; `protocolInfo` names the
door the data went through when the caller gives it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from headrace.events.model import EventKind, StorageEvent

BILLING_TOPIC = "billing"
BILLING_VERSION = "1.0"


@dataclass(frozen=True)
class Cells:
    """Who writes the records, in dCache's terms: the pool moves data, the namespace removes files."""

    domain: str = "headrace"
    pool: str = "pool0"
    namespace: str = "PnfsManager"
    #: "<storage class>@<hsm>"; headrace's files have one class, on disk.
    storage_info: str = "disk@headrace"


@dataclass(frozen=True)
class Door:
    """The door a transfer went through (dCache's protocolInfo for an HTTP/WebDAV transfer)."""

    host: str
    port: int
    protocol: str = "Http"
    version_major: int = 1
    version_minor: int = 1


DEFAULT_CELLS = Cells()


def principals(username: str | None, uid: int | None = None, gids: Sequence[int] = ()) -> list[str]:
    """dCache's principal strings for a user: UidPrincipal, GidPrincipal (first one primary), UserNamePrincipal."""
    out: list[str] = []
    if uid is not None:
        out.append(f"UidPrincipal[{uid}]")
    for i, gid in enumerate(gids):
        out.append(f"GidPrincipal[{gid},primary]" if i == 0 else f"GidPrincipal[{gid}]")
    if username:
        out.append(f"UserNamePrincipal[{username}]")
    return out


#: Tape steps (an ATTRIB event's detail "tape", storage/tape) that dCache bills, and their message types.
TAPE_RECORDS = {"store": "store", "restore": "restore"}


def record_kind(event: StorageEvent) -> str | None:
    """The billing message type an event gives ("transfer", "remove", "store" or "restore"), or None. Events
    of other systems (events/sources) give none: their transfers were not this system's."""
    if event.is_dir or event.source is not None:
        return None
    if event.kind is EventKind.ATTRIB:
        return TAPE_RECORDS.get(str((event.detail or {}).get("tape")))
    if event.kind in (EventKind.CLOSE_WRITE, EventKind.CLOSE_NOWRITE):
        return "transfer"
    if event.kind is EventKind.DELETE:
        return "remove"
    return None


def records(
    event: StorageEvent,
    *,
    cells: Cells = DEFAULT_CELLS,
    door: Door | None = None,
    subject: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The billing records of one event (zero or one). `subject` defaults to the event's user name."""
    kind = record_kind(event)
    if kind == "transfer":
        return [transfer(event, cells=cells, door=door, subject=subject)]
    if kind == "remove":
        return [remove(event, cells=cells, subject=subject)]
    if kind in ("store", "restore"):
        return [tape(event, cells=cells)]
    return []


def transfer(
    event: StorageEvent,
    *,
    cells: Cells = DEFAULT_CELLS,
    door: Door | None = None,
    subject: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A "transfer" record: a completed upload (CLOSE_WRITE) or read (CLOSE_NOWRITE) of a file."""
    if event.is_dir or event.kind not in (EventKind.CLOSE_WRITE, EventKind.CLOSE_NOWRITE):
        raise ValueError(f"no transfer record for {event.kind.value} of {'a directory' if event.is_dir else 'a file'}")
    write = event.kind is EventKind.CLOSE_WRITE
    size = event.size or 0
    millis = _transfer_time(event)
    rec = _common(event, "transfer", cells.pool, "pool", cells)
    rec.update(
        {
            "queuingTime": 0,
            "subject": _subject(event, subject),
            "transferSize": size,
            "transferTime": millis,
            "isWrite": "write" if write else "read",
            "isP2p": False,
            "initiator": event.cause or f"door:WebDAV@{cells.domain}",
            "transferPath": event.path,
            "protocolInfo": _protocol_info(door),
        }
    )
    if millis > 0:
        rec["meanWriteBandwidth" if write else "meanReadBandwidth"] = size / (millis / 1000)
    return _compact(rec)


def remove(
    event: StorageEvent, *, cells: Cells = DEFAULT_CELLS, subject: Sequence[str] | None = None
) -> dict[str, Any]:
    """A "remove" record: a file deleted."""
    if event.is_dir or event.kind is not EventKind.DELETE:
        raise ValueError(f"no remove record for {event.kind.value} of {'a directory' if event.is_dir else 'a file'}")
    rec = _common(event, "remove", cells.namespace, "PnfsManager", cells)
    rec["subject"] = _subject(event, subject)
    return _compact(rec)


def tape(event: StorageEvent, *, cells: Cells = DEFAULT_CELLS) -> dict[str, Any]:
    """A "store" (flushed to tape) or "restore" (staged from tape) record, from the tape step's event."""
    detail = event.detail or {}
    kind = record_kind(event)
    if kind not in ("store", "restore"):
        raise ValueError(f"no tape record for {event.kind.value} {detail.get('tape')!r}")
    pool = str(detail.get("pool") or cells.pool)
    rec = _common(event, kind, pool, "pool", cells)
    hsm = detail.get("hsm") or {}
    rec.update(
        {
            "storageInfo": f"headrace:default@{hsm.get('type', 'osm')}",
            "transferTime": _transfer_time(event),
            "queuingTime": 0,
            "hsm": {k: hsm.get(k) for k in ("type", "instance", "provider")},
            "locations": [detail["uri"]] if detail.get("uri") else [],
        }
    )
    return _compact(rec)


def encode(record: dict[str, Any]) -> bytes:
    """Compact JSON, as dCache writes its billing records."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def _common(event: StorageEvent, msg_type: str, cell: str, cell_type: str, cells: Cells) -> dict[str, Any]:
    return {
        "version": BILLING_VERSION,
        "msgType": msg_type,
        "date": iso_date(event.time),
        "cellName": cell,
        "cellType": cell_type,
        "cellDomain": cells.domain,
        "status": {"code": 0, "msg": ""},
        "pnfsid": event.pnfsid,
        "billingPath": event.path,
        "fileSize": event.size,
        "storageInfo": cells.storage_info,
    }


def iso_date(time_us: int) -> str:
    """ISO-8601 with milliseconds and an offset, as dCache's billing dates: 2026-01-02T03:04:05.678+00:00."""
    return datetime.fromtimestamp(time_us / 1e6, UTC).isoformat(timespec="milliseconds")


def _subject(event: StorageEvent, subject: Sequence[str] | None) -> list[str]:
    return list(subject) if subject is not None else principals(event.username)


def _transfer_time(event: StorageEvent) -> int:
    value = (event.detail or {}).get("transferTime")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return 0


def _protocol_info(door: Door | None) -> dict[str, Any]:
    info: dict[str, Any] = {"protocol": "Http", "versionMajor": 1, "versionMinor": 1}
    if door is not None:
        info = {
            "protocol": door.protocol,
            "versionMajor": door.version_major,
            "versionMinor": door.version_minor,
            "port": door.port,
            "host": door.host,
        }
    return info


def _compact(rec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if v is not None}
