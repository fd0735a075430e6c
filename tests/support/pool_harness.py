"""Starting real `headrace pool` processes on free 127.0.0.1 ports, next to a `headrace up` server."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import ManagedProcess, Server, free_port, headrace_command, http

#: Pools heartbeat this often in tests (a killed pool is offline for doors after three missed beats).
HEARTBEAT = "0.5"


@dataclass
class PoolProcess(ManagedProcess):
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

    def args(self) -> list[str]:
        return [
            "pool", "--data", str(self.data), "--port", str(self.port), "--host", "127.0.0.1", "--name", self.name,
            "--db", self.db,
        ]  # fmt: skip

    def command(self) -> list[str]:
        return headrace_command(self.args())

    def start(self, timeout: float = 60.0) -> PoolProcess:
        self.log_path = self.data.parent / f"pool-{self.name}-{self.port}.log"
        self.spawn(self.args(), self.env())
        self.wait_until(lambda: http("GET", f"{self.url}/healthz", timeout=1).status_code == 200, timeout)
        return self

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
