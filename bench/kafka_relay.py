"""Kafka relay benchmark: how many outbox events per second the relay publishes to a real Kafka broker.

Run from the repository root::

    .venv/bin/python bench/kafka_relay.py [--quick] [--files N] [--runs N] [--out PATH] [--md PATH | --no-md]

One run

1. installs (scripts/install-kafka.sh, cached) and starts an Apache Kafka broker (KRaft, one node,
   tests/support/kafka_harness.py) on free 127.0.0.1 ports,
2. fills a fresh headrace data directory's outbox in-process through the namespace (no HTTP): N uploads
   (CREATE OPEN MODIFY CLOSE_WRITE ATTRIB each), N/2 reads (OPEN ACCESS CLOSE_NOWRITE), N/10 deletes, so
   about 6.6 events per file, a billing record for every upload, read and delete,
3. then, per run, starts a `KafkaRelay` on that outbox in this process (the relay `headrace up --kafka`
   runs) with a fresh topic (so a fresh position), and times it from start until Kafka has acknowledged
   the whole backlog and the relay has stored its position: events/s = events / that time. The topics
   are created beforehand, so topic creation is not timed; connecting is.
4. checks that every topic holds exactly what was sent (sum of the partitions' end offsets).

One untimed warm-up run comes first (the broker's JIT); its rate is printed, not recorded. Before each run the
bench waits (up to --wait-quiet seconds) for other processes to leave the CPUs, and records how much they used.

The broker and the relay share the machine's CPUs; the CPU seconds of each are recorded. Results: --out
(default bench/results/kafka_relay.json) and a section of bench/RESULTS.md between the
`<!-- kafka_relay -->` markers (full runs only unless --md is given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

import storage as sb  # the benchmarks' shared helpers

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR / "tests" / "support"))

from confluent_kafka import Consumer, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from headrace.auth.subject import ROOT  # noqa: E402
from headrace.config import Settings  # noqa: E402
from headrace.events.billing import BILLING_TOPIC  # noqa: E402
from headrace.events.kafka_relay import KafkaRelay  # noqa: E402
from headrace.storage.service import StorageService  # noqa: E402
from kafka_harness import QUIET, KafkaBroker  # noqa: E402

GOAL_EVENTS_PER_S = 20_000
NCPU = len(os.sched_getaffinity(0))
#: Above this share of the CPUs used by other processes during a run, the report says "noisy".
NOISY_OTHER_CPU_PCT = 10.0
PARTITIONS = 3
MARK_BEGIN = "<!-- kafka_relay -->"
MARK_END = "<!-- /kafka_relay -->"


@dataclass(frozen=True)
class Plan:
    files: int
    runs: int
    quick: bool


FULL_PLAN = Plan(files=20_000, runs=3, quick=False)
QUICK_PLAN = Plan(files=2_000, runs=1, quick=True)


def fill_outbox(service: StorageService, files: int) -> dict[str, int]:
    """Uploads, reads and deletes through the namespace, in transactions of 500 changes."""
    ns = service.namespace
    ns.mkdir("/bench", ROOT)
    sums = {"adler32": "0badc0de"}
    nodes = []
    for start in range(0, files, 500):
        with service.db.engine.begin() as conn:
            for i in range(start, min(files, start + 500)):
                node, _, _ = ns.commit_upload_in(
                    conn, f"/bench/f{i:06d}", ROOT, pool="pool0", blob=f"blob{i}", size=4096 + i, sums=sums
                )
                nodes.append(node)
    reads = nodes[::2]
    for start in range(0, len(reads), 500):
        with service.db.engine.begin() as conn:
            for node in reads[start : start + 500]:
                ns.record_read_in(conn, node, ROOT)
    deletes = nodes[1::10]
    for node in deletes:
        ns.delete(node.path, ROOT)
    return {"uploads": files, "reads": len(reads), "deletes": len(deletes)}


def end_offsets(bootstrap: str, topic: str) -> int:
    """Messages in `topic`: the sum of its partitions' end offsets (nothing is ever deleted here)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench", "logger": QUIET})
    try:
        md = c.list_topics(topic, timeout=10).topics[topic]
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions)
    finally:
        c.close()


def wait_quiet(broker_pid: int, max_wait: float) -> float:
    """Wait (up to `max_wait` s) until processes other than this one and the broker use under 10% of the CPUs
    over one second; the share seen last. The relay is CPU-bound, so a busy machine lowers its rate."""
    deadline = time.monotonic() + max_wait
    broker = psutil.Process(broker_pid)
    while True:
        busy0, own0, b0 = sb.busy_cpu_seconds(), time.process_time(), sum(broker.cpu_times()[:2])
        time.sleep(1.0)
        other = sb.busy_cpu_seconds() - busy0 - (time.process_time() - own0) - (sum(broker.cpu_times()[:2]) - b0)
        pct = max(0.0, 100 * other / NCPU)
        if pct < NOISY_OTHER_CPU_PCT or time.monotonic() > deadline:
            return pct


def create_topics(bootstrap: str, *topics: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "logger": QUIET})
    futures = admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    for topic, fut in futures.items():
        try:
            fut.result(30)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating {topic}: {exc}") from exc


async def relay_once(service: StorageService, bootstrap: str, topic: str, head: int) -> dict[str, float]:
    relay = KafkaRelay(service, bootstrap, topic=topic)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    relay.start()
    while relay.stored_position < head:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    await relay.close()
    return {"seconds": elapsed, "relay_cpu_s": cpu}


async def measure(
    service: StorageService,
    broker: KafkaBroker,
    broker_proc: psutil.Process,
    head: int,
    billing: int,
    runs: int,
    wait_for_quiet: float,
) -> list[dict[str, float]]:
    """`runs` relays over the same outbox, each to a topic of its own (so each starts at offset 0), after one
    untimed warm-up run: a broker that has just started runs interpreted code for its first seconds, and a
    deployed broker does not."""
    create_topics(broker.bootstrap, "bench-warmup", BILLING_TOPIC)
    warm = await relay_once(service, broker.bootstrap, "bench-warmup", head)
    print(f"warm-up: {head / warm['seconds']:,.0f} events/s (not counted)", flush=True)
    results = []
    for i in range(runs):
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topics(broker.bootstrap, topic, BILLING_TOPIC)
        billing_before = end_offsets(broker.bootstrap, BILLING_TOPIC)
        if wait_for_quiet > 0 and (pct := wait_quiet(broker_proc.pid, wait_for_quiet)) >= NOISY_OTHER_CPU_PCT:
            print(f"warning: other processes use {pct:.0f}% of the CPUs; this run will be noisy", flush=True)
        cpu_b0 = sum(broker_proc.cpu_times()[:2])
        busy0 = sb.busy_cpu_seconds()
        result = await relay_once(service, broker.bootstrap, topic, head)
        result["broker_cpu_s"] = sum(broker_proc.cpu_times()[:2]) - cpu_b0
        other = sb.busy_cpu_seconds() - busy0 - result["broker_cpu_s"] - result["relay_cpu_s"]
        result["other_cpu_pct"] = round(min(100.0, max(0.0, 100 * other / (result["seconds"] * NCPU))), 1)
        result["events"] = head
        result["events_per_s"] = head / result["seconds"]
        result["messages_per_s"] = (head + billing) / result["seconds"]
        sent = end_offsets(broker.bootstrap, topic)
        billed = end_offsets(broker.bootstrap, BILLING_TOPIC) - billing_before
        if sent != head or billed != billing:
            raise RuntimeError(f"run {i + 1}: {sent} events (want {head}), {billed} billing records (want {billing})")
        results.append(result)
        print(
            f"run {i + 1}: {head:,} events + {billing:,} billing records in {result['seconds']:.2f} s = "
            f"{result['events_per_s']:,.0f} events/s (relay CPU {result['relay_cpu_s']:.1f} s, "
            f"broker CPU {result['broker_cpu_s']:.1f} s, other processes {result['other_cpu_pct']:.0f}% of the CPUs)",
            flush=True,
        )
    return results


def run(plan: Plan, keep_tmp: bool, wait_for_quiet: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="headrace-kafka-bench-"))
    broker = KafkaBroker(tmp / "kafka")
    try:
        print(f"workspace {tmp}; plan {plan}", flush=True)
        broker.start()
        broker_proc = psutil.Process(broker.proc.pid if broker.proc else 0)
        settings = Settings(
            data_dir=tmp / "data", admin_key="benchkey", fsync=False, cli_config=tmp / "cli.json", log_level="warning"
        )
        service, _ = StorageService.open(settings)
        try:
            t0 = time.monotonic()
            made = fill_outbox(service, plan.files)
            head = service.log.head()
            print(f"outbox: {head:,} events from {made} in {time.monotonic() - t0:.1f} s", flush=True)
            billing_per_run = made["uploads"] + made["reads"] + made["deletes"]
            runs = asyncio.run(measure(service, broker, broker_proc, head, billing_per_run, plan.runs, wait_for_quiet))
        finally:
            service.close()
    finally:
        broker.stop()
        if not keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    rates = [r["events_per_s"] for r in runs]
    median = statistics.median(rates)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "machine": machine_info(),
        "outbox": {"events": head, **made, "billing_records": billing_per_run},
        "runs": runs,
        "events_per_s_median": median,
        "events_per_s_best": max(rates),
        "goal": {"events_per_s": GOAL_EVENTS_PER_S, "status": "PASS" if median >= GOAL_EVENTS_PER_S else "FAIL"},
    }


def machine_info() -> dict[str, Any]:
    import confluent_kafka

    libs = next(iter(sorted((Path.home() / ".cache" / "headrace").glob("kafka-*"))), None)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": sb.cpu_model(),
        "python": platform.python_version(),
        "kafka": os.environ.get("KAFKA_VERSION") or (libs.name.removeprefix("kafka-") if libs else "unknown"),
        "java": _first_line(["java", "-version"]),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "headrace_git": _first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"]),
    }


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (out.stdout + out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def render_markdown(report: dict[str, Any]) -> str:
    plan = report["plan"]
    m = report["machine"]
    ob = report["outbox"]
    lines = [
        MARK_BEGIN,
        "## Kafka relay",
        "",
        f"Generated by `.venv/bin/python bench/kafka_relay.py{' --quick' if plan['quick'] else ''}` on "
        f"{report['date']}; raw numbers in bench/results/kafka_relay.json.",
        "",
        f"The relay (`headrace up --kafka`) publishing a backlog of {ob['events']:,} outbox events "
        f"({ob['uploads']:,} uploads, {ob['reads']:,} reads, {ob['deletes']:,} deletes) as CloudEvents to a "
        f"{PARTITIONS}-partition topic, plus {ob['billing_records']:,} dCache billing records to `billing`, "
        f"to Apache Kafka {m['kafka']} (one KRaft node on the same {m['nproc']} CPUs; {m['java']}), "
        f"idempotent producer, acks=all; librdkafka {m['librdkafka']}. Timed from relay start until every "
        "message is acknowledged and the position stored; after one untimed warm-up run. Relay CPU counts all of "
        "this process's threads (librdkafka's too); other CPU % is what other processes used, a noise indicator.",
        "",
        "| run | seconds | events/s | messages/s (events + billing) | relay CPU s | broker CPU s | other CPU % |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(report["runs"], 1):
        lines.append(
            f"| {i} | {r['seconds']:.2f} | {r['events_per_s']:,.0f} | {r['messages_per_s']:,.0f} | "
            f"{r['relay_cpu_s']:.1f} | {r['broker_cpu_s']:.1f} | {r['other_cpu_pct']:.0f} |"
        )
    goal = report["goal"]
    noise = max(r["other_cpu_pct"] for r in report["runs"])
    if noise > NOISY_OTHER_CPU_PCT:
        lines += [
            "",
            f"**Noisy run:** other processes used up to {noise:.0f}% of the CPUs meanwhile; the relay is CPU-bound, "
            "so treat the rates as low and re-run on a quiet machine.",
        ]
    lines += [
        "",
        f"Median: **{report['events_per_s_median']:,.0f} events/s**; goal >= {goal['events_per_s']:,} events/s: "
        f"**{goal['status']}**.",
        MARK_END,
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="2,000 files, 1 run: a smoke test")
    p.add_argument("--files", type=int, help="uploads in the outbox (events are ~6.6x this)")
    p.add_argument("--runs", type=int, help="relay runs over the same outbox (median reported)")
    p.add_argument("--out", type=Path, help="JSON results (default bench/results/kafka_relay[-quick].json)")
    p.add_argument("--md", type=Path, help="markdown file to put the section in (default bench/RESULTS.md)")
    p.add_argument("--no-md", action="store_true", help="write no markdown")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=300.0,
        metavar="S",
        help="before each run, wait up to S seconds for other processes to leave the CPUs (default 300; 0: no)",
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (broker log, data)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    plan = Plan(files=args.files or plan.files, runs=args.runs or plan.runs, quick=plan.quick)
    report = run(plan, args.keep_tmp, args.wait_quiet)
    out: Path = args.out or BENCH_DIR / "results" / ("kafka_relay-quick.json" if plan.quick else "kafka_relay.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    md: Path | None = None if args.no_md else (args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md"))
    section = render_markdown(report)
    if md is not None:
        sb.write_section(md, section, MARK_BEGIN, MARK_END)
        print(f"wrote {md}")
    print()
    print(section)
    return 0  # a missed goal is a figure in the table, as in the other benchmarks, not a failed `make bench`


if __name__ == "__main__":
    sys.exit(main())
