"""Functions benchmark: from a completed upload to the first line of the function it triggers, against two peers.

Run from the repository root (`make bench` runs it after the storage and events benchmarks)::

    .venv/bin/python bench/functions.py [--quick] [--configs fsync,nofsync] [--skip-peers] [--out PATH]

Every function under test, headrace's and the peers', starts with ``t = time.time_ns()`` and writes
``<key> <t> <end>`` as one line to a FIFO that this process reads (`Recorder`): one write of a few bytes, so
the record costs the function nothing measurable and needs no polling. Latency = that first-line timestamp
minus the client-side completion of the write (headrace: the PUT's response has been read; the peers: the
local file's close() has returned), both CLOCK_REALTIME (`time.time_ns()`), one clock for every process.

headrace, each configuration on a fresh `headrace up` ("fsync": defaults; "nofsync": HEADRACE_FSYNC=0;
"nosandbox": functions outside bubblewrap, HEADRACE_SANDBOX=none, to show what the sandbox costs), with
the actions, storage-feed triggers and rules written into the data directory before the server starts (as
tests/test_controller.py deploys them, with `FunctionStore`):

1. **warm**: sequential 4 KiB PUTs to /warm, each waited for and then a 10 ms pause, the action kept warm by
   minScale 1; p50/p99/max.
2. **zygote start**: the first activation of an action whose module imports numpy and h5py at the top, so
   that its zygote has to start (a Python interpreter and the imports); a few such actions, one sample each.
3. **cold**: the same kind of action (numpy + h5py) with minScale 0 and idleSeconds 1: before each upload the
   bench waits until /metrics has shown `headrace_fn_workers{action="cold"}` go from the last worker to 0, so
   each activation forks a worker from the existing zygote (only those whose record has initTime count);
   p50/p99.
4. **no-op activations/s**: 5,000 4 KiB PUTs by 16 writers (bench/storage.py's load generator) to /noop,
   whose action (4 warm workers) does nothing; activations/s from the activation records (created, end).
   Then the same number of files again, into a directory that no trigger watches; the server is stopped,
   given a trigger on it and its feed position rewound to before those uploads, and restarted: the
   controller drains that backlog with nothing else running, so the rate is the controller's and the
   workers', not the door's. If the OpenWhisk REST API answers (`GET /api/v1/namespaces/_/actions`),
   5,000 non-blocking invokes through it are measured too (with the namespace's API limits off).
5. **burst**: 1,000 4 KiB PUTs by 16 writers to /burst, whose action sleeps 20 ms (maxScale 4, starting from
   zero workers with the zygote up); drain time = the last function's end - the first PUT's start, and
   /metrics' `headrace_fn_workers` and `headrace_fn_queued` every 100 ms, plotted with the peers' completions
   in bench/results/functions-burst.png.

The peers, on the same number of 4 KiB files, written to a local directory in the same workspace:

- **watcher**: a process of its own running a `watchdog` Observer (inotify) on the directory, starting
  ``python -c CODE`` for each closed file (at most 4 at once, as headrace's maxScale), as many facility
  scripts do; CODE is a bare recorder, or imports numpy and h5py first (the realistic cold case), or sleeps
  20 ms (the burst).
- **celery**: Celery with a Redis broker (Debian's redis-server on a free port, no persistence), one worker
  (prefork, concurrency 4, Celery's defaults otherwise) whose task module imports numpy and h5py; the
  producer sends one task per file right after writing it. Celery's workers never scale to zero: there is no
  cold start to measure, and its one latency is compared with both of headrace's.

Everything goes to --out (default bench/results/functions.json, functions-quick.json with --quick), the plot
to bench/results/functions-burst.png (-quick.png), and a section of bench/RESULTS.md (between the
`functions-bench` markers) with the ratios headrace / peer and the goals from issue 4: warm p50 < 3 ms,
warm p99 < 20 ms, cold < 50 ms, >= 1,000 no-op activations/s, and >= 5x lower latency than both peers.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
HOST = sb.HOST
MD_BEGIN = "<!-- functions-bench:begin (written by bench/functions.py) -->"
MD_END = "<!-- functions-bench:end -->"
#: "nosandbox" is "fsync" with functions run outside bubblewrap (HEADRACE_SANDBOX=none): what the sandbox costs.
CONFIGS: dict[str, dict[str, str]] = {
    "fsync": {},
    "nofsync": {"HEADRACE_FSYNC": "0"},
    "nosandbox": {"HEADRACE_SANDBOX": "none"},
}
#: Every configuration: no per-namespace API limits (OpenWhisk's defaults, 120 invokes a minute and 100 in
#: flight, would refuse most of the 5,000 non-blocking invokes with 429).
BENCH_ENV = {"HEADRACE_FN_INVOKES_PER_MINUTE": "0", "HEADRACE_FN_CONCURRENT_INVOCATIONS": "0"}
FILE_SIZE = 4096
WRITERS = 16
#: The pause after each measured upload, once its function has run.
GAP_S = 0.010
#: Workers for the burst: headrace's maxScale, the watcher's subprocesses at once, Celery's concurrency.
BURST_PARALLEL = 4
BURST_SLEEP_MS = 20
METRICS_INTERVAL_S = 0.1
#: The controller's stored feed position (headrace.functions.controller.POSITION).
FEED_POSITION = "functions-controller-offset"
#: --profile: where py-spy's flame graph of each step goes ("{step}" in it is the step's name), or None.
PROFILE: str | None = None
#: What py-spy samples (--profile-scope): "tree", the server with its zygotes and workers; "server", the
#: server's threads; "gil", the server's thread holding the GIL (where its Python spends CPU).
PROFILE_SCOPE = "tree"
GOAL_WARM_P50_MS, GOAL_WARM_P99_MS, GOAL_COLD_MS, GOAL_ACTIVATIONS_PER_S, GOAL_FACTOR = 3.0, 20.0, 50.0, 1000.0, 5.0


@dataclass(frozen=True)
class Plan:
    warm: int  # measured warm samples (headrace, watcher without imports, Celery)
    warmup: int
    zygotes: int  # zygote starts (one action each)
    cold: int  # cold starts, headrace and the watcher with numpy + h5py
    noop_files: int
    burst_files: int
    quick: bool
    cold_idle_s: float = 1.0
    burst_idle_s: float = 3.0


FULL_PLAN = Plan(warm=500, warmup=20, zygotes=3, cold=30, noop_files=5000, burst_files=1000, quick=False)
QUICK_PLAN = Plan(warm=60, warmup=5, zygotes=1, cold=5, noop_files=600, burst_files=200, quick=True)


def now_ns() -> int:
    return time.time_ns()


# --------------------------------------------------------------------------------------------------
# The recorder: a FIFO that every function under test writes "<key> <first-line ns> <end ns>" to


class Recorder:
    """Reads the FIFO on a thread; `wait(key)` blocks until that key's line has arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        os.mkfifo(path)
        os.chmod(path, 0o666)  # sandboxed functions write it as their own unprivileged uid
        self._rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(self._rfd, True)
        # Our own write end keeps the FIFO open between writers, so the reader never sees end-of-file.
        self._wfd = os.open(path, os.O_WRONLY)
        self.records: dict[str, tuple[int, int]] = {}
        self.duplicates: dict[str, int] = {}
        self._counts: dict[str, int] = {}  # records per prefix that someone waits for
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._read, name="recorder", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._rfd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            with self._cv:
                for line in lines:
                    parts = line.split()
                    if len(parts) != 3:
                        continue
                    key = parts[0].decode()
                    if key in self.records:
                        self.duplicates[key] = self.duplicates.get(key, 0) + 1
                        continue
                    self.records[key] = (int(parts[1]), int(parts[2]))
                    for prefix in self._counts:
                        if key.startswith(prefix):
                            self._counts[prefix] += 1
                self._cv.notify_all()

    def wait(self, key: str, timeout: float) -> tuple[int, int]:
        with self._cv:
            if not self._cv.wait_for(lambda: key in self.records, timeout):
                raise sb.BenchError(f"no function recorded {key} within {timeout:.0f} s")
            return self.records[key]

    def matching(self, prefix: str) -> dict[str, tuple[int, int]]:
        with self._cv:
            return {k: v for k, v in self.records.items() if k.startswith(prefix)}

    def wait_count(self, prefix: str, n: int, timeout: float) -> dict[str, tuple[int, int]]:
        """Wait until `n` keys starting with `prefix` have been recorded; those records."""
        with self._cv:
            if prefix not in self._counts:
                self._counts[prefix] = sum(1 for k in self.records if k.startswith(prefix))
            if not self._cv.wait_for(lambda: self._counts[prefix] >= n, timeout):
                got = self._counts[prefix]
                raise sb.BenchError(f"only {got} of {n} functions for {prefix}* recorded within {timeout:.0f} s")
        return self.matching(prefix)

    def duplicates_of(self, prefix: str) -> int:
        with self._cv:
            return sum(n for k, n in self.duplicates.items() if k.startswith(prefix))

    def close(self) -> None:
        for fd in (self._wfd, self._rfd):
            with contextlib.suppress(OSError):
                os.close(fd)


def action_code(fifo: Path, *, science: bool = False, sleep_ms: int = 0) -> str:
    """A headrace action: `main` records its first line's time (and its end) under the event's path."""
    imports = "import h5py  # noqa: F401\nimport numpy  # noqa: F401\n" if science else ""
    sleep = f"    _time.sleep({sleep_ms / 1000!r})\n" if sleep_ms else ""
    return (
        f"import os as _os\nimport time as _time\n{imports}\n"
        f"_ns = _time.time_ns\n_fd = _os.open({str(fifo)!r}, _os.O_WRONLY)\n\n\n"
        "def main(args):\n"
        "    t = _ns()\n"
        f"{sleep}"
        '    _os.write(_fd, b"%s %d %d\\n" % (args["path"].encode(), t, _ns()))\n'
        "    return {}\n"
    )


def script_code(*, science: bool = False, sleep_ms: int = 0) -> str:
    """The watcher's `python -c` program: argv[1] is the key, argv[2] the FIFO."""
    first = "import h5py, numpy, time; t = time.time_ns()" if science else "import time; t = time.time_ns()"
    sleep = f"time.sleep({sleep_ms / 1000!r})\n" if sleep_ms else ""
    return (
        f"{first}\nimport os, sys\n{sleep}"
        "fd = os.open(sys.argv[2], os.O_WRONLY)\n"
        'os.write(fd, b"%s %d %d\\n" % (sys.argv[1].encode(), t, time.time_ns()))\n'
    )


def write_local(path: Path, body: bytes) -> int:
    """Write and close a local file; the time close() returned."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, body)
    finally:
        os.close(fd)
    return now_ns()


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process tree, including its children that have ended and been waited for (a worker
    stopped by the autoscaler, the watcher's `python -c` processes), which sb.tree_cpu_seconds misses."""
    total = 0.0
    for proc in sb.tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class CpuWatch(sb.CpuWatch):
    """sb.CpuWatch for a system of one or more process trees (Celery's worker and Redis), counting ended
    children too; "other" is then what the rest of the machine used meanwhile."""

    def __init__(self, *pids: int) -> None:
        super().__init__(pids[0])
        self.pids = pids

    def _ours(self) -> tuple[float, float]:
        return sum(tree_cpu_seconds(p) for p in self.pids), sb.children_cpu_seconds() + time.process_time()


# --------------------------------------------------------------------------------------------------
# headrace: the server, its actions, its metrics and its activation records


@dataclass
class ActionDef:
    name: str
    code: str
    path: str | None  # the storage-feed trigger's directory; None: no trigger (yet)
    scaling: dict[str, float] = field(default_factory=dict)


class FnServer(sb.HeadraceServer):
    """`headrace up` whose data directory gets the bench's actions, triggers and rules before the first start;
    it can be stopped, changed offline (`offline`) and started again on the same data."""

    def __init__(self, workdir: Path, extra_env: dict[str, str], actions: list[ActionDef], dirs: list[str]) -> None:
        super().__init__(workdir, extra_env, "/")
        self.actions = actions
        self.dirs = dirs
        self.stops: list[float] = []  # seconds each stop took (SIGTERM to exit; 20 s and more: killed)

    @property
    def fsync(self) -> bool:
        return self.env_settings.get("HEADRACE_FSYNC", "1").strip().lower() in {"1", "true", "yes", "on"}

    def offline(self, change: Callable[[Any], None]) -> None:
        """Open the stopped server's data directory in this process and apply `change(service)`."""
        from headrace.config import Settings
        from headrace.storage.service import StorageService

        settings = Settings(
            data_dir=self.data, admin_key=sb.PASSWORD, fsync=self.fsync, cli_config=self.dir / "cli.json"
        )
        service, _ = StorageService.open(settings)
        try:
            change(service)
        finally:
            service.close()

    def _deploy(self, service: Any) -> None:
        from headrace.auth.subject import ROOT
        from headrace.functions.store import FunctionStore

        for d in self.dirs:
            service.namespace.mkdir(d, ROOT)
        store = FunctionStore(service.db)
        for a in self.actions:
            put_action(store, a)
            if a.path is not None:
                put_trigger(store, a.name, a.path)

    def stop(self) -> None:
        """SIGTERM, as bench/storage.py stops every server; how long that took is kept in `stops`."""
        started = time.monotonic()
        running = self.proc is not None and self.proc.poll() is None
        super().stop()
        if running:
            self.stops.append(round(time.monotonic() - started, 2))

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.data.exists():
            self.data.mkdir()
            self.offline(self._deploy)
        self.launch("ab")

    @property
    def db_path(self) -> Path:
        return self.data / "headrace.db"


def put_action(store: Any, a: ActionDef) -> None:
    from headrace.functions.model import limits, scaling

    store.put(
        "actions",
        "admin",
        a.name,
        {
            "exec": {"kind": "python:3", "code": a.code, "main": "main", "binary": False},
            "parameters": [],
            "annotations": [],
            "limits": limits({"timeout": 60_000}),
            "scaling": scaling(a.scaling),
        },
        overwrite=True,
    )


def put_trigger(store: Any, name: str, path: str) -> None:
    """A storage-feed trigger on `path` (IN_CLOSE_WRITE) and a rule from it to action `name`."""
    from headrace.functions.model import STORAGE_FEED

    feed = {"path": path, "flags": ["IN_CLOSE_WRITE"], "recursive": False}
    store.put(
        "triggers",
        "admin",
        f"{name}-trigger",
        {"parameters": [], "annotations": [], "feed": STORAGE_FEED, "feed_params": feed},
        overwrite=True,
    )
    store.put(
        "rules",
        "admin",
        f"{name}-rule",
        {"trigger": f"{name}-trigger", "action": name, "status": "active"},
        overwrite=True,
    )


class Door:
    """One keep-alive connection to the door for sequential PUTs."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self.headers = {"Authorization": sb.AUTH_HEADER, "Content-Length": str(FILE_SIZE)}

    def put(self, path: str, body: bytes) -> tuple[int, int]:
        """(start, completed) times of one PUT; completed = its response has been read."""
        t0 = now_ns()
        self.conn.request("PUT", path, body=body, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        t1 = now_ns()
        if response.status not in (201, 204):
            raise sb.BenchError(f"PUT {path} -> {response.status}")
        return t0, t1

    def close(self) -> None:
        self.conn.close()


METRIC_LINE = re.compile(r'^headrace_fn_(workers|queued|running)\{action="([^"]*)"\} (\S+)$', re.MULTILINE)


class Metrics:
    """headrace_fn_{workers,queued,running} per action from GET /metrics."""

    def __init__(self, api_port: int) -> None:
        self.port = api_port
        self.conn = http.client.HTTPConnection(HOST, api_port, timeout=30)

    def read(self) -> dict[tuple[str, str], float]:
        for attempt in (1, 2):
            try:
                self.conn.request("GET", "/metrics", headers={"Authorization": sb.AUTH_HEADER})
                response = self.conn.getresponse()
                text = response.read().decode()
                break
            except (OSError, http.client.HTTPException):
                # the server closes keep-alive connections left idle for a few seconds: reconnect once
                self.conn.close()
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
                if attempt == 2:
                    raise
        if response.status != 200:
            raise sb.BenchError(f"GET /metrics -> {response.status}")
        return {(m.group(1), m.group(2)): float(m.group(3)) for m in METRIC_LINE.finditer(text)}

    def workers(self, action: str) -> int:
        return int(self.read().get(("workers", action), 0))

    def wait_workers(self, action: str, ok: Callable[[int], bool], timeout: float) -> float:
        """Poll every 100 ms until `ok(workers)`; the seconds it took."""
        start = time.monotonic()
        while True:
            n = self.workers(action)
            if ok(n):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise sb.BenchError(f"headrace_fn_workers{{action={action!r}}} stayed {n} for {timeout:.0f} s")
            time.sleep(METRICS_INTERVAL_S)

    def wait_scaled_to_zero(self, action: str, timeout: float) -> float:
        """Wait until the action's workers gauge has shown at least one worker and then none: the gauge is
        published when the scheduler or the autoscaler runs, so a 0 read before it has ever shown the worker
        that just ran would be stale. The seconds it took."""
        start = time.monotonic()
        seen = False
        while True:
            n = self.workers(action)
            seen = seen or n > 0
            if seen and n == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise sb.BenchError(f"headrace_fn_workers{{action={action!r}}} did not go to 0 in {timeout:.0f} s")
            time.sleep(METRICS_INTERVAL_S)

    def close(self) -> None:
        self.conn.close()


class MetricsPoller:
    """Samples one action's workers/queued/running every 100 ms on a thread while in a `with` block."""

    def __init__(self, api_port: int, action: str) -> None:
        self.metrics = Metrics(api_port)
        self.action = action
        self.samples: list[tuple[int, int, int, int]] = []  # (ns, workers, queued, running)
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metrics-poller", daemon=True)

    def _loop(self) -> None:
        while True:
            t = now_ns()
            try:
                got = self.metrics.read()
                self.samples.append(
                    (
                        t,
                        int(got.get(("workers", self.action), 0)),
                        int(got.get(("queued", self.action), 0)),
                        int(got.get(("running", self.action), 0)),
                    )
                )
            except (OSError, http.client.HTTPException, sb.BenchError):
                self.errors += 1
            if self._stop.wait(max(0.0, METRICS_INTERVAL_S - (now_ns() - t) / 1e9)):
                return

    def __enter__(self) -> MetricsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.metrics.close()


def activation_rows(server: FnServer, action: str) -> list[dict[str, Any]]:
    """The action's activation records, read from the server's SQLite file."""
    db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)
    try:
        cur = db.execute(
            'SELECT created, start, "end", state, status_code, annotations, attempt, args FROM fn_activations '
            "WHERE namespace = 'admin' AND name = ? AND entity = 'action'",
            (action,),
        )
        rows = []
        for created, start, end, state, status, annotations, attempt, args in cur:
            notes = {a["key"]: a["value"] for a in json.loads(annotations or "[]")}
            rows.append(
                {
                    "path": json.loads(args or "{}").get("path"),
                    "created": created,
                    "start": start,
                    "end": end,
                    "state": state,
                    "status": status,
                    "init_ms": notes.get("initTime"),
                    "attempt": attempt,
                }
            )
        return rows
    finally:
        db.close()


def wait_done(server: FnServer, action: str, n: int, timeout: float) -> list[dict[str, Any]]:
    """Wait until `n` activations of `action` are finished (done or dead); their records."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True, timeout=30)
        try:
            finished = int(
                db.execute(
                    "SELECT count(*) FROM fn_activations WHERE namespace = 'admin' AND name = ? "
                    "AND entity = 'action' AND state IN ('done', 'dead')",
                    (action,),
                ).fetchone()[0]
            )
        finally:
            db.close()
        if finished >= n:
            return [r for r in activation_rows(server, action) if r["state"] in ("done", "dead")]
        if time.monotonic() > deadline:
            raise sb.BenchError(f"only {finished} of {n} activations of {action} finished in {timeout:.0f} s")
        time.sleep(0.2)


def steady_rate(ends: list[int]) -> float | None:
    """Activations per second between the 10th and the 90th percentile of the sorted end times (ms): the rate
    without the ramp-up and the tail."""
    lo, hi = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
    steady_n = sum(1 for e in ends if lo < e <= hi)
    return round(steady_n / ((hi - lo) / 1000), 1) if hi > lo else None


def activation_rates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Completed activations per second: over the whole run (first queued -> last finished) and steady (between
    the 10th and the 90th percentile of the end times, which leaves out start-up and the tail)."""
    ok = [r for r in rows if r["state"] == "done" and r["status"] == 0]
    ends = sorted(int(r["end"]) for r in rows if r["end"] is not None)
    if len(ends) < 10:
        return {"activations": len(rows), "succeeded": len(ok)}
    first_created = min(int(r["created"]) for r in rows)
    span_s = (ends[-1] - first_created) / 1000
    wait = sorted(int(r["start"]) - int(r["created"]) for r in rows if r["start"] is not None)
    return {
        "activations": len(rows),
        "succeeded": len(ok),
        "retried": sum(1 for r in rows if int(r["attempt"] or 1) > 1),
        "cold_starts": sum(1 for r in rows if r["init_ms"] is not None),
        "seconds": round(span_s, 3),
        "per_s": round(len(ends) / span_s, 1) if span_s > 0 else None,
        "steady_per_s": steady_rate(ends),
        "wait_ms_p50": wait[len(wait) // 2] if wait else None,
        "wait_ms_max": wait[-1] if wait else None,
    }


def load_plan(n: int) -> sb.Plan:
    return sb.Plan(big_bytes=0, small_files=n, small_size=FILE_SIZE, clients=WRITERS, runs=1, quick=True)


def headrace_actions(fifo: Path, plan: Plan) -> tuple[list[ActionDef], list[str]]:
    noop = action_code(fifo)
    science = action_code(fifo, science=True)
    actions = [
        ActionDef("warm", noop, "/warm", {"minScale": 1, "maxScale": 4}),
        *(ActionDef(f"zygote-{i}", science, f"/zygote-{i}", {"maxScale": 1}) for i in range(plan.zygotes)),
        ActionDef("cold", science, "/cold", {"minScale": 0, "maxScale": 1, "idleSeconds": plan.cold_idle_s}),
        ActionDef("noop", noop, "/noop", {"minScale": 4, "maxScale": 4}),
        ActionDef(
            "burst",
            action_code(fifo, sleep_ms=BURST_SLEEP_MS),
            "/burst",
            {"minScale": 0, "maxScale": BURST_PARALLEL, "idleSeconds": plan.burst_idle_s},
        ),
        ActionDef("backlog", noop, None, {"minScale": 0, "maxScale": 4}),
        ActionDef("api-noop", noop, None, {"minScale": 0, "maxScale": 4}),
    ]
    dirs = ["/warm", *(f"/zygote-{i}" for i in range(plan.zygotes)), "/cold", "/noop", "/burst", "/backlog"]
    return actions, dirs


def headrace_warm(server: FnServer, rec: Recorder, plan: Plan, metrics: Metrics) -> dict[str, Any]:
    metrics.wait_workers("warm", lambda n: n >= 1, 120)  # minScale 1: the autoscaler has started one
    body = os.urandom(FILE_SIZE)
    door = Door(server.port)
    latencies: list[int] = []
    round_trips: list[int] = []
    try:
        for i in range(plan.warmup):
            door.put(f"/warm/w{i}", body)
            rec.wait(f"/warm/w{i}", 60)
        with CpuWatch(server.pid) as cpu:
            for i in range(plan.warm):
                t0, t1 = door.put(f"/warm/f{i}", body)
                first, _ = rec.wait(f"/warm/f{i}", 60)
                latencies.append(first - t1)
                round_trips.append(t1 - t0)
                time.sleep(GAP_S)
    finally:
        door.close()
    wait_done(server, "warm", plan.warmup + plan.warm, 60)
    measured = {f"/warm/f{i}" for i in range(plan.warm)}
    rows = [r for r in activation_rows(server, "warm") if r["path"] in measured]
    return {
        "latency": sb.summarize(latencies),
        "put_round_trip": sb.summarize(round_trips),
        "cold_among_measured": sum(1 for r in rows if r["init_ms"] is not None),
        "gap_ms": GAP_S * 1000,
        "other_cpu_pct": cpu.other_pct,
    }


def headrace_zygotes(server: FnServer, rec: Recorder, plan: Plan) -> dict[str, Any]:
    body = os.urandom(FILE_SIZE)
    door = Door(server.port)
    latencies: list[int] = []
    init: list[float] = []
    try:
        for i in range(plan.zygotes):
            _, t1 = door.put(f"/zygote-{i}/f0", body)
            first, _ = rec.wait(f"/zygote-{i}/f0", 120)
            latencies.append(first - t1)
            rows = wait_done(server, f"zygote-{i}", 1, 60)
            init += [float(r["init_ms"]) for r in rows if r["init_ms"] is not None]
    finally:
        door.close()
    return {"latency": sb.summarize(latencies), "samples_ms": [round(v / 1e6, 1) for v in latencies], "init_ms": init}


def headrace_cold(server: FnServer, rec: Recorder, plan: Plan, metrics: Metrics) -> dict[str, Any]:
    """Each sample: wait until the action has scaled to zero, upload, wait for the first line and for the
    activation to finish. Only activations whose record says they started a worker (initTime) count."""
    body = os.urandom(FILE_SIZE)
    door = Door(server.port)
    latencies: dict[str, int] = {}
    waited: list[float] = []
    try:
        _, t1 = door.put("/cold/first", body)  # starts the zygote
        first, _ = rec.wait("/cold/first", 120)
        zygote_ms = (first - t1) / 1e6
        wait_done(server, "cold", 1, 60)
        for i in range(plan.cold):
            waited.append(metrics.wait_scaled_to_zero("cold", plan.cold_idle_s + 30))
            _, t1 = door.put(f"/cold/f{i}", body)
            first, _ = rec.wait(f"/cold/f{i}", 60)
            latencies[f"/cold/f{i}"] = first - t1
            wait_done(server, "cold", i + 2, 60)
    finally:
        door.close()
    rows = {r["path"]: r for r in activation_rows(server, "cold")}
    cold = [v for k, v in latencies.items() if rows.get(k, {}).get("init_ms") is not None]
    init = sorted(float(rows[k]["init_ms"]) for k in latencies if rows.get(k, {}).get("init_ms") is not None)
    return {
        "latency": sb.summarize(cold),
        "warm_excluded": len(latencies) - len(cold),
        "first_activation_ms": round(zygote_ms, 3),
        "init_ms_p50": init[len(init) // 2] if init else None,
        "idle_seconds": plan.cold_idle_s,
        "scale_to_zero_wait_s_p50": round(statistics.median(waited), 2) if waited else None,
    }


def upload_errors(result: sb.SmallResult, what: str) -> dict[str, Any]:
    """A load-generator run's failed PUTs: recorded, and the step measured on the files that made it, unless
    more than 1% failed (then the step fails)."""
    if result.errors == 0 and result.ok == result.files:
        return {}
    print(f"  {what}: {result.errors} of {result.files} PUTs failed (first: {result.first_error})", file=sys.stderr)
    if result.ok < result.files * 0.99:
        result.check(what)
    return {"put_errors": result.errors, "first_put_error": result.first_error}


def headrace_noop(server: FnServer, rec: Recorder, plan: Plan, gen: sb.Generator, metrics: Metrics) -> dict[str, Any]:
    metrics.wait_workers("noop", lambda n: n >= 4, 120)
    with CpuWatch(server.pid) as cpu:
        result = gen.run(server.port, "/noop", "PUT", load_plan(plan.noop_files))
        put_done = now_ns()
        errors = upload_errors(result, f"headrace /noop via {gen.name}")
        rec.wait_count("/noop/", result.ok, 300)
        rows = wait_done(server, "noop", result.ok, 300)
    out = activation_rates(rows)
    out.update(errors)
    out.update(
        files=plan.noop_files,
        writers=WRITERS,
        generator=gen.name,
        put_files_per_s=round(result.files_per_s, 1),
        last_end_after_last_put_ms=max(int(r["end"]) for r in rows) - put_done // 1_000_000,
        duplicates=rec.duplicates_of("/noop/"),
        server_cpu_per_activation_us=round(1e6 * cpu.server_s / len(rows), 1),
        other_cpu_pct=cpu.other_pct,
    )
    return out


def headrace_backlog(server: FnServer, rec: Recorder, plan: Plan, gen: sb.Generator) -> dict[str, Any]:
    """Uploads that fire nothing, then a restart whose controller finds them behind its position."""
    head0 = sb.log_head(server.db_path)
    result = gen.run(server.port, "/backlog", "PUT", load_plan(plan.noop_files))
    errors = upload_errors(result, f"headrace /backlog via {gen.name}")
    server.stop()

    def rewind(service: Any) -> None:
        from headrace.functions.store import FunctionStore

        put_trigger(FunctionStore(service.db), "backlog", "/backlog")
        service.set_state(FEED_POSITION, str(head0))

    server.offline(rewind)
    server.start()
    with py_spy(server.pid, PROFILE.format(step="noop_backlog") if PROFILE else None), CpuWatch(server.pid) as cpu:
        rec.wait_count("/backlog/", result.ok, 300)
        rows = wait_done(server, "backlog", result.ok, 300)
    out = activation_rates(rows)
    out.update(errors)
    out.update(
        files=plan.noop_files,
        duplicates=rec.duplicates_of("/backlog/"),
        server_cpu_per_activation_us=round(1e6 * cpu.server_s / max(1, len(rows)), 1),
        other_cpu_pct=cpu.other_pct,
    )
    return out


def api_available(server: FnServer) -> bool:
    status, body = sb.http_request(server.api_port, "GET", "/api/v1/namespaces/_/actions", timeout=10)
    if status != 200:
        return False
    with contextlib.suppress(ValueError):
        return isinstance(json.loads(body), list)
    return False


def _api_client(port: int, index: int, n: int, queue: Any) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"Authorization": sb.AUTH_HEADER, "Content-Type": "application/json"}
    ok, first_error = 0, ""
    for i in range(n):
        body = json.dumps({"path": f"/api/c{index}-{i}"}).encode()  # the key the action records under
        try:
            conn.request("POST", "/api/v1/namespaces/_/actions/api-noop?blocking=false", body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status == 202:
                ok += 1
            elif not first_error:
                first_error = f"{response.status} {data[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            first_error = first_error or repr(exc)
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.close()
    queue.put((ok, first_error))


def headrace_api(server: FnServer, rec: Recorder, plan: Plan) -> dict[str, Any]:
    """Non-blocking invokes through the OpenWhisk REST API (4 client processes, keep-alive)."""
    clients = 4
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    per = [plan.noop_files // clients + (1 if i < plan.noop_files % clients else 0) for i in range(clients)]
    start = time.monotonic()
    with CpuWatch(server.pid) as cpu:
        procs = [ctx.Process(target=_api_client, args=(server.api_port, i, n, queue)) for i, n in enumerate(per)]
        for p in procs:
            p.start()
        answers = [queue.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        sent_s = time.monotonic() - start
        accepted = sum(a[0] for a in answers)
        errors = [a[1] for a in answers if a[1]]
        if accepted:
            rec.wait_count("/api/", accepted, 300)
        rows = wait_done(server, "api-noop", accepted, 300) if accepted else []
    out = activation_rates(rows)
    out.update(
        invokes=plan.noop_files,
        accepted=accepted,
        invokes_per_s=round(accepted / sent_s, 1) if sent_s > 0 else None,
        duplicates=rec.duplicates_of("/api/"),
        server_cpu_per_activation_us=round(1e6 * cpu.server_s / max(1, accepted), 1),
        first_error=errors[0] if errors else "",
        other_cpu_pct=cpu.other_pct,
    )
    return out


def headrace_burst(server: FnServer, rec: Recorder, plan: Plan, gen: sb.Generator, metrics: Metrics) -> dict[str, Any]:
    door = Door(server.port)
    try:
        door.put("/burst/prime", os.urandom(FILE_SIZE))  # the zygote starts here, not in the burst
        rec.wait("/burst/prime", 120)
    finally:
        door.close()
    wait_done(server, "burst", 1, 60)
    metrics.wait_scaled_to_zero("burst", plan.burst_idle_s + 30)
    with MetricsPoller(server.api_port, "burst") as poller, CpuWatch(server.pid) as cpu:
        t0 = now_ns()
        result = gen.run(server.port, "/burst", "PUT", load_plan(plan.burst_files))
        put_done = now_ns()
        errors = upload_errors(result, f"headrace /burst via {gen.name}")
        got = rec.wait_count("/burst/f", result.ok, 300)
        rows = wait_done(server, "burst", result.ok + 1, 300)
        with contextlib.suppress(sb.BenchError):  # let the plot show the scale-down too
            metrics.wait_workers("burst", lambda n: n == 0, plan.burst_idle_s + 10)
        time.sleep(0.3)
    ends = [end for _, end in got.values()]
    return {
        "files": plan.burst_files,
        "writers": WRITERS,
        "t0_ns": t0,
        "drain_s": round((max(ends) - t0) / 1e9, 3),
        "drain_s_records": round((max(int(r["end"]) for r in rows) - t0 / 1e6) / 1000, 3),
        "put_s": round((put_done - t0) / 1e9, 3),
        "latency": sb.summarize([first - t0 for first, _ in got.values()]),
        "max_workers": max((s[1] for s in poller.samples), default=0),
        "max_queued": max((s[2] for s in poller.samples), default=0),
        "cold_starts": sum(1 for r in rows if r["init_ms"] is not None),
        "completions_s": sorted(round((end - t0) / 1e9, 4) for end in ends),
        "samples": [
            {"t_s": round((t - t0) / 1e9, 3), "workers": w, "queued": q, "running": r} for t, w, q, r in poller.samples
        ],
        "metrics_errors": poller.errors,
        "other_cpu_pct": cpu.other_pct,
        **errors,
    }


@contextlib.contextmanager
def py_spy(pid: int, out: str | None) -> Iterator[None]:
    """With `out`: py-spy records the server `pid` (as PROFILE_SCOPE says) as a flame graph to `out` while
    the block runs (stopped with SIGINT, on which it writes the graph); with a ".txt" name, in py-spy's raw
    format (collapsed stacks). On this machine py-spy tells a waiting thread from a running one badly: a
    thread blocked in a system call (a thread pool's idle get, fsync, a worker's recv; every wait of a
    sandboxed process, in a PID namespace of its own) shows as time spent, and sampling every thread of two
    dozen processes at 100 Hz it falls behind on two cores. "gil" shows where the Python runs."""
    if out is None:
        yield
        return
    spy = BENCH_DIR.parent / ".venv" / "bin" / "py-spy"
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fmt = "raw" if out.endswith(".txt") else "flamegraph"
    argv = [
        str(spy) if spy.exists() else "py-spy",
        "record",
        *({"tree": ["--subprocesses"], "gil": ["--gil"]}.get(PROFILE_SCOPE, [])),
        "--format",
        fmt,
    ]
    proc = subprocess.Popen([*argv, "--pid", str(pid), "--output", out], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches before the load starts
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def bench_headrace(
    label: str,
    env: dict[str, str],
    workdir: Path,
    plan: Plan,
    gen: sb.Generator,
    rec: Recorder,
) -> dict[str, Any]:
    actions, dirs = headrace_actions(rec.path, plan)
    if env.get("HEADRACE_SANDBOX") != "none":  # the recorder's FIFO, bound into the (admin's) sandboxes
        env = {"HEADRACE_SANDBOX_BIND": f"admin:{rec.path.parent}", **env}
    server = FnServer(workdir / label, {**BENCH_ENV, **env}, actions, dirs)
    result: dict[str, Any] = {"settings": server.describe(), "version": server.version()}
    print(f"[{label}] starting headrace ({', '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'})", flush=True)
    server.start()

    def step(
        name: str, run: Callable[[], dict[str, Any]], show: Callable[[dict[str, Any]], str], profiled: bool = True
    ) -> None:
        started = time.monotonic()
        try:
            with py_spy(server.pid, PROFILE.format(step=name) if PROFILE and profiled else None):
                result[name] = run()
        except (sb.BenchError, OSError, http.client.HTTPException, ValueError) as exc:
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "log_tail": sb.tail(server.log_path, 30)}
            print(f"[{label}] {name} FAILED: {exc}", file=sys.stderr, flush=True)
            return
        print(f"[{label}] {name}: {show(result[name])} ({time.monotonic() - started:.0f} s)", flush=True)

    def lat(r: dict[str, Any]) -> str:
        s = r["latency"]
        return f"p50 {s.get('p50_ms')} ms, p99 {s.get('p99_ms')} ms, max {s.get('max_ms')} ms (n={s['n']})"

    def rate(r: dict[str, Any]) -> str:
        return f"{r.get('per_s')} activations/s overall, {r.get('steady_per_s')} steady"

    metrics = Metrics(server.api_port)
    try:
        step("warm", lambda: headrace_warm(server, rec, plan, metrics), lat)
        step("zygote", lambda: headrace_zygotes(server, rec, plan), lat)
        step("cold", lambda: headrace_cold(server, rec, plan, metrics), lat)
        step("noop_feed", lambda: headrace_noop(server, rec, plan, gen, metrics), rate)
        available = False
        with contextlib.suppress(OSError, http.client.HTTPException):
            available = api_available(server)
        if available:
            step("noop_api", lambda: headrace_api(server, rec, plan), rate)
        else:
            result["noop_api"] = {"skipped": "GET /api/v1/namespaces/_/actions is not answered (no REST API yet)"}
            print(f"[{label}] noop_api: skipped, the functions REST API is not there", flush=True)
        step(
            "burst",
            lambda: headrace_burst(server, rec, plan, gen, metrics),
            lambda r: f"drained in {r['drain_s']} s, up to {r['max_workers']} workers",
        )
        metrics.close()
        # (profiled by the step itself, after it has restarted the server)
        step("noop_backlog", lambda: headrace_backlog(server, rec, plan, gen), rate, profiled=False)
    finally:
        metrics.close()
        server.stop()
        result["stop_seconds"] = server.stops
    return result


# --------------------------------------------------------------------------------------------------
# Peer (a): a watchdog watcher that starts a Python process per closed file


def watcher_main(directory: str, fifo: str, code: str, prefix: str, parallel: int, ready: Any, stop: Any) -> None:
    """The facility script: on every IN_CLOSE_WRITE in `directory`, `python -c code <key> <fifo>`."""
    from concurrent.futures import ThreadPoolExecutor

    from watchdog.events import FileClosedEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    pool = ThreadPoolExecutor(parallel)
    python = sys.executable

    def run(key: str) -> None:
        subprocess.run([python, "-c", code, key, fifo], check=False)

    class Handler(FileSystemEventHandler):
        def on_closed(self, event: FileClosedEvent) -> None:
            if not event.is_directory:
                pool.submit(run, prefix + os.path.basename(os.fsdecode(event.src_path)))

    observer = Observer()
    observer.schedule(Handler(), directory, recursive=False)
    observer.start()
    ready.set()
    stop.wait()
    observer.stop()
    observer.join()
    pool.shutdown(wait=True)


@contextlib.contextmanager
def watcher(directory: Path, fifo: Path, code: str, prefix: str) -> Iterator[int]:
    """A watcher process on `directory`; yields its pid once it is watching."""
    directory.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    args = (str(directory), str(fifo), code, prefix, BURST_PARALLEL, ready, stop)
    proc = ctx.Process(target=watcher_main, args=args, daemon=True)
    proc.start()
    try:
        if not ready.wait(60):
            raise sb.BenchError("the watcher did not start")
        assert proc.pid is not None
        yield proc.pid
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()


def sequential_latency(
    write: Callable[[str], int], rec: Recorder, prefix: str, names: Sequence[str], timeout: float
) -> list[int]:
    latencies = []
    for name in names:
        done = write(name)
        first, _ = rec.wait(prefix + name, timeout)
        latencies.append(first - done)
        time.sleep(GAP_S)
    return latencies


def bench_watcher(workdir: Path, plan: Plan, rec: Recorder) -> dict[str, Any]:
    body = os.urandom(FILE_SIZE)
    root = workdir / "watcher"
    result: dict[str, Any] = {"parallel": BURST_PARALLEL, "python": sys.executable}
    for case, science, n in (("plain", False, plan.warm), ("science", True, plan.cold)):
        directory = root / case
        prefix = f"watcher-{case}/"

        def write(name: str, d: Path = directory) -> int:
            return write_local(d / name, body)

        with watcher(directory, rec.path, script_code(science=science), prefix) as pid, CpuWatch(pid) as cpu:
            sequential_latency(write, rec, prefix, ["w0", "w1"], 120)
            lat = sequential_latency(write, rec, prefix, [f"f{i}" for i in range(n)], 120)
        result[case] = {"latency": sb.summarize(lat), "other_cpu_pct": cpu.other_pct}
        print(f"[watcher] {case}: p50 {result[case]['latency']['p50_ms']} ms", flush=True)
    directory = root / "burst"
    prefix = "watcher-burst/"
    with watcher(directory, rec.path, script_code(sleep_ms=BURST_SLEEP_MS), prefix) as pid, CpuWatch(pid) as cpu:
        t0 = now_ns()
        for i in range(plan.burst_files):
            write_local(directory / f"f{i}", body)
        written = now_ns()
        got = rec.wait_count(prefix, plan.burst_files, 900)
    result["burst"] = burst_result(plan, t0, written, got, cpu.other_pct)
    print(f"[watcher] burst drained in {result['burst']['drain_s']} s", flush=True)
    return result


def burst_result(
    plan: Plan, t0: int, written: int, got: dict[str, tuple[int, int]], other_cpu: float | None
) -> dict[str, Any]:
    ends = [end for _, end in got.values()]
    return {
        "files": plan.burst_files,
        "drain_s": round((max(ends) - t0) / 1e9, 3),
        "write_s": round((written - t0) / 1e9, 3),
        "latency": sb.summarize([first - t0 for first, _ in got.values()]),
        "completions_s": sorted(round((end - t0) / 1e9, 4) for end in ends),
        "other_cpu_pct": other_cpu,
    }


# --------------------------------------------------------------------------------------------------
# Peer (b): Celery with a Redis broker

CELERY_TASKS = '''\
"""The Celery peer's task: records its first line's time, like every function in bench/functions.py."""

import os
import time

import h5py  # noqa: F401 - what a facility task imports; the prefork children have it loaded already
import numpy  # noqa: F401
from celery import Celery

app = Celery("bench_tasks", broker=os.environ["BENCH_BROKER"])
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
_fd = os.open(os.environ["BENCH_FIFO"], os.O_WRONLY)


@app.task(name="bench.record")
def record(key, sleep_ms=0):
    t = time.time_ns()
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    os.write(_fd, b"%s %d %d\\n" % (key.encode(), t, time.time_ns()))
'''


class Peer:
    """A child process with its own log file, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_version() -> str:
    text = sb.run_text(["redis-server", "--version"])  # "Redis server v=7.0.15 sha=... malloc=..."
    found = re.search(r"v=(\S+)", text)
    return f"Redis {found.group(1)}" if found else text


def start_redis(workdir: Path) -> tuple[Peer, int]:
    exe = shutil.which("redis-server")
    if exe is None:
        raise sb.BenchError("redis-server not found (scripts/install-test-deps.sh installs Debian's)")
    port = sb.free_port()
    argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--daemonize", "no"]
    argv += ["--dir", str(workdir), "--loglevel", "warning"]
    peer = Peer("redis", argv, dict(os.environ), workdir)
    import redis

    client = redis.Redis(host=HOST, port=port, socket_timeout=2)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.ping():
                return peer, port
        except redis.RedisError:
            pass
        if peer.proc.poll() is not None or time.monotonic() > deadline:
            peer.stop()
            raise sb.BenchError(f"redis-server did not start:\n{sb.tail(peer.log_path)}")
        time.sleep(0.1)


def bench_celery(workdir: Path, plan: Plan, rec: Recorder) -> dict[str, Any]:
    from celery import Celery

    root = workdir / "celery"
    root.mkdir()
    (root / "bench_tasks.py").write_text(CELERY_TASKS)
    redis_peer, port = start_redis(root)
    broker = f"redis://{HOST}:{port}/0"
    env = {**os.environ, "BENCH_BROKER": broker, "BENCH_FIFO": str(rec.path), "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "celery", "-A", "bench_tasks", "worker", "--pool", "prefork"]
    argv += ["--concurrency", str(BURST_PARALLEL), "--loglevel", "WARNING", "--hostname", "bench@%h"]
    worker = Peer("celery-worker", argv, env, root)
    result: dict[str, Any] = {"concurrency": BURST_PARALLEL, "broker": "redis", "redis": redis_version()}
    producer = Celery("bench-producer", broker=broker)
    producer.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)
    body = os.urandom(FILE_SIZE)
    files = root / "files"
    files.mkdir()

    def write_and_send(name: str, sleep_ms: int = 0) -> int:
        done = write_local(files / name, body)
        producer.send_task("bench.record", args=[f"celery/{name}", sleep_ms])
        return done

    try:
        import celery

        result["version"] = celery.__version__
        write_and_send("ready")
        rec.wait("celery/ready", 120)  # the worker is up and has its children
        with CpuWatch(worker.proc.pid, redis_peer.proc.pid) as cpu:
            sequential_latency(write_and_send, rec, "celery/", [f"w{i}" for i in range(plan.warmup)], 60)
            lat = sequential_latency(write_and_send, rec, "celery/", [f"f{i}" for i in range(plan.warm)], 60)
        result["warm"] = {"latency": sb.summarize(lat), "other_cpu_pct": cpu.other_pct}
        print(f"[celery] p50 {result['warm']['latency']['p50_ms']} ms", flush=True)
        with CpuWatch(worker.proc.pid, redis_peer.proc.pid) as cpu:
            t0 = now_ns()
            for i in range(plan.burst_files):
                write_and_send(f"b{i}", BURST_SLEEP_MS)
            written = now_ns()
            got = rec.wait_count("celery/b", plan.burst_files, 600)
        result["burst"] = burst_result(plan, t0, written, got, cpu.other_pct)
        print(f"[celery] burst drained in {result['burst']['drain_s']} s", flush=True)
    finally:
        with contextlib.suppress(Exception):
            producer.close()
        worker.stop()
        redis_peer.stop()
    return result


# --------------------------------------------------------------------------------------------------
# Report


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def _lat(node: dict[str, Any], *path: str) -> dict[str, Any]:
    for key in path:
        node = node.get(key, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, dict) else {}


def compute(report: dict[str, Any]) -> None:
    """Ratios headrace / peer and the goals, from the default (fsync) configuration."""
    hr: dict[str, Any] = report["headrace"].get("fsync") or next(iter(report["headrace"].values()), {})
    warm = _lat(hr, "warm", "latency")
    cold = _lat(hr, "cold", "latency")
    peers = report.get("peers", {})
    watch_plain = _lat(peers, "watcher", "plain", "latency")
    watch_sci = _lat(peers, "watcher", "science", "latency")
    celery = _lat(peers, "celery", "warm", "latency")
    comparisons = [
        ("headrace warm / watcher (python per file)", warm, watch_plain),
        ("headrace cold, numpy+h5py / watcher (python per file, numpy+h5py)", cold, watch_sci),
        ("headrace warm / Celery+Redis (warm, numpy+h5py)", warm, celery),
        ("headrace cold, numpy+h5py / Celery+Redis (always warm)", cold, celery),
    ]
    report["ratios"] = [
        {"comparison": name, **{k: ratio(a.get(k), b.get(k)) for k in ("p50_ms", "p99_ms", "max_ms")}}
        for name, a, b in comparisons
    ]
    bursts = {
        "watcher": _lat(peers, "watcher", "burst").get("drain_s"),
        "celery": _lat(peers, "celery", "burst").get("drain_s"),
    }
    mine = _lat(hr, "burst").get("drain_s")
    report["burst_ratios"] = {f"headrace/{k}": ratio(mine, v) for k, v in bursts.items()}

    def status(ok: bool | None) -> str:
        return "n/a" if ok is None else ("PASS" if ok else "FAIL")

    rates = [_lat(hr, k).get("per_s") for k in ("noop_feed", "noop_backlog", "noop_api")]
    best_rate = max((r for r in rates if r is not None), default=None)
    goals: list[tuple[str, float | None, Callable[[float], bool]]] = [
        ("warm p50 < 3 ms", warm.get("p50_ms"), lambda v: v < GOAL_WARM_P50_MS),
        ("warm p99 < 20 ms", warm.get("p99_ms"), lambda v: v < GOAL_WARM_P99_MS),
        ("cold (fork from zygote, numpy+h5py) p50 < 50 ms", cold.get("p50_ms"), lambda v: v < GOAL_COLD_MS),
        ("cold p99 < 50 ms", cold.get("p99_ms"), lambda v: v < GOAL_COLD_MS),
        (">= 1,000 no-op activations/s (best path)", best_rate, lambda v: v >= GOAL_ACTIVATIONS_PER_S),
    ]
    for r in report["ratios"]:
        if "always warm" in r["comparison"]:
            continue  # Celery has no cold start: not a like-for-like goal
        goals.append((f"5x lower p50: {r['comparison']}", r["p50_ms"], lambda v: v <= 1 / GOAL_FACTOR))
    report["goals"] = [
        {"goal": g, "value": v, "status": status(None if v is None else bool(check(v)))} for g, v, check in goals
    ]


def fmt(value: Any, digits: int = 2) -> str:
    return sb.fmt(value, digits)


def render_markdown(report: dict[str, Any]) -> str:
    plan = Plan(**report["plan"])
    machine = report["machine"]
    peers = report.get("peers", {})
    configs = [(n, c) for n, c in report["headrace"].items() if "error" not in c]
    out = [
        MD_BEGIN,
        "",
        "## Functions: `bench/functions.py`",
        "",
        f"Generated by `.venv/bin/python bench/functions.py{' --quick' if plan.quick else ''}` on {report['date']}; "
        f"raw numbers in bench/results/{report['out_name']}. {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"{machine['ram_GiB']} GiB RAM, kernel {machine['kernel']}, Python {machine['python']}; server, clients, "
        "workers and peers share the CPUs.",
    ]
    if plan.quick:
        out += ["", "**A --quick smoke run: sample counts are small and the numbers are rough.**"]
    noise = sb.max_known(report.get("other_cpu_pct", []))
    if noise is not None and noise > sb.NOISY_OTHER_CPU_PCT:
        out += [
            "",
            f"**Noisy run:** other processes used up to {noise:.0f}% of the CPUs during measurements; "
            "re-run on a quiet machine.",
        ]
    out += [
        "",
        "### Latency: write completed (client side) -> the function's first line",
        "",
        "| system | case | n | p50 ms | p99 ms | max ms |",
        "|---|---|---:|---:|---:|---:|",
    ]

    def row(system: str, case: str, lat: dict[str, Any]) -> None:
        if lat.get("n"):
            out.append(
                f"| {system} | {case} | {fmt(lat['n'])} | {fmt(lat.get('p50_ms'), 2)} | "
                f"{fmt(lat.get('p99_ms'), 2)} | {fmt(lat.get('max_ms'), 2)} |"
            )

    for name, cfg in configs:
        row(f"headrace ({name})", f"warm, {GAP_S * 1000:g} ms between uploads", _lat(cfg, "warm", "latency"))
    for name, cfg in configs:
        row(f"headrace ({name})", "cold: fork from the zygote, numpy+h5py loaded", _lat(cfg, "cold", "latency"))
    for name, cfg in configs:
        row(f"headrace ({name})", "zygote start: first activation, imports numpy+h5py", _lat(cfg, "zygote", "latency"))
    row("watcher (watchdog) + `python -c`", "per file, no imports", _lat(peers, "watcher", "plain", "latency"))
    row(
        "watcher (watchdog) + `python -c`", "per file, imports numpy+h5py", _lat(peers, "watcher", "science", "latency")
    )
    row("Celery + Redis", "prefork worker (numpy+h5py loaded)", _lat(peers, "celery", "warm", "latency"))
    out += [
        "",
        "| headrace / peer (fsync configuration) | p50 | p99 | max |",
        "|---|---:|---:|---:|",
    ]
    for r in report.get("ratios", []):
        out.append(f"| {r['comparison']} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | {fmt(r['max_ms'], 3)} |")

    out += [
        "",
        "### No-op activations per second",
        "",
        "| configuration | path | activations | per s (first queued -> last end) | steady per s (10-90% of ends) "
        "| uploads or invokes/s | server CPU per activation (us) | cold starts | retried |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    paths = (
        ("noop_feed", f"storage feed, live: {WRITERS} writers PUT, 4 warm workers"),
        ("noop_backlog", "storage feed, backlog after a restart (controller + workers only)"),
        ("noop_api", "REST API, non-blocking invokes"),
    )
    for name, cfg in configs:
        for key, how in paths:
            got = cfg.get(key, {})
            if "skipped" in got:
                out.append(f"| {name} | {how} | skipped: {got['skipped']} | | | | | | |")
                continue
            if "error" in got or "activations" not in got:
                out.append(f"| {name} | {how} | failed: {got.get('error', '-')} | | | | | | |")
                continue
            requests = got.get("put_files_per_s") or got.get("invokes_per_s")
            out.append(
                f"| {name} | {how} | {fmt(got['activations'])} | {fmt(got.get('per_s'), 0)} | "
                f"{fmt(got.get('steady_per_s'), 0)} | {fmt(requests, 0)} | "
                f"{fmt(got.get('server_cpu_per_activation_us'), 0)} | {fmt(got.get('cold_starts'))} | "
                f"{fmt(got.get('retried'))} |"
            )

    out += [
        "",
        f"### Burst: {plan.burst_files:,} files, a function that sleeps {BURST_SLEEP_MS} ms, "
        f"{BURST_PARALLEL} workers at most",
        "",
        "| system | drain s (last function end - first write) | writes took s | first line p50 s after t0 "
        "| max workers | headrace / peer |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, cfg in configs:
        b = cfg.get("burst", {})
        if "drain_s" in b:
            out.append(
                f"| headrace ({name}) | {fmt(b['drain_s'], 2)} | {fmt(b['put_s'], 2)} | "
                f"{fmt(b['latency'].get('p50_ms', 0) / 1000, 2)} | {b['max_workers']} | - |"
            )
    for peer, label in (("watcher", "watcher + `python -c` (4 at once)"), ("celery", "Celery + Redis (prefork 4)")):
        b = _lat(peers, peer, "burst")
        if "drain_s" in b:
            out.append(
                f"| {label} | {fmt(b['drain_s'], 2)} | {fmt(b['write_s'], 2)} | "
                f"{fmt(b['latency'].get('p50_ms', 0) / 1000, 2)} | {BURST_PARALLEL} | "
                f"{fmt(report.get('burst_ratios', {}).get(f'headrace/{peer}'), 2)} |"
            )
    if report.get("plot"):
        out += ["", f"![workers over time]({report['plot']})"]
    out += ["", "### Goals (issue 4; fsync configuration)", "", "| goal | measured | status |", "|---|---:|---|"]
    out += [f"| {g['goal']} | {fmt(g['value'], 3)} | {g['status']} |" for g in report.get("goals", [])]
    out += ["", "Notes:", ""]
    for name, cfg in report["headrace"].items():
        if "error" in cfg:
            out.append(f"- **headrace ({name}) failed**: {cfg['error']}")
        for key, got in cfg.items():
            if isinstance(got, dict) and "error" in got:
                out.append(f"- headrace ({name}) {key} failed: {got['error']}")
            if isinstance(got, dict) and got.get("put_errors"):
                out.append(
                    f"- **headrace ({name}) {key}: {got['put_errors']} PUTs failed** (first: "
                    f"{got['first_put_error']}); measured on the files that were stored."
                )
    for peer in ("watcher", "celery"):
        if "error" in peers.get(peer, {}):
            out.append(f"- **{peer} failed**: {peers[peer]['error']}")
    fsync_cfg = dict(configs).get("fsync", {})
    warm_cold = _lat(fsync_cfg, "warm").get("cold_among_measured")
    out += [
        "- Every function records `time.time_ns()` as its first statement and writes it to a FIFO the bench reads; "
        "latency is that minus the client-side completion (headrace: the PUT's response read; the peers: the "
        "local file's close() returned). Samples are sequential: the next write waits for the previous "
        f"function's record, then {GAP_S * 1000:g} ms. headrace uploads 4 KiB through the WebDAV door "
        "(HTTP + fsync of the data + SQLite commit before the answer); the peers write a local file.",
        f"- headrace warm: minScale 1, {plan.warmup} unmeasured uploads first"
        + (f"; {warm_cold} of the measured activations still forked a worker" if warm_cold else "")
        + f". Cold: minScale 0, idleSeconds {plan.cold_idle_s:g}; before each upload the bench waits until "
        "/metrics shows 0 workers for the action, so each activation forks one from the zygote that already "
        "imported numpy and h5py. Zygote start: the first activation of a fresh action (a new interpreter "
        "imports the module, then forks).",
        "- Watcher: watchdog's inotify Observer in a process of its own, `subprocess.run([python, '-c', ...])` per "
        f"closed file from a pool of {BURST_PARALLEL} threads, with this venv's Python "
        f"({report['machine']['python']}). Celery {peers.get('celery', {}).get('version', '?')}: "
        f"one worker, prefork, concurrency {BURST_PARALLEL}, Celery's defaults otherwise (prefetch 4, acks "
        f"early), no result backend; {peers.get('celery', {}).get('redis', 'redis')} with no persistence. Its task "
        "module imports numpy and h5py once per worker, so it has no cold start to compare (the rows marked "
        '"always warm").',
        "- No-op rates come from the activation records (created and end, ms). Live: the door's upload rate "
        "bounds it. Backlog: the same number of uploads made with no trigger on their directory; then the "
        "server is stopped, a trigger is added and the controller's position is rewound to before them, and "
        "after the restart it works through them (its first activations also start the zygote). REST API: "
        "4 client processes, keep-alive, `POST .../actions/NAME?blocking=false`, with the namespace limits off "
        f"({', '.join(f'{k}={v}' for k, v in BENCH_ENV.items())}; OpenWhisk's defaults, 120 a minute and 100 "
        "in flight, would refuse most of them with 429).",
        "- Burst: t0 is just before the writers start; headrace's writers are bench/storage.py's "
        f"generator ({WRITERS} keep-alive connections), the peers' a loop writing local files. headrace starts "
        "from zero workers with the zygote up; /metrics is polled every 100 ms meanwhile.",
        "",
        MD_END,
    ]
    return "\n".join(out) + "\n"


def plot_burst(report: dict[str, Any], path: Path) -> bool:
    """Workers and queue over time (headrace), and completed functions over time (all three)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [(n, c["burst"]) for n, c in report["headrace"].items() if "drain_s" in c.get("burst", {})]
    if not configs:
        return False
    name, burst = configs[0]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    t = [s["t_s"] for s in burst["samples"]]
    top.step(t, [s["workers"] for s in burst["samples"]], where="post", label="headrace_fn_workers")
    top.step(t, [s["running"] for s in burst["samples"]], where="post", label="headrace_fn_running", alpha=0.7)
    top.set_ylabel("workers / running")
    queue_axis = top.twinx()
    queue_axis.plot(t, [s["queued"] for s in burst["samples"]], color="tab:red", alpha=0.6, label="headrace_fn_queued")
    queue_axis.set_ylabel("queued", color="tab:red")
    top.set_title(
        f"{burst['files']:,} files, a {BURST_SLEEP_MS} ms function, maxScale {BURST_PARALLEL} (headrace {name})"
    )
    lines = top.get_legend_handles_labels()[0] + queue_axis.get_legend_handles_labels()[0]
    top.legend(lines, [str(line.get_label()) for line in lines], loc="upper right")
    series = [(f"headrace ({name})", burst["completions_s"])]
    peers = report.get("peers", {})
    for peer, label in (("watcher", "watcher + python per file"), ("celery", "Celery + Redis")):
        b = _lat(peers, peer, "burst")
        if b.get("completions_s"):
            series.append((label, b["completions_s"]))
    for label, done in series:
        bottom.step(done, range(1, len(done) + 1), where="post", label=f"{label}: {done[-1]:.1f} s")
    bottom.set_xlabel("seconds since the first write")
    bottom.set_ylabel("functions finished")
    bottom.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sample counts: a smoke test of a few minutes")
    parser.add_argument(
        "--configs",
        default="fsync,nofsync,nosandbox",
        help="comma-separated: fsync (default), nofsync, nosandbox (functions unsandboxed); none: peers only",
    )
    parser.add_argument("--skip-peers", action="store_true", help="headrace only (no watcher, no Celery)")
    parser.add_argument("--generator", choices=("auto", "go", "py-procs"), default="auto")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/functions[-quick].json)")
    parser.add_argument("--md", type=Path, help="markdown (default bench/RESULTS.md for full runs, none with --quick)")
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown section")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the markdown from an earlier JSON")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server and peer logs)")
    parser.add_argument(
        "--profile",
        metavar="PATTERN",
        help="record a py-spy flame graph of the server (with its zygotes and workers) during each headrace "
        "step, to PATTERN with {step} replaced (e.g. bench/results/profiles/functions-{step}-before.svg); "
        "py-spy's sampling takes CPU of its own: figures of such a run are not the benchmark's",
    )
    parser.add_argument(
        "--profile-scope",
        choices=("tree", "server", "gil"),
        default="tree",
        help="tree: the server, its zygotes and workers (py-spy --subprocesses); server: its process alone, "
        "where py-spy keeps up with every thread; gil: only the thread holding the GIL (py-spy --gil), where "
        "the server's Python spends CPU (a thread waiting in a system call does not count)",
    )
    args = parser.parse_args(argv)
    args.config_names = [c.strip() for c in args.configs.split(",") if c.strip() and c.strip() != "none"]
    if set(args.config_names) - set(CONFIGS):
        parser.error(f"--configs takes a comma-separated subset of {', '.join(CONFIGS)}, or none")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    global PROFILE, PROFILE_SCOPE
    PROFILE, PROFILE_SCOPE = args.profile, args.profile_scope
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    suffix = "-quick" if plan.quick else ""
    out: Path = args.out or RESULTS_DIR / f"functions{suffix}.json"
    md: Path | None = None if args.no_md else (args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md"))
    if args.render:
        sb.write_section(
            args.md or BENCH_DIR / "RESULTS.md", render_markdown(json.loads(args.render.read_text())), MD_BEGIN, MD_END
        )
        return 0

    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "machine": sb.machine_info(),
        "out_name": out.name,
        "headrace": {},
        "peers": {},
    }
    failed = False
    tmp = Path(tempfile.mkdtemp(prefix="headrace-functions-bench-"))
    # One recorder (FIFO) per system under test, so that the same keys in two configurations never meet.
    recorders: list[Recorder] = []

    fifos = tmp / "fifos"  # apart from the data directories: sandboxes see this directory and no other
    fifos.mkdir(mode=0o755)

    def recorder(name: str) -> Recorder:
        recorders.append(Recorder(fifos / f"records-{name}.fifo"))
        return recorders[-1]

    try:
        names = ("go", "py-procs") if args.generator == "auto" else (args.generator,)
        gens, skipped = sb.make_generators(names, tmp)
        if not gens:
            print("no usable load generator", file=sys.stderr)
            return 2
        gen = gens[0]
        report["generator"] = {"used": gen.name, "skipped": skipped}
        for name in args.config_names:
            try:
                report["headrace"][name] = bench_headrace(name, CONFIGS[name], tmp, plan, gen, recorder(name))
            except (sb.BenchError, OSError, http.client.HTTPException) as exc:
                log = tmp / name / "headrace" / "server.log"
                print(f"[{name}] FAILED: {exc}\n{sb.tail(log)}", file=sys.stderr, flush=True)
                report["headrace"][name] = {"error": str(exc), "log_tail": sb.tail(log)}
            cfg = report["headrace"][name]
            failed = failed or "error" in cfg
            failed = failed or any(isinstance(v, dict) and ("error" in v or v.get("put_errors")) for v in cfg.values())
        if not args.skip_peers:
            for peer, run in (("watcher", bench_watcher), ("celery", bench_celery)):
                try:
                    report["peers"][peer] = run(tmp, plan, recorder(peer))
                except (sb.BenchError, OSError, ImportError) as exc:
                    failed = True
                    print(f"[{peer}] FAILED: {exc}", file=sys.stderr, flush=True)
                    report["peers"][peer] = {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        for rec in recorders:
            rec.close()
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    report["other_cpu_pct"] = [v for v in _walk_other_cpu(report) if v is not None]
    compute(report)
    plot = RESULTS_DIR / f"functions-burst{suffix}.png"
    try:
        if plot_burst(report, plot):
            report["plot"] = f"results/{plot.name}"
            print(f"wrote {plot}")
    except (ImportError, OSError, ValueError) as exc:
        print(f"no plot: {exc}", file=sys.stderr)
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


def _walk_other_cpu(node: Any) -> Iterator[float | None]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "other_cpu_pct" and not isinstance(v, list):
                yield v
            else:
                yield from _walk_other_cpu(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_other_cpu(v)


if __name__ == "__main__":
    sys.exit(main())
