"""Activations through Kafka: a controller publishing them, `headrace invoker` processes in one consumer group
running them, and a door and a frontend, each a real process on 127.0.0.1, sharing one database (this run's:
a SQLite file, or a PostgreSQL database) and the session's Kafka broker (topics and group of each test its
own).

What is checked: activations spread over the invokers and each runs once; blocking and non-blocking invokes
through a standalone frontend; an `ordered` action keeps each path's activations one at a time and in event
order across invokers; an invoker started under load takes work within seconds and the rebalance runs
nothing twice; an invoker SIGKILLed mid-activation has its activations run again by another, as their next
attempt, and every activation ends with exactly one final record.

Every function writes a start mark (`<activation>.start.<sandbox>.<ns>`, <sandbox> its PID namespace's inode)
when it begins and appends to an end mark (`<activation>.end`) when it ends, so runs are counted from outside
headrace, not from its records. The marks' directories are bound into the admin's function sandboxes.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from cluster_harness import Cluster, Role, activation_states, api, deploy, door, own_topics
from harness import wait_for

if TYPE_CHECKING:
    from kafka_harness import KafkaBroker


MARK = """
import os, time
MARKS = {marks!r}
def main(args):
    aid = os.environ["__OW_ACTIVATION_ID"]
    sandbox = os.stat("/proc/self/ns/pid").st_ino
    open(os.path.join(MARKS, f"{{aid}}.start.{{sandbox}}.{{time.time_ns()}}"), "w").close()
    time.sleep(float(args.get("sleep", 0)))
    with open(os.path.join(MARKS, f"{{aid}}.end"), "a") as f:
        f.write(args.get("path", "-") + "\\n")
    return {{"path": args.get("path"), "pid": os.getpid()}}
"""


@pytest.fixture
def cluster(tmp_path: Path, kafka: KafkaBroker, db_url: str) -> Iterator[Cluster]:
    binds = sandbox_binds(tmp_path / "marks", tmp_path / "ordered")
    env = own_topics(HEADRACE_INVOKER_REVOKE_GRACE="5", **binds)
    cl = Cluster(tmp_path / "cluster", db_url, kafka.bootstrap, env_extra=env)
    yield cl
    cl.stop()
    (tmp_path / "cluster-logs.txt").write_text(cl.logs())


def sandbox_binds(*dirs: Path) -> dict[str, str]:
    """`dirs`, made and given to the uid the admin's functions run as (HEADRACE_SANDBOX_UID_BASE + 0), bound
    into their sandboxes: the functions write their marks there."""
    for d in dirs:
        d.mkdir(exist_ok=True)
        os.chown(d, 100_000, 100_000)
    return {"HEADRACE_SANDBOX_BIND": ",".join(f"admin:{d}" for d in dirs)}


def marks_dir(tmp_path: Path) -> Path:
    d = tmp_path / "marks"
    d.mkdir(exist_ok=True)
    return d


def mark_code(marks: Path) -> str:
    return textwrap.dedent(MARK.format(marks=str(marks)))


def runs(marks: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    """Starts per activation, and the lines of each activation's end mark."""
    starts: dict[str, int] = {}
    ends: dict[str, list[str]] = {}
    for f in marks.iterdir():
        aid, kind = f.name.split(".")[:2]
        if kind == "start":
            starts[aid] = starts.get(aid, 0) + 1
        else:
            ends[aid] = f.read_text().splitlines()
    return starts, ends


def records(frontend: Role, name: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with api(frontend) as c:
        while True:
            page = c.get(
                "/api/v1/namespaces/_/activations", params={"name": name, "limit": 200, "skip": len(out), "docs": True}
            ).json()
            out += page
            if len(page) < 200:
                return out


def upload(door_role: Role, directory: str, count: int, prefix: str = "f") -> None:
    with door(door_role) as c:
        if c.request("PROPFIND", directory, headers={"Depth": "0"}).status_code == 404:
            assert c.request("MKCOL", directory).status_code == 201
        for k in range(count):
            assert c.put(f"{directory}/{prefix}{k}", content=b"x" * 64).status_code in (201, 204)


def wait_done(frontend: Role, name: str, count: int, timeout: float, cl: Cluster) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        states = activation_states(frontend, name)
        if states.get("done", 0) >= count:
            return states
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: {states} after {timeout} s, {count} expected done\n{cl.logs()[-12000:]}")
        time.sleep(0.2)


# -- without Kafka: placement, offsets, claims ------------------------------------------------------------------


def test_placement_keys_by_action_keeps_a_path_on_one_partition_and_spreads_the_rest() -> None:
    from headrace.functions.messages import activation_message, parse_activation, placement

    ordered = {"scaling": {"ordered": True}}
    plain = {"scaling": {}}

    def row(path: str) -> dict[str, Any]:
        return {"activation_id": uuid.uuid4().hex, "namespace": "alice", "name": "thumbs", "order_key": path}

    for path in ("/raw/a.h5", "/raw/b.h5"):
        spots = {placement(row(path), ordered, 8) for _ in range(50)}
        assert len(spots) == 1  # one path, one partition, whoever publishes it
        assert next(iter(spots))[0] == f"/alice/thumbs\0{path}"
    spread = {placement(row("/raw/a.h5"), plain, 8)[1] for _ in range(400)}
    assert spread == set(range(8))
    assert {placement(row("/x"), plain, 8)[0] for _ in range(10)} == {"/alice/thumbs"}
    two_lanes = {placement(row("/x"), plain, 8, lanes=2)[1] for _ in range(200)}
    assert len(two_lanes) == 2
    r = row("/raw/a.h5")
    assert placement(r, plain, 8) == placement(dict(r), plain, 8)  # deterministic: a copy lands with it
    body = parse_activation(activation_message({**r, "created": 5}, ordered))
    assert body == {"id": r["activation_id"], "ns": "alice", "name": "thumbs", "created": 5, "orderKey": "/raw/a.h5"}
    assert parse_activation(b"not json") is None and parse_activation(b'{"id": 1}') is None


def test_a_partition_commits_up_to_its_oldest_unfinished_message() -> None:
    from headrace.functions.kafka_invoker import _Partition

    part = _Partition()
    assert part.commit_point() is None
    for offset in (10, 11, 12, 13):
        part.add(offset)
    assert part.commit_point() == 10  # nothing finished: where a new owner starts
    part.committed = 10
    part.finish(11)
    part.finish(13)
    assert part.commit_point() is None  # 10 still runs
    part.finish(10)
    assert part.commit_point() == 12
    part.committed = 12
    part.finish(12)
    assert part.commit_point() == 14


def test_claims_and_fenced_writes_give_one_final_record(db_url: str) -> None:
    from headrace.db.engine import Database
    from headrace.functions.store import FunctionStore

    db = Database(db_url)
    db.migrate()
    store = FunctionStore(db)
    base = {"namespace": "admin", "name": "a", "version": "0.0.1", "subject": "admin", "args": {}, "attempt": 1}

    def add(aid: str, **kw: Any) -> None:
        with db.engine.begin() as conn:
            assert store.enqueue_in(conn, {**base, "activation_id": aid, "not_before": 0, **kw})

    def claim(aid: str, now: int) -> tuple[str, dict[str, Any] | None]:
        with db.engine.begin() as conn:
            return store.claim_in(conn, aid, now)

    def fenced(aid: str, fence: tuple[int, int], **values: Any) -> bool:
        with db.engine.begin() as conn:
            return store.update_fenced_in(conn, aid, fence, **values)

    try:
        add("q", max_attempts=3)
        verdict, row = claim("q", 1000)
        assert (
            verdict == "run"
            and row is not None
            and (row["state"], row["start"], row["attempt"]) == ("running", 1000, 1)
        )
        # its invoker died: the next claimant runs it as attempt 2, and the first one's late outcome is refused
        verdict, row = claim("q", 2000)
        assert verdict == "run" and row is not None and (row["attempt"], row["start"]) == (2, 2000)
        assert not fenced("q", (1, 1000), state="done", status_code=0)
        assert fenced("q", (2, 2000), state="done", status_code=0, end=2100)
        assert claim("q", 3000)[0] == "final"
        assert not fenced("q", (2, 2000), state="dead")  # exactly one final record
        final = store.activation("q")
        assert final is not None and (final["state"], final["attempt"]) == ("done", 2)
        # handed back (queued again at the same attempt), then claimed by the next owner
        add("h", max_attempts=1)
        verdict, row = claim("h", 1000)
        assert verdict == "run"
        assert fenced("h", (1, 1000), state="queued", not_before=0)
        assert claim("h", 1500)[0] == "run"
        assert not fenced("h", (1, 1000), state="done")  # the late outcome of the run handed back
        # interrupted with no attempt left: dead, once
        verdict, row = claim("h", 1600)
        assert verdict == "dead" and row is not None and row["state"] == "dead"
        assert claim("h", 1700)[0] == "final"
        # a retry not yet due stays with whoever holds it
        add("later", max_attempts=2, not_before=10_000)
        assert claim("later", 5000)[0] == "later"
        with db.engine.begin() as conn:
            assert store.claim_queued_in(conn, "later", 1, 6000)
            assert not store.claim_queued_in(conn, "later", 1, 7000)
        assert claim("missing", 1)[0] == "missing"
    finally:
        db.close()


def test_activations_spread_over_invokers_and_each_runs_once(cluster: Cluster, tmp_path: Path) -> None:
    files = 90
    marks = marks_dir(tmp_path)
    cluster.controller()
    d, f, *invokers = Cluster.start_all(
        cluster.door(start=False),
        cluster.frontend(start=False),
        *(cluster.invoker("--workers", "2", start=False) for _ in range(3)),
    )
    deploy(f, "mark", mark_code(marks), path="/in", maxScale=2)
    wait_for(lambda: all(len(i.health()["assigned"]) >= 2 for i in invokers), "every invoker assigned partitions")
    upload(d, "/in", files)
    wait_done(f, "mark", files, 180, cluster)

    recs = records(f, "mark")
    assert len(recs) == files
    assert {r["state"] for r in recs} == {"done"}
    assert all(r["attempt"] == 1 and r["response"]["success"] for r in recs)
    assert len({r["eventOffset"] for r in recs}) == files  # one activation per event
    starts, ends = runs(marks)
    assert set(starts) == set(ends) == {r["activationId"] for r in recs}
    assert all(n == 1 for n in starts.values()), "an activation ran twice"
    assert all(len(lines) == 1 for lines in ends.values())
    finished = [i.health()["finished"] for i in invokers]
    assert sum(finished) == files
    assert all(n >= files // 10 for n in finished), f"activations did not spread: {finished}"

    # invokes through the standalone frontend: the record exists as soon as the id is answered
    with api(f) as c:
        r = c.post("/api/v1/namespaces/_/actions/mark", json={"path": "/direct"})
        assert r.status_code == 202
        aid = r.json()["activationId"]
        assert c.get(f"/api/v1/namespaces/_/activations/{aid}").status_code == 200
        r = c.post("/api/v1/namespaces/_/actions/mark?blocking=true&result=true", json={"path": "/blocking"})
        assert r.status_code == 200, r.text
        assert r.json()["path"] == "/blocking"
        r = c.post("/api/v1/namespaces/_/actions/nothing?blocking=true", json={})
        assert r.status_code == 404
    wait_for(lambda: ends_of(marks, aid), "the non-blocking invoke to run")


def ends_of(marks: Path, aid: str) -> bool:
    return (marks / f"{aid}.end").exists()


ORDERED = """
import os, time
LOGS = {logs!r}
def main(args):
    start = time.time_ns()
    time.sleep(0.03)
    with open(os.path.join(LOGS, args["name"]), "a") as f:
        f.write(f"{{args['offset']}} {{start}} {{time.time_ns()}}\\n")
    return {{}}
"""


def test_an_ordered_action_runs_each_path_one_at_a_time_in_event_order(cluster: Cluster, tmp_path: Path) -> None:
    logs = tmp_path / "ordered"
    logs.mkdir(exist_ok=True)
    cluster.controller()
    d, f, *invokers = Cluster.start_all(
        cluster.door(start=False),
        cluster.frontend(start=False),
        *(cluster.invoker("--workers", "4", start=False) for _ in range(2)),
    )
    deploy(f, "ordered", textwrap.dedent(ORDERED.format(logs=str(logs))), path="/o", ordered=True, maxScale=4)
    paths, rounds = 6, 6
    with door(d) as c:
        assert c.request("MKCOL", "/o").status_code == 201
        for _ in range(rounds):  # each round writes every path once more: IN_CLOSE_WRITE each time
            for p in range(paths):
                assert c.put(f"/o/p{p}", content=b"y").status_code in (201, 204)
    wait_done(f, "ordered", paths * rounds, 180, cluster)
    for p in range(paths):
        lines = [tuple(int(x) for x in line.split()) for line in (logs / f"p{p}").read_text().splitlines()]
        assert len(lines) == rounds
        offsets = [line[0] for line in lines]
        assert offsets == sorted(offsets), f"p{p} ran out of event order: {offsets}"
        for (_, _, end), (_, start, _) in itertools.pairwise(lines):
            assert start >= end, f"p{p}: two activations of one path overlapped"
    assert sum(i.health()["finished"] for i in invokers) == paths * rounds


@pytest.mark.slow
def test_an_invoker_started_under_load_takes_work(cluster: Cluster, tmp_path: Path) -> None:
    files = 80
    marks = marks_dir(tmp_path)
    cluster.controller()
    d, f, first = Cluster.start_all(
        cluster.door(start=False), cluster.frontend(start=False), cluster.invoker("--workers", "2", start=False)
    )
    deploy(f, "slow", mark_code(marks), path="/in", maxScale=2)
    # each activation sleeps 1 s: 40 s of work for one invoker with 2 workers, so that on a loaded machine the
    # backlog outlasts the new invoker's start and the rebalance that gives it partitions (how many seconds
    # that takes is measured in bench/distributed.py, not asserted here)
    with api(f) as c:
        body = {"parameters": [{"key": "sleep", "value": 1.0}]}
        assert c.put("/api/v1/namespaces/_/actions/slow?overwrite=true", json=body).status_code == 200
    upload(d, "/in", files)
    wait_for(lambda: first.health()["finished"] >= 4, "the first invoker to be busy")
    launched = time.monotonic()
    second = cluster.invoker("--workers", "2", start=False).launch()
    second.wait_ready()
    ready = time.monotonic()
    try:
        wait_for(lambda: second.health()["finished"] >= 1, "the new invoker to finish an activation")
    except AssertionError as e:
        state = {"first": first.health(), "second": second.health()}
        raise AssertionError(f"{e}: {state}\n{cluster.logs()[-8000:]}") from None
    took = time.monotonic()
    print(f"new invoker: ready {ready - launched:.1f} s after launch, first activation done {took - ready:.1f} s later")
    wait_done(f, "slow", files, 240, cluster)
    starts, ends = runs(marks)
    assert len(ends) == files and all(len(v) == 1 for v in ends.values())
    assert all(n == 1 for n in starts.values()), "a clean rebalance ran an activation twice"
    assert {r["attempt"] for r in records(f, "slow")} == {1}
    assert second.health()["finished"] >= 1


@pytest.mark.slow
def test_an_invoker_killed_mid_activation_has_them_run_again_elsewhere(cluster: Cluster, tmp_path: Path) -> None:
    files = 8
    marks = marks_dir(tmp_path)
    cluster.controller()
    d, f, a, b = Cluster.start_all(
        cluster.door(start=False),
        cluster.frontend(start=False),
        cluster.invoker("--workers", "2", start=False),
        cluster.invoker("--workers", "2", start=False),
    )
    deploy(f, "long", mark_code(marks), path="/in", maxScale=2)
    with api(f) as c:
        body = {"parameters": [{"key": "sleep", "value": 3}]}
        assert c.put("/api/v1/namespaces/_/actions/long?overwrite=true", json=body).status_code == 200
    wait_for(lambda: a.health()["assigned"] and b.health()["assigned"], "both invokers assigned partitions")
    upload(d, "/in", files)
    wait_for(lambda: a.health()["running"] >= 1 and b.health()["running"] >= 1, "both invokers running")
    # kill `a` while at least one of its functions is really running (its worker is a's grandchild)
    mid_run = wait_for(lambda: started_under(a, marks), "a function to run under the first invoker")
    claimed = a.health()["running"]
    a.kill()
    killed_at = time.monotonic()
    states = wait_done(f, "long", files, 240, cluster)
    took = time.monotonic() - killed_at
    print(f"{claimed} activations interrupted ({len(mid_run)} mid-run); all {files} done {took:.1f} s after the kill")
    assert states == {"done": files}
    recs = records(f, "long")
    again = {r["activationId"] for r in recs if r["attempt"] == 2}
    assert len(again) == claimed, f"{claimed} interrupted, {len(again)} ran as a second attempt"
    assert mid_run <= again
    assert all(r["attempt"] in (1, 2) and r["response"]["success"] for r in recs)
    starts, ends = runs(marks)
    assert set(ends) == {r["activationId"] for r in recs}
    # only interrupted ones ran twice (one whose function ended just before the kill, its record unwritten,
    # may even have run to its end twice)
    assert {aid for aid, v in ends.items() if len(v) > 1} <= again and all(len(v) <= 2 for v in ends.values())
    assert {aid for aid, n in starts.items() if n == 2} >= mid_run
    assert {aid for aid, n in starts.items() if n == 2} <= again
    assert all(n <= 2 for n in starts.values())


def test_an_activation_queued_without_a_message_is_published_again_by_the_sweep(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A frontend that died between its database commit and Kafka's acknowledgement leaves an activation queued
    and unpublished, with no message anywhere: the controller's sweep publishes it and an invoker runs it."""
    from sqlalchemy import text

    from headrace.db.engine import Database
    from headrace.functions.dispatch import activation_row
    from headrace.functions.store import FunctionStore, now_ms

    marks = marks_dir(tmp_path)
    cluster.controller(HEADRACE_FN_SWEEP_SECONDS="1")
    d, f, _ = Cluster.start_all(
        cluster.door(start=False), cluster.frontend(start=False), cluster.invoker("--workers", "2", start=False)
    )
    deploy(f, "mark", mark_code(marks), path="/in")
    upload(d, "/in", 3)
    wait_done(f, "mark", 3, 180, cluster)
    db = Database(cluster.db_url)

    def published() -> dict[str, bool]:
        with db.engine.connect() as conn:
            rows = conn.execute(text("SELECT activation_id, published FROM fn_activations WHERE name = 'mark'"))
            return {r[0]: bool(r[1]) for r in rows}

    try:
        # what went through Kafka is marked so once acknowledged
        wait_for(lambda: len(published()) == 3 and all(published().values()), "the 3 activations marked published")
        store = FunctionStore(db, via_kafka=True)
        row = activation_row(store.get("actions", "admin", "mark"), "admin", "mark", {"path": "/stranded"})
        assert row is not None
        row["created"] = row["not_before"] = now_ms() - 120_000  # queued two minutes ago, never published
        with db.engine.begin() as conn:
            assert store.enqueue_in(conn, row)
        aid = row["activation_id"]
        assert published()[aid] is False
        wait_for(lambda: ends_of(marks, aid), "the stranded activation to run")
        wait_for(lambda: published()[aid], "the stranded activation marked published")
        wait_for(lambda: activation_states(f, "mark").get("done") == 4, "the stranded activation's record")
        recs = {r["activationId"]: r for r in records(f, "mark")}
        assert recs[aid]["attempt"] == 1 and recs[aid]["response"]["success"]
    finally:
        db.close()
    assert (marks / f"{aid}.end").read_text().splitlines() == ["/stranded"]  # run once
    controller_log = next(r for r in cluster.roles if r.name == "controller").log()
    assert "published again 1 activations queued without an acknowledged message" in controller_log


def started_under(role: Role, marks: Path) -> set[str]:
    """Activations whose function has started in a worker process of `role` (and not ended)."""
    assert role.proc is not None
    pids = set()  # the PID namespaces of the role's sandboxes
    for p in psutil.Process(role.proc.pid).children(recursive=True):
        with contextlib.suppress(OSError):
            pids.add(os.stat(f"/proc/{p.pid}/ns/pid").st_ino)
    out = set()
    for f in marks.iterdir():
        parts = f.name.split(".")
        if parts[1] == "start" and int(parts[2]) in pids and not (marks / f"{parts[0]}.end").exists():
            out.add(parts[0])
    return out


def test_without_kafka_the_controller_runs_the_feed_and_a_frontend_refuses_invokes(tmp_path: Path, db_url: str) -> None:
    marks = marks_dir(tmp_path)
    cl = Cluster(tmp_path / "plain", db_url, env_extra=sandbox_binds(marks))  # no Kafka anywhere
    try:
        cl.controller()
        d, f = Cluster.start_all(cl.door(start=False), cl.frontend(start=False))
        deploy(f, "mark", mark_code(marks), path="/in")  # made through the frontend, seen by the controller
        upload(d, "/in", 5)
        wait_done(f, "mark", 5, 180, cl)
        with api(f) as c:
            r = c.post("/api/v1/namespaces/_/actions/mark?blocking=true", json={})
            assert r.status_code == 503 and "--kafka" in r.json()["error"]
            assert c.post("/api/v1/namespaces/_/triggers/mark-trigger", json={}).status_code == 503
            assert c.get("/api/v1/namespaces/_/actions/mark").status_code == 200
        assert len(runs(marks)[1]) == 5
    finally:
        cl.stop()
