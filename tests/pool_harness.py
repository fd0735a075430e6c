"""Starting real `headrace pool` processes on free 127.0.0.1 ports, next to a `headrace up` server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from harness import Server, free_port, http

#: Pools heartbeat this often in tests (a killed pool is offline for doors after three missed beats).
HEARTBEAT = "0.5"


@dataclass
class PoolProcess:
    """A running pool; `data` is its directory (blobs in data/, partial uploads in tmp/)."""

    data: Path
    db: str  # the namespace database URL, as `headrace pool --db` takes it
    name: str
    port: int = field(default_factory=free_port)
    env_extra: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"HEADRACE_LOG_LEVEL": "warning", "HEADRACE_POOL_HEARTBEAT": HEARTBEAT})
        env.update(self.env_extra)
        return env

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "headrace.cli.main", "pool", "--data", str(self.data), "--port", str(self.port),
            "--host", "127.0.0.1", "--name", self.name, "--db", self.db,
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> PoolProcess:
        self.log_path = self.data.parent / f"pool-{self.name}-{self.port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        self.proc = subprocess.Popen(self.command(), env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pool exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if http("GET", f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"pool did not become ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    # -- what it holds -------------------------------------------------------------------------------------

    def blob_path(self, blob: str) -> Path:
        return self.data / "data" / blob[:2] / blob

    def blobs(self) -> set[str]:
        return {f for _, _, files in os.walk(self.data / "data") for f in files}

    def partial(self) -> list[str]:
        return sorted(os.listdir(self.data / "tmp"))


def pool_db_url(server: Server) -> str:
    """The URL a pool next to `server` is given: the server's own `--db`, or its SQLite file."""
    return server.db or server.db_url
