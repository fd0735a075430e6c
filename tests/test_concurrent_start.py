"""Processes starting at once on one new database, as the roles of a deployment do (Kubernetes starts every
Deployment together): each migrates the schema, makes the root directory, the macaroon root key and the
admin user if missing. Every one must start, and there must be one of each.

The processes are real (multiprocessing, spawned), released together by a barrier, on the run's database.
"""

from __future__ import annotations

import json
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from headrace.db.engine import make_engine

STARTS = 5


def rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = make_engine(url, writer=False)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def start_one(url: str, data: str, admin_key: str, barrier: Barrier, out: Any) -> None:
    from headrace.config import Settings
    from headrace.storage.service import StorageService

    data_dir = Path(data)
    settings = Settings(data_dir=data_dir, db_url=url, admin_key=admin_key, cli_config=data_dir / "cli.json")
    barrier.wait()
    try:
        service, report = StorageService.open(settings, recover=False)
        service.close()
        out.put(("ok", report.admin_key_generated))
    except Exception as exc:  # reported to the test, which names it
        out.put(("failed", f"{type(exc).__name__}: {exc}"))


def start_at_once(url: str, tmp: Path, admin_key: str) -> list[tuple[str, str | None]]:
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(STARTS), ctx.Queue()
    procs = [
        ctx.Process(target=start_one, args=(url, str(tmp / f"p{k}"), admin_key, barrier, out)) for k in range(STARTS)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return results


@pytest.mark.parametrize("admin_key", ["a-given-key", ""], ids=["key-given", "key-generated"])
def test_processes_starting_at_once_on_a_new_database_all_start(db_url: str, tmp_path: Path, admin_key: str) -> None:
    results = start_at_once(db_url, tmp_path, admin_key)
    assert [r for r in results if r[0] != "ok"] == []
    generated = [key for _, key in results if key]
    if admin_key:
        assert generated == []
        keys = {json.loads((tmp_path / f"p{k}" / "cli.json").read_text())["key"] for k in range(STARTS)}
        assert keys == {admin_key}  # every process points its CLI at the admin with that key
    else:
        assert len(generated) == 1  # made once, printed by the process that made it
    assert rows(db_url, "SELECT username FROM users WHERE username = 'admin'") == [("admin",)]
    assert len(rows(db_url, "SELECT value FROM state WHERE name = 'macaroon-root-key'")) == 1
    assert len(rows(db_url, "SELECT id FROM inodes WHERE parent_id IS NULL")) == 1
