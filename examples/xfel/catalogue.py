"""Catalogue: a SciCat-shaped dataset record for every file, following it through closes, moves and deletes.

Fired by IN_CLOSE_WRITE, IN_DELETE, IN_MOVED_FROM and IN_MOVED_TO under the catalogued tree. A record is
keyed by the file's pnfsId (which a move keeps) and holds SciCat's dataset fields: `pid`, `datasetName`,
`sourceFolder`, `size`, `numberOfFiles`, `type` (raw below a `raw/` directory, derived below `proc/`),
`creationTime`, `ownerGroup` and `proposalId` (`p<proposal>`), `scientificMetadata` (run and proposal
numbers from the HDF5 file's METADATA) and `datablocks` (path, size, checksum).

Events of one file can run in any order (different paths, retries): every change carries the event's offset
and a record is only changed by a newer event than the one it holds, so the outcome is the order of the
event log whatever order the activations run in. A file's content (size, checksum) is what its newest close
says, kept under that close's offset: only closes carry checksums, and a move catalogued before the close it
follows makes the record without them.

The records live in a SQLite database (parameter `catalogue`, a file path); `headrace catalogue search` reads
it. Self-contained (h5py, stdlib): deployable as one file.
"""

from __future__ import annotations

import json
import os
import posixpath
import sqlite3
import time
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    pid TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    proposal INTEGER,
    run INTEGER,
    removed INTEGER NOT NULL DEFAULT 0,
    event_offset INTEGER NOT NULL,
    content_offset INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    record TEXT
);
CREATE INDEX IF NOT EXISTS datasets_path ON datasets (path);
CREATE INDEX IF NOT EXISTS datasets_run ON datasets (proposal, run);
CREATE TABLE IF NOT EXISTS directory_moves (
    event_offset INTEGER PRIMARY KEY,
    old TEXT NOT NULL,
    new TEXT NOT NULL
);
"""


def connect(db: str) -> sqlite3.Connection:
    db = os.path.expanduser(db)
    os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)
    conn = sqlite3.connect(db, timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.executescript(SCHEMA)
    if "content_offset" not in {row[1] for row in conn.execute("PRAGMA table_info(datasets)")}:
        try:  # a catalogue made before content offsets were kept
            conn.execute("ALTER TABLE datasets ADD COLUMN content_offset INTEGER NOT NULL DEFAULT 0")
        except sqlite3.OperationalError as exc:  # another activation added it first
            if "duplicate column" not in str(exc):
                raise
    return conn


def metadata(f: Any) -> dict[str, Any]:
    """Proposal and run numbers, and what else EuXFEL's METADATA says about the run."""
    meta = f.get("METADATA")
    out: dict[str, Any] = {}
    if meta is None:
        return out
    for key, field in (("proposalNumber", "proposal"), ("runNumber", "runNumber"), ("sequenceNumber", "sequence")):
        if key in meta:
            out[field] = int(meta[key][()].ravel()[0])
    for key in ("creationDate", "dataFormatVersion", "daqLibrary", "karaboFramework"):
        if key in meta:
            value = meta[key][()].ravel()[0]
            out[key] = value.decode() if isinstance(value, bytes) else str(value)
    if "dataSources/dataSourceId" in meta:
        out["dataSources"] = sorted({s.decode() for s in meta["dataSources/dataSourceId"][()] if s})
    return out


def kind_of(path: str) -> str:
    parts = path.split("/")
    return "derived" if "proc" in parts else "raw"


def record(event: dict[str, Any], path: str, meta: dict[str, Any]) -> dict[str, Any]:
    proposal = meta.get("proposal")
    checksums = event.get("checksums") or {}
    return {
        "pid": f"headrace/{event['pnfsId']}",
        "datasetName": posixpath.basename(path),
        "sourceFolder": posixpath.dirname(path),
        "size": event.get("size"),
        "numberOfFiles": 1,
        "type": kind_of(path),
        "creationTime": event.get("time"),
        "owner": event.get("user"),
        "ownerGroup": f"p{proposal:06d}" if proposal is not None else None,
        "proposalId": f"p{proposal:06d}" if proposal is not None else None,
        "creationLocation": "/headrace",
        "isPublished": False,
        "scientificMetadata": meta,
        "datablocks": [
            {
                "path": path,
                "size": event.get("size"),
                "chk": next(iter(checksums.values()), None),
                "chkAlg": next(iter(checksums), None),
            }
        ],
    }


def _meta_of(path: str, ctx: Any) -> dict[str, Any]:
    if not path.endswith((".h5", ".hdf5")):
        return {}
    import h5py

    try:
        with ctx.storage.open(path) as source, h5py.File(source, "r") as f:  # the blocks h5py asks for
            return metadata(f)
    except Exception as exc:  # not HDF5 after all, or gone since (moved or deleted: a later event says where)
        ctx.logger.warning("no metadata from %s: %s", path, exc)
        return {}


def moved_since(conn: sqlite3.Connection, path: str, offset: int) -> str:
    """Where `path`, as an event at `offset` saw it, is now: directory moves after that event applied."""
    for old, new in conn.execute(
        "SELECT old, new FROM directory_moves WHERE event_offset > ? ORDER BY event_offset", (offset,)
    ):
        if path.startswith(old + "/"):
            path = new + path[len(old) :]
    return path


def put(
    conn: sqlite3.Connection, pid: str, rec: dict[str, Any] | None, offset: int, path: str, content: bool = False
) -> bool:
    """Write what an event at `offset` says of `pid` (a record, or None: removed) unless a newer event has;
    `content`: the event is a close, whose size and checksum the record holds until a newer close."""
    if rec is not None:
        path = moved_since(conn, path, offset)
        _place(rec, path)
    meta = rec["scientificMetadata"] if rec else {}
    cur = conn.execute(
        "INSERT INTO datasets (pid, path, proposal, run, removed, event_offset, content_offset, updated, record)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (pid) DO UPDATE SET path = excluded.path,"
        " proposal = coalesce(excluded.proposal, datasets.proposal), run = coalesce(excluded.run, datasets.run),"
        " removed = excluded.removed, event_offset = excluded.event_offset, updated = excluded.updated,"
        " content_offset = max(excluded.content_offset, datasets.content_offset),"
        " record = coalesce(excluded.record, datasets.record)"
        " WHERE excluded.event_offset > datasets.event_offset",
        (pid, path, meta.get("proposal"), meta.get("runNumber"), int(rec is None), offset,
         offset if content else 0, time.time(), json.dumps(rec) if rec else None),
    )  # fmt: skip
    if cur.rowcount > 0:
        return True
    if content and rec is not None:
        return set_content(conn, pid, rec, offset)
    return False


def set_content(conn: sqlite3.Connection, pid: str, rec: dict[str, Any], offset: int) -> bool:
    """A close older than the record's event (a move or a removal catalogued first): its size and checksum
    still apply, unless a newer close has given them."""
    row = conn.execute("SELECT record, content_offset, path FROM datasets WHERE pid = ?", (pid,)).fetchone()
    if row is None or row[1] >= offset:
        return False
    if row[0] is None:  # removed before this close was catalogued: the record is the close's, where it was
        held = rec
        _place(held, row[2])
    else:
        held = json.loads(row[0])
    held["size"] = rec["size"]
    block, given = held["datablocks"][0], rec["datablocks"][0]
    block["size"], block["chk"], block["chkAlg"] = given["size"], given["chk"], given["chkAlg"]
    conn.execute(
        "UPDATE datasets SET record = ?, content_offset = ?, updated = ? WHERE pid = ?",
        (json.dumps(held), offset, time.time(), pid),
    )
    return True


def _place(rec: dict[str, Any], path: str) -> None:
    rec["datasetName"], rec["sourceFolder"] = posixpath.basename(path), posixpath.dirname(path)
    rec["type"] = kind_of(path)
    rec["datablocks"][0]["path"] = path


def move_file(conn: sqlite3.Connection, pid: str, new: str, offset: int) -> bool:
    row = conn.execute("SELECT record, event_offset FROM datasets WHERE pid = ?", (pid,)).fetchone()
    if row is None or row[1] >= offset or row[0] is None:
        return False
    new = moved_since(conn, new, offset)  # a directory move after this event, catalogued first, applies too
    rec = json.loads(row[0])
    _place(rec, new)
    conn.execute(
        "UPDATE datasets SET path = ?, record = ?, event_offset = ?, updated = ? WHERE pid = ?",
        (new, json.dumps(rec), offset, time.time(), pid),
    )
    return True


def move_directory(conn: sqlite3.Connection, old: str, new: str, offset: int) -> int:
    """Records below `old` now live below `new`; remembered, for events from before the move that run later."""
    conn.execute("INSERT OR IGNORE INTO directory_moves VALUES (?, ?, ?)", (offset, old, new))
    moved = 0
    rows = conn.execute(
        "SELECT pid, path, record FROM datasets WHERE path LIKE ? ESCAPE '\\' AND event_offset < ?",
        (_like_prefix(old), offset),
    ).fetchall()
    for pid, path, text in rows:
        to = new + path[len(old) :]
        rec = json.loads(text) if text else None
        if rec:
            _place(rec, to)
        conn.execute(
            "UPDATE datasets SET path = ?, record = ? WHERE pid = ?", (to, json.dumps(rec) if rec else None, pid)
        )
        moved += 1
    return moved


def _fill_metadata(conn: sqlite3.Connection, path: str, ctx: Any, pid: str | None = None) -> None:
    """HDF5 records at or below `path` whose metadata could not be read when they were made (their file had
    moved on before its close was catalogued): read it where the file is now."""
    if pid is not None:
        rows = conn.execute("SELECT pid, path, record FROM datasets WHERE pid = ?", (pid,)).fetchall()
    else:
        rows = conn.execute(
            "SELECT pid, path, record FROM datasets WHERE path LIKE ? ESCAPE '\\'", (_like_prefix(path),)
        ).fetchall()
    for pid_, where, text in rows:
        rec = json.loads(text) if text else None
        if rec is None or rec["scientificMetadata"] or not where.endswith((".h5", ".hdf5")):
            continue
        rec["scientificMetadata"] = meta = _meta_of(where, ctx)
        if meta:
            conn.execute(
                "UPDATE datasets SET record = ?, proposal = ?, run = ? WHERE pid = ?",
                (json.dumps(rec), meta.get("proposal"), meta.get("runNumber"), pid_),
            )


def remove_directory(conn: sqlite3.Connection, path: str, offset: int) -> int:
    return conn.execute(
        "UPDATE datasets SET removed = 1, event_offset = ?, updated = ? WHERE path LIKE ? ESCAPE '\\'"
        " AND event_offset < ?",
        (offset, time.time(), _like_prefix(path), offset),
    ).rowcount


def _like_prefix(path: str) -> str:
    return path.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "/%"


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def main(event: dict[str, Any], ctx: Any) -> dict[str, Any]:
    db = event.get("catalogue")
    if not db:
        raise ValueError("the parameter `catalogue` (the catalogue database file) is not set")
    root = event.get("root", "/")
    flag, path, offset = event["mask"][0], event["path"], int(event["offset"])
    is_dir = bool(event.get("isDir"))
    pid = f"headrace/{event['pnfsId']}"
    conn = connect(db)
    try:
        # The metadata is read before the transaction, from where the file is now as far as the catalogue
        # knows (a directory move may have come since the event).
        meta: dict[str, Any] = {}
        wants_meta = not is_dir and flag in ("IN_CLOSE_WRITE", "IN_MOVED_TO")
        tried = moved_since(conn, path, offset)
        if wants_meta:
            meta = _meta_of(tried, ctx)
        conn.execute("BEGIN IMMEDIATE")
        if wants_meta and not meta and moved_since(conn, path, offset) != tried:
            # a directory move was catalogued meanwhile (it found no record of this file to fill in): read the
            # file where it went, now that no other activation can change the catalogue
            meta = _meta_of(moved_since(conn, path, offset), ctx)
        if flag == "IN_CLOSE_WRITE" and not is_dir:
            changed = put(conn, pid, record(event, path, meta), offset, path, content=True)
            out: dict[str, Any] = {"upserted": path, "changed": changed}
        elif flag == "IN_DELETE" or (flag == "IN_MOVED_FROM" and not _inside(event.get("newPath", ""), root)):
            # deleted, or moved out of the catalogued tree
            n = remove_directory(conn, path, offset) if is_dir else int(put(conn, pid, None, offset, path))
            out = {"removed": path, "records": n}
        elif flag == "IN_MOVED_TO":
            old = event.get("oldPath") or ""
            if is_dir:
                n = move_directory(conn, old, path, offset) if old else 0
                _fill_metadata(conn, path, ctx)
            elif move_file(conn, pid, path, offset):
                n = 1
                _fill_metadata(conn, moved_since(conn, path, offset), ctx, pid)
            else:  # not catalogued yet (its close has not run, or it came from outside the tree)
                n = int(put(conn, pid, record(event, path, meta), offset, path))
            out = {"moved": path, "from": old, "records": n}
        else:
            out = {"skipped": flag}
        conn.execute("COMMIT")
        return out
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
