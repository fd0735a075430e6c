"""dCache's HSM script interface: how a pool reaches a tape system.

The facility's executable is started with

    put <pnfsid> <file> -si=<storage info> [-key=value ...]        prints the copy's URI; exit 0 = stored
    get <pnfsid> <file> -si=<storage info> -uri=<uri> [-key=value ...]   restores the copy into <file>
    remove -uri=<uri> [-key=value ...]                             removes the copy

A non-zero exit is a failure; as in dCache, 30-39 mean "try again later" and 41-43 a local disk problem
(no space, read error, write error). Anything the script writes to stderr is the error's message.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class HsmError(Exception):
    """The HSM script failed: `rc` its exit code (None: it could not be started or timed out)."""

    def __init__(self, op: str, rc: int | None, message: str) -> None:
        super().__init__(f"HSM {op} failed (rc={rc}): {message}" if rc is not None else f"HSM {op}: {message}")
        self.op = op
        self.rc = rc
        self.message = message

    @property
    def transient(self) -> bool:
        """dCache's "retry later" codes, or a script that did not answer."""
        return self.rc is None or 30 <= self.rc < 40


def storage_info(info: Mapping[str, object]) -> str:
    """dCache's `-si=` value: `key=value;` pairs."""
    return "".join(f"{k}={v};" for k, v in info.items() if v is not None)


#: The shipped tape simulator (`headrace.tape.simulator`); give it `-hsmBase=DIR` among the options.
SIMULATOR = (sys.executable, "-m", "headrace.tape.simulator")


def _keys(options: Mapping[str, object]) -> list[str]:
    return [f"-{k}={v}" for k, v in options.items()]


@dataclass(frozen=True)
class HsmScript:
    """One HSM: `command` is the executable (and any fixed arguments it needs before dCache's); `options` are
    passed to every call as `-key=value`, after dCache's arguments."""

    command: Sequence[str]
    hsm_type: str = "osm"
    instance: str = "headrace"
    options: Mapping[str, object] = field(default_factory=dict)
    timeout: float = 3600.0

    @classmethod
    def parse(cls, command: str, **kw: object) -> HsmScript:
        """From a shell-like string (`HEADRACE_HSM_COMMAND`)."""
        argv = shlex.split(command)
        if not argv:
            raise ValueError("the HSM command is empty")
        return cls(argv, **kw)  # type: ignore[arg-type]

    def _argv(self, op: str, args: Sequence[str], extra: Mapping[str, object]) -> list[str]:
        keys = {"hsmType": self.hsm_type, "hsmInstance": self.instance, **self.options, **extra}
        return [*self.command, op, *args, *_keys(keys)]

    async def _run(self, op: str, argv: list[str]) -> str:
        # Started from a thread with subprocess (vfork + exec), not the event loop's own spawn: uvloop forks the
        # whole server to start a child (measured: 17 ms per call with 400 MB resident, the loop blocked
        # throughout, most of the server's CPU in a bulk stage; bench/results/profiles/tape-bulk-stage-*.svg).
        try:
            proc = await asyncio.to_thread(
                subprocess.Popen,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
                close_fds=True,
            )
        except OSError as exc:
            raise HsmError(op, None, f"cannot start {argv[0]}: {exc}") from exc
        try:
            out, err = await asyncio.to_thread(proc.communicate, None, self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.communicate)
            raise HsmError(op, None, f"no answer within {self.timeout:g} s") from None
        except BaseException:  # cancelled: the script goes too
            proc.kill()
            raise
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            raise HsmError(op, proc.returncode, message[-1] if message else "no message")
        return str(out.decode(errors="replace"))

    async def put(self, pnfsid: str, path: str, info: Mapping[str, object]) -> str:
        """Copy the file at `path` to tape; the copy's URI."""
        out = await self._run("put", self._argv("put", [pnfsid, path], {"si": storage_info(info)}))
        uris = [line.strip() for line in out.splitlines() if "://" in line]
        if not uris:
            raise HsmError("put", 0, f"the script printed no URI: {out.strip()[:200]!r}")
        return uris[-1]

    async def get(self, pnfsid: str, path: str, uri: str, info: Mapping[str, object]) -> None:
        """Restore the copy `uri` into a new file at `path`."""
        await self._run("get", self._argv("get", [pnfsid, path], {"si": storage_info(info), "uri": uri}))

    async def remove(self, uri: str) -> None:
        """Remove the copy `uri` from tape."""
        await self._run("remove", self._argv("remove", [], {"uri": uri}))
