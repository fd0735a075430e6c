"""Helpers for the interop suites: running real client programs as subprocesses with timeouts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import pytest


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | bytes | None = None,
    timeout: float = 120,
    check: bool = True,
    cwd: str | None = None,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run a client program; on failure (check=True) the assertion shows its whole output.
    With text=False, stdout stays bytes (stderr is always text)."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(list(cmd), env=env, input=data, capture_output=True, timeout=timeout, cwd=cwd)
    stdout: Any = proc.stdout.decode(errors="replace") if text else proc.stdout
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, proc.stderr.decode(errors="replace"))
    if check:
        assert out.returncode == 0, f"{cmd[0]} exited {out.returncode}\nstdout:\n{out.stdout!r}\nstderr:\n{out.stderr}"
    return out


def require(program: str) -> str:
    """The program's path, or skip (scripts/install-test-deps.sh installs them all)."""
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (scripts/install-test-deps.sh installs it)")
    return path


def api_path(path: str) -> str:
    """The frontend namespace-API URL path of a namespace path."""
    return "/api/v1/namespace" + quote(path, safe="/")
