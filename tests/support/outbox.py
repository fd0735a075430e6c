"""Reading the outbox (the `events` table) of a server's database directly, read-only (SQLite or PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import query, query_dicts


def rows(data: Path, *, after: int = 0, path_prefix: str | None = None) -> list[dict[str, Any]]:
    out = query_dicts(data, 'SELECT * FROM events WHERE "offset" > :after ORDER BY "offset"', after=after)
    if path_prefix is not None:
        out = [
            r
            for r in out
            if r["path"] == path_prefix
            or r["path"].startswith(path_prefix + "/")
            or (r["old_path"] or "").startswith(path_prefix + "/")
        ]
    return out


def wait_rows(data: Path, *, after: int, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The rows after `after` once there are at least `count` of them (read events commit just after
    the response's last byte, so a client can read the outbox a moment before they are there)."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(data, after=after)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def head(data: Path) -> int:
    return int(query(data, 'SELECT COALESCE(MAX("offset"), 0) FROM events')[0][0])


def kinds(rs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["kind"], r["path"]) for r in rs]
