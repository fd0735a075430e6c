"""Storage benchmark: headrace side by side with nginx (dav + dav-ext) and wsgidav (cheroot).

Run from the repository root::

    .venv/bin/python bench/storage.py [--quick] [--only nginx,wsgidav,headrace] [--out PATH]

One run starts each server in turn on a free 127.0.0.1 port with a fresh, empty data directory under
a temporary directory, and measures

1. PUT of one large file (1 GiB; 64 MiB with --quick) with ``curl -T`` from a pre-generated random
   file, N runs, median MB/s (best and every run are in the JSON),
2. GET of that file to /dev/null with curl, N runs, median MB/s,
3. PUT then GET of many small files (5,000 x 4 KiB; 500 with --quick) with 16 parallel clients,
   each on its own persistent keep-alive connection, in files/s,
4. the peak RSS of the server process and all its children, sampled with psutil every 50 ms during
   each large-file PUT and GET,

then writes every number plus the ratios headrace/nginx and headrace/wsgidav to --out (JSON) and
renders bench/RESULTS.md from it (full runs only unless --md is given).

Small-file load generator
-------------------------
The machine has 2 cores shared by the server and the generator, so the generator has to be cheap
per request or it measures itself. Before the servers are compared, every available generator is
run against a separate nginx instance (the fastest server here) and the numbers it reaches are
reported as the "generator ceiling":

* ``go``: bench/loadgen, a small Go program (16 goroutines, one single-connection http.Transport
  each), built with the installed Go toolchain into the temp dir. It costs a few microseconds of CPU
  per request and is the one that reaches the highest rate against nginx.
* ``py-procs``: 16 forked Python processes, one http.client keep-alive connection each.
* ``py-threads``: 16 Python threads, one http.client keep-alive connection each; the GIL caps it
  well below nginx.

``--generator auto`` (the default) picks whichever reached the highest GET rate against nginx, which in
practice is ``go`` whenever the Go toolchain is installed (3-5x the Python ones); the Python ones are
fallbacks.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import http.client
import importlib.metadata
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_BIN = Path(sys.prefix) / "bin"
LOADGEN_DIR = BENCH_DIR / "loadgen"

HOST = "127.0.0.1"
USER = "admin"
PASSWORD = "benchkey"
AUTH_HEADER = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

NGINX_BIN = "/usr/sbin/nginx"
DAV_EXT_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")

MiB = 1 << 20
GiB = 1 << 30
RSS_INTERVAL_S = 0.05
#: Shorter measurements get no "other CPU" figure: /proc/stat counts in 10 ms ticks.
MIN_CPU_WATCH_S = 0.5
#: Above this share of the CPUs used by other processes during a measurement, the report says "noisy".
NOISY_OTHER_CPU_PCT = 10.0
#: A server counts as "flat" when its RSS grows by no more than this during one large transfer.
FLAT_RSS_GROWTH = 64 * MiB
SERVER_NAMES = ("nginx", "wsgidav", "headrace")
GENERATOR_NAMES = ("go", "py-procs", "py-threads")


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class Plan:
    big_bytes: int
    small_files: int
    small_size: int
    clients: int
    runs: int
    quick: bool

    @property
    def big_label(self) -> str:
        return f"{self.big_bytes // GiB} GiB" if self.big_bytes >= GiB else f"{self.big_bytes // MiB} MiB"

    @property
    def small_label(self) -> str:
        return f"{self.small_files:,} x {self.small_size // 1024} KiB"


FULL_PLAN = Plan(big_bytes=GiB, small_files=5000, small_size=4096, clients=16, runs=3, quick=False)
QUICK_PLAN = Plan(big_bytes=64 * MiB, small_files=500, small_size=4096, clients=16, runs=1, quick=True)


# --------------------------------------------------------------------------------------------------
# Small helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    """One control request (MKCOL, warm-up, readiness) on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH_HEADER})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def summarize(latencies_ns: Sequence[int]) -> dict[str, Any]:
    """p50/p99/max/min/mean in ms (nearest-rank percentiles) of latencies in ns; `negative` counts samples
    below zero (an event can arrive before its writer has read the answer: it commits first)."""
    ordered = sorted(latencies_ns)
    n = len(ordered)
    if n == 0:
        return {"n": 0}

    def rank(p: int) -> float:
        return ordered[min(n - 1, max(0, -(-n * p // 100) - 1))] / 1e6

    return {
        "n": n,
        "p50_ms": round(rank(50), 3),
        "p99_ms": round(rank(99), 3),
        "max_ms": round(ordered[-1] / 1e6, 3),
        "min_ms": round(ordered[0] / 1e6, 3),
        "mean_ms": round(statistics.fmean(ordered) / 1e6, 3),
        "negative": sum(1 for v in ordered if v < 0),
    }


def log_head(db_path: Path) -> int:
    """The newest offset in a headrace server's event log (its outbox), read from its SQLite file."""
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return int(db.execute('SELECT coalesce(max("offset"), 0) FROM events').fetchone()[0])
    finally:
        db.close()


def write_section(path: Path, section: str, begin: str, end: str) -> None:
    """Replace one benchmark's section of `path` (from marker `begin` to marker `end`, both in `section`), or
    append it; every other benchmark's section stays as it is."""
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    path.write_text(text)


def mkcol(port: int, path: str) -> None:
    """Create a collection; the trailing slash is what nginx's dav module insists on."""
    path = path.rstrip("/") + "/"
    status, body = http_request(port, "MKCOL", path)
    if status not in (200, 201):
        raise BenchError(f"MKCOL {path} -> {status}: {body[:200]!r}")


def tree_processes(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(pid: int) -> int:
    total = 0
    for proc in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for proc in tree_processes(pid):
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_text(cmd: Sequence[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (proc.stdout + proc.stderr).strip()


class RssSampler:
    """Samples the RSS of a process tree every 50 ms on a background thread while in a `with` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self.samples.append(tree_rss(self.pid))

    def __enter__(self) -> RssSampler:
        self.samples.append(tree_rss(self.pid))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(tree_rss(self.pid))

    @property
    def start(self) -> int:
        return self.samples[0]

    @property
    def peak(self) -> int:
        return max(self.samples)


def max_known(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def busy_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system)


class CpuWatch:
    """CPU seconds used by the server, by the load generator (this process and its children) and by
    everything else on the machine while a `with` block runs; "other" is the noise indicator."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.server_s = self.generator_s = 0.0
        #: None when the block was too short for /proc/stat's 10 ms ticks to say anything.
        self.other_pct: float | None = None

    def _ours(self) -> tuple[float, float]:
        return tree_cpu_seconds(self.server_pid), children_cpu_seconds() + time.process_time()

    def __enter__(self) -> CpuWatch:
        self._wall = time.monotonic()
        self._busy = busy_cpu_seconds()
        self._server, self._generator = self._ours()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._wall
        server, generator = self._ours()
        self.server_s = server - self._server
        self.generator_s = generator - self._generator
        other = busy_cpu_seconds() - self._busy - self.server_s - self.generator_s
        cpus = len(os.sched_getaffinity(0))
        if wall >= MIN_CPU_WATCH_S:
            self.other_pct = round(min(100.0, max(0.0, 100 * other / (wall * cpus))), 1)


# --------------------------------------------------------------------------------------------------
# Servers


class Server(ABC):
    """One server under test: its own directory, data directory, port and log file."""

    name: str = ""
    ready_timeout_s: float = 30.0

    def __init__(self, workdir: Path, label: str | None = None) -> None:
        self.label = label or self.name
        self.dir = workdir / self.label
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.port = free_port()
        self.root = "/"
        self.proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def command(self) -> tuple[list[str], dict[str, str]]:
        """Write any config files and return (argv, environment)."""

    @abstractmethod
    def is_ready(self) -> bool:
        """True once the server answers requests."""

    @abstractmethod
    def version(self) -> str: ...

    def describe(self) -> dict[str, Any]:
        """Settings worth recording next to the numbers."""
        return {}

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise BenchError(f"{self.label} is not running")
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://{HOST}:{self.port}{self.path(path)}"

    def path(self, path: str) -> str:
        return self.root.rstrip("/") + path

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir()
        self.launch("wb")

    def launch(self, log_mode: str) -> None:
        """Run command() with its output to log_path (opened with `log_mode`: "ab" keeps the earlier runs' lines)
        and return once is_ready(); BenchError when it exits first or is not ready in ready_timeout_s (stopped)."""
        argv, env = self.command()
        with self.log_path.open(log_mode) as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.dir
            )
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                raise BenchError(f"{self.label} exited with status {code} before it became ready")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.is_ready():
                    return
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{self.label} not ready after {self.ready_timeout_s:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        children = tree_processes(proc.pid)[1:]
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"  {self.label}: no exit 20 s after SIGTERM, killing pid {proc.pid}", file=sys.stderr)
            proc.kill()
            proc.wait()
        for child in children:  # anything the server started and left behind
            with contextlib.suppress(psutil.Error):
                child.kill()


class NginxServer(Server):
    """nginx with the stock dav module plus dav-ext for PROPFIND/OPTIONS.

    master_process on with ``worker_processes auto`` (2 workers on this 2-core machine) rather than
    master_process off, which serves everything from one process and so one core. Measured both
    (paired runs, 1 GiB and 5,000 x 4 KiB): the 1 GiB transfers were indistinguishable, and two
    workers gave the higher small-file GET rate in 4 of 5 pairs, so this is nginx's best setting here.
    """

    name = "nginx"
    master_process = True

    def command(self) -> tuple[list[str], dict[str, str]]:
        if not DAV_EXT_MODULE.exists():
            raise BenchError(f"{DAV_EXT_MODULE} is missing (apt-get install libnginx-mod-http-dav-ext)")
        tmp = self.dir / "tmp"
        for sub in ("proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx.conf"
        conf.write_text(
            f"""load_module {DAV_EXT_MODULE};
user root;
daemon off;
master_process {"on" if self.master_process else "off"};
worker_processes auto;
pid {self.dir / "nginx.pid"};
error_log {self.dir / "error.log"} warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    default_type application/octet-stream;
    client_max_body_size 0;
    client_body_temp_path {self.data / ".nginx-body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};

    server {{
        listen {HOST}:{self.port};
        server_name localhost;

        location / {{
            root {self.data};
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            dav_access user:rw group:rw all:r;
        }}
    }}
}}
"""
        )
        argv = [NGINX_BIN, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(conf)]
        return argv, dict(os.environ)

    def is_ready(self) -> bool:
        http_request(self.port, "OPTIONS", "/", timeout=2)
        return True

    def version(self) -> str:
        return run_text([NGINX_BIN, "-v"]).removeprefix("nginx version: ")

    def describe(self) -> dict[str, Any]:
        return {
            "master_process": "on" if self.master_process else "off",
            "worker_processes": "auto",
            "cpus": os.cpu_count(),
            "sendfile": "on",
        }


class WsgidavServer(Server):
    """wsgidav on cheroot, filesystem provider, anonymous access, verbose 1 and no access log."""

    name = "wsgidav"

    def command(self) -> tuple[list[str], dict[str, str]]:
        config = {
            "host": HOST,
            "port": self.port,
            "server": "cheroot",
            "provider_mapping": {"/": str(self.data)},
            "simple_dc": {"user_mapping": {"*": True}},
            # 1 = only application exceptions: no per-request log lines.
            "verbose": 1,
            "logging": {"enable": False, "enable_loggers": []},
            "dir_browser": {"enable": False},
        }
        conf = self.dir / "wsgidav.json"
        conf.write_text(json.dumps(config, indent=2))
        return [str(VENV_BIN / "wsgidav"), "--config", str(conf)], dict(os.environ)

    def is_ready(self) -> bool:
        http_request(self.port, "OPTIONS", "/", timeout=2)
        return True

    def version(self) -> str:
        return importlib.metadata.version("wsgidav")

    def describe(self) -> dict[str, Any]:
        return {"server": "cheroot " + importlib.metadata.version("cheroot"), "verbose": 1, "auth": "anonymous"}


class HeadraceServer(Server):
    """`headrace up`; WebDAV on the door port, readiness from GET /healthz on the API port."""

    name = "headrace"
    ready_timeout_s = 120.0

    def __init__(self, workdir: Path, extra_env: dict[str, str], root: str) -> None:
        super().__init__(workdir)
        self.api_port = free_port()
        self.root = root
        self.env_settings = {
            "HEADRACE_ADMIN_KEY": PASSWORD,
            "HEADRACE_CONFIG": str(self.dir / "cli.json"),
            # Quiet like wsgidav's verbose 1, so per-request logging is not what is measured.
            "HEADRACE_LOG_LEVEL": "warning",
            **extra_env,
        }

    def command(self) -> tuple[list[str], dict[str, str]]:
        exe = VENV_BIN / "headrace"
        if not exe.exists():
            raise BenchError(f"{exe} not found: install the project into the venv (pip install -e .)")
        # Only the settings chosen here: no HEADRACE_* leaking in from the caller's shell.
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADRACE_")}
        env.update(self.env_settings)
        argv = [
            str(exe),
            "up",
            "--data",
            str(self.data),
            "--door-port",
            str(self.port),
            "--api-port",
            str(self.api_port),
            "--host",
            HOST,
        ]
        return argv, env

    def is_ready(self) -> bool:
        status, _ = http_request(self.api_port, "GET", "/healthz", timeout=2)
        if status != 200:
            return False
        http_request(self.port, "OPTIONS", self.path("/"), timeout=2)  # the door is listening too
        return True

    def version(self) -> str:
        try:
            version = importlib.metadata.version("headrace")
        except importlib.metadata.PackageNotFoundError:
            version = "not installed"
        rev = run_text(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
        if not rev or " " in rev or "\n" in rev:
            return f"{version} (no commit yet)"
        dirty = run_text(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"])
        return f"{version} (git {rev}{'+dirty' if dirty else ''})"

    def describe(self) -> dict[str, Any]:
        shown = {k: v for k, v in self.env_settings.items() if k != "HEADRACE_CONFIG"}
        shown.setdefault("HEADRACE_FSYNC", "(default)")
        return {"env": shown, "webdav_root": self.root}


class HeadraceTLSServer(HeadraceServer):
    """`headrace up --tls-cert --tls-key`: the door on granian with TLS (a certificate from a CA made here with
    `cryptography`, through headrace.tls_server), for the large-file rows beside plain HTTP."""

    name = "headrace-tls"

    def __init__(self, workdir: Path, extra_env: dict[str, str], root: str) -> None:
        super().__init__(workdir, extra_env, root)
        self.label = self.name
        self.dir = workdir / self.label
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.cacert = self.dir / "tls" / "ca.pem"

    def command(self) -> tuple[list[str], dict[str, str]]:
        from headrace.tls_server import issue, make_ca

        tls = self.dir / "tls"
        ca, ca_key = make_ca(tls, "bench CA")
        issue(ca, ca_key, tls / "server.pem", tls / "server-key.pem", ["localhost", HOST])
        argv, env = super().command()
        argv += ["--tls-cert", str(tls / "server.pem"), "--tls-key", str(tls / "server-key.pem")]
        return argv, env

    def url(self, path: str) -> str:
        return f"https://{HOST}:{self.port}{self.path(path)}"

    def request(self, port: int, method: str, path: str) -> int:
        import ssl

        ctx = ssl.create_default_context(cafile=str(self.cacert))
        conn = http.client.HTTPSConnection(HOST, port, timeout=10, context=ctx)
        try:
            conn.request(method, path, headers={"Authorization": AUTH_HEADER})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def is_ready(self) -> bool:
        if self.request(self.api_port, "GET", "/healthz") != 200:
            return False
        self.request(self.port, "OPTIONS", self.path("/"))
        return True


def bench_tls(server: HeadraceTLSServer, plan: Plan, src: Path) -> dict[str, Any]:
    """The large-file PUT and GET rows through the door over TLS (HTTP/1.1, as curl is told for every server)."""
    result: dict[str, Any] = {"version": server.version(), "settings": server.describe()}
    os.sync()
    print(f"[{server.label}] starting on port {server.port}", flush=True)
    try:
        server.start()
        if server.request(server.port, "MKCOL", server.path("/big")) not in (201, 405):
            raise BenchError("MKCOL /big over TLS failed")
        put_big = big_runs(server, "PUT", plan, src)
        get_big = big_runs(server, "GET", plan, src)
        result.update(
            {
                "put_big_MBps": statistics.median(r["MBps"] for r in put_big),
                "put_big_MBps_best": max(r["MBps"] for r in put_big),
                "get_big_MBps": statistics.median(r["MBps"] for r in get_big),
                "get_big_MBps_best": max(r["MBps"] for r in get_big),
                "put_big_runs": put_big,
                "get_big_runs": get_big,
            }
        )
    finally:
        server.stop()
    return result


def tls_ratios(servers: dict[str, Any]) -> dict[str, float | None]:
    """headrace's door over TLS as a share of the same door over plain HTTP, for the large-file rows."""
    plain, tls = servers.get("headrace", {}), servers.get("headrace-tls", {})
    out: dict[str, float | None] = {}
    for key in ("put_big_MBps", "get_big_MBps"):
        a, b = tls.get(key), plain.get(key)
        out[key] = round(a / b, 3) if isinstance(a, float | int) and isinstance(b, float | int) and b else None
    return out


# --------------------------------------------------------------------------------------------------
# Large file: curl


def curl_transfer(method: str, url: str, src: Path | None, expect_bytes: int, cacert: Path | None = None) -> float:
    """PUT `src` to `url` (or GET `url` to /dev/null) with curl; returns curl's own total time in s. An https
    `url` is verified against `cacert`; curl speaks HTTP/1.1 to every server, TLS or not."""
    cmd = [
        *(["--cacert", str(cacert)] if cacert is not None else []),
        "--silent",
        "--show-error",
        "--http1.1",
        "--max-time",
        "1800",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code} %{time_total} %{size_upload} %{size_download}",
        "--header",
        f"Authorization: {AUTH_HEADER}",
    ]
    if method == "PUT":
        assert src is not None
        # No "Expect: 100-continue": curl would otherwise wait up to 1 s for servers that skip it.
        cmd += ["--header", "Expect:", "--upload-file", str(src)]
    proc = subprocess.run(["curl", *cmd, url], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"curl {method} {url} failed ({proc.returncode}): {proc.stderr.strip()}")
    code_s, time_s, up_s, down_s = proc.stdout.split()
    code = int(code_s)
    moved = float(up_s) if method == "PUT" else float(down_s)
    ok_codes = (200, 201, 204) if method == "PUT" else (200,)
    if code not in ok_codes or int(moved) != expect_bytes:
        raise BenchError(f"curl {method} {url}: status {code}, {int(moved)} of {expect_bytes} bytes")
    return float(time_s)


def sha256_of_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=600)
    try:
        conn.request("GET", path, headers={"Authorization": AUTH_HEADER})
        resp = conn.getresponse()
        if resp.status != 200:
            raise BenchError(f"verification GET {path} -> {resp.status}")
        digest = hashlib.sha256()
        while chunk := resp.read(4 * MiB):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        conn.close()


def make_source_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    chunk = 4 * MiB
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(chunk, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Small files: load generators


@dataclass
class SmallResult:
    generator: str
    method: str
    files: int
    ok: int
    errors: int
    seconds: float
    files_per_s: float
    connections: int
    first_error: str = ""
    generator_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    other_cpu_pct: float | None = None

    def check(self, label: str) -> None:
        if self.errors or self.ok != self.files:
            raise BenchError(
                f"{label}: {self.method} of {self.files} small files had {self.errors} errors "
                f"(first: {self.first_error})"
            )


class Generator(ABC):
    name: str = ""

    @abstractmethod
    def run(self, port: int, collection: str, method: str, plan: Plan) -> SmallResult:
        """`method` every file `<collection>/f<i>` with plan.clients parallel keep-alive connections."""


def go_binary() -> str | None:
    found = shutil.which("go")
    if found is None and Path("/usr/local/go/bin/go").exists():
        found = "/usr/local/go/bin/go"
    return found


class GoGenerator(Generator):
    name = "go"

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    @classmethod
    def build(cls, workdir: Path) -> GoGenerator:
        go = go_binary()
        if go is None:
            raise BenchError("no Go toolchain (go not on PATH)")
        binary = workdir / "loadgen"
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false", "CGO_ENABLED": "0"}
        proc = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=LOADGEN_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise BenchError(f"go build of {LOADGEN_DIR} failed:\n{proc.stderr.strip()}")
        return cls(binary)

    def run(self, port: int, collection: str, method: str, plan: Plan) -> SmallResult:
        cmd = [
            str(self.binary),
            f"-base=http://{HOST}:{port}{collection}",
            f"-method={method}",
            f"-n={plan.small_files}",
            f"-size={plan.small_size}",
            f"-c={plan.clients}",
            f"-user={USER}",
            f"-password={PASSWORD}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise BenchError(f"loadgen failed ({proc.returncode}): {proc.stderr.strip()}")
        out = json.loads(proc.stdout)
        return SmallResult(
            generator=self.name,
            method=method,
            files=int(out["files"]),
            ok=int(out["ok"]),
            errors=int(out["errors"]),
            seconds=float(out["seconds"]),
            files_per_s=float(out["files_per_s"]),
            connections=int(out["connections"]),
            first_error=str(out.get("first_error", "")),
        )


@dataclass
class _ClientTally:
    start: float = 0.0
    end: float = 0.0
    ok: int = 0
    errors: int = 0
    connections: int = 0
    first_error: str = ""


def _py_client(port: int, method: str, paths: Sequence[str], body: bytes, size: int) -> _ClientTally:
    """One client: every path in order over one keep-alive connection (reopened only if closed)."""
    tally = _ClientTally(start=time.monotonic())
    headers = {"Authorization": AUTH_HEADER}
    conn: http.client.HTTPConnection | None = None
    for path in paths:
        try:
            if conn is None:
                conn = http.client.HTTPConnection(HOST, port, timeout=60)
                tally.connections += 1
            conn.request(method, path, body=body if method == "PUT" else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.will_close:
                conn.close()
                conn = None
            good = resp.status in (201, 204) if method == "PUT" else resp.status == 200 and len(data) == size
            problem = "" if good else f"{method} {path}: status {resp.status}, {len(data)} bytes"
        except (OSError, http.client.HTTPException) as exc:
            problem = f"{method} {path}: {exc!r}"
            if conn is not None:
                conn.close()
                conn = None
        if problem:
            tally.errors += 1
            tally.first_error = tally.first_error or problem
        else:
            tally.ok += 1
    if conn is not None:
        conn.close()
    tally.end = time.monotonic()
    return tally


def _small_paths(collection: str, plan: Plan) -> list[list[str]]:
    paths = [f"{collection}/f{i}" for i in range(plan.small_files)]
    return [paths[c :: plan.clients] for c in range(plan.clients)]


def _merge(name: str, method: str, plan: Plan, tallies: Sequence[_ClientTally]) -> SmallResult:
    seconds = max(t.end for t in tallies) - min(t.start for t in tallies)
    ok = sum(t.ok for t in tallies)
    return SmallResult(
        generator=name,
        method=method,
        files=plan.small_files,
        ok=ok,
        errors=sum(t.errors for t in tallies),
        seconds=seconds,
        files_per_s=ok / seconds if seconds > 0 else 0.0,
        connections=sum(t.connections for t in tallies),
        first_error=next((t.first_error for t in tallies if t.first_error), ""),
    )


class PyThreadsGenerator(Generator):
    name = "py-threads"

    def run(self, port: int, collection: str, method: str, plan: Plan) -> SmallResult:
        body = os.urandom(plan.small_size)
        barrier = threading.Barrier(plan.clients)
        tallies: list[_ClientTally] = [_ClientTally() for _ in range(plan.clients)]

        def client(index: int, paths: list[str]) -> None:
            barrier.wait()
            tallies[index] = _py_client(port, method, paths, body, plan.small_size)

        threads = [
            threading.Thread(target=client, args=(i, paths)) for i, paths in enumerate(_small_paths(collection, plan))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return _merge(self.name, method, plan, tallies)


def _proc_client(
    barrier: Any, queue: Any, index: int, port: int, method: str, paths: list[str], body: bytes, size: int
) -> None:
    barrier.wait()
    queue.put((index, asdict(_py_client(port, method, paths, body, size))))


class PyProcsGenerator(Generator):
    name = "py-procs"

    def run(self, port: int, collection: str, method: str, plan: Plan) -> SmallResult:
        ctx = multiprocessing.get_context("fork")
        body = os.urandom(plan.small_size)
        barrier = ctx.Barrier(plan.clients)
        queue = ctx.Queue()
        procs = [
            ctx.Process(target=_proc_client, args=(barrier, queue, i, port, method, paths, body, plan.small_size))
            for i, paths in enumerate(_small_paths(collection, plan))
        ]
        for proc in procs:
            proc.start()
        tallies = [_ClientTally(**queue.get(timeout=1800)[1]) for _ in procs]
        for proc in procs:
            proc.join()
        return _merge(self.name, method, plan, tallies)


def run_small(gen: Generator, server: Server, collection: str, method: str, plan: Plan) -> SmallResult:
    with CpuWatch(server.pid) as cpu:
        result = gen.run(server.port, server.path(collection), method, plan)
    result.generator_cpu_s = cpu.generator_s
    result.server_cpu_s = cpu.server_s
    result.other_cpu_pct = cpu.other_pct
    result.check(f"{server.label} via {gen.name}")
    return result


def small_rounds(gen: Generator, server: Server, name: str, plan: Plan) -> tuple[list[SmallResult], ...]:
    """plan.runs rounds of: PUT every file into a new collection, then GET them all back."""
    puts: list[SmallResult] = []
    gets: list[SmallResult] = []
    for run in range(plan.runs):
        collection = f"/{name}{run}"
        mkcol(server.port, server.path(collection))
        os.sync()
        puts.append(run_small(gen, server, collection, "PUT", plan))
        gets.append(run_small(gen, server, collection, "GET", plan))
    return puts, gets


def per_request_us(results: Sequence[SmallResult], attr: str) -> float:
    return round(1e6 * sum(float(getattr(r, attr)) for r in results) / sum(r.files for r in results), 1)


def make_generators(names: Sequence[str], workdir: Path) -> tuple[list[Generator], dict[str, str]]:
    gens: list[Generator] = []
    skipped: dict[str, str] = {}
    for name in names:
        if name == "go":
            try:
                print("building bench/loadgen (Go) ...", flush=True)
                gens.append(GoGenerator.build(workdir))
            except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                skipped[name] = str(exc)
                print(f"  skipping the Go generator: {exc}", file=sys.stderr)
        elif name == "py-procs":
            gens.append(PyProcsGenerator())
        elif name == "py-threads":
            gens.append(PyThreadsGenerator())
    return gens, skipped


def measure_ceiling(gens: Sequence[Generator], workdir: Path, plan: Plan) -> dict[str, Any]:
    """Run every generator against a separate nginx: the rate each reaches is its ceiling here."""
    nginx = NginxServer(workdir, "nginx-ceiling")
    results: dict[str, Any] = {}
    print(f"generator ceiling: {plan.runs} x ({plan.small_label} PUT + GET) against nginx", flush=True)
    nginx.start()
    try:
        for gen in gens:
            puts, gets = small_rounds(gen, nginx, f"ceiling-{gen.name}-", plan)
            both = [*puts, *gets]
            results[gen.name] = {
                "put_fps": statistics.median(r.files_per_s for r in puts),
                "get_fps": statistics.median(r.files_per_s for r in gets),
                "generator_cpu_us_per_request": per_request_us(both, "generator_cpu_s"),
                "nginx_cpu_us_per_request": per_request_us(both, "server_cpu_s"),
                "other_cpu_pct_max": max_known(r.other_cpu_pct for r in both),
                "put_runs": [asdict(r) for r in puts],
                "get_runs": [asdict(r) for r in gets],
            }
            got = results[gen.name]
            print(
                f"  {gen.name:<10} PUT {got['put_fps']:7.0f} files/s  GET {got['get_fps']:7.0f} files/s  "
                f"(CPU per request: generator {got['generator_cpu_us_per_request']:.0f} us, "
                f"nginx {got['nginx_cpu_us_per_request']:.0f} us)",
                flush=True,
            )
    finally:
        nginx.stop()
        shutil.rmtree(nginx.dir, ignore_errors=True)
        os.sync()
    return results


def pick_generator(gens: Sequence[Generator], ceiling: dict[str, Any]) -> Generator:
    """The generator with the highest GET rate against nginx.

    GET is where nginx does least work per request, so it shows the generator's own limit; small PUTs
    mostly measure file creation on the disk and vary with whatever else the machine is doing.
    """
    return max(gens, key=lambda gen: float(ceiling[gen.name]["get_fps"]))


# --------------------------------------------------------------------------------------------------
# One server


def _durable_writer(base: Path, body: bytes, counter: Iterator[int], lock: threading.Lock) -> None:
    """One thread of `measure_disk_ceiling`: files from `counter` until it runs out."""
    while True:
        with lock:
            n = next(counter, None)
        if n is None:
            return
        name = f"{n:08x}"
        tmp = base / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        final_dir = base / "data" / f"{n % 256:02x}"
        os.rename(tmp, final_dir / name)
        dir_fd = os.open(final_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def measure_big_fsync_ceiling(workdir: Path, plan: Plan, src: Path) -> dict[str, Any]:
    """What this disk allows for one durable large file, without any server: `src` (the big file, in the page
    cache) copied to a new file in 1 MiB writes and fsynced, the time to the fsync's return; median of
    `plan.runs` runs. A server that fsyncs an upload (headrace's pools do) cannot store one faster."""
    rates: list[float] = []
    for run in range(plan.runs):
        dest = workdir / f"big-ceiling-{run}"
        with src.open("rb") as f:
            t0 = time.perf_counter()
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                while chunk := f.read(MiB):
                    os.write(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            rates.append(plan.big_bytes / 1e6 / (time.perf_counter() - t0))
        dest.unlink()
        os.sync()
    return {"big_MBps": statistics.median(rates), "big_runs": rates}


def measure_disk_ceiling(workdir: Path, plan: Plan, src: Path) -> dict[str, Any]:
    """What this disk allows for durable small files, without any server: `plan.clients` threads each write
    4 KiB to a new file in tmp/, fsync it, rename it into one of 256 fan-out directories and fsync that
    directory (what a server that fsyncs must do per upload, as headrace's pools do). os.write and os.fsync
    release the GIL, so the threads overlap as a server's I/O threads would. Median of `plan.runs` runs."""
    root = workdir / "disk-ceiling"
    body = os.urandom(plan.small_size)
    rates: list[float] = []
    for run in range(plan.runs):
        base = root / f"run{run}"
        (base / "tmp").mkdir(parents=True)
        for i in range(256):
            (base / "data" / f"{i:02x}").mkdir(parents=True)
        os.sync()
        counter = iter(range(plan.small_files))
        lock = threading.Lock()
        threads = [
            threading.Thread(target=_durable_writer, args=(base, body, counter, lock)) for _ in range(plan.clients)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates.append(plan.small_files / (time.perf_counter() - t0))
        shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    os.sync()
    big = measure_big_fsync_ceiling(workdir, plan, src)
    return {
        **big,
        "files_per_s": statistics.median(rates),
        "runs": rates,
        "threads": plan.clients,
        "size": plan.small_size,
        "what": "write + fsync + rename + directory fsync per file",
    }


def mib(n: float) -> float:
    return round(n / MiB, 1)


def mbps(nbytes: int, seconds: float) -> float:
    return nbytes / 1e6 / seconds


def big_runs(server: Server, method: str, plan: Plan, src: Path) -> list[dict[str, Any]]:
    """plan.runs large-file transfers, each under an RSS sampler and a CPU watch."""
    runs: list[dict[str, Any]] = []
    for run in range(plan.runs):
        if method == "PUT":
            os.sync()  # each upload starts with no dirty pages left from the previous one
        url = server.url(f"/big/big{run}" if method == "PUT" else "/big/big0")
        with RssSampler(server.pid) as rss, CpuWatch(server.pid) as cpu:
            cacert = getattr(server, "cacert", None)
            seconds = curl_transfer(method, url, src if method == "PUT" else None, plan.big_bytes, cacert)
        runs.append(
            {
                "MBps": mbps(plan.big_bytes, seconds),
                "seconds": seconds,
                "rss_start_MiB": mib(rss.start),
                "rss_peak_MiB": mib(rss.peak),
                "rss_growth_MiB": mib(rss.peak - rss.start),
                "rss_samples": len(rss.samples),
                "server_cpu_s": round(cpu.server_s, 3),
                "other_cpu_pct": cpu.other_pct,
            }
        )
        print(
            f"  {method} {plan.big_label} run {run + 1}: {runs[-1]['MBps']:7.0f} MB/s   "
            f"RSS peak {runs[-1]['rss_peak_MiB']:.0f} MiB (+{runs[-1]['rss_growth_MiB']:.0f})   "
            f"other CPU {pct(cpu.other_pct)}",
            flush=True,
        )
    return runs


def bench_server(server: Server, plan: Plan, src: Path, src_sha: str, gen: Generator) -> dict[str, Any]:
    result: dict[str, Any] = {"version": server.version(), "settings": server.describe()}
    os.sync()  # start every server with no dirty pages left over from the one before
    busy = psutil.cpu_percent(interval=0.3 if plan.quick else 1.0)
    result["machine_busy_pct_before"] = busy
    if busy > 10:
        print(f"  warning: the machine is {busy:.0f}% busy before the run; numbers will be noisy", flush=True)
    print(f"[{server.label}] starting on port {server.port}", flush=True)
    try:
        server.start()
        # Warm-up: lazy imports, first connection, first file.
        mkcol(server.port, server.path("/warmup"))
        status, _ = http_request(server.port, "PUT", server.path("/warmup/x"), body=b"x" * plan.small_size)
        if status not in (200, 201, 204):
            raise BenchError(f"warm-up PUT -> {status}")
        status, body = http_request(server.port, "GET", server.path("/warmup/x"))
        if status != 200 or len(body) != plan.small_size:
            raise BenchError(f"warm-up GET -> {status}, {len(body)} bytes")
        mkcol(server.port, server.path("/big"))
        idle_rss = tree_rss(server.pid)

        put_big = big_runs(server, "PUT", plan, src)
        get_big = big_runs(server, "GET", plan, src)
        if sha256_of_get(server.port, server.path("/big/big0")) != src_sha:
            raise BenchError(f"GET of {server.path('/big/big0')} does not match the uploaded file")

        put_small, get_small = small_rounds(gen, server, "small", plan)
        for label, got in (("PUT", put_small), ("GET", get_small)):
            print(
                f"  {label} {plan.small_label}: "
                + ", ".join(f"{r.files_per_s:.0f}" for r in got)
                + f" files/s   other CPU {pct(max_known(r.other_cpu_pct for r in got))}",
                flush=True,
            )

        put_growth = max(r["rss_growth_MiB"] for r in put_big)
        get_growth = max(r["rss_growth_MiB"] for r in get_big)
        everything = [*put_big, *get_big]
        result.update(
            {
                "put_big_MBps": statistics.median(r["MBps"] for r in put_big),
                "put_big_MBps_best": max(r["MBps"] for r in put_big),
                "get_big_MBps": statistics.median(r["MBps"] for r in get_big),
                "get_big_MBps_best": max(r["MBps"] for r in get_big),
                "put_small_fps": statistics.median(r.files_per_s for r in put_small),
                "get_small_fps": statistics.median(r.files_per_s for r in get_small),
                "peak_rss_MiB": max(r["rss_peak_MiB"] for r in everything),
                "rss": {
                    "idle_MiB": mib(idle_rss),
                    "put_peak_MiB": max(r["rss_peak_MiB"] for r in put_big),
                    "get_peak_MiB": max(r["rss_peak_MiB"] for r in get_big),
                    "put_growth_MiB": put_growth,
                    "get_growth_MiB": get_growth,
                    "flat": max(put_growth, get_growth) <= FLAT_RSS_GROWTH / MiB,
                },
                "cpu_us_per_small_request": per_request_us([*put_small, *get_small], "server_cpu_s"),
                "cpu_us_per_small_put": per_request_us(put_small, "server_cpu_s"),
                "cpu_us_per_small_get": per_request_us(get_small, "server_cpu_s"),
                "other_cpu_pct_max": max_known(
                    [r["other_cpu_pct"] for r in everything] + [r.other_cpu_pct for r in (*put_small, *get_small)]
                ),
                "big_verified_sha256": True,
                "put_big_runs": put_big,
                "get_big_runs": get_big,
                "put_small_runs": [asdict(r) for r in put_small],
                "get_small_runs": [asdict(r) for r in get_small],
            }
        )
    finally:
        server.stop()
        print(f"[{server.label}] stopped; log: {server.log_path}", flush=True)
        shutil.rmtree(server.data, ignore_errors=True)
        os.sync()
    return result


# --------------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = True


def metrics(plan: Plan) -> list[Metric]:
    return [
        Metric("put_big_MBps", f"PUT {plan.big_label}", "MB/s"),
        Metric("get_big_MBps", f"GET {plan.big_label}", "MB/s"),
        Metric("put_small_fps", f"PUT {plan.small_label}, {plan.clients} clients", "files/s"),
        Metric("get_small_fps", f"GET {plan.small_label}, {plan.clients} clients", "files/s"),
        Metric("peak_rss_MiB", f"peak RSS during {plan.big_label} PUT/GET", "MiB", higher_is_better=False),
    ]


#: (metric, baseline server, minimum headrace/baseline ratio)
GOALS: list[tuple[str, str, float]] = [
    ("put_big_MBps", "nginx", 0.5),
    ("get_big_MBps", "nginx", 0.5),
    ("put_big_MBps", "wsgidav", 3.0),
    ("get_big_MBps", "wsgidav", 3.0),
    ("put_small_fps", "wsgidav", 3.0),
    ("get_small_fps", "wsgidav", 5.0),
]
#: (metric, at least (or at most, for CPU), unit) for headrace alone (issue 12).
ABSOLUTE_GOALS: list[tuple[str, str, float]] = [
    ("put_small_fps", ">=", 2000.0),
    ("get_small_fps", ">=", 5000.0),
    ("cpu_us_per_small_put", "<=", 800.0),
    ("cpu_us_per_small_get", "<=", 300.0),
]


def compute_ratios(servers: dict[str, Any], plan: Plan) -> dict[str, dict[str, float | None]]:
    ratios: dict[str, dict[str, float | None]] = {}
    mine = servers.get("headrace", {})
    for base in ("nginx", "wsgidav"):
        theirs = servers.get(base, {})
        row: dict[str, float | None] = {}
        for metric in metrics(plan):
            a, b = mine.get(metric.key), theirs.get(metric.key)
            row[metric.key] = (
                round(a / b, 3) if isinstance(a, float | int) and isinstance(b, float | int) and b else None
            )
        ratios[f"headrace/{base}"] = row
    return ratios


def disk_ratio(servers: dict[str, Any], disk: dict[str, Any] | None) -> float | None:
    """headrace's small-file PUT rate as a share of the disk's ceiling for durable small files."""
    mine = servers.get("headrace", {}).get("put_small_fps")
    ceiling = (disk or {}).get("files_per_s")
    return round(mine / ceiling, 3) if isinstance(mine, float | int) and ceiling else None


def big_disk_ratio(servers: dict[str, Any], disk: dict[str, Any] | None) -> float | None:
    """headrace's large-file PUT rate as a share of the disk's ceiling for one durable large file."""
    mine = servers.get("headrace", {}).get("put_big_MBps")
    ceiling = (disk or {}).get("big_MBps")
    return round(mine / ceiling, 3) if isinstance(mine, float | int) and ceiling else None


def compute_goals(
    servers: dict[str, Any], ratios: dict[str, dict[str, float | None]], disk: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    goals: list[dict[str, Any]] = []
    for key, base, minimum in GOALS:
        ratio = ratios[f"headrace/{base}"].get(key)
        status = "n/a" if ratio is None else ("PASS" if ratio >= minimum else "FAIL")
        goals.append({"goal": f"headrace >= {minimum:g}x {base}", "metric": key, "ratio": ratio, "status": status})
    mine = servers.get("headrace", {})
    for key, how, bound in ABSOLUTE_GOALS:
        value = mine.get(key)
        if not isinstance(value, float | int):
            status = "n/a"
        else:
            status = "PASS" if (value >= bound if how == ">=" else value <= bound) else "FAIL"
        goals.append({"goal": f"headrace {how} {bound:g}", "metric": key, "ratio": value, "status": status})
    goals.append(
        {
            "goal": "headrace PUT / disk ceiling (reported)",
            "metric": "put_small_fps",
            "ratio": disk_ratio(servers, disk),
            "status": "-",
        }
    )
    goals.append(
        {
            "goal": "headrace large PUT / disk fsync ceiling (reported)",
            "metric": "put_big_MBps",
            "ratio": big_disk_ratio(servers, disk),
            "status": "-",
        }
    )
    rss = mine.get("rss")
    goals.append(
        {
            "goal": f"headrace RSS grows <= {FLAT_RSS_GROWTH // MiB} MiB during one transfer",
            "metric": "rss",
            "ratio": None,
            "status": "n/a" if rss is None else ("PASS" if rss["flat"] else "FAIL"),
        }
    )
    return goals


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def machine_info() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "ram_GiB": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "curl": run_text(["curl", "--version"]).splitlines()[0],
        "go": run_text([go_binary() or "go", "version"]),
    }


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def fmt(value: Any, digits: int = 0) -> str:
    """A number for a results table: thousands separated, floats to `digits` places; "-" for None."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


MD_BEGIN = "<!-- storage-bench:begin (written by bench/storage.py) -->"
MD_END = "<!-- storage-bench:end -->"


def tls_markdown(report: dict[str, Any], plan: Plan) -> list[str]:
    """The large-file rows of headrace's door over TLS beside plain HTTP (none when not measured)."""
    tls = report.get("tls") or {}
    got, plain = tls.get("headrace-tls") or {}, report["servers"].get("headrace", {})
    if not got:
        return []
    if "error" in got:
        return ["## TLS", "", f"headrace-tls failed: {got['error']}", ""]
    r = tls.get("ratios", {})
    return [
        "## TLS",
        "",
        "The door (granian) with `--tls-cert/--tls-key` (ECDSA P-256 certificate, TLS 1.3), curl over HTTP/1.1 "
        "verifying it against the CA, beside the same door over plain HTTP:",
        "",
        "| metric | headrace (http) | headrace-tls (https) | https/http |",
        "|---|---:|---:|---:|",
        f"| PUT {plan.big_label} (MB/s) | {fmt(plain.get('put_big_MBps'))} | {fmt(got['put_big_MBps'])} | "
        f"{fmt(r.get('put_big_MBps'), 2)} |",
        f"| GET {plan.big_label} (MB/s) | {fmt(plain.get('get_big_MBps'))} | {fmt(got['get_big_MBps'])} | "
        f"{fmt(r.get('get_big_MBps'), 2)} |",
        "",
    ]


def render_markdown(report: dict[str, Any], plan: Plan) -> str:
    servers: dict[str, Any] = report["servers"]
    names = [n for n in SERVER_NAMES if n in servers]
    ok = [n for n in names if "error" not in servers[n]]
    machine = report["machine"]
    gen = report["generator"]
    lines = [
        MD_BEGIN,
        "# Storage benchmark results",
        "",
        f"Generated by `.venv/bin/python bench/storage.py{' --quick' if plan.quick else ''}` on {report['date']}; "
        "the raw numbers are in the JSON file next to it (bench/results/). "
        "See [README.md](README.md) for what is measured and how to read it.",
    ]
    if plan.quick:
        lines += ["", "**This is a --quick smoke run: sizes are shrunk and the numbers are not comparable.**"]
    noise = max_known(servers[n].get("other_cpu_pct_max") for n in names)
    if noise is not None and noise > NOISY_OTHER_CPU_PCT:
        lines += [
            "",
            f"**Noisy run:** other processes used up to {noise:.0f}% of the CPUs while measurements ran "
            '(see "max other CPU %" under Details). Treat the numbers as rough and re-run on a quiet machine.',
        ]
    lines += [
        "",
        "## Machine and versions",
        "",
        f"- CPUs (`nproc`): {machine['nproc']}; CPU model: {machine['cpu_model']}",
        f"- RAM: {machine['ram_GiB']} GiB; kernel: {machine['kernel']}",
        "- servers and load generator share those CPUs; the data directories are on the local disk "
        "(ext4) and nothing is fsynced by nginx or wsgidav, so large-file numbers mostly measure the page cache",
    ]
    lines += [f"- {name}: {servers[name].get('version', '?')}" for name in names]
    lines += [f"- curl: {machine['curl']}", f"- python: {machine['python']}", f"- go: {machine['go']}", ""]

    lines += ["## Results", ""]
    lines.append("| metric | " + " | ".join(names) + " | headrace/nginx | headrace/wsgidav |")
    lines.append("|---|" + "---:|" * (len(names) + 2))
    for metric in metrics(plan):
        cells = ["failed" if name not in ok else fmt(servers[name].get(metric.key)) for name in names]
        ratios = [fmt(report["ratios"][f"headrace/{base}"].get(metric.key), 2) for base in ("nginx", "wsgidav")]
        lines.append(f"| {metric.label} ({metric.unit}) | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    disk = report.get("disk_ceiling")
    if disk:
        ratio = disk_ratio(servers, disk)
        lines.append(
            f"| disk ceiling: {plan.small_label}, {disk['what']}, {disk['threads']} threads (files/s) | "
            + " | ".join(fmt(disk["files_per_s"]) if name == "headrace" else "" for name in names)
            + f" | headrace PUT = {fmt(ratio, 2)} of it | |"
        )
        if disk.get("big_MBps"):
            lines.append(
                f"| disk ceiling: {plan.big_label} written and fsynced (MB/s) | "
                + " | ".join(fmt(disk["big_MBps"]) if name == "headrace" else "" for name in names)
                + f" | headrace PUT = {fmt(big_disk_ratio(servers, disk), 2)} of it | |"
            )
    lines += [
        "",
        f"Every rate is the median of {plan.runs} run{'s' if plan.runs > 1 else ''}; MB = 10^6 bytes. "
        f"Small files: {plan.clients} clients, "
        f"one keep-alive connection each, driven by the `{gen['used']}` generator. Peak RSS is the server "
        "process plus its children, sampled every 50 ms; lower is better.",
        "",
        *tls_markdown(report, plan),
        "## Goals",
        "",
        "| goal | metric | ratio | status |",
        "|---|---|---:|---|",
    ]
    for goal in report["goals"]:
        lines.append(f"| {goal['goal']} | {goal['metric']} | {fmt(goal['ratio'], 2)} | {goal['status']} |")

    lines += [
        "",
        "## Details",
        "",
        "| server | best PUT MB/s | best GET MB/s | RSS idle MiB | RSS max growth in one transfer MiB "
        "| RSS flat | server CPU per small request (us) | per PUT | per GET | connections per small-file pass "
        "| max other CPU % |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name in ok:
        got = servers[name]
        rss = got["rss"]
        conns = [r["connections"] for r in (*got["put_small_runs"], *got["get_small_runs"])]
        connections = f"{min(conns)}" if min(conns) == max(conns) else f"{min(conns)}-{max(conns)}"
        lines.append(
            f"| {name} | {fmt(got['put_big_MBps_best'])} | {fmt(got['get_big_MBps_best'])} | {rss['idle_MiB']} | "
            f"{max(rss['put_growth_MiB'], rss['get_growth_MiB'])} | {'yes' if rss['flat'] else 'no'} | "
            f"{fmt(got['cpu_us_per_small_request'])} | {fmt(got.get('cpu_us_per_small_put'))} | "
            f"{fmt(got.get('cpu_us_per_small_get'))} | {connections} | {fmt(got['other_cpu_pct_max'])} |"
        )
    lines += [
        "",
        '"Other CPU" is CPU used by processes other than the server and the load generator while a '
        "measurement ran, as a share of all CPUs; anything above a few percent means the numbers are noisy. "
        f"Connections: the generator opens {plan.clients} and reconnects only when the server closes one.",
        "",
        "## Small-file load generator ceiling",
        "",
        f"Each candidate generator against its own nginx instance ({plan.runs} x {plan.small_label} PUT + GET, "
        f"{plan.clients} clients); the fastest is used for every server.",
        "",
        "| generator | PUT files/s | GET files/s | generator CPU per request (us) | nginx CPU per request (us) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, got in gen["ceiling"].items():
        lines.append(
            f"| {name}{' (used)' if name == gen['used'] else ''} | {fmt(got['put_fps'])} | {fmt(got['get_fps'])} "
            f"| {fmt(got['generator_cpu_us_per_request'])} | {fmt(got['nginx_cpu_us_per_request'])} |"
        )
    for name, why in gen.get("skipped", {}).items():
        lines.append(f"| {name} | skipped: {why.splitlines()[0]} | | | |")

    lines += ["", "## Notes", ""]
    for name in names:
        if name not in ok:
            lines.append(f"- **{name} failed**: {str(servers[name]['error']).splitlines()[0]}")
    nginx_settings = servers.get("nginx", {}).get("settings", {})
    if nginx_settings:
        lines.append(
            f"- nginx: master_process {nginx_settings['master_process']}, worker_processes "
            f"{nginx_settings['worker_processes']} ({nginx_settings['cpus']} workers here), sendfile on, "
            "access_log off."
        )
    if "wsgidav" in servers:
        lines.append(
            "- wsgidav: cheroot, filesystem provider, anonymous access, verbose 1, no dir browser, cheroot's "
            "stock settings (50 threads; `keep_alive_conn_limit` 10, so with 16 clients it closes idle "
            "keep-alive connections and the clients reconnect, which the connections column shows)."
        )
    if "headrace" in servers:
        env = servers["headrace"].get("settings", {}).get("env", {})
        lines.append(
            f"- headrace: {', '.join(f'{k}={v}' for k, v in sorted(env.items()))}. Unless HEADRACE_FSYNC=0, "
            "headrace fsyncs every upload before committing it; nginx and wsgidav never fsync."
        )
    if report.get("nice"):
        lines.append(f"- The bench, its servers and the load generator ran at nice {report['nice']}.")
    lines.append(
        "- Every request carries HTTP Basic credentials; only headrace checks them (nginx has no auth "
        "configured, wsgidav allows anonymous access)."
    )
    lines += ["", MD_END]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="64 MiB and 500 files: a smoke test")
    parser.add_argument("--only", default=",".join(SERVER_NAMES), help="comma-separated servers to run")
    parser.add_argument("--out", type=Path, help="JSON output (default bench/results/storage[-quick].json)")
    parser.add_argument(
        "--md", type=Path, help="markdown report (default bench/RESULTS.md for full runs, none with --quick)"
    )
    parser.add_argument("--no-md", action="store_true", help="do not write the markdown report")
    parser.add_argument("--runs", type=int, help="runs of every measurement (default 3)")
    parser.add_argument("--generator", choices=("auto", *GENERATOR_NAMES), default="auto")
    parser.add_argument("--headrace-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--headrace-root", default="/", help="WebDAV root path on the headrace door")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, configs)")
    parser.add_argument(
        "--no-tls", action="store_true", help="skip the headrace door's large-file rows over TLS (headrace-tls)"
    )
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only re-render the markdown (--md) from an earlier JSON"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority for the bench, its servers and generators (e.g. -5 on a shared box; "
        "negative needs root)",
    )
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.servers) - set(SERVER_NAMES)
    if unknown or not args.servers:
        parser.error(f"--only takes a comma-separated subset of {', '.join(SERVER_NAMES)}")
    for item in args.headrace_env:
        if "=" not in item:
            parser.error(f"--headrace-env wants KEY=VALUE, not {item!r}")
    return args


@contextlib.contextmanager
def workspace(keep: bool, prefix: str = "headrace-bench-") -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.runs:
        plan = Plan(**{**asdict(plan), "runs": args.runs})
    out: Path = args.out or BENCH_DIR / "results" / ("storage-quick.json" if plan.quick else "storage.json")
    md: Path | None = None if args.no_md else (args.md or (None if plan.quick else BENCH_DIR / "RESULTS.md"))
    if args.render:
        earlier = json.loads(args.render.read_text())
        target = args.md or BENCH_DIR / "RESULTS.md"
        write_section(target, render_markdown(earlier, Plan(**earlier["plan"])), MD_BEGIN, MD_END)
        print(f"wrote {target}")
        return 0
    if shutil.which("curl") is None:
        print("curl is required", file=sys.stderr)
        return 2
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every server, curl and generator

    servers: dict[str, Any] = {}
    with workspace(args.keep_tmp) as tmp:
        print(f"workspace {tmp}; plan {plan}", flush=True)
        src = tmp / "source.bin"
        t0 = time.monotonic()
        src_sha = make_source_file(src, plan.big_bytes)
        os.sync()
        print(f"source file {plan.big_label} ready in {time.monotonic() - t0:.1f} s", flush=True)

        names = GENERATOR_NAMES if args.generator == "auto" else (args.generator,)
        gens, skipped = make_generators(names, tmp)
        if not gens:
            print("no usable load generator", file=sys.stderr)
            return 2
        ceiling = measure_ceiling(gens, tmp, plan)
        gen = pick_generator(gens, ceiling)
        print(f"small files use the {gen.name} generator", flush=True)
        disk = measure_disk_ceiling(tmp, plan, src)
        print(
            f"disk ceiling: {disk['files_per_s']:.0f} files/s ({plan.small_label}: {disk['what']}, "
            f"{disk['threads']} threads); {disk['big_MBps']:.0f} MB/s for {plan.big_label} written and fsynced",
            flush=True,
        )

        extra_env = dict(item.split("=", 1) for item in args.headrace_env)
        for name in SERVER_NAMES:
            if name not in args.servers:
                continue
            server: Server
            if name == "nginx":
                server = NginxServer(tmp)
            elif name == "wsgidav":
                server = WsgidavServer(tmp)
            else:
                server = HeadraceServer(tmp, extra_env, args.headrace_root)
            try:
                servers[name] = bench_server(server, plan, src, src_sha, gen)
            except (BenchError, OSError, subprocess.SubprocessError, json.JSONDecodeError) as exc:
                print(f"[{name}] FAILED: {exc}", file=sys.stderr, flush=True)
                if server.log_path.exists():
                    print(f"[{name}] last lines of {server.log_path}:\n{tail(server.log_path)}", file=sys.stderr)
                servers[name] = {"version": server.version(), "error": str(exc), "log_tail": tail(server.log_path)}
        if "headrace" in args.servers and not args.no_tls:
            tls_server = HeadraceTLSServer(tmp, extra_env, args.headrace_root)
            try:
                tls_result = bench_tls(tls_server, plan, src)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                print(f"[headrace-tls] FAILED: {exc}", file=sys.stderr, flush=True)
                tls_result = {"error": str(exc), "log_tail": tail(tls_server.log_path)}

    ratios = compute_ratios(servers, plan)
    tls_report: dict[str, Any] | None = None
    if "headrace" in args.servers and not args.no_tls:
        tls_report = {"headrace-tls": tls_result, "ratios": tls_ratios({**servers, "headrace-tls": tls_result})}
        r = tls_report["ratios"]
        print(f"TLS/plain on the door: PUT {fmt(r['put_big_MBps'], 2)}, GET {fmt(r['get_big_MBps'], 2)}", flush=True)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "plan": asdict(plan),
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
        "machine": machine_info(),
        "generator": {"used": gen.name, "ceiling": ceiling, "skipped": skipped},
        "disk_ceiling": disk,
        "servers": servers,
        "ratios": ratios,
        "goals": compute_goals(servers, ratios, disk),
        "tls": tls_report,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if md is not None:
        write_section(md, render_markdown(report, plan), MD_BEGIN, MD_END)
        print(f"wrote {md}")

    print()
    print(render_markdown(report, plan).split("## Results", 1)[1].split("## Details", 1)[0].strip())
    return 1 if any("error" in s for s in servers.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
