"""examples/xfel/catalogue.py in-process: a file closed twice, moved, and a file moved out of the tree; the
events' activations run in every order (as they may through the server: different paths, retries), and the
catalogue ends the same each time, as the event log's order says. (It runs through the server in
test_xfel_functions.py and test_xfel_demo.py.)"""

from __future__ import annotations

import itertools
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from xfel_ctx import Ctx, DirStorage, load_example

pytestmark = pytest.mark.db_independent("the function on its own SQLite catalogue, no server")

catalogue = load_example("catalogue")


def event(offset: int, mask: str, path: str, pnfsid: str, **more: Any) -> dict[str, Any]:
    return {"mask": [mask], "path": path, "offset": offset, "pnfsId": pnfsid, "isDir": False, "root": "/cat",
            "time": "2026-12-05T00:00:00Z", "user": "alice", **more}  # fmt: skip


def close(offset: int, path: str, pnfsid: str, size: int, adler32: str) -> dict[str, Any]:
    return event(offset, "IN_CLOSE_WRITE", path, pnfsid, size=size, checksums={"adler32": adler32})


def move(offset: int, old: str, new: str, pnfsid: str, size: int) -> list[dict[str, Any]]:
    """The views of one move the trigger on /cat gets (no checksums: only closes carry them)."""
    views = [event(offset, "IN_MOVED_FROM", old, pnfsid, size=size, newPath=new)]
    if new.startswith("/cat/"):
        views.append(event(offset + 1, "IN_MOVED_TO", new, pnfsid, size=size, oldPath=old))
    return views


EVENTS = [
    close(1, "/cat/a.dat", "A", 10, "0000000a"),
    close(2, "/cat/b.dat", "B", 20, "0000000b"),
    close(3, "/cat/a.dat", "A", 11, "0000001a"),  # a rewritten: this close's content is the one kept
    *move(4, "/cat/a.dat", "/cat/sub/renamed.dat", "A", 11),
    *move(6, "/cat/b.dat", "/outside/b.dat", "B", 20),  # out of the catalogued tree: removed
]


def outcome(db: Path) -> dict[str, tuple[str, int, int, str | None]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT pid, path, removed, record FROM datasets").fetchall()
    out = {}
    for pid, path, removed, text in rows:
        rec = json.loads(text)
        block = rec["datablocks"][0]
        assert (rec["size"], block["path"]) == (block["size"], path)
        out[pid] = (path, removed, block["size"], block["chk"])
    return out


def test_the_catalogue_ends_as_the_log_says_in_every_order_of_activations(tmp_path: Path) -> None:
    ctx = Ctx(DirStorage(tmp_path / "store"))
    want = {
        "headrace/A": ("/cat/sub/renamed.dat", 0, 11, "0000001a"),
        "headrace/B": ("/cat/b.dat", 1, 20, "0000000b"),
    }
    orders = list(itertools.permutations(EVENTS))
    assert len(orders) == 720
    for k, order in enumerate(orders):
        db = tmp_path / f"catalogue-{k}.sqlite"
        for e in order:
            catalogue.main({**e, "catalogue": str(db)}, ctx)
        assert outcome(db) == want, [(e["offset"], e["mask"][0]) for e in order]
