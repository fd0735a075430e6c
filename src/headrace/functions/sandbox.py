"""The function sandbox: where each action version's zygote and its workers run, and the limits on them.

A zygote runs under bubblewrap (Debian's `bubblewrap`) in its own PID, IPC, network, UTS (and, where the
kernel lets it, cgroup) namespaces, with a read-only view of only what Python needs (/usr, the interpreter's
prefix, the virtualenv, the headrace package), the action's code read-only at /action, a private /tmp and
an environment built from an allow-list. When the server is root, the zygote drops to an unprivileged uid
(a base + the owner's uid) before it reads its first message; otherwise bubblewrap's user namespace is used.
The network namespace is empty: an action that asks for storage access gets two UNIX sockets at
/run/headrace/ (door.sock, api.sock) that the invoker forwards to the door and the frontend.

Limits hold for the whole process tree through one cgroup per action pool (memory, pids, CPU): cgroup v1 or
v2, whichever is writable here, or only rlimits where neither is (`Limits.name` says which applied; the
activation record carries it). The process enters its cgroup before bubblewrap starts, so no process of
the sandbox is ever outside it.

`HEADRACE_SANDBOX=none` runs zygotes without bubblewrap (unsafe: functions then see what the server sees).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from headrace.functions.zygote import GID_ENV, UID_ENV
from headrace.tls import CA_PEM_ENV, extra_ca_pem

log = logging.getLogger("headrace.functions")

BUBBLEWRAP = "bubblewrap"
NONE = "none"
ACTION_DIR = "/action"
ZYGOTE_NS_PID = 2  # bubblewrap's init is 1 in the sandbox's PID namespace, the command it starts 2
SOCKET_DIR = "/run/headrace"
DOOR_SOCKET = "door.sock"
API_SOCKET = "api.sock"
INSTALL_HINT = (
    "The function sandbox needs bubblewrap: install it (Debian/Ubuntu: apt-get install bubblewrap), "
    "or set HEADRACE_SANDBOX=none to run functions unsandboxed (unsafe: they then see the server's files)."
)
# What the zygote is started with, of the server's environment (never the whole of it).
ENV_ALLOWED = ("LANG", "LANGUAGE", "TZ", "PYTHONHASHSEED")
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
# Puts the shell into each cgroup named before "--" (writing 0 moves the writer), then becomes the command:
# bubblewrap and everything it starts are born inside the pool's cgroup.
_ENTER = 'while [ "$1" != -- ]; do echo 0 > "$1" || exit 97; shift; done; shift; exec "$@"'


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be made here (its message says what to install or set)."""


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name) or ""
    try:
        return int(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from exc


@dataclass(frozen=True)
class SandboxSettings:
    #: "bubblewrap" (default) or "none" (unsafe).
    mode: str = BUBBLEWRAP
    #: The sandbox uid (and gid) of an action is this + its owner's uid (when the server runs as root).
    uid_base: int = 100_000
    #: A zygote must have loaded the action within max(timeout, 10 s), and never more than this.
    init_seconds: float = 60.0
    #: Processes and threads per worker (the pool's cgroup gets this times its workers, plus the zygote's).
    pids_per_worker: int = 64
    #: Size of the private /tmp (MB); what is written there counts against the memory limit as well.
    tmp_mb: int = 1024
    #: (namespace, host directory): bound read-write, at its own path, into that namespace's sandboxes (the
    #: operator's choice, for state a facility's functions keep outside storage: a catalogue, a cache).
    binds: tuple[tuple[str, str], ...] = ()
    #: Connections one action pool may hold open at once through each storage socket; more are closed as they
    #: are accepted (each costs the server file descriptors: without a bound, one function could use them all).
    connections: int = 64

    @classmethod
    def from_env(cls) -> SandboxSettings:
        mode = (os.environ.get("HEADRACE_SANDBOX") or BUBBLEWRAP).strip().lower()
        if mode not in (BUBBLEWRAP, NONE):
            raise ValueError(f"HEADRACE_SANDBOX is 'bubblewrap' or 'none', not {mode!r}")
        return cls(
            mode=mode,
            uid_base=_env_int("HEADRACE_SANDBOX_UID_BASE", 100_000),
            init_seconds=float(os.environ.get("HEADRACE_FN_INIT_SECONDS") or 60.0),
            pids_per_worker=_env_int("HEADRACE_SANDBOX_PIDS", 64),
            tmp_mb=_env_int("HEADRACE_SANDBOX_TMP_MB", 1024),
            binds=parse_binds(os.environ.get("HEADRACE_SANDBOX_BIND") or ""),
            connections=_env_int("HEADRACE_SANDBOX_CONNECTIONS", 64),
        )


def parse_binds(raw: str) -> tuple[tuple[str, str], ...]:
    """`NAMESPACE:/dir,NAMESPACE:/other` (HEADRACE_SANDBOX_BIND) as (namespace, absolute directory) pairs."""
    out: list[tuple[str, str]] = []
    for item in filter(None, (i.strip() for i in raw.split(","))):
        ns, sep, path = item.partition(":")
        if not sep or not ns or not os.path.isabs(path):
            raise ValueError(f"HEADRACE_SANDBOX_BIND entries are NAMESPACE:/absolute/dir, not {item!r}")
        out.append((ns, os.path.normpath(path)))
    return tuple(out)


# -- limits: cgroup v1, cgroup v2, rlimits only ---------------------------------------------------------------


class Group(Protocol):
    """One cgroup (in each hierarchy it needs) holding a pool's process tree."""

    def enter_files(self) -> list[str]: ...
    def set_memory(self, limit: int) -> None: ...
    def memory_usage(self) -> int: ...
    def set_pids(self, limit: int) -> None: ...
    def set_cpu(self, cores: float) -> None: ...
    def members(self) -> list[int]: ...
    def oom_kills(self) -> int: ...
    def remove(self) -> bool: ...


class Limits(Protocol):
    name: str

    def group(self, name: str) -> Group | None: ...
    def close(self) -> None: ...


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_pids(path: Path) -> list[int]:
    try:
        return [int(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per v1 controller, and "" for the v2 hierarchy."""
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, ctrls, path = line.split(":", 2)
            for c in ctrls.split(","):
                out[c] = path
    return out


def _make_base(parent: Path) -> Path:
    """headrace-<pid> under `parent`; stale ones of servers gone are removed on the way."""
    with contextlib.suppress(OSError):
        for old in parent.glob("headrace-*"):
            pid = old.name.removeprefix("headrace-")
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                for child in old.iterdir():
                    if child.is_dir():
                        with contextlib.suppress(OSError):
                            child.rmdir()
                with contextlib.suppress(OSError):
                    old.rmdir()
    base = parent / f"headrace-{os.getpid()}"
    base.mkdir(exist_ok=True)
    return base


class _V1Group:
    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    def enter_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def set_memory(self, limit: int) -> None:
        _write(self.dirs["memory"] / "memory.limit_in_bytes", str(limit))

    def memory_usage(self) -> int:
        try:
            return int((self.dirs["memory"] / "memory.usage_in_bytes").read_text())
        except (OSError, ValueError):
            return 0

    def set_pids(self, limit: int) -> None:
        _write(self.dirs["pids"] / "pids.max", str(limit))

    def set_cpu(self, cores: float) -> None:
        if "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", "100000")
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(int(cores * 100000)))

    def members(self) -> list[int]:
        return _read_pids(self.dirs["pids"] / "cgroup.procs")

    def oom_kills(self) -> int:
        try:
            for line in (self.dirs["memory"] / "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
            return int((self.dirs["memory"] / "memory.failcnt").read_text())
        except (OSError, ValueError):
            return 0

    def remove(self) -> bool:
        ok = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                ok = False
        return ok


class CgroupV1:
    """cgroup v1: one directory per pool in the memory, pids and (if writable) cpu hierarchies, under this
    server's own cgroup in each."""

    name = "cgroup-v1"

    def __init__(self) -> None:
        own = _own_cgroups()
        self.bases: dict[str, Path] = {}
        for ctrl in ("memory", "pids", "cpu"):
            mount = Path("/sys/fs/cgroup", ctrl)
            if ctrl not in own or not (mount / "cgroup.procs").exists():
                if ctrl == "cpu":
                    continue
                raise OSError(f"no cgroup v1 {ctrl} hierarchy")
            try:
                self.bases[ctrl] = _make_base(mount / own[ctrl].lstrip("/"))
            except OSError:
                if ctrl != "cpu":
                    raise
        self._n = 0

    def group(self, name: str) -> Group | None:
        self._n += 1
        dirs = {c: b / f"{self._n}-{name}"[:200] for c, b in self.bases.items()}
        for d in dirs.values():
            d.mkdir(exist_ok=True)
        return _V1Group(dirs)

    def close(self) -> None:
        for b in self.bases.values():
            with contextlib.suppress(OSError):
                b.rmdir()


class _V2Group:
    def __init__(self, path: Path, cpu: bool) -> None:
        self.path = path
        self.cpu = cpu

    def enter_files(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def set_memory(self, limit: int) -> None:
        _write(self.path / "memory.max", str(limit))
        with contextlib.suppress(OSError):
            _write(self.path / "memory.swap.max", "0")

    def memory_usage(self) -> int:
        try:
            return int((self.path / "memory.current").read_text())
        except (OSError, ValueError):
            return 0

    def set_pids(self, limit: int) -> None:
        _write(self.path / "pids.max", str(limit))

    def set_cpu(self, cores: float) -> None:
        if self.cpu:
            _write(self.path / "cpu.max", f"{int(cores * 100000)} 100000")

    def members(self) -> list[int]:
        return _read_pids(self.path / "cgroup.procs")

    def oom_kills(self) -> int:
        try:
            for line in (self.path / "memory.events").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> bool:
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True


class CgroupV2:
    """cgroup v2: one cgroup per pool under headrace-<pid> beside this server's own cgroup's processes. When
    the server's cgroup holds processes and cannot delegate controllers, they move into a leaf of it first
    (the "no internal processes" rule)."""

    name = "cgroup-v2"

    def __init__(self) -> None:
        root = Path("/sys/fs/cgroup")
        if not (root / "cgroup.controllers").exists():
            raise OSError("no cgroup v2 hierarchy")
        own = root / _own_cgroups().get("", "/").lstrip("/")
        available = set((own / "cgroup.controllers").read_text().split())
        if not {"memory", "pids"} <= available:
            raise OSError("the memory and pids controllers are not delegated to this cgroup")
        wanted = [c for c in ("memory", "pids", "cpu") if c in available]
        try:
            _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            leaf = own / "headrace-server"
            leaf.mkdir(exist_ok=True)
            for pid in _read_pids(own / "cgroup.procs"):
                with contextlib.suppress(OSError):
                    _write(leaf / "cgroup.procs", str(pid))
            _write(own / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        self.base = _make_base(own)
        _write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))
        self.cpu = "cpu" in wanted
        self._n = 0

    def group(self, name: str) -> Group | None:
        self._n += 1
        path = self.base / f"{self._n}-{name}"[:200]
        path.mkdir(exist_ok=True)
        return _V2Group(path, self.cpu)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.base.rmdir()


class RlimitOnly:
    """Neither cgroup hierarchy is writable: per-process rlimits only (the zygote's import and each worker
    get an address-space limit); pids and CPU are not limited."""

    name = "rlimit"

    def group(self, name: str) -> Group | None:
        return None

    def close(self) -> None:
        pass


def detect_limits() -> Limits:
    """cgroup v2 where this host runs it with the controllers delegated, else v1, else rlimits only."""
    for kind in (CgroupV2, CgroupV1):
        try:
            return kind()
        except (OSError, ValueError) as exc:
            log.debug("sandbox: %s not usable: %s", kind.name, exc)
    return RlimitOnly()


# -- processes ----------------------------------------------------------------------------------------------


def _status(pid: int) -> tuple[int, int, int] | None:
    """(parent pid, pid in its own namespace, pid-namespace inode) of a host pid; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        ns = os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None
    ppid, nspid = 0, pid
    for line in text.splitlines():
        if line.startswith("PPid:"):
            ppid = int(line.split()[1])
        elif line.startswith("NSpid:"):
            nspid = int(line.split()[-1])
    return ppid, nspid, ns


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# -- one pool's sandbox ----------------------------------------------------------------------------------


class _Forwarder:
    """A UNIX socket whose connections are forwarded, byte for byte, to one TCP address; at most `limit` at
    once (a connection past it is closed before anything is read from it)."""

    def __init__(self, path: Path, host: str, port: int, limit: int) -> None:
        self.path = path
        self.host = host
        self.port = port
        self.limit = limit
        self.server: asyncio.AbstractServer | None = None
        self.conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o666)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.conns) >= self.limit:
            writer.close()
            return
        self.conns.add(task)
        try:
            try:
                up_r, up_w = await asyncio.open_connection(self.host, self.port)
            except OSError:
                writer.close()
                return

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await src.read(1 << 16):
                        dst.write(data)
                        await dst.drain()

            # Either side's end ends the connection (HTTP clients do not half-close): a function that closes its
            # end frees its slot at once, not when the server's keep-alive gives up on the idle upstream.
            pipes = [asyncio.ensure_future(pipe(reader, up_w)), asyncio.ensure_future(pipe(up_r, writer))]
            try:
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for p in pipes:
                    p.cancel()
                await asyncio.gather(*pipes, return_exceptions=True)
                up_w.close()
                writer.close()
        finally:
            self.conns.discard(task)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.conns):
            t.cancel()
        await asyncio.gather(*self.conns, return_exceptions=True)


def _split_url(url: str) -> tuple[str, int]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    return u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)


@dataclass
class Jail:
    """What one action pool runs in: the command, its environment, its cgroup, its storage sockets."""

    argv: list[str]
    env: dict[str, str]
    code_dir: str  # the action's code as the zygote sees it
    group: Group | None
    annotation: dict[str, Any]
    isolated: bool  # a PID namespace of its own
    socket_dir: Path | None = None
    max_connections: int = 64  # per storage socket, at once
    forwarders: list[_Forwarder] = field(default_factory=list)
    proc_pid: int = 0
    _ns: int | None = None

    async def start_sockets(self, door_url: str, api_url: str) -> None:
        assert self.socket_dir is not None
        for name, url in ((DOOR_SOCKET, door_url), (API_SOCKET, api_url)):
            f = _Forwarder(self.socket_dir / name, *_split_url(url), self.max_connections)
            await f.start()
            self.forwarders.append(f)

    def _candidates(self) -> list[int]:
        if self.group is not None:
            return self.group.members()
        return _all_pids()

    def _tree(self) -> dict[int, tuple[int, int]]:
        """host pid -> (parent host pid, namespace pid) for every process of this sandbox."""
        procs: dict[int, tuple[int, int, int]] = {}
        for pid in self._candidates():
            st = _status(pid)
            if st is not None:
                procs[pid] = st
        if self.group is not None:
            return {p: (pp, nsp) for p, (pp, nsp, _) in procs.items()}
        # no cgroup: the descendants of the process we started
        children: dict[int, list[int]] = {}
        for p, (pp, _, _) in procs.items():
            children.setdefault(pp, []).append(p)
        out: dict[int, tuple[int, int]] = {}
        todo = [self.proc_pid]
        while todo:
            p = todo.pop()
            if p in procs and p not in out:
                out[p] = (procs[p][0], procs[p][1])
                todo.extend(children.get(p, []))
        return out

    def host_pid(self, ns_pid: int) -> int | None:
        """The host's pid of a process the sandbox knows as `ns_pid` (None if it is gone)."""
        return next((p for p, (_, nsp) in self._tree().items() if nsp == ns_pid and p != self.proc_pid), None)

    def kill_worker(self, ns_pid: int, keep: Iterable[int]) -> None:
        """SIGKILL one worker (by the pid the zygote reported), its descendants and, in a PID namespace,
        the processes orphaned in it (reparented to the namespace's init): everything but bubblewrap, the
        zygote and the workers in `keep` with their descendants."""
        for _ in range(20):
            tree = self._tree()
            by_ns = {nsp: p for p, (_, nsp) in tree.items()}
            target = by_ns.get(ns_pid)
            children: dict[int, list[int]] = {}
            for p, (pp, _) in tree.items():
                children.setdefault(pp, []).append(p)

            def below(roots: Iterable[int], children: dict[int, list[int]] = children) -> set[int]:
                found: set[int] = set()
                todo = list(roots)
                while todo:
                    p = todo.pop()
                    if p not in found:
                        found.add(p)
                        todo.extend(children.get(p, []))
                return found

            if self.isolated:
                inits = {p for p, (pp, _) in tree.items() if pp == self.proc_pid}
                kept = {self.proc_pid} | inits
                if ZYGOTE_NS_PID in by_ns:
                    kept.add(by_ns[ZYGOTE_NS_PID])
                kept |= below(by_ns[k] for k in keep if k in by_ns and by_ns[k] != target)
                doomed = set(tree) - kept
            else:  # no namespace to hold orphans: the worker's own descendants only
                doomed = below([target]) if target is not None else set()
            if not doomed:
                return
            _kill(doomed)
            time.sleep(0.005)

    def kill_all(self) -> None:
        """SIGKILL every process of the sandbox (with a PID namespace, its init's death ends them all)."""
        for _ in range(50):
            tree = self._tree()
            if not tree:
                return
            _kill(tree)
            time.sleep(0.01)

    async def close(self) -> None:
        await asyncio.to_thread(self.kill_all)
        for f in self.forwarders:
            await f.close()
        self.forwarders.clear()
        if self.group is not None:
            group = self.group
            for _ in range(100):
                if group.remove():
                    break
                await asyncio.sleep(0.02)
        if self.socket_dir is not None:
            shutil.rmtree(self.socket_dir, ignore_errors=True)


class Sandbox:
    """Makes a Jail per action pool; one per Runner."""

    def __init__(self, settings: SandboxSettings | None = None, *, forbidden: Iterable[Path] = ()) -> None:
        self.settings = settings or SandboxSettings.from_env()
        self.forbidden = [Path(p).resolve() for p in forbidden]
        self._limits: Limits | None = None
        self._python: list[str] | None = None
        self.root = os.geteuid() == 0

    @property
    def limits(self) -> Limits:
        if self._limits is None:
            self._limits = detect_limits()
        return self._limits

    def close(self) -> None:
        if self._limits is not None:
            self._limits.close()

    def annotation(self) -> dict[str, Any]:
        """How actions run here: {"isolation": "bubblewrap"|"none", "limits": "cgroup-v1"|"cgroup-v2"|"rlimit"}."""
        return {"isolation": self.settings.mode, "limits": self.limits.name}

    def _python_paths(self) -> list[str]:
        """The directories the interpreter needs, outside /usr: prefixes, virtualenv, headrace's source."""
        if self._python is not None:
            return self._python
        import headrace

        source = Path(headrace.__file__).resolve().parent.parent
        must = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), Path(sys.base_exec_prefix), source]
        # what `site` adds (.pth entries such as an editable install's source); not the server's own script
        # directory or working directory (sys.path[0]) nor its PYTHONPATH, which the zygote does not get
        skip = {sys.path[0] if sys.path else "", os.getcwd(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)}
        maybe = [Path(p) for p in sys.path if p and os.path.isabs(p) and p not in skip]
        chosen: list[Path] = []
        for i, p in enumerate(must + maybe):
            if not p.exists():
                continue
            real = p.resolve()
            bad = next((f for f in self.forbidden if real == f or f in real.parents or real in f.parents), None)
            if bad is not None:
                if i < len(must):
                    raise SandboxUnavailable(
                        f"The function sandbox cannot show Python ({real}) without showing {bad}: "
                        "keep the data directory and the CLI config out of the interpreter's and headrace's "
                        "directories."
                    )
                continue
            if real == Path("/usr") or Path("/usr") in real.parents or Path("/") == real:
                continue
            if any(c == real or c in real.parents for c in chosen):
                continue
            chosen = [c for c in chosen if real not in c.parents] + [real]
        self._python = [str(c) for c in chosen]
        return self._python

    def _environment(self) -> dict[str, str]:
        import headrace

        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": str(Path(headrace.__file__).resolve().parent.parent),
        }
        for k, v in os.environ.items():
            if k in ENV_ALLOWED or k.startswith("LC_"):
                env[k] = v
        for var in THREAD_VARS:  # workers are forked, and forked thread pools deadlock
            env[var] = os.environ.get(var) or "1"
        ca = extra_ca_pem()  # the CAs of a door/frontend with a private certificate, as text: no file to show
        if ca:
            env[CA_PEM_ENV] = ca
        return env

    def _binds(self, namespace: str) -> list[str]:
        """The operator's read-write directories for `namespace` (never one showing what must stay hidden)."""
        out = []
        for ns, path in self.settings.binds:
            if ns != namespace:
                continue
            real = Path(path).resolve()
            if not real.is_dir():
                raise SandboxUnavailable(f"HEADRACE_SANDBOX_BIND names {path}, which is not a directory")
            if any(real == f or f in real.parents or real in f.parents for f in self.forbidden):
                raise SandboxUnavailable(
                    f"HEADRACE_SANDBOX_BIND may not show {path} (the data directory or CLI config)"
                )
            out.append(str(real))
        return out

    def prepare(self, *, key: str, code_dir: Path, owner_uid: int, storage: bool) -> Jail:
        """The jail for one action version (the caller starts it with its control fd)."""
        s = self.settings
        limits = self.limits
        group = limits.group(key.replace("/", "_").replace("@", "_"))
        env = self._environment()
        socket_dir: Path | None = None
        if storage:
            socket_dir = Path(tempfile.mkdtemp(prefix="headrace-sb-"))
            os.chmod(socket_dir, 0o755)
        annotation: dict[str, Any] = {"isolation": s.mode, "limits": limits.name}
        python = [sys.executable, "-m", "headrace.functions.zygote"]
        if s.mode == NONE:
            argv = python
            seen_code = str(code_dir)
            if socket_dir is not None:
                env["HEADRACE_SOCKET_DIR"] = str(socket_dir)
            isolated = False
        else:
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                if group is not None:
                    group.remove()
                raise SandboxUnavailable(INSTALL_HINT)
            binds = self._binds(key.split("/", 1)[0])
            argv = [bwrap, *self._bwrap_args(code_dir, socket_dir, binds), "--", *python]
            seen_code = ACTION_DIR
            if socket_dir is not None:
                env["HEADRACE_SOCKET_DIR"] = SOCKET_DIR
            if self.root:
                uid = s.uid_base + max(0, owner_uid)
                env[UID_ENV] = env[GID_ENV] = str(uid)
                annotation["uid"] = uid
            isolated = True
        if group is not None:
            argv = ["/bin/sh", "-c", _ENTER, "sh", *group.enter_files(), "--", *argv]
        return Jail(argv, env, seen_code, group, annotation, isolated, socket_dir, s.connections)

    def _bwrap_args(self, code_dir: Path, socket_dir: Path | None, binds: list[str]) -> list[str]:
        a = ["--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.root:
            a.append("--unshare-user")
        a += ["--die-with-parent", "--new-session", "--hostname", "headrace-fn"]
        a += ["--ro-bind", "/usr", "/usr"]
        # the private /tmp first: a directory bound below (a virtualenv, an operator's bind) may lie under /tmp
        a += ["--proc", "/proc", "--dev", "/dev"]
        a += ["--size", str(self.settings.tmp_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp"]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            top = Path("/", name)
            if top.is_symlink():
                a += ["--symlink", os.readlink(top), str(top)]
            elif top.is_dir():
                a += ["--ro-bind", str(top), str(top)]
        for etc in ("/etc/ld.so.cache", "/etc/ssl/certs", "/etc/localtime", "/etc/ca-certificates"):
            a += ["--ro-bind-try", etc, etc]
        made: set[Path] = set()
        for how, paths in (("--ro-bind", self._python_paths()), ("--bind", binds)):
            for p in paths:
                for parent in reversed(Path(p).parents):  # bubblewrap would make them 0700: the uid must pass
                    if parent != Path("/") and parent not in made:
                        made.add(parent)
                        a += ["--perms", "0755", "--dir", str(parent)]
                a += [how, p, p]
        a += ["--ro-bind", str(code_dir), ACTION_DIR]
        if socket_dir is not None:
            a += ["--perms", "0755", "--dir", str(Path(SOCKET_DIR).parent), "--ro-bind", str(socket_dir), SOCKET_DIR]
        a += ["--chdir", "/tmp"]
        return a
