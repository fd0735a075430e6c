"""Starting a real `headrace up` process on free 127.0.0.1 ports, for tests and benchmarks."""

from __future__ import annotations

import os
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

ADMIN_KEY = "test-admin-key"
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = 30.0) -> T:
    """Poll `probe` until it returns something true; that value (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
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
        env.update(self.env_extra)
        return env

    def start(self, timeout: float = 20.0) -> Server:
        self.log_path = self.data.parent / f"server-{self.door_port}.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's life
        cmd = [
            sys.executable, "-m", "headrace.cli.main", "up", "--data", str(self.data),
            "--door-port", str(self.door_port), "--api-port", str(self.api_port), "--host", "127.0.0.1",
            *self.args_extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"headrace exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).status_code == 200:
                    with socket.create_connection(("127.0.0.1", self.door_port), timeout=1):
                        return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"headrace did not become ready in {timeout} s:\n{self.log()}")

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

    def door(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.door_url, auth=self.auth, timeout=30, **kw)

    def api(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, auth=self.auth, timeout=30, **kw)
