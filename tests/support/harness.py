"""Starting a real `headrace up` process on free 127.0.0.1 ports, for tests and benchmarks.

The database under test comes from $HEADRACE_TEST_DB: `sqlite` (the default: SQLite in the server's data
directory) or `postgresql` (a fresh database per server in this test process's PostgreSQL cluster,
tests/support/pg_harness.py, given to the server as `--db`). `query`/`execute` reach a server's database whichever
it is, by the server's data directory.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool

from headrace.db.engine import sqlalchemy_url
from headrace.tls import tls_context

ADMIN_KEY = "test-admin-key"
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 60.0) -> T:
    """Poll `probe` until it returns something true; that value (AssertionError after `timeout`, a deadline
    that only catches a hang: the suite must pass on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def settle(probe: Callable[[], T], what: str, quiet: float = 0.3, timeout: float = 60.0) -> T:
    """What `probe` returns once it has not changed for `quiet` seconds (AssertionError after `timeout`): for
    what a server writes just after its response (read events), instead of sleeping a guessed while."""
    value, since = probe(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} kept changing")
        time.sleep(0.05)
        if (now := probe()) != value:
            value, since = now, time.monotonic()
    return value


def client(**kw: Any) -> httpx.Client:
    """`httpx.Client(**kw)` on this process's one TLS context: httpx would load the CA bundle for each client
    (~25 ms of CPU; a tenth of the suite's, with the tests' many short-lived clients), see headrace.tls."""
    kw.setdefault("verify", tls_context())
    return httpx.Client(**kw)


def http(method: str, url: str, **kw: Any) -> httpx.Response:
    """`httpx.request(method, url, **kw)` on this process's one TLS context (see `client`)."""
    kw.setdefault("verify", tls_context())
    return httpx.request(method, url, **kw)


def _ephemeral_ports() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: Servers listen below the kernel's ephemeral range, so that no outgoing connection (a test's client, a
#: server's own) can take a stopped server's port before it is started again on it (a restart keeps its
#: address, as clients resuming a stream expect).
PORTS = range(20000, min(_ephemeral_ports()[0], 32768))


#: Ports this process has handed out: a server's door and frontend ports are chosen before either listens,
#: so the bind test alone gave both the same port now and then (one in ~12,000 pairs; `up` then failed with
#: "address already in use").
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on, at random below the ephemeral range (see `PORTS`), never one
    this process handed out before."""
    for _ in range(1000):
        port = random.choice(PORTS)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def db_kind() -> str:
    """`sqlite` or `postgresql`: the database the servers of this test run use ($HEADRACE_TEST_DB)."""
    kind = (os.environ.get("HEADRACE_TEST_DB") or "sqlite").strip().lower()
    if kind in {"postgresql", "postgres", "pg"}:
        return "postgresql"
    if kind != "sqlite":
        raise ValueError(f"HEADRACE_TEST_DB must be sqlite or postgresql, not {kind!r}")
    return kind


def new_test_database() -> str:
    """The `--db` URL for a new server: '' (SQLite in its data directory) or a fresh PostgreSQL database."""
    if db_kind() == "sqlite":
        return ""
    from pg_harness import session_cluster

    return session_cluster().create_database()


#: data directory -> the `--db` URL of the server on it (absent: SQLite in the data directory).
_DATABASES: dict[Path, str] = {}
_ENGINES: dict[tuple[str, bool], Engine] = {}


def remember_database(data: Path, db: str) -> None:
    """That the server (or in-process apps) on data directory `data` uses database `db` ('' = SQLite there)."""
    if db:
        _DATABASES[data.resolve()] = db


def database_url(data: Path) -> str:
    """The SQLAlchemy URL of the database of the server whose data directory is `data`."""
    given = _DATABASES.get(data.resolve())
    return sqlalchemy_url(given) if given else f"sqlite:///{data.resolve() / 'headrace.db'}"


def _engine(data: Path, *, write: bool) -> Engine:
    url = database_url(data)
    if url.startswith("sqlite") and not write:
        url = f"sqlite:///file:{data.resolve() / 'headrace.db'}?mode=ro&uri=true"
    key = (url, write)
    if key not in _ENGINES:
        # No pool: nothing is held open between queries, as with a connection per query.
        _ENGINES[key] = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30} if "sqlite" in url else {})
    return _ENGINES[key]


def query(data: Path, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of a read-only `sql` (named parameters `:name`) on the database of the server on `data`."""
    with _engine(data, write=False).connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def query_dicts(data: Path, sql: str, **params: Any) -> list[dict[str, Any]]:
    """`query`, each row as a dict of column name to value."""
    with _engine(data, write=False).connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql), params)]


def execute(data: Path, sql: str, rows: list[dict[str, Any]]) -> None:
    """Run `sql` once per parameter dict in `rows` and commit, on the database of the server on `data`."""
    with _engine(data, write=True).begin() as conn:
        conn.execute(text(sql), rows)


class ManagedProcess:
    """A `python -m headrace.cli.main …` process a test starts, waits for, reads the log of and stops. The
    dataclasses using it have `proc` and `log_path` fields; `name` says which process in errors."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path | None

    @property
    def label(self) -> str:
        return getattr(self, "name", None) or type(self).__name__.lower()

    def spawn(self, args: list[str], env: dict[str, str]) -> None:
        """Start `headrace ARGS` with its output appended to `log_path`, without waiting for it."""
        assert self.proc is None or self.proc.poll() is not None, f"{self.label} is running"
        assert self.log_path is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(headrace_command(args), env=env, stdout=log, stderr=subprocess.STDOUT)
        kill_at_exit(self.proc)

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Until `ready()` (an HTTP or socket error counts as not yet); RuntimeError with the log if the
        process exits or `timeout` passes first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{self.log()[-6000:]}")
            try:
                if ready():
                    return
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.label} did not become ready in {timeout} s:\n{self.log()[-6000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal it and wait (SIGKILL after `timeout`); its exit status (0 if it never started)."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def headrace_command(args: list[str]) -> list[str]:
    """The command line of `headrace ARGS` in this Python environment."""
    return [sys.executable, "-m", "headrace.cli.main", *args]


def kill_at_exit(proc: subprocess.Popen[bytes]) -> None:
    """Kill `proc` when this Python process exits, if it still runs: a crashed test leaves nothing behind."""

    def kill() -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    atexit.register(kill)


@dataclass
class Server(ManagedProcess):
    """A running headrace server; `door`/`api` are httpx clients authenticated as admin."""

    data: Path
    cli_config: Path
    door_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    #: More `headrace up` options, e.g. ["--kafka", "127.0.0.1:9092"].
    args_extra: list[str] = field(default_factory=list)
    #: `--db` URL; '' = SQLite in the data directory. By default what $HEADRACE_TEST_DB asks for.
    db: str = field(default_factory=new_test_database)

    def __post_init__(self) -> None:
        remember_database(self.data, self.db)

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL of this server's database."""
        return database_url(self.data)

    @property
    def door_url(self) -> str:
        return f"http://127.0.0.1:{self.door_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def auth(self) -> tuple[str, str]:
        return ("admin", ADMIN_KEY)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HEADRACE_ADMIN_KEY": ADMIN_KEY,
                "HEADRACE_CONFIG": str(self.cli_config),
                "HEADRACE_LOG_LEVEL": "warning",
            }
        )
        if self.db:  # for `headrace user add` and other commands run on the server host
            env["HEADRACE_DB"] = self.db
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 60.0) -> Server:
        self.log_path = self.data.parent / f"server-{self.door_port}.log"
        args = [
            "up", "--data", str(self.data), "--door-port", str(self.door_port), "--api-port", str(self.api_port),
            "--host", "127.0.0.1", *(["--db", self.db] if self.db else []), *self.args_extra,
        ]  # fmt: skip
        self.spawn(args, self.env())
        self.wait_until(self._ready, timeout)
        return self

    def _ready(self) -> bool:
        if http("GET", f"{self.api_url}/healthz", timeout=1).status_code != 200:
            return False
        with socket.create_connection(("127.0.0.1", self.door_port), timeout=1):
            return True

    def door(self, **kw: Any) -> httpx.Client:
        return client(base_url=self.door_url, auth=self.auth, timeout=60, **kw)

    def api(self, **kw: Any) -> httpx.Client:
        return client(base_url=self.api_url, auth=self.auth, timeout=60, **kw)


def add_user(server: Server, name: str) -> tuple[str, str, int]:
    """A new non-admin user on `server`'s database, made as an operator does (`headrace user add`): its
    name, API key and uid."""
    out = subprocess.run(
        [sys.executable, "-m", "headrace.cli.main", "user", "add", name, "--data", str(server.data), "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=server.env(),
    )
    info = json.loads(out.stdout)
    return name, info["key"], info["uid"]
