"""A headrace server with the shipped tape simulator as its HSM, and helpers to watch tape state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from harness import Server

FAST = {
    "HEADRACE_TAPE_FLUSH_AGE": "0",  # flush as soon as a file is queued
    "HEADRACE_TAPE_POLL": "0.1",
}


def tape_server(base: Path, **env: str) -> Server:
    """A server (not started) whose pools flush to a simulator in `base/tape`; `env` adds HEADRACE_* settings."""
    return Server(
        data=base / "data",
        cli_config=base / "cli.json",
        env_extra={"HEADRACE_TAPE_SIMULATOR": str(base / "tape"), **FAST, **env},
    )


def stat(api: httpx.Client, path: str) -> dict[str, Any]:
    r = api.get(f"/api/v1/namespace{path}", params={"locality": "true", "qos": "true"})
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def locality(api: httpx.Client, path: str) -> str:
    return str(stat(api, path)["fileLocality"])


def set_qos(api: httpx.Client, path: str, target: str) -> httpx.Response:
    return api.post(f"/api/v1/namespace{path}", json={"action": "qos", "target": target})


def calls(server: Server) -> list[str]:
    """The simulator's log: one line per put/get/remove/mount."""
    log = Path(server.env_extra["HEADRACE_TAPE_SIMULATOR"]) / "calls.log"
    return [line.split(" ", 1)[1] for line in log.read_text().splitlines()] if log.exists() else []


def faults(server: Server, **faults: Any) -> None:
    """Inject failures into the simulator (see headrace.tape.simulator)."""
    base = Path(server.env_extra["HEADRACE_TAPE_SIMULATOR"])
    base.mkdir(parents=True, exist_ok=True)
    (base / "faults.json").write_text(json.dumps(faults))


def mkdir(api: httpx.Client, path: str, *, qos: str | None = None) -> None:
    parent, _, name = path.rpartition("/")
    r = api.post(f"/api/v1/namespace{parent or '/'}", json={"action": "mkdir", "name": name})
    assert r.is_success, r.text
    if qos is not None:
        r = set_qos(api, path, qos)
        assert r.is_success, r.text
