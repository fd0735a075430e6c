"""XFEL workflow benchmark: the four example functions of examples/xfel on synthetic EuXFEL runs.

Run from the repository root::

    .venv/bin/python bench/xfel.py [--quick] [--out PATH] [--md PATH | --no-md] [--keep-tmp]

One fresh `headrace up` (bench/storage.py's HeadraceServer: free ports, its own data directory in a temp
workspace, defaults but for quiet logging), with the functions of examples/xfel/headrace.yaml deployed through
the API as `headrace demo` deploys them (headrace.cli.demo's pieces), their catalogue database and cache
directory in the workspace. The runs are `headrace.xfel.generate`'s synthetic EuXFEL runs (RAW DA01 and
JNGFR01 plus CORR JNGFR01 per sequence, about 2.7 MB a file), written through the door one file after the
other as a DAQ would.

1. **Run summary latency.** A first run starts the zygotes ("cold"), then `warm_runs` runs (new run numbers).
   For each, the time from the close (PUT response read, client side) of the file that completes the run's
   trains (the last sequence's first RAW file) to the run summary being readable with every train: GET
   `.../proc/rNNNN/run-summary.json` through the door every 10 ms until its `trains` is right. The same
   figure from the activation records (`headrace.cli.demo.summary_ready_ms`: the end of the first summary
   activation that saw every train) is reported beside it.
2. **Throughput.** A run of `throughput_files` files, generated beforehand into the workspace so that
   generating them is not timed: the same files into a directory no trigger watches (upload only), then into
   the watched tree. Window = the first PUT's start to the end of the last activation the run caused (its
   files, and the results' own files), once no activation has been queued or running for a while; files/s,
   MB/s, activations/s, activations per function and status, close -> activation end per function.
3. **Peer.** The same four functions' `main()` called directly (tests/support/xfel_ctx.py's DirStorage and Ctx) on the
   same files, written one after the other into a local directory and handed, as each is written, to a
   `concurrent.futures.ProcessPoolExecutor` (fork; the modules loaded before the fork, as headrace's zygote
   does): the science alone, no storage service, no events, and no catalogue or cache work on the outputs.

Everything goes to --out (default bench/results/xfel.json; --quick writes no file unless --out is given) and
a section of bench/RESULTS.md between the xfel-bench markers. Exit status 1 if any activation (or peer call)
failed or a run summary is wrong.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import multiprocessing
import os
import posixpath
import shutil
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import functions as fb  # bench/functions.py: CpuWatch that counts ended workers too
import storage as sb  # the benchmarks' shared helpers

sys.path.insert(0, str(sb.REPO_DIR / "tests" / "support"))

from headrace.cli.demo import (
    DEPLOY_FILE,
    QUIET_SECONDS,
    Watch,
    examples_dir,
    input_of,
    latencies,
    load_deploy_file,
    summary_ready_ms,
    wait_quiet,
)
from headrace.client import Client, ClientConfig, HeadraceClientError
from headrace.client.functions import Functions, FunctionSpec
from headrace.functions.runner import default_worker_cap
from headrace.xfel import generate
from xfel_ctx import Ctx, DirStorage, load_example

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MD_BEGIN = "<!-- xfel-bench:begin (written by bench/xfel.py) -->"
MD_END = "<!-- xfel-bench:end -->"
POLL_S = 0.010  # the run summary is read this often
RUN_TIMEOUT_S = 600.0
UPLOAD_ONLY_ROOT = "/upload-only"  # no trigger watches it (they watch /exp)
FIRST_RUN = 42
THROUGHPUT_RUN = 100
#: --profile: where py-spy's flame graph (".txt": collapsed stacks) of the server, its zygotes and workers
#: during the throughput run with functions goes, or None.
PROFILE: str | None = None
MODULES = {"xfel-summary": "summary", "xfel-catalogue": "catalogue", "xfel-azint": "azint", "xfel-cache": "cache"}


@dataclass(frozen=True)
class Plan:
    cold_files: int
    warm_runs: int
    warm_files: int
    throughput_files: int
    peer_workers: int
    quick: bool


FULL_PLAN = Plan(cold_files=20, warm_runs=5, warm_files=20, throughput_files=100, peer_workers=4, quick=False)
QUICK_PLAN = Plan(cold_files=6, warm_runs=1, warm_files=6, throughput_files=20, peer_workers=4, quick=True)


class QuietWatch(Watch):
    """headrace.cli.demo's Watch without a line per event and activation (hundreds of them per run)."""

    def say(self, text: str) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# Small helpers


def dist(values: Sequence[float]) -> dict[str, Any]:
    """n, p50/p95 (nearest rank, as sb.summarize), max and mean of values in ms."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        return {"n": 0}

    def rank(p: int) -> float:
        return round(ordered[min(n - 1, max(0, -(-n * p // 100) - 1))], 1)

    return {"n": n, "p50_ms": rank(50), "p95_ms": rank(95), "max_ms": round(ordered[-1], 1),
            "mean_ms": round(sum(ordered) / n, 1)}  # fmt: skip


def annotation(record: dict[str, Any], key: str) -> Any:
    return next((a.get("value") for a in record.get("annotations") or [] if a.get("key") == key), None)


def result_of(record: dict[str, Any]) -> dict[str, Any]:
    return (record.get("response") or {}).get("result") or {}


def status_of(record: dict[str, Any]) -> str:
    return str((record.get("response") or {}).get("status", "?"))


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def raw_trains(answers: Sequence[generate.FileAnswer]) -> set[int]:
    """The train ids the run summary can know of: those of the RAW files (it reads only those)."""
    return {t for f in answers if f.category == "RAW" for t in f.train_ids}


def completing_index(answers: Sequence[generate.FileAnswer]) -> int:
    """The index of the last file that brings trains no earlier file had: once it has closed, a complete run
    summary can exist (the last sequence's JNGFR01 and CORR files list the same trains as its DA01)."""
    seen: set[int] = set()
    last = 0
    for i, f in enumerate(answers):
        if f.category == "RAW" and not set(f.train_ids) <= seen:
            seen |= set(f.train_ids)
            last = i
    return last


def read_json(client: Client, path: str) -> dict[str, Any] | None:
    try:
        return dict(json.loads(client.read_bytes(path)))
    except (HeadraceClientError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------
# headrace


def deploy(client: Client, workdir: Path) -> list[FunctionSpec]:
    """examples/xfel/headrace.yaml with the catalogue and the cache in the workspace, as `headrace demo` does."""
    specs = load_deploy_file(examples_dir() / DEPLOY_FILE)
    for f in specs:
        if "catalogue" in f.params:
            f.params["catalogue"] = str(workdir / "catalogue.sqlite")
        if "cache_dir" in f.params:
            f.params["cache_dir"] = str(workdir / "cache")
    fn = Functions(client)
    for f in specs:
        fn.deploy(f)
    return specs


class SummaryPoller(threading.Thread):
    """GET the run summary through the door every POLL_S until its `trains` is `trains`; `ready` is then the
    time.time() at which that answer had been read."""

    def __init__(self, config: ClientConfig, path: str, trains: int, timeout: float) -> None:
        super().__init__(name="summary-poller", daemon=True)
        self.config, self.path, self.trains, self.timeout = config, path, trains, timeout
        self.ready: float | None = None
        self.polls = 0

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        with Client(self.config, timeout=10) as client:
            while time.monotonic() < deadline:
                summary = read_json(client, self.path)
                self.polls += 1
                if summary is not None and summary.get("trains") == self.trains:
                    self.ready = time.time()
                    return
                time.sleep(POLL_S)


class TimedFunctions(Functions):
    """Functions whose activation listings (what wait_quiet polls every 200 ms, full records) are counted and
    timed, client side: how much the waiting itself asks of the server."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.listings = 0
        self.listing_s = 0.0

    def activations(self, **kw: Any) -> list[dict[str, Any]]:
        started = time.monotonic()
        try:
            return super().activations(**kw)
        finally:
            self.listings += 1
            self.listing_s += time.monotonic() - started


def settle(api_port: int) -> None:
    """Until /metrics has shown no activation queued or running for QUIET_SECONDS (polled every 0.5 s): the
    cheap wait, before wait_quiet, whose full listings every 200 ms (hundreds of records each) would compete
    with the run's functions for the CPUs. wait_quiet still decides (the gauges can lag)."""
    metrics = fb.Metrics(api_port)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    quiet_since = None
    try:
        while time.monotonic() < deadline:
            busy = sum(v for (kind, _), v in metrics.read().items() if kind in ("queued", "running"))
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_SECONDS:
                return
            time.sleep(0.5)
    finally:
        metrics.close()


ROW_COLUMNS = ("name", "input", "start_ms", "end_ms", "initTime", "waitTime")


def rows(watch: Watch, name: str | None = None) -> dict[str, Any]:
    """The activations (of `name`, or all) in short, by start, as CSV lines of ROW_COLUMNS: the function, the
    file it was about, start and end in ms after t0_ms (the first activation's start, ms since the epoch),
    initTime and waitTime (empty when the record has none)."""
    mine = sorted(
        (a for a in watch.activations.values() if name is None or a["name"] == name), key=lambda a: a.get("start") or 0
    )
    t0 = (mine[0].get("start") or 0) if mine else 0

    def cell(value: Any) -> str:
        return "" if value is None else str(value)

    lines = [
        ",".join(cell(v) for v in (a["name"], input_of(result_of(a)), (a.get("start") or t0) - t0,
                                   (a.get("end") or t0) - t0, annotation(a, "initTime"), annotation(a, "waitTime")))
        for a in mine
    ]  # fmt: skip
    return {"t0_ms": t0, "columns": list(ROW_COLUMNS), "rows": lines}


def activation_counts(watch: Watch) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for a in watch.activations.values():
        counts = out.setdefault(a["name"], {})
        counts[status_of(a)] = counts.get(status_of(a), 0) + 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def check_run(
    client: Client, watch: Watch, answers: Sequence[generate.FileAnswer], proc_dir: str, quiet: bool
) -> list[str]:
    """What is wrong with a finished run: failed activations, missing ones, a wrong run summary."""
    problems = [] if quiet else ["the run's activations did not finish in time"]
    for a in watch.activations.values():
        if status_of(a) != "success":
            problems.append(f"{a['name']} {a['activationId']}: {status_of(a)} {json.dumps(result_of(a))[:300]}")
    counts = {name: sum(c.values()) for name, c in activation_counts(watch).items()}
    raw = sum(1 for f in answers if f.category == "RAW")
    corr = sum(1 for f in answers if f.category == "CORR")
    for name, want in (("xfel-summary", raw), ("xfel-azint", corr)):
        if counts.get(name, 0) != want:
            problems.append(f"{counts.get(name, 0)} {name} activations for {want} files")
    for name in ("xfel-catalogue", "xfel-cache"):
        if counts.get(name, 0) < len(answers):
            problems.append(f"{counts.get(name, 0)} {name} activations for {len(answers)} files")
    trains = sorted(raw_trains(answers))
    missing = sorted(set(range(trains[0], trains[-1] + 1)) - set(trains))
    summary = read_json(client, f"{proc_dir}/run-summary.json")
    if summary is None:
        problems.append(f"no {proc_dir}/run-summary.json")
    else:
        for key, want in (("trains", len(trains)), ("missingTrains", missing)):
            if summary.get(key) != want:
                problems.append(f"run summary {key} = {summary.get(key)!r}, expected {want!r}")
    return problems


def summary_details(watch: Watch) -> dict[str, Any]:
    """What the summary activations did: durations, worker starts (initTime), queueing (waitTime), and how
    often the run summary was written (the catalogue's records of its closes), i.e. the rewrite rounds."""
    mine = [a for a in watch.activations.values() if a["name"] == "xfel-summary"]
    inits = [annotation(a, "initTime") for a in mine]
    writes = sum(
        1
        for a in watch.activations.values()
        if a["name"] == "xfel-catalogue" and posixpath.basename(str(result_of(a).get("upserted"))) == "run-summary.json"
    )
    return {
        "activations": len(mine),
        "duration": dist([a.get("duration", 0) for a in mine]),
        "wait": dist([annotation(a, "waitTime") or 0 for a in mine]),
        "worker_starts": sum(1 for v in inits if v is not None),
        "init_ms": sorted(v for v in inits if v is not None),
        "run_summary_writes": writes,
        "writes_per_activation": round(writes / len(mine), 2) if mine else None,
    }


def latency_run(config: ClientConfig, client: Client, run: int, n_files: int, label: str) -> dict[str, Any]:
    """Write run `run` (its first n_files files) with generate.upload_run; time the complete run summary."""
    spec = generate.spec_for_files(n_files, run=run)
    answers = generate.expected(spec).files[:n_files]
    base = generate.proposal_dir(spec)
    proc_dir = posixpath.dirname(generate.file_path(base, spec.name("CORR", "JNGFR01", 0)))
    trains = len(raw_trains(answers))
    k = completing_index(answers)
    fn = TimedFunctions(client)
    watch = QuietWatch()
    since_ms = int(watch.t0 * 1000)
    closes: list[tuple[str, float]] = []
    total = 0
    poller = SummaryPoller(config, f"{proc_dir}/run-summary.json", trains, RUN_TIMEOUT_S)

    def closed(path: str, size: int) -> None:
        nonlocal total
        now = time.time()
        watch.closed[path] = now
        closes.append((path, now))
        total += size
        if len(closes) == k + 1:
            poller.start()

    load_before = loadavg()
    generate.upload_run(client, base, spec, limit=n_files, on_closed=closed)
    upload_s = time.time() - watch.t0
    poller.join(RUN_TIMEOUT_S)
    quiet = wait_quiet(fn, since_ms, watch, at_least=3 * n_files, timeout=RUN_TIMEOUT_S)
    problems = check_run(client, watch, answers, proc_dir, quiet)
    complete_at = closes[k][1]
    if poller.ready is None:
        problems.append(f"run {run}: the run summary never showed {trains} trains")
    # demo.summary_ready_ms measures from the latest close it knows of: given the closes up to the completing
    # file, the same reference as the poll; given every close (as the demo does), from the run's last file.
    upto = QuietWatch(closed=dict(closes[: k + 1]), activations=watch.activations)
    out = {
        "label": label,
        "run": run,
        "files": n_files,
        "bytes": total,
        "trains": trains,
        "upload_s": round(upload_s, 3),
        "completing_file": posixpath.basename(closes[k][0]),
        "last_close_after_completing_ms": round((closes[-1][1] - complete_at) * 1000, 1),
        "poll_ready_ms": None if poller.ready is None else round((poller.ready - complete_at) * 1000, 1),
        "polls": poller.polls,
        "records_ready_ms": _round(summary_ready_ms(upto, trains)),
        "records_ready_from_last_close_ms": _round(summary_ready_ms(watch, trains)),
        "activations": activation_counts(watch),
        "summary": summary_details(watch),
        "summary_activations": rows(watch, "xfel-summary"),
        "listings": {"n": fn.listings, "s": round(fn.listing_s, 2)},
        "loadavg_before": load_before,
        "problems": problems,
    }
    print(
        f"[{label}] run {run}: {n_files} files ({total / 1e6:.0f} MB) in {upload_s:.1f} s; complete run summary "
        f"{out['poll_ready_ms']} ms after {out['completing_file']} closed (records: {out['records_ready_ms']} ms); "
        f"{len(watch.activations)} activations; summary activations p50 {out['summary']['duration'].get('p50_ms')}"
        f" ms, max {out['summary']['duration'].get('max_ms')} ms",
        flush=True,
    )
    for p in problems:
        print(f"[{label}] PROBLEM: {p}", file=sys.stderr, flush=True)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def stage_run(spec: generate.RunSpec, n_files: int, staging: Path) -> tuple[list[tuple[str, Path]], float]:
    """The run's first n_files files, generated into `staging` (in the order the DAQ closes them); seconds taken."""
    started = time.monotonic()
    files = []
    for name, data in generate.run_files(spec):
        if len(files) == n_files:
            break
        local = staging / name
        local.write_bytes(data)
        files.append((name, local))
    return files, time.monotonic() - started


def upload_files(client: Client, base: str, files: Sequence[tuple[str, Path]], watch: Watch) -> tuple[float, float]:
    """PUT the staged files to their places below `base`, one after the other (directories made first, as
    generate.upload_run does); each close goes into `watch.closed`. (first PUT's start, last PUT's end)."""
    made: set[str] = set()
    first = time.time()
    for name, local in files:
        remote = generate.file_path(base, name)
        parent = posixpath.dirname(remote)
        if parent not in made:
            client.mkdir(parent, parents=True)
            made.add(parent)
        client.upload(local, remote)
        watch.closed[remote] = time.time()
    return first, time.time()


def by_function(watch: Watch) -> dict[str, Any]:
    """Per function: activations by status, close -> activation end (ms), and busy time (sum of durations)."""
    lat = latencies(watch)
    out: dict[str, Any] = {}
    for name, counts in activation_counts(watch).items():
        mine = [a for a in watch.activations.values() if a["name"] == name]
        durations = [a.get("duration", 0) for a in mine]
        out[name] = {
            "activations": sum(counts.values()),
            "by_status": counts,
            "close_to_end": dist(lat.get(name, [])),
            "wait": dist([annotation(a, "waitTime") or 0 for a in mine]),
            "duration": dist(durations),
            "busy_s": round(sum(durations) / 1000, 2),
        }
    return out


def throughput(
    server: sb.HeadraceServer, client: Client, plan: Plan, files: Sequence[tuple[str, Path]], spec: generate.RunSpec
) -> dict[str, Any]:
    """The staged run into an unwatched directory (upload only), then into the watched tree."""
    answers = generate.expected(spec).files[: len(files)]
    size = sum(local.stat().st_size for _, local in files)
    base = generate.proposal_dir(spec)
    plain = QuietWatch()
    with fb.CpuWatch(server.pid) as cpu_plain:
        first, last = upload_files(client, UPLOAD_ONLY_ROOT + base, files, plain)
    upload_only = {
        "window_s": round(last - first, 3),
        "files_per_s": round(len(files) / (last - first), 2),
        "MB_per_s": round(size / 1e6 / (last - first), 1),
        "server_cpu_s": round(cpu_plain.server_s, 2),
        "client_cpu_s": round(cpu_plain.generator_s, 2),
        "other_cpu_pct": cpu_plain.other_pct,
    }
    print(f"[throughput] upload only: {len(files)} files in {upload_only['window_s']} s", flush=True)
    time.sleep(QUIET_SECONDS)

    fn = TimedFunctions(client)
    watch = QuietWatch()
    since_ms = int(time.time() * 1000)
    load_before = loadavg()
    with fb.py_spy(server.pid, PROFILE), fb.CpuWatch(server.pid) as cpu:
        first, last_put = upload_files(client, base, files, watch)
        settle(server.api_port)
    quiet = wait_quiet(fn, since_ms, watch, at_least=3 * len(files), timeout=RUN_TIMEOUT_S)
    ends = [a["end"] for a in watch.activations.values() if a.get("end")]
    end = max(ends) / 1000 if ends else time.time()
    proc_dir = posixpath.dirname(generate.file_path(base, spec.name("CORR", "JNGFR01", 0)))
    problems = check_run(client, watch, answers, proc_dir, quiet)
    window = end - first
    n = len(watch.activations)
    out = {
        "run": spec.run,
        "files": len(files),
        "bytes": size,
        "upload_only": upload_only,
        "upload_s": round(last_put - first, 3),
        "window_s": round(window, 3),
        "files_per_s": round(len(files) / window, 2),
        "MB_per_s": round(size / 1e6 / window, 1),
        "activations": n,
        "activations_per_s": round(n / window, 1),
        "functions": by_function(watch),
        "summary": summary_details(watch),
        "ratio_with_functions_to_upload_only": round(window / upload_only["window_s"], 2),
        "server_cpu_s": round(cpu.server_s, 2),
        "client_cpu_s": round(cpu.generator_s, 2),
        "other_cpu_pct": cpu.other_pct,
        "listings": {"n": fn.listings, "s": round(fn.listing_s, 2)},
        "loadavg_before": load_before,
        "problems": problems,
        "activation_rows": rows(watch),
    }
    print(
        f"[throughput] with functions: {len(files)} files in {out['window_s']} s ({out['files_per_s']} files/s, "
        f"{out['MB_per_s']} MB/s, {n} activations, {out['activations_per_s']}/s; upload done after "
        f"{out['upload_s']} s); {out['ratio_with_functions_to_upload_only']}x the upload alone",
        flush=True,
    )
    for p in problems:
        print(f"[throughput] PROBLEM: {p}", file=sys.stderr, flush=True)
    return out


# --------------------------------------------------------------------------------------------------
# The peer: the functions' main() in a process pool on a local directory

_peer: dict[str, Any] = {}


def _peer_ready(_: int) -> int:
    time.sleep(0.2)  # long enough that every worker takes one
    return os.getpid()


def _peer_call(name: str, event: dict[str, Any]) -> dict[str, Any]:
    storage = _peer["storage"]
    before = len(storage.writes)
    start = time.time()
    try:
        result = _peer["modules"][name].main(event, _peer["ctx"])
        error = None
    except Exception as exc:
        result, error = {}, f"{type(exc).__name__}: {exc}"
    end = time.time()
    writes = storage.writes[before:]
    return {
        "name": name,
        "path": event["path"],
        "pid": os.getpid(),
        "start": start,
        "end": end,
        "error": error,
        "result": result,
        "run_summary_writes": sum(1 for w in writes if posixpath.basename(w) == "run-summary.json"),
    }


def peer_event(path: str, data_path: Path, offset: int, params: dict[str, Any]) -> dict[str, Any]:
    """A storage event's fields as headrace's functions get them (events/render.py: event_data), plus the
    function's parameters."""
    body = data_path.read_bytes()
    return {
        **params,
        "path": path,
        "name": posixpath.basename(path),
        "kind": "CLOSE_WRITE",
        "isDir": False,
        "pnfsId": f"{offset:024X}",
        "size": len(body),
        "offset": offset,
        "time": datetime.now(UTC).isoformat(),
        "user": sb.USER,
        "checksums": {"ADLER32": f"{zlib.adler32(body) & 0xFFFFFFFF:08x}"},
        "mask": ["IN_CLOSE_WRITE"],
    }


def peer(
    specs: Sequence[FunctionSpec], files: Sequence[tuple[str, Path]], spec: generate.RunSpec, workdir: Path, plan: Plan
) -> dict[str, Any]:
    """Write the staged files into workdir/peer one after the other; as each is written, submit the functions
    whose trigger it matches to the pool."""
    root = workdir / "peer"
    root.mkdir()
    params = {}
    for f in specs:
        p = dict(f.params)
        if "catalogue" in p:
            p["catalogue"] = str(workdir / "peer-catalogue.sqlite")
        if "cache_dir" in p:
            p["cache_dir"] = str(workdir / "peer-cache")
        params[f.name] = p
    storage = DirStorage(root)
    _peer.update(
        storage=storage, ctx=Ctx(storage), modules={f.name: load_example(MODULES[f.name]) for f in specs}
    )  # loaded before the fork: every worker has them, as every worker forked from a zygote does
    base = generate.proposal_dir(spec)
    size = sum(local.stat().st_size for _, local in files)
    closes: dict[str, float] = {}
    futures: list[Future[dict[str, Any]]] = []
    load_before = loadavg()
    with ProcessPoolExecutor(plan.peer_workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pids = set(pool.map(_peer_ready, range(plan.peer_workers * 2)))
        with PeerCpuWatch(os.getpid()) as cpu:
            first = time.time()
            for offset, (name, local) in enumerate(files, start=1):
                remote = generate.file_path(base, name)
                target = root / remote.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, target)
                closes[remote] = time.time()
                for f in specs:
                    pattern = f.feed.pattern if f.feed is not None else None
                    if pattern is None or fnmatch.fnmatchcase(name, pattern):
                        futures.append(
                            pool.submit(_peer_call, f.name, peer_event(remote, target, offset, params[f.name]))
                        )
            last_write = time.time()
            calls = [fut.result() for fut in futures]
            end = max(c["end"] for c in calls)
    window = end - first
    problems = [f"peer {c['name']} {c['path']}: {c['error']}" for c in calls if c["error"]]
    answers = generate.expected(spec).files[: len(files)]
    trains = sorted(raw_trains(answers))
    summary_file = root / posixpath.dirname(generate.file_path(base, spec.name("CORR", "JNGFR01", 0))).lstrip("/")
    summary = json.loads((summary_file / "run-summary.json").read_text())
    missing = sorted(set(range(trains[0], trains[-1] + 1)) - set(trains))
    for key, want in (("trains", len(trains)), ("missingTrains", missing)):
        if summary.get(key) != want:
            problems.append(f"peer run summary {key} = {summary.get(key)!r}, expected {want!r}")
    funcs: dict[str, Any] = {}
    for f in specs:
        mine = [c for c in calls if c["name"] == f.name]
        durations = [(c["end"] - c["start"]) * 1000 for c in mine]
        first_per_pid: dict[int, float] = {}
        for c in sorted(mine, key=lambda c: c["start"]):
            first_per_pid.setdefault(c["pid"], (c["end"] - c["start"]) * 1000)
        funcs[f.name] = {
            "calls": len(mine),
            "errors": sum(1 for c in mine if c["error"]),
            "close_to_end": dist([(c["end"] - closes[c["path"]]) * 1000 for c in mine]),
            "duration": dist(durations),
            "first_call_per_worker_ms": sorted(round(v, 1) for v in first_per_pid.values()),
            "busy_s": round(sum(durations) / 1000, 2),
        }
    writes = sum(c["run_summary_writes"] for c in calls)
    n_summary = funcs.get("xfel-summary", {}).get("calls", 0)
    out = {
        "workers": plan.peer_workers,
        "worker_pids": len(pids),
        "files": len(files),
        "bytes": size,
        "write_s": round(last_write - first, 3),
        "window_s": round(window, 3),
        "files_per_s": round(len(files) / window, 2),
        "MB_per_s": round(size / 1e6 / window, 1),
        "calls": len(calls),
        "functions": funcs,
        "run_summary_writes": writes,
        "run_summary_writes_per_call": round(writes / n_summary, 2) if n_summary else None,
        "cpu_s": round(cpu.server_s, 2),
        "other_cpu_pct": cpu.other_pct,
        "loadavg_before": load_before,
        "problems": problems,
    }
    print(
        f"[peer] {len(files)} files, {len(calls)} calls in {out['window_s']} s ({out['files_per_s']} files/s) with "
        f"a pool of {plan.peer_workers}",
        flush=True,
    )
    for p in problems:
        print(f"[peer] PROBLEM: {p}", file=sys.stderr, flush=True)
    return out


class PeerCpuWatch(fb.CpuWatch):
    """The peer is this process and its pool: their CPU once (not again as the "generator")."""

    def _ours(self) -> tuple[float, float]:
        return fb.tree_cpu_seconds(os.getpid()), 0.0


# --------------------------------------------------------------------------------------------------
# The whole bench


def bench(plan: Plan, workdir: Path) -> dict[str, Any]:
    server = sb.HeadraceServer(workdir, {}, "/")
    result: dict[str, Any] = {"server": {"version": server.version(), "settings": server.describe()}}
    print(f"starting headrace in {server.dir}", flush=True)
    server.start()
    config = ClientConfig(
        door=f"http://{sb.HOST}:{server.port}", api=f"http://{sb.HOST}:{server.api_port}",
        username=sb.USER, key=sb.PASSWORD,
    )  # fmt: skip
    staging = workdir / "staging"
    staging.mkdir()
    tp_spec = generate.spec_for_files(plan.throughput_files, run=THROUGHPUT_RUN)
    try:
        with Client(config) as client:
            specs = deploy(client, workdir / "headrace")
            result["functions"] = {
                f.name: {
                    "max_scale": f.action_body()["scaling"]["maxScale"],
                    "memory": f.action_body()["limits"]["memory"],
                }
                for f in specs
            }
            result["server_worker_cap"] = default_worker_cap()  # HEADRACE_FN_MAX_WORKERS is not set
            runs = [latency_run(config, client, FIRST_RUN, plan.cold_files, "cold")]
            for i in range(plan.warm_runs):
                runs.append(latency_run(config, client, FIRST_RUN + 1 + i, plan.warm_files, f"warm {i + 1}"))
            result["latency_runs"] = runs
            files, gen_s = stage_run(tp_spec, plan.throughput_files, staging)
            print(f"[throughput] generated {len(files)} files in {gen_s:.1f} s (not timed)", flush=True)
            result["generate_s"] = round(gen_s, 2)
            result["throughput"] = throughput(server, client, plan, files, tp_spec)
    finally:
        server.stop()
    result["peer"] = peer(specs, files, tp_spec, workdir, plan)
    return result


def compute(report: dict[str, Any]) -> None:
    runs = report["latency_runs"]
    warm = [r for r in runs if r["label"] != "cold"]
    cold = next(r for r in runs if r["label"] == "cold")
    report["summary_latency"] = {
        "cold_poll_ms": cold["poll_ready_ms"],
        "cold_records_ms": cold["records_ready_ms"],
        "warm_poll": dist([r["poll_ready_ms"] for r in warm if r["poll_ready_ms"] is not None]),
        "warm_records": dist([r["records_ready_ms"] for r in warm if r["records_ready_ms"] is not None]),
    }
    tp, pr = report["throughput"], report["peer"]
    report["ratio_headrace_to_peer"] = round(tp["window_s"] / pr["window_s"], 2)
    report["cpu_ratio_headrace_to_peer"] = round((tp["server_cpu_s"] + tp["client_cpu_s"]) / pr["cpu_s"], 2)
    report["problems"] = [p for r in runs for p in r["problems"]] + tp["problems"] + pr["problems"]


# --------------------------------------------------------------------------------------------------
# Report


fmt = sb.fmt


def render_markdown(report: dict[str, Any]) -> str:
    plan = Plan(**report["plan"])
    m = report["machine"]
    lat = report["summary_latency"]
    tp, pr = report["throughput"], report["peer"]
    up = tp["upload_only"]
    out = [
        MD_BEGIN,
        "",
        "## XFEL workflow: `bench/xfel.py`",
        "",
        f"Generated by `.venv/bin/python bench/xfel.py{' --quick' if plan.quick else ''}` on {report['date']} "
        f"({report['bench_s']:.0f} s); raw numbers in bench/results/{report['out_name']}. {m['nproc']} CPUs "
        f"({m['cpu_model']}), {m['ram_GiB']} GiB RAM, Python {m['python']}; headrace {report['server']['version']}. "
        "The server, its function workers, the uploading client and the peer share the CPUs. Load average "
        f"before the bench {', '.join(fmt(v, 2) for v in report['loadavg_start'])}, after "
        f"{', '.join(fmt(v, 2) for v in report['loadavg_end'])}.",
    ]
    if plan.quick:
        out += ["", "**A --quick smoke run: one warm run, a short throughput run; the numbers are rough.**"]
    noise = sb.max_known([tp.get("other_cpu_pct"), tp["upload_only"].get("other_cpu_pct"), pr.get("other_cpu_pct")])
    if noise is not None and noise > sb.NOISY_OTHER_CPU_PCT:
        out += ["", f"**Noisy run:** other processes used up to {noise:.0f}% of the CPUs during a measurement."]
    warm = [r for r in report["latency_runs"] if r["label"] != "cold"]
    cold = next(r for r in report["latency_runs"] if r["label"] == "cold")
    out += [
        "",
        f"### Run summary latency ({plan.warm_runs} warm runs of {plan.warm_files} files after a cold one of "
        f"{plan.cold_files})",
        "",
        "From the close of the file that completes the run's trains (its PUT answered) to a run summary with "
        "every train: read through the door (polled every 10 ms), and the end of the summary activation that "
        "wrote it (from the activation records, as `headrace demo` reports it).",
        "",
        "| | runs | read through the door, p50 ms | max ms | activation end (records), p50 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|",
        f"| cold (zygotes start) | 1 | {fmt(lat['cold_poll_ms'])} | | {fmt(lat['cold_records_ms'])} | |",
        f"| warm | {len(warm)} | {fmt(lat['warm_poll'].get('p50_ms'))} | {fmt(lat['warm_poll'].get('max_ms'))} | "
        f"{fmt(lat['warm_records'].get('p50_ms'))} | {fmt(lat['warm_records'].get('max_ms'))} |",
        "",
        "Each run: "
        + "; ".join(
            f"{r['label']} {fmt(r['poll_ready_ms'])} ms (summary activations p50 "
            f"{fmt(r['summary']['duration'].get('p50_ms'))}, max {fmt(r['summary']['duration'].get('max_ms'))} ms, "
            f"{r['summary']['writes_per_activation']} run-summary writes each)"
            for r in [cold, *warm]
        )
        + ".",
        "",
        f"### Throughput: one run of {tp['files']} files ({tp['bytes'] / 1e6:.0f} MB)",
        "",
        "| | wall s | files/s | MB/s | activations | activations/s | CPU s (server + client) | other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| headrace, upload only (no trigger) | {fmt(up['window_s'], 2)} | {fmt(up['files_per_s'], 1)} | "
        f"{fmt(up['MB_per_s'], 1)} | | | {fmt(up['server_cpu_s'], 1)} + {fmt(up['client_cpu_s'], 1)} | "
        f"{fmt(up['other_cpu_pct'])} |",
        f"| headrace, four functions: first PUT -> last activation end | {fmt(tp['window_s'], 2)} | "
        f"{fmt(tp['files_per_s'], 1)} | {fmt(tp['MB_per_s'], 1)} | {fmt(tp['activations'])} | "
        f"{fmt(tp['activations_per_s'], 1)} | {fmt(tp['server_cpu_s'], 1)} + {fmt(tp['client_cpu_s'], 1)} | "
        f"{fmt(tp['other_cpu_pct'])} |",
        f"| peer: main() in a process pool of {pr['workers']}, local directory | {fmt(pr['window_s'], 2)} | "
        f"{fmt(pr['files_per_s'], 1)} | {fmt(pr['MB_per_s'], 1)} | {fmt(pr['calls'])} calls | | "
        f"{fmt(pr['cpu_s'], 1)} (pool and feeder) | {fmt(pr['other_cpu_pct'])} |",
        "",
        f"With functions / upload only: **{fmt(tp['ratio_with_functions_to_upload_only'], 2)}x**; "
        f"headrace / peer: **{fmt(report['ratio_headrace_to_peer'], 2)}x** (the upload alone took "
        f"{fmt(tp['upload_s'], 2)} s of headrace's {fmt(tp['window_s'], 2)} s). CPU: headrace "
        f"{fmt(report['cpu_ratio_headrace_to_peer'], 2)}x the peer's. CPU s: the server's process tree (door, "
        "controller, zygotes and workers, ended ones included) and this process (the uploading client), or the "
        "peer's process and pool; other CPU %: what the rest of the machine used meanwhile (of all CPUs).",
        "",
        "| function | max_scale | activations (by status) | close -> end p50 ms | p95 ms | waited p50 ms | "
        "duration p50 ms | busy s | peer calls | peer close -> end p50 ms | p95 ms | peer duration p50 ms | "
        "peer busy s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in tp["functions"].items():
        p = pr["functions"].get(name, {})
        statuses = ", ".join(f"{k} {v}" for k, v in f["by_status"].items())
        out.append(
            f"| {name} | {fmt(report['functions'].get(name, {}).get('max_scale'))} | {f['activations']} ({statuses}) "
            f"| {fmt(f['close_to_end'].get('p50_ms'))} | {fmt(f['close_to_end'].get('p95_ms'))} | "
            f"{fmt(f.get('wait', {}).get('p50_ms'))} | {fmt(f['duration'].get('p50_ms'))} | {fmt(f['busy_s'], 1)} | "
            f"{fmt(p.get('calls'))} | "
            f"{fmt(p.get('close_to_end', {}).get('p50_ms'))} | {fmt(p.get('close_to_end', {}).get('p95_ms'))} | "
            f"{fmt(p.get('duration', {}).get('p50_ms'))} | {fmt(p.get('busy_s'), 1)} |"
        )
    s = tp["summary"]
    out += [
        "",
        "How measured:",
        "",
        "- headrace: one fresh `headrace up` (free ports, own data directory; defaults, so every upload is "
        "fsynced), examples/xfel/headrace.yaml deployed through the API with the catalogue and the cache in the "
        "bench's workspace. Runs are headrace.xfel.generate's (`spec_for_files`): per sequence RAW DA01 (XGM), "
        "RAW JNGFR01 and CORR JNGFR01, ~2.7 MB a file on average, PUT one after the other through the door "
        "(`generate.upload_run` for the latency runs; for the throughput run the files are generated beforehand "
        f"({fmt(report['generate_s'], 1)} s, not timed) and PUT with `Client.upload`, directories made first).",
        "- Latency reference: a run summary can only be complete once the last sequence's first RAW file has "
        "closed (its other files list the same trains), so that close is the start; the run's last file closes "
        f"~{fmt(dist([r['last_close_after_completing_ms'] for r in warm]).get('p50_ms'))} ms later. The poll is a "
        "GET of run-summary.json every 10 ms (after its answer) until `trains` equals the generator's count.",
        "- Throughput window: the first PUT's start to the latest `end` of the activations created since the run "
        "began (the run's files fire the summary or the integration, the catalogue and the cache; the results' "
        "own files, AZINT files, run-summary.json and preview.png, fire the catalogue and the cache "
        "again), taken once none has been queued or running for 1.5 s (`headrace.cli.demo.wait_quiet`). Every "
        "activation must succeed and the run summary must have the generator's trains and missing trains, or "
        "the bench fails.",
        f"- Peer: the same staged files copied one after the other into a local directory (no fsync); after "
        f"each copy, the functions whose trigger pattern matches it (`main(event, ctx)` with "
        f"tests/support/xfel_ctx.py's "
        f"DirStorage) are submitted to a ProcessPoolExecutor({pr['workers']}) forked after the four modules were "
        "loaded (as headrace's zygote loads them) and warmed up; window = the first copy's start to the last "
        "call's end. No catalogue or cache calls for the outputs: the science alone.",
        "",
        "Notes:",
        "",
        f"- {m['nproc']} cores for everything: the functions' max_scale adds up to "
        f"{sum((f.get('max_scale') or 0) for f in report['functions'].values())} workers (the cache's default "
        f"included), of which the server runs at most {fmt(report.get('server_worker_cap'))} at once (its default "
        f"cap, 4 per CPU); the peer has {pr['workers']}. Neither can use more than {m['nproc']} CPUs, and the "
        "uploading client runs on them too.",
        "- Busy time in the throughput run (sum of activation durations): "
        + ", ".join(f"{n} {fmt(f['busy_s'], 1)} s" for n, f in tp["functions"].items())
        + f"; server process tree CPU {fmt(tp['server_cpu_s'], 1)} s over {fmt(tp['window_s'], 1)} s.",
        f"- Run summary in the throughput run: {s['activations']} activations, duration p50 "
        f"{fmt(s['duration'].get('p50_ms'))} ms, p95 {fmt(s['duration'].get('p95_ms'))} ms, max "
        f"{fmt(s['duration'].get('max_ms'))} ms; waited p50 {fmt(s['wait'].get('p50_ms'))} ms, max "
        f"{fmt(s['wait'].get('max_ms'))} ms for a worker; {s['worker_starts']} worker starts; the run summary was "
        f"written {s['run_summary_writes']} times ({s['writes_per_activation']} per activation; the peer: "
        f"{pr['run_summary_writes_per_call']} per call).",
    ]
    peer_summary = pr["functions"].get("xfel-summary", {})
    first_calls = peer_summary.get("first_call_per_worker_ms", [])
    peer_p50 = peer_summary.get("duration", {}).get("p50_ms")
    out += [
        f"- Of the throughput run's {tp['activations']} activations, {tp['activations'] - 3 * tp['files']} were the "
        "catalogue and the cache on the results' own files (run-summary.json at every file, preview.png at "
        "every drawing, AZINT files): the cascade the peer does not have.",
        f"- The peer's first summary call in each worker took {', '.join(fmt(v) for v in first_calls)} ms "
        f"(matplotlib is imported at the first preview), its calls p50 {fmt(peer_p50)} ms.",
        f"- Waiting for the end: /metrics every 0.5 s, then `wait_quiet`, whose full activation listings "
        f"({tp['listings']['n']} in the throughput run, {fmt(tp['listings']['s'], 1)} s of requests) run after the "
        "work is done. In the latency runs the summary is polled every 10 ms until complete, and `wait_quiet` "
        "lists activations every 200 ms after that while the run's other functions still run.",
    ]
    out += [f"- {note}" for note in report.get("notes", [])]
    out += ["", MD_END, ""]
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 warm run of 6 files and a 20-file throughput run")
    parser.add_argument("--warm-runs", type=int, help="warm runs for the summary latency (default 5)")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/xfel.json; none with --quick)")
    parser.add_argument("--md", type=Path, help="markdown (default bench/RESULTS.md for full runs, none with --quick)")
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown section")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the markdown from an earlier JSON")
    parser.add_argument("--note", action="append", default=[], help="a note for the markdown (repeatable)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the workspace (server log, data, peer files)")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="py-spy's flame graph of the server, its zygotes and workers during the throughput run with functions "
        "(a .txt PATH: collapsed stacks); py-spy takes CPU of its own, so such a run's figures are not the bench's",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    global PROFILE
    args = parse_args(argv)
    PROFILE = args.profile
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.warm_runs is not None:
        plan = Plan(**{**asdict(plan), "warm_runs": args.warm_runs})
    out: Path | None = args.out or (None if plan.quick else RESULTS_DIR / "xfel.json")
    md: Path | None = None if args.no_md else (args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md"))
    if args.render:
        sb.write_section(args.md or BENCH_DIR / "RESULTS.md", render_markdown(json.loads(args.render.read_text())),
                         MD_BEGIN, MD_END)  # fmt: skip
        return 0
    started = time.monotonic()
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "machine": sb.machine_info(),
        "loadavg_start": loadavg(),
        "out_name": out.name if out else "(none)",
        "notes": args.note,
    }
    with sb.workspace(args.keep_tmp, "headrace-xfel-bench-") as tmp:
        print(f"workspace {tmp}; plan {plan}", flush=True)
        try:
            report.update(bench(plan, tmp))
        except (sb.BenchError, HeadraceClientError, OSError) as exc:
            print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            log = tmp / "headrace" / "server.log"
            if log.exists():
                print(f"last lines of {log}:\n{sb.tail(log)}", file=sys.stderr)
            return 1
    report["loadavg_end"] = loadavg()
    report["bench_s"] = round(time.monotonic() - started, 1)
    compute(report)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {out}")
    section = render_markdown(report)
    if report["problems"]:
        for p in report["problems"]:
            print(f"PROBLEM: {p}", file=sys.stderr)
        print(f"xfel bench: {len(report['problems'])} problems; RESULTS.md left as it was", file=sys.stderr)
        return 1
    if md is not None:
        sb.write_section(md, section, MD_BEGIN, MD_END)
        print(f"wrote {md}")
    print()
    print(section.split("### Run summary", 1)[1].split("How measured:", 1)[0].strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
