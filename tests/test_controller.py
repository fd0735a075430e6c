"""The functions controller over a real storage service and real worker processes (no HTTP): the storage feed,
one activation per (event, rule), retries and dead letters, redrive, per-path ordering, activation chains,
autoscaling, and recovery after a restart."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness import new_test_database
from headrace.auth.subject import ROOT
from headrace.config import Settings
from headrace.functions.controller import Controller
from headrace.functions.model import STORAGE_FEED, limits, scaling
from headrace.storage.service import StorageService
from test_events import upload

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def open_service(tmp: Path) -> StorageService:
    settings = Settings(
        data_dir=tmp / "data", admin_key="k", fsync=False, cli_config=tmp / "cli.json", db_url=new_test_database()
    )
    return StorageService.open(settings)[0]


def deploy(
    svc: StorageService,
    name: str,
    code: str,
    *,
    path: str | None = None,
    flags: list[str] | None = None,
    pattern: str | None = None,
    recursive: bool = False,
    **scale: Any,
) -> None:
    from headrace.functions.store import FunctionStore

    store = FunctionStore(svc.db)
    store.put(
        "actions",
        "admin",
        name,
        {
            "exec": {"kind": "python:3", "code": textwrap.dedent(code), "main": "main", "binary": False},
            "parameters": [],
            "annotations": [],
            "limits": limits({"timeout": 60_000}),  # only catches a hang: none of these is meant to time out
            "scaling": scaling(scale),
        },
        overwrite=True,
    )
    if path is None:
        return
    feed_params: dict[str, Any] = {"path": path, "flags": flags or ["IN_CLOSE_WRITE"], "recursive": recursive}
    if pattern:
        feed_params["pattern"] = pattern
    store.put(
        "triggers",
        "admin",
        f"{name}-trigger",
        {"parameters": [], "annotations": [], "feed": STORAGE_FEED, "feed_params": feed_params},
        overwrite=True,
    )
    store.put(
        "rules",
        "admin",
        f"{name}-rule",
        {"trigger": f"{name}-trigger", "action": name, "status": "active"},
        overwrite=True,
    )


async def until(pred: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


@pytest.fixture
async def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[StorageService, Callable[[], Awaitable[Controller]]]]:
    # These functions report what they saw in files of the test's directory, which the sandbox hides (and
    # this tier has no door for ctx.storage): they run unsandboxed. tests/test_sandbox.py covers the sandbox.
    monkeypatch.setenv("HEADRACE_SANDBOX", "none")
    svc = open_service(tmp_path)
    controllers: list[Controller] = []

    async def start() -> Controller:
        c = Controller(svc, code_root=tmp_path / "code", max_workers=8)
        await c.start()
        controllers.append(c)
        return c

    yield svc, start
    for c in controllers:
        await c.stop()
    svc.close()


def states(c: Controller) -> dict[str, int]:
    return c.store.count_by_state()


def records(c: Controller, name: str | None = None) -> list[dict[str, Any]]:
    return c.store.activations("admin", name=name, limit=0)


NOTE = """
    import json, os
    def main(args):
        with open(os.path.join(args["out"], args["name"] + "." + os.environ["__OW_ACTIVATION_ID"]), "w") as f:
            json.dump(args, f)
        return {"seen": args["path"]}
"""


async def test_feed_matches_path_flags_pattern_and_runs_once_per_event(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]], tmp_path: Path
) -> None:
    svc, start = world
    svc.namespace.mkdir("/raw", ROOT)
    svc.namespace.mkdir("/raw/sub", ROOT)
    svc.namespace.mkdir("/other", ROOT)
    out = tmp_path / "out"
    out.mkdir()
    deploy(svc, "note", NOTE.replace('args["out"]', repr(str(out))), path="/raw", pattern="*.h5")
    c = await start()
    upload(svc, "/raw/a.h5", b"abc")
    upload(svc, "/raw/b.txt")  # pattern does not match
    upload(svc, "/raw/sub/c.h5")  # not recursive
    upload(svc, "/other/d.h5")  # another directory
    upload(svc, "/raw/a.h5", b"abcd")  # an overwrite closes again: a second event
    await until(lambda: _done(c, 2))
    await asyncio.sleep(0.3)
    recs = records(c, "note")
    assert len(recs) == 2 and all(r["status_code"] == 0 for r in recs)
    args = sorted((r["args"] for r in recs), key=lambda a: a["offset"])
    assert [a["path"] for a in args] == ["/raw/a.h5", "/raw/a.h5"]
    assert [a["size"] for a in args] == [3, 4]
    assert args[0]["mask"] == ["IN_CLOSE_WRITE"] and args[0]["name"] == "a.h5"
    assert args[0]["checksums"] == {"ADLER32": "00000001"} and "time" in args[0] and "pnfsId" in args[0]
    assert len(list(out.iterdir())) == 2
    ann = {a["key"]: a["value"] for a in recs[0]["annotations"]}
    assert ann["path"] == "admin/note" and ann["attempt"] == 1 and "waitTime" in ann and "eventOffset" in ann


async def _done(c: Controller, n: int) -> bool:
    return states(c).get("done", 0) >= n


async def test_failures_retry_with_backoff_then_dead_letter_and_redrive(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]], tmp_path: Path
) -> None:
    svc, start = world
    svc.namespace.mkdir("/in", ROOT)
    flag = tmp_path / "fixed"
    deploy(
        svc,
        "flaky",
        f"""
        import os
        def main(args):
            if not os.path.exists({str(flag)!r}):
                raise RuntimeError("not yet")
            return {{"ok": True}}
        """,
        path="/in",
        retries=2,
    )
    c = await start()
    upload(svc, "/in/f1")
    await until(lambda: _state(c, "dead", 1))
    (rec,) = records(c, "flaky")
    assert rec["attempt"] == 3 and rec["max_attempts"] == 3 and rec["status_code"] == 1
    assert rec["result"] == {"error": "RuntimeError: not yet"}
    assert rec["end"] - rec["created"] >= 500  # two backoffs waited: at least 250 ms + 500 ms
    flag.touch()
    assert await c.redrive("admin", None) == 1
    await until(lambda: _state(c, "done", 1))
    (rec,) = records(c, "flaky")
    assert rec["state"] == "done" and rec["attempt"] == 1 and rec["result"] == {"ok": True}


async def _state(c: Controller, state: str, n: int) -> bool:
    return states(c).get(state, 0) >= n


async def test_events_older_than_max_event_age_are_dead_lettered_unrun(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]],
) -> None:
    svc, start = world
    svc.namespace.mkdir("/old", ROOT)
    deploy(svc, "stale", "def main(args):\n    return {}\n", path="/old", maxEventAge=1)
    await (await start()).stop()  # the controller's position is now stored
    upload(svc, "/old/f")  # while no controller runs: the event waits in the log
    time.sleep(1.2)
    c = await start()
    await until(lambda: _state(c, "dead", 1))
    (rec,) = records(c, "stale")
    assert rec["result"] == {"error": "The event is older than the action's maxEventAge."}


async def test_per_path_ordering_runs_one_path_in_event_order(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]], tmp_path: Path
) -> None:
    svc, start = world
    svc.namespace.mkdir("/seq", ROOT)
    log_file = tmp_path / "order.log"
    deploy(
        svc,
        "ordered",
        f"""
        import time
        def main(args):
            with open({str(log_file)!r}, "a") as f:
                f.write(f"start {{args['path']}} {{args['size']}}\\n")
            time.sleep(0.05)
            with open({str(log_file)!r}, "a") as f:
                f.write(f"end {{args['path']}} {{args['size']}}\\n")
            return {{}}
        """,
        path="/seq",
        ordered=True,
        maxScale=4,
    )
    c = await start()
    for size in range(1, 6):
        upload(svc, "/seq/same", b"x" * size)
    upload(svc, "/seq/other", b"y")
    await until(lambda: _state(c, "done", 6))
    lines = log_file.read_text().split("\n")[:-1]
    same = [line for line in lines if "/seq/same" in line]
    assert same == [f"{k} /seq/same {n}" for n in range(1, 6) for k in ("start", "end")]


async def test_activation_chains_longer_than_the_limit_fire_nothing(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]],
) -> None:
    svc, start = world
    svc.namespace.mkdir("/loop", ROOT)
    deploy(svc, "echo", "def main(args):\n    return {}\n", path="/loop")
    c = await start()
    c.max_chain = 2
    upload(svc, "/loop/0")
    await until(lambda: _state(c, "done", 1))
    first = records(c, "echo")[0]
    assert first["depth"] == 0
    upload(svc, "/loop/1", cause=first["activation_id"])  # as if the activation wrote it
    await until(lambda: _state(c, "done", 2))
    second = next(r for r in records(c, "echo") if r["depth"] == 1)
    assert second["cause"] == first["activation_id"]
    upload(svc, "/loop/2", cause=second["activation_id"])  # depth 2
    await until(lambda: _state(c, "done", 3))
    third = next(r for r in records(c, "echo") if r["depth"] == 2)
    upload(svc, "/loop/3", cause=third["activation_id"])  # depth 3 > 2: nothing
    upload(svc, "/loop/4")  # a fresh chain still fires
    await until(lambda: _state(c, "done", 4))
    await asyncio.sleep(0.3)
    assert sorted(r["args"]["path"] for r in records(c, "echo")) == ["/loop/0", "/loop/1", "/loop/2", "/loop/4"]


async def test_restart_requeues_running_and_runs_queued_without_duplicates(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]], tmp_path: Path
) -> None:
    svc, start = world
    svc.namespace.mkdir("/r", ROOT)
    marks = tmp_path / "marks"
    marks.mkdir()
    deploy(
        svc,
        "slow",
        f"""
        import os, time
        def main(args):
            open(os.path.join({str(marks)!r}, args["name"] + "." + os.environ["__OW_ACTIVATION_ID"]), "w").close()
            time.sleep(0.3)
            return {{}}
        """,
        path="/r",
        maxScale=2,
    )
    c = await start()
    for i in range(6):
        upload(svc, f"/r/f{i}")
    await until(lambda: _state(c, "running", 2))
    await c.stop()  # as a crash would leave it: two running, four queued
    left = states(c)
    assert left.get("running", 0) == 2 and left.get("queued", 0) == 4
    c2 = await start()
    await until(lambda: _state(c2, "done", 6))
    recs = records(c2, "slow")
    assert len(recs) == 6 and {r["args"]["name"] for r in recs} == {f"f{i}" for i in range(6)}
    assert sorted(r["attempt"] for r in recs) == [1, 1, 1, 1, 2, 2]  # the two that were running, again
    ran = [p.name.split(".")[0] for p in marks.iterdir()]
    assert sorted(set(ran)) == [f"f{i}" for i in range(6)]
    assert len(ran) - 6 <= 2  # at least once: only the interrupted ones ran twice


async def test_autoscaler_keeps_min_scale_warm_and_scales_to_zero(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]],
) -> None:
    svc, start = world
    deploy(svc, "warm", "def main(args):\n    return {}\n", minScale=2, maxScale=3)
    deploy(svc, "cold", "def main(args):\n    return {}\n", idleSeconds=0)
    c = await start()
    await c.autoscale()
    await until(lambda: _pool_size(c, "warm", 2))
    _, fut = await c.invoke("admin", "cold", {})
    rec = await asyncio.wait_for(fut, 20)
    assert rec["status_code"] == 0 and {a["key"] for a in rec["annotations"]} >= {"initTime", "waitTime"}
    assert await _pool_size(c, "cold", 1)
    await c.autoscale()
    assert await _pool_size(c, "cold", 0) and await _pool_size(c, "warm", 2)


async def _pool_size(c: Controller, name: str, n: int) -> bool:
    sizes = [p.size for k, p in c.pools.items() if k.startswith(f"admin/{name}@")]
    return bool(sizes) and sizes[0] == n


async def test_reloads_side_by_side_leave_every_written_action(
    world: tuple[StorageService, Callable[[], Awaitable[Controller]]],
) -> None:
    """API writes reload side by side (each after its own commit): whatever order their reads finish in,
    what stays is no older than the last write, so an action just created is never 404 on its invoke."""
    from headrace.functions.store import FunctionStore

    svc, start = world
    c = await start()
    store = FunctionStore(svc.db)
    action = {
        "exec": {"kind": "python:3", "code": "def main(args):\n    return args\n", "main": "main", "binary": False},
        "parameters": [],
        "annotations": [],
        "limits": limits({}),
        "scaling": scaling({}),
    }

    async def create(name: str) -> None:
        await svc.db.write(store.put, "actions", "admin", name, action, overwrite=False)
        await c.reload()

    for round_ in range(20):
        names = [f"side-{round_}-{i}" for i in range(16)]
        await asyncio.gather(*(create(n) for n in names))
        assert [n for n in names if ("admin", n) not in c.actions] == []
