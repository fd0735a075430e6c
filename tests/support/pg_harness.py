"""A throwaway PostgreSQL cluster for tests: `initdb` into a temporary directory, `postgres` on a free
127.0.0.1 port with its unix socket in that directory, and a fresh database per server under test.

The server programs come from scripts/install-postgres.sh (Debian's `postgresql`; run here if `make test-deps`
has not), or from $HEADRACE_PG_BIN. The cluster is for tests only: fsync, synchronous_commit and
full_page_writes are off, so a commit costs no disk flush (a crash of PostgreSQL itself could lose commits;
the tests crash headrace, never PostgreSQL). The C locale makes text sort by code point, as SQLite does.

initdb and postgres refuse to run as root: run as root (as CI does), they run as the `postgres` system user
(or `nobody`), in a directory under /tmp owned by that user (pytest's own temp directories are private to root).
"""

from __future__ import annotations

import atexit
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from harness import free_port

REPO = Path(__file__).resolve().parents[2]
INSTALL_SCRIPT = REPO / "scripts" / "install-postgres.sh"


def postgres_bin() -> Path:
    """The directory of initdb and postgres: $HEADRACE_PG_BIN, or what scripts/install-postgres.sh finds."""
    given = os.environ.get("HEADRACE_PG_BIN")
    if given:
        return Path(given)
    out = subprocess.run([str(INSTALL_SCRIPT)], check=True, capture_output=True, text=True, timeout=900)
    return Path(out.stdout.strip().splitlines()[-1])


def _unprivileged() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as when this process is root; None when it is not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root, and there is no `postgres` or `nobody` user to run PostgreSQL as")


@dataclass
class PostgresCluster:
    bindir: Path = field(default_factory=postgres_bin)
    port: int = field(default_factory=free_port)
    #: The superuser role the tests connect as (trust authentication: no password).
    user: str = "postgres"
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "postgres.log"

    def _as(self, owner: tuple[int, int] | None) -> dict[str, Any]:
        return {} if owner is None else {"user": owner[0], "group": owner[1], "extra_groups": []}

    def start(self, timeout: float = 120.0) -> PostgresCluster:
        """initdb and start the server; return once it accepts connections."""
        owner = _unprivileged()
        self.workdir = Path(tempfile.mkdtemp(prefix="headrace-pg-"))
        if owner is not None:
            os.chown(self.workdir, *owner)
        data = self.workdir / "data"
        initdb = [str(self.bindir / "initdb"), "-D", str(data), "-U", self.user, "--auth=trust"]
        init = subprocess.run(
            [*initdb, "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.workdir,
            **self._as(owner),
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            # Every server under test holds a few dozen connections (writer, reader, LISTEN).
            "max_connections": "400",
            "shared_buffers": "64MB",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",
        }
        args = [arg for k, v in settings.items() for arg in ("-c", f"{k}={v}")]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(data), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                **self._as(owner),
            )
        atexit.register(self._kill_left, self.proc, self.workdir)  # a crashed run leaves nothing behind
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with psycopg.connect(self.conninfo("postgres"), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"postgres did not accept connections in {timeout} s") from None
                time.sleep(0.05)

    def conninfo(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL (plain postgresql://, as a user would give `headrace up --db`)."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.conninfo(name)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-8000:] if self.log_path.exists() else ""

    @staticmethod
    def _kill_left(proc: subprocess.Popen[bytes], workdir: Path) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server (SIGINT: a fast shutdown, which ends client sessions) and remove its files."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


_session: PostgresCluster | None = None


def session_cluster() -> PostgresCluster:
    """The one cluster of this test process, started on first use (conftest.py stops it at the end)."""
    global _session
    if _session is None or not _session.running:
        _session = PostgresCluster().start()
    return _session


def stop_session_cluster() -> None:
    global _session
    if _session is not None:
        _session.stop()
        _session = None
