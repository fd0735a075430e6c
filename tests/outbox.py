"""Reading the outbox (the `events` table) of a server's database directly, read-only."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any


def rows(data: Path, *, after: int = 0, path_prefix: str | None = None) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{data / 'headrace.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        q = 'SELECT * FROM events WHERE "offset" > ? ORDER BY "offset"'
        out = [dict(r) for r in conn.execute(q, (after,))]
    finally:
        conn.close()
    if path_prefix is not None:
        out = [
            r
            for r in out
            if r["path"] == path_prefix
            or r["path"].startswith(path_prefix + "/")
            or (r["old_path"] or "").startswith(path_prefix + "/")
        ]
    return out


def wait_rows(data: Path, *, after: int, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The rows after `after` once there are at least `count` of them (read events commit just after
    the response's last byte, so a client can read the outbox a moment before they are there)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(data, after=after)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def head(data: Path) -> int:
    conn = sqlite3.connect(f"file:{data / 'headrace.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute('SELECT COALESCE(MAX("offset"), 0) FROM events').fetchone()[0])
    finally:
        conn.close()


def kinds(rs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["kind"], r["path"]) for r in rs]
