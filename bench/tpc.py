"""HTTP third-party copy benchmark: one file between two local `headrace up` doors, by TPC (the doors move
the bytes) against streaming it through the client, the peers side by side in the same run.

Run from the repository root::

    .venv/bin/python bench/tpc.py [--size-mib 1024] [--runs 3] [--out PATH] [--md PATH | --no-md]

Two fresh servers A and B (started as bench/storage.py starts headrace; SQLite, fsync on, as shipped). A
file of --size-mib random bytes is PUT on A, then copied to B, --runs times each way, the ways interleaved
(so a load change on the machine hits them alike), the copy on B deleted between runs:

- **tpc pull**: `COPY` on B with `Source:` A's URL and `TransferHeaderAuthorization` (B GETs from A), timed
  from the request to the `success: Created` line;
- **tpc push**: `COPY` on A with `Destination:` B's URL (A PUTs to B);
- **client stream**: `curl GET A | curl -T - B`: the bytes through the client, as a copy without TPC goes;
- with gfal2's `gfal-copy` installed: **gfal pull** (`--copy-mode pull`) and **gfal streamed**
  (`--copy-mode streamed`), whole commands (gfal2's own stat and existence checks included), with one
  bearer token both doors accept (B is given A's macaroon root key, as sites share a token issuer).

Each way's MB/s (median of the runs, 1 MB = 10^6 bytes), its ratio to the client stream, and the CPU the
client spent (curl and gfal-copy's children; the TPC requests cost the client nothing measurable). Results go
to --out (default bench/results/tpc.json) and a section of bench/RESULTS.md between the `tpc-bench` markers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import storage as sb

BENCH_DIR = Path(__file__).resolve().parent
MiB = 1024 * 1024
MD_BEGIN = "<!-- tpc-bench:begin (written by bench/tpc.py) -->"
MD_END = "<!-- tpc-bench:end -->"
GFAL_PYTHON = "/usr/bin/python3"


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tpc(door: str, path: str, headers: dict[str, str]) -> None:
    """A COPY answered with the perf-marker stream; returns at its success line, raises on any other end."""
    sent = {"Authorization": sb.AUTH_HEADER, "TransferHeaderAuthorization": sb.AUTH_HEADER, **headers}
    with (
        httpx.Client(timeout=httpx.Timeout(60, read=None)) as c,
        c.stream("COPY", door + path, headers=sent) as r,
    ):
        if r.status_code != 202:
            raise sb.BenchError(f"COPY {path}: {r.status_code} {r.read().decode(errors='replace')}")
        last = ""
        for line in r.iter_lines():
            if line.strip():
                last = line.strip()
    if last != "success: Created":
        raise sb.BenchError(f"COPY {path}: {last}")


def client_stream(src: str, dst: str) -> None:
    auth = ["--header", f"Authorization: {sb.AUTH_HEADER}"]
    get = subprocess.Popen(["curl", "-sS", "--fail", *auth, src], stdout=subprocess.PIPE)
    put = subprocess.run(
        ["curl", "-sS", "--fail", *auth, "--header", "Expect:", "-T", "-", "-o", "/dev/null", dst],
        stdin=get.stdout,
        capture_output=True,
        text=True,
    )
    assert get.stdout is not None
    get.stdout.close()
    if get.wait() != 0 or put.returncode != 0:
        raise sb.BenchError(f"curl | curl: {put.stderr.strip()}")


def delete(door: str, path: str) -> None:
    httpx.request("DELETE", door + path, headers={"Authorization": sb.AUTH_HEADER})


def sha256(door: str, path: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", door + path, headers={"Authorization": sb.AUTH_HEADER}, timeout=600) as r:
        for chunk in r.iter_bytes(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def shared_token(a: sb.HeadraceServer, b: sb.HeadraceServer) -> str:
    """An admin macaroon of A that B accepts too: B takes A's root key (re-read within a second)."""
    key_row = sqlite3.connect(a.data / "headrace.db").execute(
        "SELECT value FROM state WHERE name = 'macaroon-root-key'"
    )
    key = key_row.fetchone()[0]
    with sqlite3.connect(b.data / "headrace.db") as conn:
        conn.execute("UPDATE state SET value = ? WHERE name = 'macaroon-root-key'", (key,))
    r = httpx.post(
        f"http://{sb.HOST}:{a.port}/",
        headers={"Authorization": sb.AUTH_HEADER, "Content-Type": "application/macaroon-request"},
        json={"caveats": [], "validity": "PT6H"},
    )
    r.raise_for_status()
    token = str(r.json()["macaroon"])
    deadline = time.monotonic() + 30
    while (
        httpx.request("HEAD", f"http://{sb.HOST}:{b.port}/", headers={"Authorization": f"Bearer {token}"}).status_code
        != 200
    ):
        if time.monotonic() > deadline:
            raise sb.BenchError("B never accepted A's token")
        time.sleep(0.1)
    return token


def gfal(mode: str, token: str, src: str, dst: str) -> None:
    env = {**os.environ, "GFAL_PYTHONBIN": GFAL_PYTHON, "BEARER_TOKEN": token}
    p = subprocess.run(
        ["gfal-copy", "-f", "--copy-mode", mode, "-t", "3600", src, dst], capture_output=True, text=True, env=env
    )
    if p.returncode != 0:
        raise sb.BenchError(f"gfal-copy --copy-mode {mode}: {p.stdout.strip()} {p.stderr.strip()}")


def run(size_mib: int, runs: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="headrace-tpc-bench-"))
    a = sb.HeadraceServer(workdir / "a", {}, "/")
    b = sb.HeadraceServer(workdir / "b", {}, "/")
    size = size_mib * MiB
    started = datetime.now(UTC).isoformat(timespec="seconds")
    load = os.getloadavg()
    try:
        a.start()
        b.start()
        door_a, door_b = f"http://{sb.HOST}:{a.port}", f"http://{sb.HOST}:{b.port}"
        src = workdir / "src.bin"
        src_sha = sb.make_source_file(src, size)
        sb.curl_transfer("PUT", door_a + "/src.bin", src, size)
        src.unlink()
        ways: dict[str, Callable[[], None]] = {
            "tpc pull": lambda: tpc(door_b, "/copy.bin", {"Source": door_a + "/src.bin"}),
            "tpc push": lambda: tpc(door_a, "/src.bin", {"Destination": door_b + "/copy.bin"}),
            "client stream": lambda: client_stream(door_a + "/src.bin", door_b + "/copy.bin"),
        }
        if shutil.which("gfal-copy") and Path(GFAL_PYTHON).exists():
            token = shared_token(a, b)
            ways["gfal pull"] = lambda: gfal("pull", token, door_a + "/src.bin", door_b + "/copy.bin")
            ways["gfal streamed"] = lambda: gfal("streamed", token, door_a + "/src.bin", door_b + "/copy.bin")
        times: dict[str, list[float]] = {w: [] for w in ways}
        cpu: dict[str, list[float]] = {w: [] for w in ways}
        for i in range(runs):
            for name, way in ways.items():
                delete(door_b, "/copy.bin")
                cpu0, t0 = children_cpu(), time.perf_counter()
                way()
                elapsed = time.perf_counter() - t0
                cpu[name].append(children_cpu() - cpu0)
                times[name].append(elapsed)
                if i == 0 and sha256(door_b, "/copy.bin") != src_sha:
                    raise sb.BenchError(f"{name}: the copy differs from the source")
                print(f"  run {i + 1} {name}: {elapsed:.2f} s, {size / elapsed / 1e6:.0f} MB/s", flush=True)
        stream = statistics.median(times["client stream"])
        results = {
            name: {
                "seconds": [round(t, 3) for t in ts],
                "median_s": round(statistics.median(ts), 3),
                "MB_per_s": round(size / statistics.median(ts) / 1e6, 1),
                "vs_client_stream": round(stream / statistics.median(ts), 2),
                "client_cpu_s": round(statistics.median(cpu[name]), 2),
            }
            for name, ts in times.items()
        }
        return {
            "date": started,
            "host": os.uname().nodename,
            "version": a.version(),
            "machine": sb.machine_info(),
            "load_before": load,
            "load_after": os.getloadavg(),
            "size_bytes": size,
            "runs": runs,
            "results": results,
        }
    finally:
        a.stop()
        b.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows = "\n".join(
        f"| {name} | {v['MB_per_s']:.0f} | {v['median_s']:.2f} | {v['vs_client_stream']:.2f}x "
        f"| {v['client_cpu_s']:.2f} |"
        for name, v in r["results"].items()
    )
    return f"""{MD_BEGIN}
## HTTP third-party copy (bench/tpc.py)

A {r["size_bytes"] / MiB:.0f} MiB file between two local `headrace up` doors (SQLite, fsync on), {r["runs"]}
runs per way interleaved, median; {m["nproc"]} CPUs ({m["cpu_model"]}) shared with other work: load average
{r["load_before"][0]:.1f} when the run started, {r["load_after"][0]:.1f} when it ended; {r["date"]}, {r["version"]}.
Ratio: the client stream's time over the way's (above 1 is faster); client CPU: what curl or gfal-copy used
(a TPC request leaves the client idle). Per-run times in bench/results/tpc.json.

| way | MB/s | seconds | vs client stream | client CPU s |
|---|---:|---:|---:|---:|
{rows}
{MD_END}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--md", type=Path)
    ap.add_argument("--no-md", action="store_true")
    args = ap.parse_args()
    result = run(args.size_mib, args.runs)
    out = args.out or BENCH_DIR / "results" / "tpc.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_md:
        sb.write_section(args.md or BENCH_DIR / "RESULTS.md", markdown(result), MD_BEGIN, MD_END)
    print(markdown(result))


if __name__ == "__main__":
    main()
