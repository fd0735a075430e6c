"""headrace as a cluster of separate processes on 127.0.0.1, for tests and benchmarks: `headrace door`,
`frontend`, `controller`, `invoker` (and `pool`), each on free ports, sharing one database (SQLite file or
PostgreSQL) and one Kafka broker.

`Cluster(workdir, db_url, kafka)` starts nothing by itself; `cluster.controller()`, `.door()`, `.frontend()`,
`.invoker()`, `.pool()` start one process each and return a `Role` that can be stopped, killed and started
again on the same ports. The first process started on a new database creates its schema and admin user, so
`Cluster.start_first` is what tests call before starting the rest in any order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import ADMIN_KEY, ManagedProcess, client, free_port, http

AUTH = ("admin", ADMIN_KEY)


@dataclass
class Role(ManagedProcess):
    """One headrace process of the cluster."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready: Callable[[Role], bool]
    port: int = 0  # the port it serves (WebDAV, REST API, /healthz), 0 if none
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> Role:
        """Start the process without waiting for it (see `wait_ready`)."""
        self.spawn(self.args, self.env)
        return self

    def wait_ready(self, timeout: float = 120.0) -> Role:
        self.wait_until(lambda: self.ready(self), timeout)
        return self

    def start(self, timeout: float = 120.0) -> Role:
        return self.launch().wait_ready(timeout)

    def health(self) -> dict[str, Any]:
        return dict(http("GET", f"{self.url}/healthz", timeout=30).json())


def _healthz(role: Role) -> bool:
    try:
        return http("GET", f"{role.url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _listening(role: Role) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", role.port), timeout=1):
            return True
    except OSError:
        return False


def own_topics(**extra: str) -> dict[str, str]:
    """Environment giving a cluster Kafka topics and a consumer group of its own on the session's broker."""
    tag = uuid.uuid4().hex[:8]
    return {
        "HEADRACE_ACTIVATION_TOPIC": f"activations-{tag}",
        "HEADRACE_ACTIVATION_RESULTS_TOPIC": f"results-{tag}",
        "HEADRACE_INVOKER_GROUP": f"invokers-{tag}",
        "HEADRACE_KAFKA_TOPIC": f"events-{tag}",
        **extra,
    }


@dataclass
class Cluster:
    workdir: Path
    db_url: str
    kafka: str = ""
    #: Every process's environment on top of this one's.
    env_extra: dict[str, str] = field(default_factory=dict)
    log_level: str = "warning"
    roles: list[Role] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(exist_ok=True)

    @property
    def data(self) -> Path:
        """The shared data directory (pools of `headrace up`-style processes, channel directories)."""
        return self.workdir / "data"

    def env(self, name: str, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HEADRACE_ADMIN_KEY": ADMIN_KEY,
                "HEADRACE_CONFIG": str(self.workdir / f"cli-{name}.json"),  # one each: no two writers of one file
                "HEADRACE_LOG_LEVEL": self.log_level,
                "HEADRACE_FSYNC": "0",
            }
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def _role(self, name: str, args: list[str], ready: Callable[[Role], bool], port: int, **env: str) -> Role:
        role = Role(name, args, self.env(name, **env), self.workdir / f"{name}.log", ready, port)
        self.roles.append(role)
        return role

    def _common(self, data: Path | None = None, *, kafka: bool = True) -> list[str]:
        out = ["--data", str(data or self.data), "--db", self.db_url, "--host", "127.0.0.1"]
        return out + (["--kafka", self.kafka] if self.kafka and kafka else [])

    # -- the roles ------------------------------------------------------------------------------------------

    def controller(self, *args: str, start: bool = True, **env: str) -> Role:
        port = free_port()
        role = self._role(
            "controller", ["controller", *self._common(), "--port", str(port), *args], _healthz, port, **env
        )
        return role.start() if start else role

    def door(self, *args: str, name: str | None = None, start: bool = True, **env: str) -> Role:
        port = free_port()
        name = name or f"door-{port}"
        args_ = ["door", *self._common(kafka=False), "--port", str(port), *args]
        role = self._role(name, args_, _listening, port, **env)
        return role.start() if start else role

    def frontend(self, *args: str, name: str | None = None, start: bool = True, **env: str) -> Role:
        port = free_port()
        name = name or f"frontend-{port}"
        role = self._role(name, ["frontend", *self._common(), "--port", str(port), *args], _healthz, port, **env)
        return role.start() if start else role

    def invoker(self, *args: str, name: str | None = None, start: bool = True, **env: str) -> Role:
        port = free_port()
        name = name or f"invoker-{port}"
        code = self.workdir / name  # a code cache of its own, as on a host of its own
        code.mkdir(exist_ok=True)
        role = self._role(
            name, ["invoker", *self._common(code), "--port", str(port), *args], _healthz, port,
            **{"HEADRACE_LOG_LEVEL": "info", **env},
        )  # fmt: skip
        return role.start() if start else role

    def pool(self, name: str, *, start: bool = True, **env: str) -> Role:
        port = free_port()
        directory = self.workdir / f"pool-{name}"
        args = ["pool", "--data", str(directory), "--port", str(port), "--host", "127.0.0.1", "--name", name]
        role = self._role(f"pool-{name}", [*args, "--db", self.db_url], _healthz, port, **env)
        return role.start() if start else role

    @staticmethod
    def start_all(*roles: Role, timeout: float = 120.0) -> list[Role]:
        """Start several roles at once (made with start=False); return once all are ready."""
        for role in roles:
            role.launch()
        return [role.wait_ready(timeout) for role in roles]

    def stop(self) -> None:
        """Stop everything (SIGTERM, in reverse order of start)."""
        for role in reversed(self.roles):
            role.stop()

    def logs(self) -> str:
        return "\n".join(f"==== {r.name}\n{r.log()[-4000:]}" for r in self.roles)


# -- clients --------------------------------------------------------------------------------------------------


def api(role: Role) -> httpx.Client:
    return client(base_url=role.url, auth=AUTH, timeout=60)


def door(role: Role) -> httpx.Client:
    return client(base_url=role.url, auth=AUTH, timeout=60)


def deploy(frontend: Role, name: str, code: str, *, path: str | None = None, **scaling: Any) -> None:
    """An action (Python `code`), and with `path` a storage-feed trigger on it and an active rule, through
    the frontend's OpenWhisk API (as `headrace fn deploy` makes them)."""
    with api(frontend) as c:
        body: dict[str, Any] = {
            "exec": {"kind": "python:3", "code": code},
            "limits": {"timeout": 30_000},
            "scaling": scaling,
        }
        r = c.put(f"/api/v1/namespaces/_/actions/{name}?overwrite=true", json=body)
        assert r.status_code == 200, r.text
        if path is None:
            return
        feed = {"path": path, "recursive": True, "flags": ["IN_CLOSE_WRITE"]}
        r = c.put(f"/api/v1/namespaces/_/triggers/{name}-trigger?overwrite=true", json={"feed": feed})
        assert r.status_code == 200, r.text
        rule = {"trigger": f"{name}-trigger", "action": name}
        r = c.put(f"/api/v1/namespaces/_/rules/{name}-rule?overwrite=true", json=rule)
        assert r.status_code == 200, r.text


def activation_states(frontend: Role, name: str) -> dict[str, int]:
    """How many of the action's activations are in each state (from the API's listing)."""
    out: dict[str, int] = {}
    with api(frontend) as c:
        skip = 0
        while True:
            page = c.get("/api/v1/namespaces/_/activations", params={"name": name, "limit": 200, "skip": skip}).json()
            for a in page:
                out[a["state"]] = out.get(a["state"], 0) + 1
            if len(page) < 200:
                return out
            skip += 200
