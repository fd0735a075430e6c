"""dCache billing records from storage events (headrace.events.billing): pure functions, no server."""

from __future__ import annotations

import json

import pytest

from headrace.events import billing
from headrace.events.model import EventKind, StorageEvent

T = 1_767_323_045_678_901  # 2026-01-02T03:04:05.678901Z in µs


def event(kind: EventKind, *, is_dir: bool = False, **kw: object) -> StorageEvent:
    fields: dict[str, object] = {
        "offset": 7,
        "time": T,
        "kind": kind,
        "is_dir": is_dir,
        "inode_id": 3,
        "pnfsid": "0000C0FFEE",
        "path": "/data/run1/a.h5",
        "parent_id": 2,
        "name": "a.h5",
        "size": 4096,
        "username": "alice",
    }
    fields.update(kw)
    return StorageEvent(**fields)  # type: ignore[arg-type]


DOOR = billing.Door(host="127.0.0.1", port=2880)


def test_upload_close_is_a_write_transfer() -> None:
    rec = billing.transfer(event(EventKind.CLOSE_WRITE), door=DOOR)
    assert rec == {
        "version": "1.0",
        "msgType": "transfer",
        "date": "2026-01-02T03:04:05.678+00:00",
        "cellName": "pool0",
        "cellType": "pool",
        "cellDomain": "headrace",
        "status": {"code": 0, "msg": ""},
        "pnfsid": "0000C0FFEE",
        "billingPath": "/data/run1/a.h5",
        "fileSize": 4096,
        "storageInfo": "disk@headrace",
        "queuingTime": 0,
        "subject": ["UserNamePrincipal[alice]"],
        "transferSize": 4096,
        "transferTime": 0,
        "isWrite": "write",
        "isP2p": False,
        "initiator": "door:WebDAV@headrace",
        "transferPath": "/data/run1/a.h5",
        "protocolInfo": {"protocol": "Http", "versionMajor": 1, "versionMinor": 1, "port": 2880, "host": "127.0.0.1"},
    }


def test_read_close_is_a_read_transfer_with_given_subject() -> None:
    subject = billing.principals("alice", 1000, (1000, 50))
    assert subject == [
        "UidPrincipal[1000]",
        "GidPrincipal[1000,primary]",
        "GidPrincipal[50]",
        "UserNamePrincipal[alice]",
    ]
    rec = billing.transfer(event(EventKind.CLOSE_NOWRITE), subject=subject)
    assert rec["isWrite"] == "read"
    assert rec["subject"] == subject
    assert rec["protocolInfo"] == {"protocol": "Http", "versionMajor": 1, "versionMinor": 1}  # no door given


def test_transfer_time_from_detail_gives_bandwidth() -> None:
    rec = billing.transfer(event(EventKind.CLOSE_WRITE, detail={"transferTime": 2000, "checksums": {}}))
    assert rec["transferTime"] == 2000
    assert rec["meanWriteBandwidth"] == 2048.0
    read = billing.transfer(event(EventKind.CLOSE_NOWRITE, detail={"transferTime": 4}))
    assert read["meanReadBandwidth"] == 1024000.0
    assert "meanWriteBandwidth" not in read


def test_a_function_is_the_initiator_of_its_changes() -> None:
    rec = billing.transfer(event(EventKind.CLOSE_WRITE, cause="activation:abc"))
    assert rec["initiator"] == "activation:abc"


def test_remove_of_a_file() -> None:
    rec = billing.remove(event(EventKind.DELETE, username=None))
    assert rec == {
        "version": "1.0",
        "msgType": "remove",
        "date": "2026-01-02T03:04:05.678+00:00",
        "cellName": "PnfsManager",
        "cellType": "PnfsManager",
        "cellDomain": "headrace",
        "status": {"code": 0, "msg": ""},
        "pnfsid": "0000C0FFEE",
        "billingPath": "/data/run1/a.h5",
        "fileSize": 4096,
        "storageInfo": "disk@headrace",
        "subject": [],
    }


def test_null_fields_are_omitted() -> None:
    rec = billing.remove(event(EventKind.DELETE, size=None))
    assert "fileSize" not in rec
    assert None not in rec.values()


@pytest.mark.parametrize(
    ("kind", "is_dir", "expected"),
    [
        (EventKind.CLOSE_WRITE, False, "transfer"),
        (EventKind.CLOSE_NOWRITE, False, "transfer"),
        (EventKind.DELETE, False, "remove"),
        (EventKind.CLOSE_NOWRITE, True, None),  # a listing
        (EventKind.DELETE, True, None),
        (EventKind.CREATE, False, None),
        (EventKind.OPEN, False, None),
        (EventKind.ACCESS, False, None),
        (EventKind.MODIFY, False, None),
        (EventKind.ATTRIB, False, None),
        (EventKind.MOVE, False, None),
    ],
)
def test_which_events_give_records(kind: EventKind, is_dir: bool, expected: str | None) -> None:
    ev = event(kind, is_dir=is_dir)
    assert billing.record_kind(ev) == expected
    recs = billing.records(ev, door=DOOR)
    assert [r["msgType"] for r in recs] == ([expected] if expected else [])


def test_no_record_for_the_wrong_kind() -> None:
    with pytest.raises(ValueError):
        billing.transfer(event(EventKind.DELETE))
    with pytest.raises(ValueError):
        billing.transfer(event(EventKind.CLOSE_NOWRITE, is_dir=True))
    with pytest.raises(ValueError):
        billing.remove(event(EventKind.CLOSE_WRITE))


def test_encoding_is_compact_json() -> None:
    rec = billing.transfer(event(EventKind.CLOSE_WRITE, path="/d/ü b"), door=DOOR)
    raw = billing.encode(rec)
    assert b": " not in raw and b", " not in raw
    assert json.loads(raw) == rec
    assert "/d/ü b".encode() in raw


def test_tape_steps_are_store_and_restore_records() -> None:
    hsm = {"type": "osm", "instance": "headrace", "provider": "script"}
    for step in ("store", "restore"):
        detail = {"changed": ["locality"], "tape": step, "uri": "osm://headrace/?store=T00001&bfid=x", "pool": "pool3"}
        ev = event(EventKind.ATTRIB, detail={**detail, "hsm": hsm, "transferTime": 1500}, username="headrace")
        assert billing.record_kind(ev) == step
        (rec,) = billing.records(ev)
        assert rec["msgType"] == step
        assert rec["cellName"] == "pool3" and rec["cellType"] == "pool"
        assert rec["hsm"] == hsm
        assert rec["locations"] == ["osm://headrace/?store=T00001&bfid=x"]
        assert rec["transferTime"] == 1500 and rec["queuingTime"] == 0
        assert rec["storageInfo"] == "headrace:default@osm"
    evict = event(EventKind.ATTRIB, detail={"tape": "evict"})
    assert billing.record_kind(evict) is None and billing.records(evict) == []
    with pytest.raises(ValueError):
        billing.tape(evict)


def test_tape_steps_have_cloudevent_types_of_their_own() -> None:
    from headrace.events.render import cloudevent_json, event_data

    for step, suffix in (("store", "stored"), ("restore", "restored"), ("evict", "evicted"), ("remove", "removed")):
        ev = event(EventKind.ATTRIB, detail={"tape": step, "locality": "NEARLINE", "uri": "osm://x"})
        assert json.loads(cloudevent_json(ev))["type"] == f"org.headrace.storage.tape.{suffix}"
        assert event_data(ev)["tape"] == {"tape": step, "locality": "NEARLINE", "uri": "osm://x"}
    assert json.loads(cloudevent_json(event(EventKind.ATTRIB)))["type"] == "org.headrace.storage.attributes"
