"""Events benchmark: how fast a completed upload reaches an SSE subscriber, against Linux inotify as the floor.

Run from the repository root (`make bench` runs it after bench/storage.py)::

    .venv/bin/python bench/events.py [--quick] [--configs fsync,nofsync] [--out PATH] [--md PATH | --no-md]

One run measures, each headrace configuration on its own fresh server (`headrace up`, started as
bench/storage.py starts it; "fsync" is the default configuration, "nofsync" sets HEADRACE_FSYNC=0):

1. **Latency**: 1,000 sequential 4 KiB PUTs (200 with --quick) to one directory through the door, over one
   keep-alive connection, after 50 warm-up PUTs; back to back, and again with 10 ms after each. An SSE
   subscriber in a process of its own holds a channel subscribed to the directory (flags IN_CLOSE_WRITE) and
   timestamps each event as its `data:` line is read. Latency = event read - PUT completed (the response
   read by the uploader); both timestamps are CLOCK_MONOTONIC, one clock for every process. p50/p99/max over
   the samples of all runs. The PUT round trip itself is reported alongside.
2. **Throughput**: 5,000 4 KiB files (1,000 with --quick) created through the door by 16 concurrent writers
   (bench/loadgen's Go generator when Go is installed, else 16 Python processes), with an SSE subscriber on
   the directory. Files/s as the generator measures it (median run); events/s into the log from the
   outbox's head offset before and after (an upload writes 5 events); whether every IN_CLOSE_WRITE reached
   the subscriber exactly once, and how long after the last PUT returned the last one arrived.

and, first, the **floor**: Linux inotify on a local directory in the same workspace (same disk): 1,000
write+close of a 4 KiB file, an inotify reader (ctypes on libc's inotify_init1/inotify_add_watch) in a
process of its own; latency = event read - close() returned, and event read - close() called (the ratio
base: the event is raised inside close(), so the first is ~0 and can be negative). Each measurement runs 3
times (--runs; 1 with --quick).

Every number goes to --out (default bench/results/events.json, events-quick.json with --quick) and a
section of bench/RESULTS.md (between the `events-bench` markers; the rest of the file is bench/storage.py's),
with the ratios headrace / inotify and the goals: p50 < 2 ms, p99 < 10 ms, >= 2,000 file creations/s.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import http.client
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
HOST = sb.HOST
AUTH = (sb.USER, sb.PASSWORD)
EVENTS = "/api/v1/events"
MD_BEGIN = "<!-- events-bench:begin (written by bench/events.py) -->"
MD_END = "<!-- events-bench:end -->"
CONFIGS: dict[str, dict[str, str]] = {"fsync": {}, "nofsync": {"HEADRACE_FSYNC": "0"}}
#: The pause after each upload in the second latency run.
SPACED_GAP_S = 0.010
GOAL_P50_MS, GOAL_P99_MS, GOAL_FILES_PER_S = 2.0, 10.0, 2000.0

IN_CLOSE_WRITE = 0x00000008
INOTIFY_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


@dataclass(frozen=True)
class Plan:
    uploads: int
    warmup: int
    size: int
    files: int
    clients: int
    runs: int
    quick: bool


FULL_PLAN = Plan(uploads=1000, warmup=50, size=4096, files=5000, clients=16, runs=3, quick=False)
QUICK_PLAN = Plan(uploads=200, warmup=20, size=4096, files=1000, clients=16, runs=1, quick=True)


def now_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# --------------------------------------------------------------------------------------------------
# Subscribers (each in a process of its own; results come back through a pipe)


def sse_subscriber(
    api_port: int, channel_path: str, want: int, auth_header: str, ready: Any, out: Any, idle_s: float
) -> None:
    """Read a channel's SSE stream with http.client (as little client work per event as Python allows) and
    send back {name: first arrival ns} of IN_CLOSE_WRITE events, duplicates and overflows."""
    got: dict[str, int] = {}
    duplicates = overflow = other = 0
    error = ""
    cpu0 = time.process_time()
    conn = http.client.HTTPConnection(HOST, api_port, timeout=idle_s)
    try:
        conn.request("GET", channel_path, headers={"Authorization": auth_header, "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {channel_path} -> {response.status}")
        ready.set()
        cpu0 = time.process_time()
        while len(got) < want:
            line = response.readline()
            if not line:
                error = "the stream ended"
                break
            if not line.startswith(b"data: "):
                continue
            t = now_ns()
            event = json.loads(line[6:]).get("event")
            if not isinstance(event, dict):
                continue
            mask = event.get("mask")
            if mask == ["IN_CLOSE_WRITE"]:
                if event["name"] in got:
                    duplicates += 1
                else:
                    got[event["name"]] = t
            elif mask == ["IN_Q_OVERFLOW"]:
                overflow += 1
            else:
                other += 1
    except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        ready.set()
        conn.close()
    cpu_s = time.process_time() - cpu0
    out.send(
        {"times": got, "duplicates": duplicates, "overflow": overflow, "other": other, "error": error, "cpu_s": cpu_s}
    )
    out.close()


def inotify_subscriber(directory: str, want: int, ready: Any, out: Any, idle_s: float) -> None:
    """Linux inotify on `directory` (IN_CLOSE_WRITE): {name: first arrival ns}."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(0)
    got: dict[str, int] = {}
    error = ""
    try:
        if fd < 0 or libc.inotify_add_watch(fd, directory.encode(), IN_CLOSE_WRITE) < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        ready.set()
        deadline = time.monotonic() + idle_s
        while len(got) < want and time.monotonic() < deadline:
            buf = os.read(fd, 65536)
            t = now_ns()
            off = 0
            while off < len(buf):
                _, mask, _, length = INOTIFY_EVENT.unpack_from(buf, off)
                name = buf[off + INOTIFY_EVENT.size : off + INOTIFY_EVENT.size + length].rstrip(b"\0").decode()
                off += INOTIFY_EVENT.size + length
                if mask & IN_CLOSE_WRITE:
                    got.setdefault(name, t)
    except OSError as exc:
        error = str(exc)
    finally:
        ready.set()
        if fd >= 0:
            os.close(fd)
    out.send({"times": got, "duplicates": 0, "overflow": 0, "other": 0, "error": error, "cpu_s": 0.0})
    out.close()


@contextlib.contextmanager
def subscriber(target: Any, *args: Any) -> Iterator[Any]:
    """Start a subscriber process; yields the receiving end of its pipe once it is reading."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    ready = ctx.Event()
    proc = ctx.Process(target=target, args=(*args, ready, sender, 120.0), daemon=True)
    proc.start()
    sender.close()
    try:
        if not ready.wait(30):
            raise sb.BenchError("the subscriber did not start")
        yield receiver
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def other_cpu_pct(cpu: sb.CpuWatch, wall_s: float, seen: dict[str, Any]) -> float | None:
    """CpuWatch's "other CPU" without our own subscriber process (alive during the watch, so not counted as
    the generator's): the share of the machine used by processes that are not part of the benchmark."""
    if cpu.other_pct is None or wall_s <= 0:
        return None
    ours = 100 * float(seen.get("cpu_s", 0.0)) / (wall_s * len(os.sched_getaffinity(0)))
    return round(max(0.0, cpu.other_pct - ours), 1)


def collect(receiver: Any, timeout: float) -> dict[str, Any]:
    if not receiver.poll(timeout):
        raise sb.BenchError(f"the subscriber sent nothing within {timeout:.0f} s")
    result: dict[str, Any] = receiver.recv()
    return result


# --------------------------------------------------------------------------------------------------
# headrace


#: Who subscribes: the administrator (whose events are never judged), or with --subscriber user a user of
#: its own, whose every event is checked against the directory's permissions at delivery (events.access).
SUBSCRIBER: dict[str, tuple[str, str]] = {"auth": AUTH}


def add_user(server: sb.HeadraceServer, name: str) -> tuple[str, str]:
    """A non-admin user on the server (`headrace user add`), as (name, key)."""
    _, env = server.command()
    out = subprocess.run(
        [str(sb.VENV_BIN / "headrace"), "user", "add", name, "--data", str(server.data), "--json"],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return name, json.loads(out.stdout)["key"]


class Channel:
    """A channel of the events API with one inotify subscription, made by SUBSCRIBER; deleted on exit."""

    def __init__(self, server: sb.HeadraceServer, path: str) -> None:
        auth = SUBSCRIBER["auth"]
        self.auth_header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self.api = httpx.Client(base_url=f"http://{HOST}:{server.api_port}", auth=auth, timeout=30)
        r = self.api.post(f"{EVENTS}/channels", json={"client-id": "bench-events"})
        if r.status_code != 201:
            raise sb.BenchError(f"channel: {r.status_code} {r.text}")
        self.url = r.headers["Location"]
        self.path = httpx.URL(self.url).path
        r = self.api.post(f"{self.url}/subscriptions/inotify", json={"path": path, "flags": ["IN_CLOSE_WRITE"]})
        if r.status_code != 201:
            raise sb.BenchError(f"subscription: {r.status_code} {r.text}")

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self.api.delete(self.url)
        self.api.close()


@dataclass
class LatencyRun:
    """One latency run's raw samples (ns) and its delivery tallies."""

    latencies: list[int]
    round_trips: list[int]
    missing: int
    duplicates: int
    overflow: int
    error: str = ""
    other_cpu_pct: float | None = None


def _latency_run(seen: dict[str, Any], done: dict[str, int], measured: list[str], round_trips: list[int]) -> LatencyRun:
    times: dict[str, int] = seen["times"]
    return LatencyRun(
        latencies=[times[n] - done[n] for n in measured if n in times],
        round_trips=round_trips,
        missing=sum(1 for n in measured if n not in times),
        duplicates=int(seen["duplicates"]),
        overflow=int(seen["overflow"]),
        error=str(seen["error"]),
    )


def pooled(runs: Sequence[LatencyRun]) -> dict[str, Any]:
    """Percentiles over the samples of every run together, and each run's own p50 (to show the spread)."""
    out: dict[str, Any] = {
        "latency": sb.summarize([v for r in runs for v in r.latencies]),
        "per_run_p50_ms": [sb.summarize(r.latencies).get("p50_ms") for r in runs],
        "per_run_p99_ms": [sb.summarize(r.latencies).get("p99_ms") for r in runs],
        "missing": sum(r.missing for r in runs),
        "duplicates": sum(r.duplicates for r in runs),
        "overflow": sum(r.overflow for r in runs),
        "max_other_cpu_pct": max((r.other_cpu_pct for r in runs if r.other_cpu_pct is not None), default=None),
    }
    trips = [v for r in runs for v in r.round_trips]
    if trips:
        out["put_round_trip"] = sb.summarize(trips)
    errors = [r.error for r in runs if r.error]
    if errors:
        out["subscriber_errors"] = errors
    return out


def headrace_latency(server: sb.HeadraceServer, plan: Plan, run: int, gap_s: float = 0.0) -> LatencyRun:
    """Sequential uploads, back to back (`gap_s` 0) or with a pause after each (the server idle when the
    event goes out, so that what remains is the commit -> subscriber path itself)."""
    directory = f"/latency-{int(gap_s * 1000)}ms-{run}"
    sb.mkcol(server.port, directory)
    body = os.urandom(plan.size)
    names = [f"w{i:04d}" for i in range(plan.warmup)] + [f"f{i:04d}" for i in range(plan.uploads)]
    done: dict[str, int] = {}
    round_trips: list[int] = []
    with (
        Channel(server, directory) as ch,
        subscriber(sse_subscriber, server.api_port, ch.path, len(names), ch.auth_header) as rx,
    ):
        conn = http.client.HTTPConnection(HOST, server.port, timeout=60)
        headers = {"Authorization": sb.AUTH_HEADER, "Content-Length": str(plan.size)}
        wall = time.monotonic()
        try:
            with sb.CpuWatch(server.pid) as cpu:
                for name in names:
                    t0 = now_ns()
                    conn.request("PUT", f"{directory}/{name}", body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    t1 = now_ns()
                    if response.status not in (201, 204):
                        raise sb.BenchError(f"PUT {directory}/{name} -> {response.status}")
                    done[name] = t1
                    if name.startswith("f"):
                        round_trips.append(t1 - t0)
                    if gap_s:
                        time.sleep(gap_s)
        finally:
            conn.close()
        wall = time.monotonic() - wall
        seen = collect(rx, 60)
    result = _latency_run(seen, done, [n for n in names if n.startswith("f")], round_trips)
    result.other_cpu_pct = other_cpu_pct(cpu, wall, seen)
    return result


def inotify_latency(workdir: Path, plan: Plan, run: int) -> tuple[LatencyRun, LatencyRun]:
    """write+close of local files under Linux inotify: (close() returned -> event, close() called -> event)."""
    directory = workdir / f"inotify-{run}"
    directory.mkdir()
    body = os.urandom(plan.size)
    names = [f"w{i:04d}" for i in range(plan.warmup)] + [f"f{i:04d}" for i in range(plan.uploads)]
    returned: dict[str, int] = {}
    called: dict[str, int] = {}
    with subscriber(inotify_subscriber, str(directory), len(names)) as rx:
        for name in names:
            fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, body)
            called[name] = now_ns()
            os.close(fd)
            returned[name] = now_ns()
        seen = collect(rx, 60)
    measured = [n for n in names if n.startswith("f")]
    return _latency_run(seen, returned, measured, []), _latency_run(seen, called, measured, [])


def headrace_throughput(server: sb.HeadraceServer, plan: Plan, gen: sb.Generator, run: int) -> dict[str, Any]:
    directory = f"/creations-{run}"
    sb.mkcol(server.port, directory)
    names = [f"f{i}" for i in range(plan.files)]
    load = sb.Plan(big_bytes=0, small_files=plan.files, small_size=plan.size, clients=plan.clients, runs=1, quick=True)
    with (
        Channel(server, directory) as ch,
        subscriber(sse_subscriber, server.api_port, ch.path, len(names), ch.auth_header) as rx,
    ):
        head0 = sb.log_head(server.data / "headrace.db")
        os.sync()
        wall = time.monotonic()
        with sb.CpuWatch(server.pid) as cpu:
            result = gen.run(server.port, directory, "PUT", load)
        finished = now_ns()
        wall = time.monotonic() - wall
        head1 = sb.log_head(server.data / "headrace.db")
        result.check(f"{server.label} via {gen.name}")
        seen = collect(rx, 120)
    times: dict[str, int] = seen["times"]
    arrived = [n for n in names if n in times]
    out: dict[str, Any] = {
        "generator": gen.name,
        "files": plan.files,
        "clients": plan.clients,
        "seconds": round(result.seconds, 3),
        "files_per_s": round(result.files_per_s, 1),
        "log_events": head1 - head0,
        "events_per_s": round((head1 - head0) / result.seconds, 1) if result.seconds else None,
        "close_write_events_received": len(arrived),
        "all_close_write_received": len(arrived) == plan.files and seen["duplicates"] == 0,
        "duplicates": seen["duplicates"],
        "overflow": seen["overflow"],
        "last_event_after_last_put_ms": round((max(times.values()) - finished) / 1e6, 1) if times else None,
        "server_cpu_per_file_us": round(1e6 * cpu.server_s / plan.files, 1),
        "other_cpu_pct": other_cpu_pct(cpu, wall, seen),
        "subscriber_cpu_s": round(float(seen.get("cpu_s", 0.0)), 2),
    }
    if seen["error"]:
        out["subscriber_error"] = seen["error"]
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median files/s, with every run's files/s and the delivery check over all runs."""
    ordered = sorted(runs, key=lambda r: float(r["files_per_s"]))
    out = dict(ordered[(len(ordered) - 1) // 2])
    out["runs_files_per_s"] = [r["files_per_s"] for r in runs]
    out["all_runs_all_close_write_received"] = all(r["all_close_write_received"] for r in runs)
    out["max_other_cpu_pct"] = max((r["other_cpu_pct"] or 0.0 for r in runs), default=None)
    return out


def bench_config(label: str, env: dict[str, str], workdir: Path, plan: Plan, gen: sb.Generator) -> dict[str, Any]:
    config_dir = workdir / label
    config_dir.mkdir()
    server = sb.HeadraceServer(config_dir, env, "/")
    result: dict[str, Any] = {"settings": server.describe(), "version": server.version()}
    print(f"[{label}] starting headrace ({', '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'})", flush=True)
    server.start()
    try:
        if SUBSCRIBER["auth"] != AUTH:
            SUBSCRIBER["auth"] = add_user(server, SUBSCRIBER["auth"][0])
        back, spaced, throughput = [], [], []
        for run in range(plan.runs):
            back.append(headrace_latency(server, plan, run))
            spaced.append(headrace_latency(server, plan, run, SPACED_GAP_S))
            throughput.append(headrace_throughput(server, plan, gen, run))
            lat, tp = sb.summarize(back[-1].latencies), throughput[-1]
            print(
                f"[{label}] run {run + 1}/{plan.runs}: PUT -> SSE p50 {lat.get('p50_ms')} ms, "
                f"p99 {lat.get('p99_ms')} ms (10 ms apart: p50 {sb.summarize(spaced[-1].latencies).get('p50_ms')} ms); "
                f"{tp['files_per_s']} files/s, {tp['events_per_s']} events/s into the log, "
                f"all IN_CLOSE_WRITE received: {tp['all_close_write_received']}",
                flush=True,
            )
        result["latency"] = pooled(back)
        result["latency_spaced"] = pooled(spaced)
        result["throughput"] = median_run(throughput)
        result["throughput_runs"] = throughput
    finally:
        server.stop()
    return result


# --------------------------------------------------------------------------------------------------
# Report


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 1)


def compute(report: dict[str, Any]) -> None:
    base = report["inotify"]["close_called"]["latency"]
    for cfg in report["headrace"].values():
        for key in ("latency", "latency_spaced"):
            if key in cfg:
                lat = cfg[key]["latency"]
                cfg[key]["ratio_to_inotify"] = {
                    k: ratio(lat.get(k), base.get(k)) for k in ("p50_ms", "p99_ms", "max_ms")
                }
    default = report["headrace"].get("fsync", {})
    lat = default.get("latency", {}).get("latency", {})
    tp = default.get("throughput", {})

    def status(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    p50, p99, fps = lat.get("p50_ms"), lat.get("p99_ms"), tp.get("files_per_s")
    complete = bool(tp.get("all_runs_all_close_write_received"))
    report["goals"] = [
        {
            "goal": f"p50 PUT -> SSE < {GOAL_P50_MS:g} ms",
            "value": p50,
            "status": status(None if p50 is None else p50 < GOAL_P50_MS),
        },
        {
            "goal": f"p99 PUT -> SSE < {GOAL_P99_MS:g} ms",
            "value": p99,
            "status": status(None if p99 is None else p99 < GOAL_P99_MS),
        },
        {
            "goal": f">= {GOAL_FILES_PER_S:,.0f} file creations/s with their events",
            "value": fps,
            "status": status(None if fps is None else fps >= GOAL_FILES_PER_S and complete),
        },
    ]


def fmt(value: Any, digits: int = 2) -> str:
    return sb.fmt(value, digits)


def render_markdown(report: dict[str, Any]) -> str:
    plan = Plan(**report["plan"])
    configs = [(name, cfg) for name, cfg in report["headrace"].items() if "latency" in cfg]
    runs = f"{plan.runs} runs" if plan.runs > 1 else "1 run"
    out = [
        MD_BEGIN,
        "",
        "## Storage events (SSE): `bench/events.py`",
        "",
        f"Generated by `.venv/bin/python bench/events.py{' --quick' if plan.quick else ''}` on {report['date']}; "
        "raw numbers in bench/results/events.json. Same machine as above "
        f"({report['machine']['nproc']} CPUs shared by the server, the writers and the subscriber).",
        "",
        f"### Latency: PUT completed -> IN_CLOSE_WRITE read by an SSE subscriber ({runs} x {plan.uploads:,} "
        f"sequential {plan.size // 1024} KiB uploads, percentiles over all samples)",
        "",
        "| | p50 ms | p99 ms | max ms | p50 / inotify | p99 / inotify | max / inotify | p50 of each run | "
        "PUT round trip p50 ms | max other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for key, label in (("close_called", "close() called"), ("close_returned", "close() returned")):
        lat = report["inotify"][key]["latency"]
        base = " (ratio base)" if key == "close_called" else ""
        out.append(
            f"| Linux inotify, local dir: {label} -> event{base} | {fmt(lat.get('p50_ms'), 3)} | "
            f"{fmt(lat.get('p99_ms'), 3)} | {fmt(lat.get('max_ms'), 3)} | | | | "
            f"{', '.join(fmt(v, 3) for v in report['inotify'][key]['per_run_p50_ms'])} | - | - |"
        )
    for key, how in (("latency", "back to back"), ("latency_spaced", f"{SPACED_GAP_S * 1000:g} ms apart")):
        for name, cfg in configs:
            if key not in cfg:
                continue
            lat = cfg[key]["latency"]
            r = cfg[key].get("ratio_to_inotify", {})
            rt = cfg[key].get("put_round_trip", {})
            out.append(
                f"| headrace, {name}, {how} | {fmt(lat.get('p50_ms'), 3)} | {fmt(lat.get('p99_ms'), 3)} | "
                f"{fmt(lat.get('max_ms'), 3)} | {fmt(r.get('p50_ms'), 0)} | {fmt(r.get('p99_ms'), 0)} | "
                f"{fmt(r.get('max_ms'), 0)} | {', '.join(fmt(v, 2) for v in cfg[key]['per_run_p50_ms'])} | "
                f"{fmt(rt.get('p50_ms'), 3)} | {fmt(cfg[key].get('max_other_cpu_pct'), 1)} |"
            )
    out += [
        "",
        f"### Throughput: {plan.files:,} x {plan.size // 1024} KiB files created through the door by "
        f"{plan.clients} concurrent writers, one SSE subscriber (median of {runs})",
        "",
        "| | files/s | files/s of each run | events/s into the log | IN_CLOSE_WRITE received (all runs) | "
        "last event after last PUT (ms) | server CPU per file (us) | max other CPU % |",
        "|---|---:|---|---:|---|---:|---:|---:|",
    ]
    for name, cfg in configs:
        tp = cfg.get("throughput", {})
        if not tp:
            continue
        every = cfg.get("throughput_runs", [tp])
        got = sum(r["close_write_events_received"] for r in every)
        received = f"{fmt(got)} of {fmt(sum(r['files'] for r in every))}"
        if not tp["all_runs_all_close_write_received"]:
            received += f" (dup {sum(r['duplicates'] for r in every)}, overflow {sum(r['overflow'] for r in every)})"
        out.append(
            f"| headrace, {name} | {fmt(tp['files_per_s'], 0)} | "
            f"{', '.join(fmt(v, 0) for v in tp['runs_files_per_s'])} | {fmt(tp['events_per_s'], 0)} | "
            f"{received} | {fmt(tp['last_event_after_last_put_ms'], 1)} | {fmt(tp['server_cpu_per_file_us'], 0)} | "
            f"{fmt(tp['max_other_cpu_pct'], 1)} |"
        )
    out += [
        "",
        "### Goals (default configuration, fsync on, uploads back to back)",
        "",
        "| goal | measured | status |",
        "|---|---:|---|",
    ]
    out += [f"| {g['goal']} | {fmt(g['value'])} | {g['status']} |" for g in report["goals"]]
    gen = next((cfg["throughput"]["generator"] for _, cfg in configs if "throughput" in cfg), "-")
    out += [
        "",
        "Notes:",
        "",
        "- Latency is the time from the uploader having read the PUT's response to the subscriber having read "
        "the event's `data:` line; both take CLOCK_MONOTONIC in their own processes. headrace commits the event "
        "with the upload, before it answers, so an event can arrive before the answer does (a negative latency; "
        "counted as `negative` in the JSON).",
        "- The inotify floor is the same measurement for write+close of a local file. The event is raised inside "
        "close(), so timed from close() *returning* it is about 0 and can be negative; the ratios are therefore "
        "taken against the time from close() being *called*, which is always positive. Either way the floor is "
        "tens of microseconds at p50 and its tail is scheduling noise of two shared cores, so the p99/max ratios "
        "move a lot from run to run.",
        "- `fsync`: headrace's defaults (every upload fsynced before it commits); `nofsync`: HEADRACE_FSYNC=0. "
        "fsync happens before the commit, so it lengthens the PUT, not the commit -> event path. "
        f"`{SPACED_GAP_S * 1000:g} ms apart`: the same uploads with a pause after each, so that the server is idle "
        "when the event goes out; back to back, the event competes with the next PUT for the event loop.",
        f"- Writers: the `{gen}` generator of bench/storage.py, one keep-alive connection each. Events/s counts "
        "outbox rows (5 per upload: CREATE, OPEN, MODIFY, CLOSE_WRITE, ATTRIB) over the generator's time. "
        '"Other CPU" is CPU used by other processes on the machine meanwhile (noise).',
        "",
        MD_END,
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="200 uploads and 1,000 files: a smoke test")
    parser.add_argument("--configs", default="fsync,nofsync", help="comma-separated: fsync (default), nofsync")
    parser.add_argument("--runs", type=int, help="runs of each measurement (default 3; 1 with --quick)")
    parser.add_argument("--generator", choices=("auto", "go", "py-procs"), default="auto")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/events[-quick].json)")
    parser.add_argument("--md", type=Path, help="markdown (default bench/RESULTS.md for full runs, none with --quick)")
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown section")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the markdown from an earlier JSON")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs)")
    parser.add_argument(
        "--subscriber",
        choices=("admin", "user"),
        default="admin",
        help="who subscribes: admin (default; events not judged) or a non-admin user (each event checked)",
    )
    args = parser.parse_args(argv)
    args.config_names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not args.config_names or set(args.config_names) - set(CONFIGS):
        parser.error(f"--configs takes a comma-separated subset of {', '.join(CONFIGS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subscriber == "user":
        SUBSCRIBER["auth"] = ("benchuser", "")
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.runs:
        plan = Plan(**{**asdict(plan), "runs": args.runs})
    out: Path = args.out or BENCH_DIR / "results" / ("events-quick.json" if plan.quick else "events.json")
    md: Path | None = None if args.no_md else (args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md"))
    if args.render:
        sb.write_section(
            args.md or BENCH_DIR / "RESULTS.md", render_markdown(json.loads(args.render.read_text())), MD_BEGIN, MD_END
        )
        return 0

    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "subscriber": args.subscriber,
        "plan": asdict(plan),
        "machine": sb.machine_info(),
        "headrace": {},
    }
    failed = False
    tmp = Path(tempfile.mkdtemp(prefix="headrace-events-bench-"))
    try:
        names = ("go", "py-procs") if args.generator == "auto" else (args.generator,)
        gens, skipped = sb.make_generators(names, tmp)
        if not gens:
            print("no usable load generator", file=sys.stderr)
            return 2
        gen = gens[0]
        report["generator"] = {"used": gen.name, "skipped": skipped}
        print(f"inotify floor: {plan.runs} x {plan.uploads} write+close in {tmp}", flush=True)
        floors = [inotify_latency(tmp, plan, run) for run in range(plan.runs)]
        report["inotify"] = {
            "close_returned": pooled([f[0] for f in floors]),
            "close_called": pooled([f[1] for f in floors]),
        }
        floor = report["inotify"]["close_called"]["latency"]
        print(f"inotify floor (from close() called) p50 {floor['p50_ms']} ms, p99 {floor['p99_ms']} ms", flush=True)
        for name in args.config_names:
            try:
                report["headrace"][name] = bench_config(name, CONFIGS[name], tmp, plan, gen)
            except (sb.BenchError, OSError, httpx.HTTPError, KeyError) as exc:
                failed = True
                log = tmp / name / "headrace" / "server.log"
                print(f"[{name}] FAILED: {exc}\n{sb.tail(log)}", file=sys.stderr, flush=True)
                report["headrace"][name] = {"error": str(exc), "log_tail": sb.tail(log)}
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    compute(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    section = render_markdown(report)
    if md is not None:
        sb.write_section(md, section, MD_BEGIN, MD_END)
        print(f"wrote {md}")
    print()
    print("### Latency" + section.split("### Latency", 1)[1].split("Notes:", 1)[0].rstrip())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
