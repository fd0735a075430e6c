"""Event sources benchmark: a remote storage's upload -> the first line of a local function, through a
`dcache-sse` source, beside the same function triggered by a local upload; and events/s through one source.

Run from the repository root::

    .venv/bin/python bench/sources.py [--quick] [--out PATH] [--md PATH | --no-md] [--keep-tmp]

Two `headrace up` servers on this machine (bench/storage.py's HeadraceServer, default settings): the
*remote*, playing the dCache whose events are followed, and the *local* one, whose source `sse` follows the
remote's /in through its frontend's SSE API (kind dcache-sse, basic credentials; the remote's channel, stats
and door on 127.0.0.1).

1. **Latency**: an action whose first line takes ``t = time.time_ns()`` and returns it with the event's path,
   triggered (storage feed, CLOSE_WRITE) once by the source on the remote's /in and once, as the peer, by the
   local server's own /local. 300 sequential 4 KiB PUTs to each (100 with --quick) after 20 warm-up PUTs,
   each waited for (its activation record read back) and followed by a 10 ms pause. Latency = the first-line
   time - the time the PUT's response had been read (both CLOCK_REALTIME, one clock for every process);
   p50/p99/max. The remote path adds the remote's commit -> its SSE stream -> the source's stat of the file
   -> the local event log -> the controller, which the local path does not have; when the source's sink
   committed each event (its `lastEvent`) is recorded too, to split the source's part from the controller's.
2. **Throughput, live**: 5,000 4 KiB files (1,000 with --quick) PUT to the remote's /tp by 16 threads with a
   source `tp` following /tp (no trigger on it); the source's `received` counter (GET /api/v1/sources/tp,
   and the CLOSE_WRITE events in the local log, polled every 20 ms) give files/s and events/s (CLOSE_WRITE and
   ATTRIB) from the first PUT to the last file's event, beside the PUT rate.
3. **Throughput, backlog**: the local server stopped, the same number of files PUT to /tp, the server
   started again: the source resumes its channel with Last-Event-ID and drains the backlog; events/s from the
   first to the last received after the restart (the source alone, not the uploads).

Everything goes to --out (default bench/results/sources.json, sources-quick.json with --quick) and a section
of bench/RESULTS.md (between the `sources-bench` markers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
HOST = sb.HOST
AUTH = (sb.USER, sb.PASSWORD)
MD_BEGIN = "<!-- sources-bench:begin (written by bench/sources.py) -->"
MD_END = "<!-- sources-bench:end -->"
NS = "/api/v1/namespaces/_"
GAP_S = 0.010
BODY = b"x" * 4096

FIRST_LINE = """\
import time as _time


def main(args):
    t = _time.time_ns()
    return {"path": args.get("path"), "t": t}
"""


@dataclass(frozen=True)
class Plan:
    uploads: int
    warmup: int
    files: int
    writers: int
    quick: bool


FULL = Plan(uploads=300, warmup=20, files=5000, writers=16, quick=False)
QUICK = Plan(uploads=100, warmup=20, files=1000, writers=16, quick=True)


def api(server: sb.HeadraceServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://{HOST}:{server.api_port}", auth=AUTH, timeout=60)


def door(server: sb.HeadraceServer) -> httpx.Client:
    return httpx.Client(base_url=f"http://{HOST}:{server.port}", auth=AUTH, timeout=60)


def wait(probe: Callable[[], Any], what: str, timeout: float = 120.0, every: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise sb.BenchError(f"timed out waiting for {what}")
        time.sleep(every)


def ok(r: httpx.Response) -> httpx.Response:
    if not r.is_success:
        raise sb.BenchError(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}")
    return r


def source_config(remote: sb.HeadraceServer, path: str) -> dict[str, Any]:
    return {
        "kind": "dcache-sse",
        "url": f"http://{HOST}:{remote.api_port}/api/v1",
        "path": path,
        "basic": f"{AUTH[0]}:{AUTH[1]}",
    }


def put_source(local: httpx.Client, name: str, config: dict[str, Any]) -> None:
    ok(local.put(f"/api/v1/sources/{name}", json=config))
    wait(lambda: local.get(f"/api/v1/sources/{name}").json()["state"].get("position"), f"source {name} listening")


def deploy(local: httpx.Client, name: str, feed: dict[str, Any]) -> None:
    ok(local.put(f"{NS}/actions/{name}?overwrite=true", json={"exec": {"kind": "python:3", "code": FIRST_LINE}}))
    ok(local.put(f"{NS}/triggers/{name}-t?overwrite=true", json={"feed": feed}))
    ok(local.put(f"{NS}/rules/{name}-r?overwrite=true", json={"trigger": f"/_/{name}-t", "action": f"/_/{name}"}))


def latest(local: httpx.Client, action: str) -> dict[str, Any] | None:
    r = ok(local.get(f"{NS}/activations", params={"name": action, "docs": "true", "limit": 1}))
    acts = r.json()
    if not acts or acts[0].get("state") != "done":
        return None
    result: dict[str, Any] = acts[0]["response"]["result"]
    return result


def latency(
    local: httpx.Client, uploader: httpx.Client, action: str, directory: str, plan: Plan, source: str | None = None
) -> dict[str, Any]:
    """Sequential PUTs to `directory` (through `uploader`), each waited for at `action`'s first line; with a
    `source`, also when its sink committed the event (the source's `lastEvent`, in ms)."""
    samples: list[int] = []
    committed: list[int] = []
    for i in range(plan.warmup + plan.uploads):
        path = f"{directory}/f{i:05d}"
        ok(uploader.put(path, content=BODY))
        done = time.time_ns()
        result = wait(lambda p=path: (r := latest(local, action)) is not None and r["path"] == p and r, path)
        if i >= plan.warmup:
            samples.append(int(result["t"]) - done)
            if source is not None:
                state = ok(local.get(f"/api/v1/sources/{source}")).json()["state"]
                committed.append(int(state["lastEvent"]) * 1_000_000 - done)
        time.sleep(GAP_S)
    out = sb.summarize(samples)
    if committed:
        out["sink_commit"] = sb.summarize(committed)
    return out


def upload_many(server: sb.HeadraceServer, directory: str, n: int, writers: int, first: int = 0) -> tuple[float, float]:
    """PUT n files (numbered from `first`) into `directory` from `writers` threads: (wall seconds, start time)."""
    errors: list[str] = []

    def one(k: int) -> None:
        with door(server) as c:
            for i in range(first + k, first + n, writers):
                r = c.put(f"{directory}/t{i:06d}", content=BODY)
                if r.status_code != 201:
                    errors.append(f"{r.status_code} {r.text[:100]}")

    start = time.monotonic()
    threads = [threading.Thread(target=one, args=(k,)) for k in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise sb.BenchError(f"{len(errors)} uploads failed, first: {errors[0]}")
    return time.monotonic() - start, start


def received(local: httpx.Client, name: str) -> int:
    return int(ok(local.get(f"/api/v1/sources/{name}")).json()["state"]["received"])


def closed_files(server: sb.HeadraceServer, name: str) -> int:
    """The CLOSE_WRITE events of source `name` in the local server's log (read from its SQLite file)."""
    db = sqlite3.connect(f"file:{server.data / 'headrace.db'}?mode=ro", uri=True, timeout=30)
    try:
        q = "SELECT count(*) FROM events WHERE source = ? AND kind = 'CLOSE_WRITE'"
        return int(db.execute(q, (name,)).fetchone()[0])
    finally:
        db.close()


def follow(
    server: sb.HeadraceServer, name: str, target: int, timeout: float = 600.0
) -> tuple[float | None, int, float]:
    """Poll the source's CLOSE_WRITE count every 20 ms until it reaches `target`: (monotonic time of its first
    change, the count before it, the time of the poll that saw the target)."""
    first: float | None = None
    seen = closed_files(server, name)
    initial = seen
    deadline = time.monotonic() + timeout
    while seen < target:
        if time.monotonic() > deadline:
            raise sb.BenchError(f"source {name}: {seen} of {target} files after {timeout:.0f} s")
        time.sleep(0.02)
        now = closed_files(server, name)
        if now != seen and first is None:
            first, initial = time.monotonic(), seen
        seen = now
    return first, initial, time.monotonic()


def throughput(remote: sb.HeadraceServer, local_server: sb.HeadraceServer, plan: Plan) -> dict[str, Any]:
    with door(remote) as d:
        ok(d.request("MKCOL", "/tp"))
    with api(local_server) as local:
        put_source(local, "tp", source_config(remote, "/tp"))
        events0 = received(local, "tp")
    result: dict[str, Any] = {"files": plan.files, "writers": plan.writers}
    box: dict[str, Any] = {}
    watcher = threading.Thread(target=lambda: box.update(r=follow(local_server, "tp", plan.files)), daemon=True)
    watcher.start()
    put_s, put_start = upload_many(remote, "/tp", plan.files, plan.writers)
    watcher.join()
    _, _, last = box["r"]
    with api(local_server) as local:
        events1 = received(local, "tp")
    result["live"] = {
        "puts_per_s": round(plan.files / put_s, 1),
        "files_per_s": round(plan.files / (last - put_start), 1),
        "events_per_s": round((events1 - events0) / (last - put_start), 1),
        "events": events1 - events0,
        "last_file_after_last_put_s": round(last - put_start - put_s, 3),
    }
    print(f"live: {result['live']}", flush=True)
    # the backlog: uploads while the local server is down, drained from the channel when it is back
    local_server.stop()
    upload_many(remote, "/tp", plan.files, plan.writers, first=plan.files)
    restart = time.monotonic()
    local_server.start()
    first, initial, last = follow(local_server, "tp", 2 * plan.files)
    start = first if first is not None else restart
    with api(local_server) as local:
        events2 = received(local, "tp")
    result["backlog"] = {
        "files_per_s": round((2 * plan.files - initial) / max(last - start, 1e-3), 1),
        "events": events2 - events1,
        "restart_to_first_file_s": round(start - restart, 3),
        "closed_files_total": closed_files(local_server, "tp"),
    }
    print(f"backlog: {result['backlog']}", flush=True)
    return result


class Headrace(sb.HeadraceServer):
    """bench/storage.py's `headrace up`, which starts again on its data after a stop."""

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)
        self.launch("ab")


def run(plan: Plan, tmp: Path) -> dict[str, Any]:
    remote = Headrace(tmp / "remote", {}, "/")
    local = Headrace(tmp / "local", {}, "/")
    remote.start()
    local.start()
    try:
        report: dict[str, Any] = {"version": local.version(), "servers": {"remote": remote.describe()}}
        with door(remote) as d, door(local) as ld, api(local) as la:
            ok(d.request("MKCOL", "/in"))
            ok(ld.request("MKCOL", "/local"))
            put_source(la, "sse", source_config(remote, "/in"))
            deploy(la, "via-source", {"path": "/in", "source": "sse"})
            deploy(la, "via-local", {"path": "/local"})
            print(f"latency: {plan.uploads} remote PUTs through the source", flush=True)
            report["latency_source"] = latency(la, d, "via-source", "/in", plan, source="sse")
            print(f"  {report['latency_source']}", flush=True)
            print(f"latency: {plan.uploads} local PUTs", flush=True)
            report["latency_local"] = latency(la, ld, "via-local", "/local", plan)
            print(f"  {report['latency_local']}", flush=True)
        print(f"throughput: {plan.files} files by {plan.writers} writers", flush=True)
        report["throughput"] = throughput(remote, local, plan)
        return report
    finally:
        local.stop()
        remote.stop()


def render(report: dict[str, Any]) -> str:
    plan = Plan(**report["plan"])
    m = report["machine"]
    src, loc = report.get("latency_source", {}), report.get("latency_local", {})
    tp = report.get("throughput", {})
    out = [
        MD_BEGIN,
        "",
        "## Event sources: `bench/sources.py`",
        "",
        f"Generated by `.venv/bin/python bench/sources.py{' --quick' if plan.quick else ''}` on {report['date']}; "
        f"raw numbers in bench/results/{report['out_name']}. {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['ram_GiB']} GiB RAM, load average {report.get('load_average_at_start')} when the run started; both "
        "servers, the uploaders and the functions share the CPUs. "
        f"{report.get('version', '')}",
    ]
    if plan.quick:
        out += ["", "**A --quick smoke run: sample counts are small and the numbers are rough.**"]
    if "error" in report:
        out += ["", f"**Failed:** {report['error']}"]
    out += [
        "",
        "### Latency: PUT completed (client side) -> the triggered function's first line",
        "",
        "| trigger | n | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, s in (("remote PUT, dcache-sse source", src), ("local PUT (the same function)", loc)):
        if s.get("n"):
            out.append(f"| {label} | {s['n']} | {s['p50_ms']} | {s['p99_ms']} | {s['max_ms']} |")
    if src.get("n") and loc.get("n"):
        out += ["", f"The source adds {src['p50_ms'] - loc['p50_ms']:.1f} ms at the median."]
        commit = src.get("sink_commit", {})
        if commit.get("n"):
            out[-1] += (
                f" Of the remote path, the event was in the local log (the source's sink committed it: its"
                f" `lastEvent`, ms resolution) {commit['p50_ms']} ms after the PUT at the median (p99"
                f" {commit['p99_ms']} ms): the remote's SSE, the source's stat of the file and the commit; the"
                " rest is the local controller's."
            )
    if tp.get("live"):
        live, back = tp["live"], tp.get("backlog", {})
        out += [
            "",
            f"### Throughput through one source ({tp['files']} files of 4 KiB, {tp['writers']} writers)",
            "",
            "| case | files/s (CLOSE_WRITE) | events/s (all kinds) | notes |",
            "|---|---:|---:|---|",
            f"| live (uploads under way) | {live['files_per_s']} | {live['events_per_s']} | remote PUTs/s "
            f"{live['puts_per_s']}; last file {live['last_file_after_last_put_s']} s after the last PUT |",
        ]
        if back:
            out.append(
                f"| backlog (replayed from the channel after a local restart) | {back['files_per_s']} | | first "
                f"file {back['restart_to_first_file_s']} s after the restart began; {back['closed_files_total']} "
                f"of {2 * tp['files']} files in the log once each |"
            )
    out += ["", MD_END]
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 uploads and 1,000 files: a smoke test")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/sources[-quick].json)")
    parser.add_argument("--md", type=Path, help="markdown (default bench/RESULTS.md)")
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown section")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (server logs)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or BENCH_DIR / "results" / ("sources-quick.json" if plan.quick else "sources.json")
    md = None if args.no_md else (args.md or BENCH_DIR / "RESULTS.md")
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "machine": sb.machine_info(),
        "out_name": out.name,
        "load_average_at_start": round(os.getloadavg()[0], 1),
    }
    tmp = Path(tempfile.mkdtemp(prefix="headrace-sources-bench-"))
    failed = False
    try:
        report.update(run(plan, tmp))
    except (sb.BenchError, OSError, httpx.HTTPError, KeyError) as exc:
        failed = True
        report["error"] = str(exc)
        for side in ("remote", "local"):
            print(f"[{side}] {sb.tail(tmp / side / 'headrace' / 'server.log')}", file=sys.stderr)
        print(f"FAILED: {exc}", file=sys.stderr)
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    section = render(report)
    if md is not None:
        sb.write_section(md, section, MD_BEGIN, MD_END)
        print(f"wrote {md}")
    print(section)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
