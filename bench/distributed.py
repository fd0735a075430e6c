"""Distributed functions benchmark: activations through Kafka to `headrace invoker` processes, on this machine.

Run from the repository root::

    .venv/bin/python bench/distributed.py [--quick] [--db postgresql|sqlite] [--invokers 1,2,4] [--out PATH]
                                          [--md PATH | --no-md]

Every process is real and on 127.0.0.1 (tests/support/cluster_harness.py starts them): an Apache Kafka broker
(KRaft, tests/support/kafka_harness.py), the database (PostgreSQL from tests/support/pg_harness.py, fsync off as
in the tests; or a SQLite file), `headrace controller`, `door` and `invoker` processes. Three measurements:

1. **activations/s with 1, 2 and 4 invokers** (4 workers each): a backlog of no-op activations is written
   into the database as queued while the controller is stopped; the invokers are started and have their
   partitions; then the controller starts and publishes the whole backlog at once (what it does with queued
   activations at every start). Rate = activations / (last end - first start), from the activation records,
   and the steady rate between the 10th and the 90th percentile of the end times. The same backlog drained
   by the embedded `headrace up` (SQLite, its own workers) is the reference. CPU seconds of each part
   (invokers with their workers, controller, Kafka, PostgreSQL) over the drain say where the time goes.
2. **latency from a PUT's response to the function's first line**, sequential 4 KiB PUTs with a warm action
   (minScale 1), as bench/functions.py measures it (the function writes its first line's time to a FIFO):
   the embedded `headrace up`; `headrace up` with HEADRACE_ACTIVATIONS=kafka and one invoker process (the
   Kafka hop alone: the feed runs in the door's process); and the separate roles (door, controller,
   invoker), where the controller also has to notice another process's commit.
3. **time for a new invoker to take work**: one invoker drains a backlog of 50 ms activations; a second is
   launched; from its launch: its /healthz answers (process up, topics known, subscribed), it holds
   partitions (the rebalance), it has finished its first activation.

Results: --out (default bench/results/distributed.json; distributed-quick.json with --quick) and the section of
bench/RESULTS.md between the `distributed-bench` markers (full runs only, unless --md is given).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

import functions as fb
import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
sys.path.insert(0, str(REPO_DIR / "tests" / "support"))

from cluster_harness import Cluster  # noqa: E402
from headrace.db.engine import Database  # noqa: E402
from headrace.functions.dispatch import activation_row  # noqa: E402
from headrace.functions.store import FunctionStore  # noqa: E402
from kafka_harness import KafkaBroker  # noqa: E402

MD_BEGIN = "<!-- distributed-bench:begin (written by bench/distributed.py) -->"
MD_END = "<!-- distributed-bench:end -->"
NCPU = len(os.sched_getaffinity(0))
PROFILE: str | None = None  # --profile: a directory for the invokers' flame graphs
PROFILE_EXT = ".svg"  # --profile-raw: ".txt", py-spy's collapsed stacks
WORKERS = 4  # per invoker
PARTITIONS = 8
NOOP = "def main(args):\n    return {}\n"
SLEEP_50MS = "import time\n\ndef main(args):\n    time.sleep(0.05)\n    return {}\n"


@dataclass(frozen=True)
class Plan:
    backlog: int
    latency: int
    warmup: int
    takeover_runs: int
    takeover_backlog: int
    quick: bool


FULL_PLAN = Plan(backlog=4000, latency=300, warmup=20, takeover_runs=3, takeover_backlog=2000, quick=False)
QUICK_PLAN = Plan(backlog=600, latency=40, warmup=5, takeover_runs=1, takeover_backlog=800, quick=True)


# -- set-up ---------------------------------------------------------------------------------------------------


class Databases:
    """Fresh databases of one kind: PostgreSQL databases in one cluster, or SQLite files."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.pg: Any = None
        self.count = 0
        if kind == "postgresql":
            from pg_harness import PostgresCluster

            self.pg = PostgresCluster().start()

    def new(self) -> str:
        self.count += 1
        if self.pg is not None:
            return str(self.pg.create_database(f"bench{self.count}"))
        return f"sqlite:///{self.workdir / f'db{self.count}.sqlite'}"

    def pid(self) -> int | None:
        return self.pg.proc.pid if self.pg is not None and self.pg.proc is not None else None

    def close(self) -> None:
        if self.pg is not None:
            self.pg.stop()


def new_cluster(workdir: Path, db_url: str, broker: KafkaBroker, name: str) -> Cluster:
    tag = uuid.uuid4().hex[:8]
    return Cluster(
        workdir / name,
        db_url,
        broker.bootstrap,
        env_extra={
            "HEADRACE_ACTIVATION_TOPIC": f"activations-{tag}",
            "HEADRACE_ACTIVATION_RESULTS_TOPIC": f"results-{tag}",
            "HEADRACE_INVOKER_GROUP": f"invokers-{tag}",
            "HEADRACE_KAFKA_TOPIC": f"events-{tag}",
            "HEADRACE_ACTIVATION_PARTITIONS": str(PARTITIONS),
            "HEADRACE_ADMIN_KEY": sb.PASSWORD,
            "HEADRACE_FSYNC": "1",
        },
        log_level="warning",
    )


def deploy(db_url: str, name: str, code: str, scaling: dict[str, float], path: str | None = None) -> None:
    db = Database(db_url)
    try:
        store = FunctionStore(db)
        fb.put_action(store, fb.ActionDef(name, code, path, scaling))
        if path is not None:
            fb.put_trigger(store, name, path)
    finally:
        db.close()


def queue_backlog(db_url: str, action: str, n: int) -> None:
    """`n` queued activations of `action`, written in one transaction (as the feed would queue them)."""
    db = Database(db_url)
    try:
        store = FunctionStore(db)
        row = store.get("actions", "admin", action)
        with db.engine.begin() as conn:
            for i in range(n):
                a = activation_row(row, "admin", action, {"path": f"/backlog/{i}"})
                assert a is not None
                a.update({"rule": "backlog", "trigger": "backlog"})  # made by a rule, as the feed's are
                store.enqueue_in(conn, a)
    finally:
        db.close()


def records(db_url: str, action: str) -> list[dict[str, Any]]:
    db = Database(db_url)
    try:
        rows = FunctionStore(db).activations("admin", name=action, limit=0)
    finally:
        db.close()
    out = []
    for r in rows:
        init = next((a["value"] for a in r.get("annotations") or [] if a.get("key") == "initTime"), None)
        out.append({**r, "status": r.get("status_code"), "init_ms": init})
    return out


def wait_states(db_url: str, action: str, n: int, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = records(db_url, action)
        if sum(1 for r in rows if r["state"] in ("done", "dead")) >= n:
            return rows
        if time.monotonic() > deadline:
            states: dict[str, int] = {}
            for r in rows:
                states[r["state"]] = states.get(r["state"], 0) + 1
            raise sb.BenchError(f"{action}: {states} after {timeout:.0f} s, {n} expected finished")
        time.sleep(0.25)


def drain_rate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Activations per second from the records: first start -> last end, and steady (10th..90th percentile)."""
    done = [r for r in rows if r["state"] == "done" and r["start"] is not None and r["end"] is not None]
    ends = sorted(int(r["end"]) for r in done)
    first = min(int(r["start"]) for r in done)
    span = (ends[-1] - first) / 1000
    return {
        "activations": len(rows),
        "done": len(done),
        "retried": sum(1 for r in rows if int(r["attempt"] or 1) > 1),
        "cold_starts": sum(1 for r in rows if r["init_ms"] is not None),
        "seconds": round(span, 2),
        "per_s": round(len(done) / span, 1) if span > 0 else None,
        "steady_per_s": fb.steady_rate(ends),
    }


class CpuMeter:
    """CPU seconds of named process trees (children that ended included) between start() and stop()."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        self.trees = trees
        self.before: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.wall = 0.0

    def _now(self) -> dict[str, float]:
        return {name: sum(fb.tree_cpu_seconds(p) for p in pids) for name, pids in self.trees.items()}

    def __enter__(self) -> CpuMeter:
        self.before = self._now()
        self.machine = psutil.cpu_times()
        self.t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.t0
        after = self._now()
        self.seconds = {k: round(after[k] - self.before[k], 2) for k in after}
        m = psutil.cpu_times()
        busy = (m.user + m.system + m.nice) - (self.machine.user + self.machine.system + self.machine.nice)
        self.seconds["machine"] = round(busy, 2)

    def report(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 2),
            "cpu_s": self.seconds,
            "machine_busy_pct": round(100 * self.seconds["machine"] / (self.wall * NCPU), 1) if self.wall else None,
        }


# -- 1. throughput --------------------------------------------------------------------------------------------


def throughput_kafka(workdir: Path, dbs: Databases, broker: KafkaBroker, n: int, plan: Plan) -> dict[str, Any]:
    db_url = dbs.new()
    cl = new_cluster(workdir, db_url, broker, f"throughput-{n}")
    try:
        controller = cl.controller()  # makes the schema and the admin user
        deploy(db_url, "noop", NOOP, {"minScale": 0, "maxScale": WORKERS})
        controller.stop()
        queue_backlog(db_url, "noop", plan.backlog)
        invokers = Cluster.start_all(*(cl.invoker("--workers", str(WORKERS), start=False) for _ in range(n)))
        wait_until(lambda: sum(len(i.health()["assigned"]) for i in invokers) == PARTITIONS, "partitions", 60)
        trees = {
            "invokers": [i.proc.pid for i in invokers if i.proc],
            "controller": [],
            "kafka": [broker.proc.pid] if broker.proc else [],
        }
        if dbs.pid() is not None:
            trees["postgresql"] = [dbs.pid() or 0]
        with contextlib.ExitStack() as spies:
            for k, pid in enumerate(trees["invokers"]):
                out_file = f"{PROFILE}/distributed-invoker{k + 1}-of-{n}{PROFILE_EXT}" if PROFILE else None
                spies.enter_context(fb.py_spy(pid, out_file))
            with CpuMeter(trees) as cpu:
                controller.start()
                assert controller.proc is not None
                trees["controller"] = [controller.proc.pid]
                rows = wait_states(db_url, "noop", plan.backlog, 600)
        out = drain_rate(rows)
        out["per_invoker"] = [i.health()["finished"] for i in invokers]
        out.update(cpu.report())
        return out
    finally:
        cl.stop()


def throughput_embedded(workdir: Path, plan: Plan) -> dict[str, Any]:
    """The same backlog drained by `headrace up` (SQLite, the defaults): queued offline, run at start."""
    server = fb.FnServer(
        workdir,
        {},
        [fb.ActionDef("noop", NOOP, None, {"minScale": 0, "maxScale": WORKERS})],
        [],
    )

    def backlog(service: Any) -> None:
        queue_backlog(service.settings.database_url, "noop", plan.backlog)

    server.dir.mkdir(parents=True, exist_ok=True)
    server.data.mkdir()
    server.offline(server._deploy)
    server.offline(backlog)
    try:
        with CpuMeter({"server": []}) as cpu:
            server.start()
            cpu.trees["server"] = [server.pid]
            rows = wait_states(f"sqlite:///{server.db_path}", "noop", plan.backlog, 600)
        out = drain_rate(rows)
        out.update(cpu.report())
        return out
    finally:
        server.stop()


# -- 2. latency -----------------------------------------------------------------------------------------------


def sequential(door_port: int, rec: fb.Recorder, directory: str, plan: Plan) -> dict[str, Any]:
    body = os.urandom(fb.FILE_SIZE)
    door = fb.Door(door_port)
    latencies: list[int] = []
    try:
        for i in range(plan.warmup):
            door.put(f"{directory}/w{i}", body)
            rec.wait(f"{directory}/w{i}", 120)
        for i in range(plan.latency):
            _, t1 = door.put(f"{directory}/f{i}", body)
            first, _ = rec.wait(f"{directory}/f{i}", 60)
            latencies.append(first - t1)
            time.sleep(fb.GAP_S)
    finally:
        door.close()
    return {"latency": sb.summarize(latencies), "duplicates": rec.duplicates_of(directory + "/")}


def fifo_bind(rec: fb.Recorder) -> dict[str, str]:
    """The recorder's FIFO bound into the (admin's) function sandboxes, as bench/functions.py does."""
    return {"HEADRACE_SANDBOX_BIND": f"admin:{rec.path.parent}"}


def latency_embedded(workdir: Path, rec: fb.Recorder, plan: Plan, extra_env: dict[str, str]) -> dict[str, Any]:
    action = fb.ActionDef("warm", fb.action_code(rec.path), "/warm", {"minScale": 1, "maxScale": 4})
    server = fb.FnServer(workdir, {**fifo_bind(rec), **extra_env}, [action], ["/warm"])
    server.start()
    try:
        return sequential(server.port, rec, "/warm", plan)
    finally:
        server.stop()


def latency_up_kafka(workdir: Path, rec: fb.Recorder, plan: Plan, broker: KafkaBroker) -> dict[str, Any]:
    """`headrace up` publishing activations to Kafka, one invoker process running them (same SQLite file)."""
    cl = new_cluster(workdir, "", broker, "up-kafka")
    cl.env_extra.update(fifo_bind(rec))  # the invoker runs the function
    env = {k: v for k, v in cl.env_extra.items() if k.startswith("HEADRACE_") and k != "HEADRACE_FSYNC"}
    env.update(HEADRACE_KAFKA=broker.bootstrap, HEADRACE_ACTIVATIONS="kafka")
    action = fb.ActionDef("warm", fb.action_code(rec.path), "/warm", {"minScale": 1, "maxScale": 4})
    server = fb.FnServer(workdir / "up-kafka", env, [action], ["/warm"])
    server.start()
    try:
        cl.db_url = f"sqlite:///{server.db_path}"
        cl.invoker("--workers", str(WORKERS))
        return sequential(server.port, rec, "/warm", plan)
    finally:
        cl.stop()
        server.stop()


def latency_roles(workdir: Path, dbs: Databases, rec: fb.Recorder, plan: Plan, broker: KafkaBroker) -> dict[str, Any]:
    db_url = dbs.new()
    cl = new_cluster(workdir, db_url, broker, "roles-latency")
    cl.env_extra.update(fifo_bind(rec))
    try:
        cl.controller()
        deploy(db_url, "warm", fb.action_code(rec.path), {"minScale": 1, "maxScale": 4}, "/warm")
        door, _ = Cluster.start_all(cl.door(start=False), cl.invoker("--workers", str(WORKERS), start=False))
        sb.mkcol(door.port, "/warm")
        return sequential(door.port, rec, "/warm", plan)
    finally:
        cl.stop()


# -- 3. a new invoker taking work -----------------------------------------------------------------------------


def takeover(workdir: Path, dbs: Databases, broker: KafkaBroker, plan: Plan) -> dict[str, Any]:
    db_url = dbs.new()
    cl = new_cluster(workdir, db_url, broker, "takeover")
    samples: list[dict[str, float]] = []
    try:
        controller = cl.controller()
        deploy(db_url, "slow", SLEEP_50MS, {"minScale": 0, "maxScale": 2})
        controller.stop()
        queue_backlog(db_url, "slow", plan.takeover_backlog)
        first = cl.invoker("--workers", "2")
        controller.start()
        wait_until(lambda: first.health()["finished"] >= 20, "the first invoker to be busy", 120)
        for k in range(plan.takeover_runs):
            new = cl.invoker("--workers", "2", name=f"new-{k}", start=False)
            t0 = time.monotonic()
            new.launch()
            marks: dict[str, float] = {}
            deadline = t0 + 120
            while "first_done_s" not in marks:
                if time.monotonic() > deadline:
                    raise sb.BenchError(f"the new invoker took no work in 120 s:\n{new.log()[-3000:]}")
                try:
                    h = new.health()
                except Exception:
                    time.sleep(0.01)
                    continue
                now = time.monotonic() - t0
                marks.setdefault("ready_s", now)
                if h["assigned"]:
                    marks.setdefault("assigned_s", now)
                if h["finished"]:
                    marks["first_done_s"] = now
                time.sleep(0.01)
            samples.append({k: round(v, 2) for k, v in marks.items()})
            new.stop()
            time.sleep(2.0)
        left = first.health()["finished"]
        return {"samples": samples, "first_invoker_finished": left, "backlog": plan.takeover_backlog}
    finally:
        cl.stop()


# -- running it -----------------------------------------------------------------------------------------------


def wait_until(probe: Callable[[], Any], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if probe():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise sb.BenchError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def recorder(workdir: Path, name: str) -> Iterator[fb.Recorder]:
    fifos = workdir / "fifos"  # a directory of their own: a sandbox may not be shown the servers' data
    fifos.mkdir(exist_ok=True)
    rec = fb.Recorder(fifos / f"{name}.fifo")
    try:
        yield rec
    finally:
        rec.close()


def run(plan: Plan, db_kind: str, counts: list[int], only: set[str]) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="headrace-distributed-"))
    broker = KafkaBroker(workdir / "kafka").start()
    dbs = Databases(db_kind, workdir)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": asdict(plan),
        "machine": {"cpus": NCPU, "platform": platform.platform(), "python": platform.python_version()},
        "db": db_kind,
        "partitions": PARTITIONS,
        "workers_per_invoker": WORKERS,
    }
    try:
        if "throughput" in only:
            report["throughput"] = {"embedded": throughput_embedded(workdir / "embedded", plan)}
            print(f"embedded backlog: {report['throughput']['embedded']['per_s']}/s", flush=True)
            for n in counts:
                r = throughput_kafka(workdir, dbs, broker, n, plan)
                report["throughput"][f"kafka-{n}"] = r
                print(f"{n} invoker(s): {r['per_s']}/s (steady {r['steady_per_s']}/s), cpu {r['cpu_s']}", flush=True)
        if "latency" in only:
            latency: dict[str, Any] = {}
            with recorder(workdir, "embedded") as rec:
                latency["embedded"] = latency_embedded(workdir / "lat-embedded", rec, plan, {})
            with recorder(workdir, "up-kafka") as rec:
                latency["up-kafka"] = latency_up_kafka(workdir, rec, plan, broker)
            with recorder(workdir, "roles") as rec:
                latency["roles"] = latency_roles(workdir, dbs, rec, plan, broker)
            report["latency"] = latency
            for k, v in latency.items():
                print(f"latency {k}: {v['latency']}", flush=True)
        if "takeover" in only:
            report["takeover"] = takeover(workdir, dbs, broker, plan)
            print(f"takeover: {report['takeover']['samples']}", flush=True)
    finally:
        dbs.close()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return report


def cpu_per_activation(throughput: dict[str, Any]) -> dict[str, dict[str, float]]:
    """CPU ms per activation of each part of each throughput run, headrace's total, and the rest's."""
    out: dict[str, dict[str, float]] = {}
    for key, r in throughput.items():
        n = r.get("done") or 0
        cpu = dict(r.get("cpu_s") or {})
        if not n or "machine" not in cpu:
            continue
        machine = cpu.pop("machine")
        ours = sum(cpu.values())
        row = {k: round(1000 * v / n, 2) for k, v in cpu.items()}
        row["ours"] = round(1000 * ours / n, 2)
        row["other"] = round(1000 * max(0.0, machine - ours) / n, 2)
        out[key] = row
    return out


def render(report: dict[str, Any]) -> str:
    t = report.get("throughput", {})
    lat = report.get("latency", {})
    lines = [
        MD_BEGIN,
        "## Distributed functions: `bench/distributed.py`",
        "",
        f"{report['date']}, {report['machine']['cpus']} CPUs; Kafka (one broker, KRaft) and "
        f"{'PostgreSQL (fsync off, as in the tests)' if report['db'] == 'postgresql' else 'a SQLite file'} on "
        f"the same machine; activation topic of {report['partitions']} partitions; "
        f"{report['workers_per_invoker']} workers per invoker. Every process on 127.0.0.1.",
        "",
        f"### Throughput: a backlog of {report['plan']['backlog']:,} no-op activations",
        "",
        "| | activations/s | steady/s | drain (s) | CPU s: invokers / controller / Kafka / PostgreSQL | machine busy |",
        "|---|---:|---:|---:|---|---:|",
    ]
    e = t.get("embedded")
    if e:
        lines.append(
            f"| embedded `headrace up` (SQLite) | {e['per_s']} | {e['steady_per_s']} | {e['seconds']} | "
            f"server {e['cpu_s'].get('server')} | {e['machine_busy_pct']}% |"
        )
    for key, r in t.items():
        if not key.startswith("kafka-"):
            continue
        c = r["cpu_s"]
        lines.append(
            f"| {key.split('-')[1]} invoker(s), split {r['per_invoker']} | {r['per_s']} | {r['steady_per_s']} | "
            f"{r['seconds']} | {c.get('invokers')} / {c.get('controller')} / {c.get('kafka')} / "
            f"{c.get('postgresql', '-')} | {r['machine_busy_pct']}% |"
        )
    per = cpu_per_activation(t)
    if per:
        lines += [
            "",
            "CPU per activation (ms), from the table above: what each part costs, and what the rest of the machine "
            "used meanwhile",
            "",
            "| | invokers + workers | controller | Kafka | PostgreSQL | all of headrace's | rest of the machine |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for key, c in per.items():
            lines.append(
                f"| {key} | {c.get('invokers', c.get('server', '-'))} | {c.get('controller', '-')} | "
                f"{c.get('kafka', '-')} | {c.get('postgresql', '-')} | {c['ours']} | {c['other']} |"
            )
    lines += [
        "",
        "### Latency: PUT answered -> the function's first line (sequential 4 KiB PUTs, warm action)",
        "",
        "| path | p50 ms | p99 ms | max ms | n |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "embedded": "embedded `headrace up` (SQLite)",
        "up-kafka": "`headrace up` + Kafka + 1 invoker process",
        "roles": "door, controller, invoker as separate processes",
    }
    for key, v in lat.items():
        s = v["latency"]
        lines.append(f"| {names.get(key, key)} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} | {s['n']} |")
    lines += [
        "",
        "### A new invoker under load: seconds from its launch",
        "",
        "| run | /healthz answers | holds partitions | first activation done |",
        "|---:|---:|---:|---:|",
    ]
    for k, s in enumerate(report.get("takeover", {}).get("samples", []), 1):
        lines.append(f"| {k} | {s.get('ready_s')} | {s.get('assigned_s')} | {s.get('first_done_s')} |")
    lines += ["", report.get("notes", "").strip(), MD_END, ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small run, to check the bench itself")
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--invokers", default="1,2,4", help="invoker counts for the throughput runs")
    p.add_argument("--only", default="throughput,latency,takeover", help="which parts to run (comma-separated)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None, help="write the RESULTS.md section here (quick runs too)")
    p.add_argument("--no-md", action="store_true")
    p.add_argument("--notes", type=Path, default=None, help="a Markdown file appended to the section")
    p.add_argument("--from-json", type=Path, default=None, help="render the section from a report, run nothing")
    p.add_argument("--profile", default=None, metavar="DIR", help="py-spy flame graphs of the invokers' drains here")
    p.add_argument("--profile-raw", action="store_true", help="collapsed stacks (.txt) instead of flame graphs")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    global PROFILE, PROFILE_EXT
    args = parse_args(argv)
    PROFILE, PROFILE_EXT = args.profile, ".txt" if args.profile_raw else ".svg"
    fb.PROFILE_SCOPE = "gil"  # the invoker's own Python (its workers run no-ops; py-spy counts their waits)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    counts = [int(x) for x in args.invokers.split(",") if x.strip()]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.from_json is not None:
        report = json.loads(args.from_json.read_text())
        if args.notes is not None:
            report["notes"] = args.notes.read_text()
        sb.write_section(args.md or BENCH_DIR / "RESULTS.md", render(report), MD_BEGIN, MD_END)
        return 0
    report = run(plan, args.db, counts, only)
    if args.notes is not None:
        report["notes"] = args.notes.read_text()
    RESULTS_DIR.mkdir(exist_ok=True)
    out = args.out or RESULTS_DIR / ("distributed-quick.json" if plan.quick else "distributed.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    md = args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md")
    if md is not None and not args.no_md:
        sb.write_section(md, render(report), MD_BEGIN, MD_END)
        print(f"wrote the distributed section of {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
