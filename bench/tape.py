"""Tape benchmark: how fast headrace flushes to tape and stages back, beside the HSM script alone.

Run from the repository root (`make bench` runs it)::

    .venv/bin/python bench/tape.py [--quick] [--out PATH] [--md PATH | --no-md]

The HSM is the shipped simulator (headrace.tape.simulator) behind dCache's HSM script interface, in two
settings, each on a fresh `headrace up` (started as bench/storage.py starts it):

- **zero**: no mount or position time, copies as fast as the disk goes: what headrace itself costs;
- **realistic (scaled)**: 2 drives, a 5 s mount, 0.5 s to position per file, 400 MB/s (LTO-9's rate). A real
  library mounts in 60-90 s and locates in 30-50 s; those would make the run hours long and measure the
  sleeps, so both are scaled down and named as such.

Measured in each setting:

1. **Flush**: N files of 1 MiB written into a directory with QoS tape (the flush queue's count trigger set to N,
   so the flush starts when the last one closes); files/s and MB/s from that moment until all are
   ONLINE_AND_NEARLINE in the namespace. Peer: the same simulator's `put` run directly on N files of the same
   size, with the same concurrency (2): what the HSM script alone takes.
2. **Stage latency**: K files evicted, then each read with GET; the time from the request to the last byte, with
   the drive unloaded first (a mount) and with the cartridge still mounted. Peer: the simulator's `get` alone.
3. **Bulk stage** (zero setting): M files (1,000; 200 with --quick) of 1 MiB evicted, then one dCache bulk
   request STAGE of all of them (`POST /api/v1/bulk-requests`), polled until every target is COMPLETED; MB/s.
   Peer: the simulator's `get` of the same copies, 2 at a time.

Results go to --out (default bench/results/tape.json, tape-quick.json with --quick) and a section of
bench/RESULTS.md between the `tape-bench` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import functions as fb
import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
MiB = 1024 * 1024
SIM = [sys.executable, "-m", "headrace.tape.simulator"]
MD_BEGIN = "<!-- tape-bench:begin (written by bench/tape.py) -->"
MD_END = "<!-- tape-bench:end -->"


@dataclass(frozen=True)
class Setting:
    name: str
    mount: float
    position: float
    rate: float  # MB/s, 0 = the disk's
    drives: int

    def sim_options(self, base: Path) -> list[str]:
        return [
            f"-hsmBase={base}", f"-mount={self.mount}", f"-position={self.position}", f"-rate={self.rate}",
            f"-drives={self.drives}",
        ]  # fmt: skip

    def env(self, base: Path) -> dict[str, str]:
        return {
            "HEADRACE_TAPE_SIMULATOR": str(base),
            "HEADRACE_TAPE_MOUNT": str(self.mount),
            "HEADRACE_TAPE_POSITION": str(self.position),
            "HEADRACE_TAPE_RATE": str(self.rate),
            "HEADRACE_TAPE_DRIVES": str(self.drives),
            "HEADRACE_TAPE_FLUSH_CONCURRENCY": "2",
            "HEADRACE_TAPE_STAGE_CONCURRENCY": "2",
            "HEADRACE_TAPE_POLL": "0.1",
            "HEADRACE_TAPE_FLUSH_AGE": "3600",  # only the count trigger: the flush starts at the N-th file
        }


ZERO = Setting("zero", 0.0, 0.0, 0.0, 1)
REALISTIC = Setting("realistic (scaled)", 5.0, 0.5, 400.0, 2)


def db_rows(server: sb.HeadraceServer, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{server.data / 'headrace.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def count_where(server: sb.HeadraceServer, directory: str, locality: str) -> int:
    rows = db_rows(
        server,
        "SELECT COUNT(*) FROM inodes c JOIN inodes p ON c.parent_id = p.id WHERE p.name = ? AND c.locality = ?",
        directory.strip("/"),
        locality,
    )
    return int(rows[0][0])


def wait(what: str, check: Any, timeout: float = 3600.0, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise sb.BenchError(f"timed out waiting for {what}")
        time.sleep(poll)


def evict(server: sb.HeadraceServer, paths: list[str]) -> None:
    """Evict the cached copies of `paths` through the catalog's fenced step (what the agent does under pressure)."""
    from headrace.db.engine import Database
    from headrace.storage.namespace import Namespace
    from headrace.tape import catalog

    db = Database(f"sqlite:///{server.data / 'headrace.db'}")
    try:
        ns = Namespace(db)
        for path in paths:
            node = ns.stat(path)
            pool, blob = str(node.pool), node.blob
            if not catalog.evicted(ns, node, pool=pool):
                raise sb.BenchError(f"could not evict {path}")
            (server.data / "pools" / pool / "data" / str(blob)[:2] / str(blob)).unlink()
    finally:
        db.close()


def start(workdir: Path, setting: Setting, label: str) -> tuple[sb.HeadraceServer, Path]:
    tape = workdir / f"tape-{label}"
    server = sb.HeadraceServer(workdir / label, setting.env(tape), "/")
    server.start()
    return server, tape


def client(server: sb.HeadraceServer, api: bool = False) -> httpx.Client:
    port = server.api_port if api else server.port
    return httpx.Client(base_url=f"http://{sb.HOST}:{port}", auth=(sb.USER, sb.PASSWORD), timeout=3600)


def mkdir_tape(server: sb.HeadraceServer, name: str) -> None:
    with client(server, api=True) as api:
        api.post("/api/v1/namespace/", json={"action": "mkdir", "name": name}).raise_for_status()
        api.post(f"/api/v1/namespace/{name}", json={"action": "qos", "target": "tape"}).raise_for_status()


def unload(tape: Path) -> None:
    for f in (tape / "drives").glob("*.mounted"):
        f.unlink()


def put_files(server: sb.HeadraceServer, directory: str, n: int, size: int) -> list[str]:
    body = os.urandom(size)
    paths = [f"/{directory}/f{i:05d}" for i in range(n)]
    with client(server) as door:
        for p in paths:
            door.put(p, content=body).raise_for_status()
    return paths


def sim(argv: list[str]) -> None:
    """Run the simulator; a failure raises with what it printed (its exit code alone says little)."""
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[2:4])} exited {done.returncode}: {done.stderr.strip()}")


def peer_puts(setting: Setting, base: Path, n: int, size: int, concurrency: int = 2) -> float:
    """Seconds the simulator alone takes to store n files of `size`, `concurrency` at a time."""
    src = base / "src"
    src.mkdir(parents=True, exist_ok=True)
    f = src / "file"
    f.write_bytes(os.urandom(size))
    t0 = time.monotonic()

    def one(i: int) -> None:
        sim([*SIM, "put", f"PEER{i:05d}", str(f), *setting.sim_options(base)])

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(n)))
    return time.monotonic() - t0


def tape_uris(server: sb.HeadraceServer, directory: str) -> list[str]:
    rows = db_rows(
        server,
        "SELECT c.hsm_uri FROM inodes c JOIN inodes p ON c.parent_id = p.id WHERE p.name = ? ORDER BY c.name",
        directory.strip("/"),
    )
    return [str(r[0]) for r in rows]


def peer_gets(setting: Setting, base: Path, uris: list[str], concurrency: int = 2) -> tuple[float, list[float]]:
    out = base / "restored"
    out.mkdir(parents=True, exist_ok=True)
    each: list[float] = []

    def one(i: int) -> None:
        t = time.monotonic()
        sim([*SIM, "get", f"PEER{i:05d}", str(out / f"r{i}"), f"-uri={uris[i]}", *setting.sim_options(base)])
        each.append(time.monotonic() - t)
        (out / f"r{i}").unlink()

    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(uris))))
    return time.monotonic() - t0, each


def flush_and_stage(workdir: Path, setting: Setting, n: int, k: int) -> dict[str, Any]:
    label = setting.name.split()[0]
    env = setting.env(workdir / f"tape-{label}")
    env["HEADRACE_TAPE_FLUSH_COUNT"] = str(n)
    server = sb.HeadraceServer(workdir / label, env, "/")
    server.start()
    tape = workdir / f"tape-{label}"
    try:
        mkdir_tape(server, "flush")
        paths = put_files(server, "flush", n, MiB)
        t0 = time.monotonic()  # the N-th file is in: the count trigger holds
        wait("the flush", lambda: count_where(server, "flush", "ONLINE_AND_NEARLINE") == n)
        flush_s = time.monotonic() - t0
        peer_s = peer_puts(setting, workdir / f"peer-{label}", n, MiB)
        staged = paths[:k]
        evict(server, staged)
        cold: list[float] = []
        warm: list[float] = []
        with client(server) as door:
            for i, p in enumerate(staged):
                if i % 2 == 0:
                    unload(tape)
                t = time.monotonic()
                r = door.get(p)
                r.raise_for_status()
                (cold if i % 2 == 0 else warm).append(time.monotonic() - t)
        uris = tape_uris(server, "flush")[:k]
        unload(workdir / f"peer-{label}")
        _, peer_each = peer_gets(setting, workdir / f"peer-{label}", uris_from_peer(workdir / f"peer-{label}", k), 1)
        return {
            "setting": setting.__dict__,
            "files": n,
            "file_bytes": MiB,
            "flush_seconds": flush_s,
            "flush_files_per_s": n / flush_s,
            "flush_mb_per_s": n * MiB / flush_s / 1e6,
            "peer_put_seconds": peer_s,
            "peer_files_per_s": n / peer_s,
            "flush_ratio_vs_peer": (n / flush_s) / (n / peer_s),
            "stage_cold_s": cold,
            "stage_warm_s": warm,
            "stage_cold_p50_s": statistics.median(cold) if cold else None,
            "stage_warm_p50_s": statistics.median(warm) if warm else None,
            "peer_get_p50_s": statistics.median(peer_each),
            "tape_uris_checked": len(uris),
        }
    finally:
        server.stop()


def uris_from_peer(base: Path, k: int) -> list[str]:
    """URIs of the peer's own copies (the peer stages what it stored)."""
    log = (base / "calls.log").read_text().splitlines()
    names = [line.split()[-1] for line in log if line.split()[1] == "put"][:k]
    return [f"osm://headrace/?store={n.split('/')[0]}&bfid={n.split('/')[1]}" for n in names]


def bulk_stage(workdir: Path, m: int, profile: str | None = None) -> dict[str, Any]:
    setting = ZERO
    env = setting.env(workdir / "tape-bulk")
    env["HEADRACE_TAPE_FLUSH_AGE"] = "0"
    env["HEADRACE_BULK_MAX_ACTIVE"] = str(max(10_000, m))
    server = sb.HeadraceServer(workdir / "bulk", env, "/")
    server.start()
    try:
        mkdir_tape(server, "bulk")
        paths = put_files(server, "bulk", m, MiB)
        wait("the flush", lambda: count_where(server, "bulk", "ONLINE_AND_NEARLINE") == m)
        evict(server, paths)
        with client(server, api=True) as api, fb.py_spy(server.pid, profile):
            t0 = time.monotonic()
            r = api.post(
                "/api/v1/bulk-requests", json={"activity": "STAGE", "target": paths, "expand_directories": "none"}
            )
            r.raise_for_status()
            url = r.headers["request-url"]

            def done() -> bool:
                info = api.get(url).json()
                return bool(info["status"] == "COMPLETED")

            wait("the bulk stage", done, poll=0.2)  # its status lists every target: polled as a client would
            seconds = time.monotonic() - t0
            states = {t["state"] for t in api.get(url).json()["targets"]}
        online = count_where(server, "bulk", "ONLINE_AND_NEARLINE")
        uris = tape_uris(server, "bulk")
        peer_s, _ = peer_gets(setting, workdir / "tape-bulk", uris, 2)
        return {
            "files": m,
            "file_bytes": MiB,
            "seconds": seconds,
            "mb_per_s": m * MiB / seconds / 1e6,
            "files_per_s": m / seconds,
            "target_states": sorted(states),
            "online_after": online,
            "peer_get_seconds": peer_s,
            "peer_mb_per_s": m * MiB / peer_s / 1e6,
            "ratio_vs_peer": (m * MiB / seconds) / (m * MiB / peer_s),
        }
    finally:
        server.stop()


def markdown(result: dict[str, Any]) -> str:
    lines = [
        MD_BEGIN,
        "",
        "## Tape (bench/tape.py)",
        "",
        f"Run {result['date']} on {result['host']}; {result['version']}. The simulator behind dCache's HSM script "
        "interface; the peer is the same script alone, run directly, as many at a time as headrace runs it.",
        "",
        "| setting | files | flush files/s | flush MB/s | script alone files/s | ratio "
        "| stage p50 (with mount) | stage p50 (mounted) | script alone get p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["flush_and_stage"]:
        lines.append(
            f"| {r['setting']['name']} | {r['files']} x 1 MiB | {r['flush_files_per_s']:.1f} "
            f"| {r['flush_mb_per_s']:.1f} | {r['peer_files_per_s']:.1f} | {r['flush_ratio_vs_peer']:.2f} "
            f"| {r['stage_cold_p50_s'] * 1000:.0f} ms | {r['stage_warm_p50_s'] * 1000:.0f} ms "
            f"| {r['peer_get_p50_s'] * 1000:.0f} ms |"
        )
    b = result.get("bulk")
    if b:
        lines += [
            "",
            f"Bulk stage of {b['files']} x 1 MiB (zero setting, one `POST /api/v1/bulk-requests`): "
            f"{b['seconds']:.1f} s, "
            f"**{b['mb_per_s']:.0f} MB/s** ({b['files_per_s']:.0f} files/s); the script alone, 2 at a time: "
            f"{b['peer_mb_per_s']:.0f} MB/s; ratio {b['ratio_vs_peer']:.2f}. Targets: {', '.join(b['target_states'])}; "
            f"{b['online_after']} files back on disk.",
        ]
    lines += ["", MD_END, ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--no-md", action="store_true")
    ap.add_argument("--only", choices=("flush", "bulk"), help="run one part")
    ap.add_argument(
        "--profile", metavar="FILE", help="a py-spy flame graph of the server's Python (--gil) during the bulk stage"
    )
    args = ap.parse_args()
    n, k, m = (50, 6, 200) if args.quick else (200, 10, 1000)
    workdir = Path(tempfile.mkdtemp(prefix="headrace-tape-bench-"))
    try:
        result: dict[str, Any] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "host": os.uname().nodename,
            "version": sb.HeadraceServer(workdir / "v", {}, "/").version(),
            "flush_and_stage": [],
        }
        fb.PROFILE_SCOPE = "gil"
        for setting in (ZERO, REALISTIC) if args.only != "bulk" else ():
            print(f"== flush and stage, {setting.name}", flush=True)
            r = flush_and_stage(workdir, setting, n if setting is ZERO else n // 4, k)
            print(json.dumps({x: y for x, y in r.items() if not isinstance(y, list)}, indent=1), flush=True)
            result["flush_and_stage"].append(r)
        if args.only != "flush":
            print(f"== bulk stage of {m} files", flush=True)
            result["bulk"] = bulk_stage(workdir, m, args.profile)
            print(json.dumps(result["bulk"], indent=1), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = args.out or BENCH_DIR / "results" / ("tape-quick.json" if args.quick else "tape.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_md:
        md = args.md or (None if args.quick else BENCH_DIR / "RESULTS.md")
        if md is not None:
            sb.write_section(md, markdown(result), MD_BEGIN, MD_END)
    print(markdown(result))


if __name__ == "__main__":
    main()
