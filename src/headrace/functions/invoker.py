"""The invoker: warm worker processes per action, forked from a zygote that has already imported the
action, and one activation at a time through each. The zygote and its workers run in a sandbox
(functions/sandbox.py) whose cgroup limits memory, pids and CPU of the whole process tree. Limits are
enforced here: the zygote's import (its own time and memory limit), the timeout (the worker, its descendants
and processes orphaned in the sandbox are killed, and the worker replaced), memory (the pool's cgroup, and an
address-space rlimit set in each worker), log size (cut with a warning line) and result size.

`ActionPool.run(request)` is the whole interface the controller needs; `warm(n)`, `shrink(n)` and `size` are
what the autoscaler uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from headrace.functions import wire
from headrace.functions.sandbox import Jail, Sandbox, SandboxUnavailable
from headrace.functions.zygote import (
    APPLICATION_ERROR,
    CONTROL_FD_ENV,
    DEVELOPER_ERROR,
    INTERNAL_ERROR,
    TAG,
    TAG_END,
)

log = logging.getLogger("headrace.functions")

TRUNCATED = "Logs were truncated because the total bytes size exceeds the limit of {} bytes."


class InitError(Exception):
    """The action's code could not be loaded (its message is what the activation reports)."""


@dataclass
class Outcome:
    status: int  # 0 success, 1 application error, 2 developer error, 3 internal error
    result: dict[str, Any]
    logs: list[str]
    start: int  # ms since the epoch
    end: int
    cold: bool = False
    init_ms: float | None = None
    worker: int = 0
    sandbox: dict[str, Any] | None = None  # how the action was isolated and limited (the record's annotation)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LogBuffer:
    """One activation's log lines, `<ISO time> stdout|stderr: text`, cut at `limit` bytes with a warning."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lines: list[str] = []
        self.size = 0
        self.truncated = False

    def add(self, stream: str, text: str) -> None:
        if self.truncated:
            return
        if self.size + len(text) > self.limit:
            self.truncated = True
            self.lines.append(f"{_now_iso()} stderr: {TRUNCATED.format(self.limit)}")
            return
        self.size += len(text)
        self.lines.append(f"{_now_iso()} {stream}: {text}")


class _InFlight:
    """One activation running in a worker: its log lines, whether each pipe's sentinel has come, and the
    worker's answer."""

    __slots__ = ("_all_ended", "answer", "ended", "logs")

    def __init__(self, log_limit: int) -> None:
        self.logs = LogBuffer(log_limit)
        self.ended: set[str] = set()  # "stdout", "stderr": the pipes whose sentinel has been read
        self.answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._all_ended: asyncio.Future[None] | None = None

    def end(self, stream: str) -> None:
        self.ended.add(stream)
        if len(self.ended) == 2 and self._all_ended is not None and not self._all_ended.done():
            self._all_ended.set_result(None)

    async def all_ended(self) -> None:
        """Until both pipes' sentinels have been read (at once, as a rule: they are written before the answer)."""
        if len(self.ended) < 2:
            self._all_ended = asyncio.get_running_loop().create_future()
            await self._all_ended


class _Stream(asyncio.Protocol):
    """Reads one of a worker's output pipes for the worker's whole life, handing each line to the activation
    it belongs to and noting each sentinel (the end of one activation's output). With one activation at a
    time, lines are plain; a worker running several at once tags each line with its activation's id. Lines
    are handed on as the loop reads them (a protocol, not a task woken per read): by the time the worker's
    answer, written after the sentinels, has been read, its logs are complete as a rule."""

    def __init__(self, name: str, fd: int, worker: Worker) -> None:
        self.name = name
        self.worker = worker
        self.held_blank = False
        self.pending = b""
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task = asyncio.create_task(self._open(fd))

    async def _open(self, fd: int) -> None:
        pipe = os.fdopen(fd, "rb", buffering=0)
        try:
            transport, _ = await asyncio.get_running_loop().connect_read_pipe(lambda: self, pipe)
        except BaseException:
            pipe.close()
            self._closed()
            raise
        try:
            await asyncio.shield(self.closed)
        finally:
            transport.close()

    def data_received(self, data: bytes) -> None:
        *lines, self.pending = (self.pending + data).split(b"\n") if self.pending else data.split(b"\n")
        for raw in lines:
            self._line(raw.decode("utf-8", "replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:
            self._line(self.pending.decode("utf-8", "replace"))
            self.pending = b""
        self._closed()

    def _closed(self) -> None:
        for act in self.worker.inflight.values():
            act.end(self.name)
        if not self.closed.done():
            self.closed.set_result(None)

    def _line(self, text: str) -> None:
        inflight = self.worker.inflight
        if text.startswith(TAG):
            aid, _, text = text[1:].partition(TAG_END)
            act = inflight.get(aid)
            if act is not None:
                if text == wire.SENTINEL:
                    act.end(self.name)
                else:
                    act.logs.add(self.name, text)
            return
        # the worker writes "\n" + SENTINEL + "\n": a blank line just before the sentinel is not output
        blank, self.held_blank = self.held_blank, False
        if text == wire.SENTINEL:
            for act in inflight.values():
                act.end(self.name)
            return
        for act in inflight.values():  # one, unless untagged output came from a worker running several
            if blank:
                act.logs.add(self.name, "")
            if text == "":
                self.held_blank = True
            else:
                act.logs.add(self.name, text)


class _Answers(asyncio.Protocol):
    """The worker's end of its control socket: each length-prefixed answer goes to the activation it names
    as it is read (wire.py's framing)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is one, without the base class)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= wire.HEADER.size:
            (size,) = wire.HEADER.unpack_from(buf)
            if size > wire.MAX_MESSAGE:  # not a worker of ours: it is dropped (its activations fail)
                if self.transport is not None:
                    self.transport.close()
                return
            end = wire.HEADER.size + size
            if len(buf) < end:
                return
            body = bytes(buf[wire.HEADER.size : end])
            del buf[:end]
            try:
                answer = wire.decode(body)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):  # not a worker of ours either
                if self.transport is not None:
                    self.transport.close()
                return
            answer[SIZE] = size
            act = self.worker.inflight.get(str(answer.get("id")))
            if act is not None and not act.answer.done():
                act.answer.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.dead = True
        for act in self.worker.inflight.values():
            if not act.answer.done():
                act.answer.set_exception(ConnectionError("the worker ended"))


#: Where Worker.run's answer notes its length on the wire (the result's size, at most).
SIZE = "_size"


def _expire(answer: asyncio.Future[dict[str, Any]]) -> None:
    if not answer.done():
        answer.set_exception(TimeoutError())


class Worker:
    def __init__(self, pid: int, ctl: socket.socket, out_fd: int, err_fd: int, zygote: Zygote) -> None:
        self.pid = pid
        self.zygote = zygote
        self.ctl = ctl
        self.transport: asyncio.Transport | None = None
        self.inflight: dict[str, _InFlight] = {}
        self.out = _Stream("stdout", out_fd, self)
        self.err = _Stream("stderr", err_fd, self)
        self.exit: dict[str, Any] | None = None
        self.exited = asyncio.Event()
        self.last_used = time.monotonic()
        self.dead = False

    @property
    def load(self) -> int:
        return len(self.inflight)

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Answers(self), sock=self.ctl)
        self.transport = transport

    async def run(self, request: dict[str, Any], timeout: float, log_limit: int) -> tuple[dict[str, Any], list[str]]:
        """Run one activation; the worker's answer ({"status", "result"}, and under SIZE its length on the
        wire) and its log lines."""
        assert self.transport is not None
        aid = str(request["id"])
        act = self.inflight[aid] = _InFlight(log_limit)
        timer = asyncio.get_running_loop().call_later(timeout, _expire, act.answer)
        try:
            if self.transport.is_closing():
                raise ConnectionError("the worker ended")
            self.transport.write(wire.encode(request))
            answer = await act.answer
            timer.cancel()
            if len(act.ended) < 2:
                # the answer follows the sentinels on the pipes; wait a moment for the last lines to be read
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(act.all_ended(), 2.0)
        except TimeoutError:
            self.kill()
            answer = {
                "status": DEVELOPER_ERROR,
                "result": {"error": f"The action exceeded its time limits of {int(timeout * 1000)} milliseconds."},
            }
            await self._drain_after_death()
        except (ConnectionError, OSError):
            self.dead = True
            await self._drain_after_death()
            answer = {"status": DEVELOPER_ERROR, "result": {"error": self._death()}}
        finally:
            timer.cancel()
            self.inflight.pop(aid, None)
            self.last_used = time.monotonic()
        act.answer.cancel()
        return answer, act.logs.lines

    async def _drain_after_death(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 2.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(self.out.closed, self.err.closed, return_exceptions=True), 2.0)

    def _death(self) -> str:
        e = self.exit or {}
        if "signal" in e:
            name = signal.Signals(e["signal"]).name if e["signal"] in signal.Signals._value2member_map_ else e["signal"]
            if e["signal"] == signal.SIGKILL:
                return f"The action's process was killed ({name}); it may have run out of memory."
            return f"The action's process was killed by {name}."
        if "code" in e:
            return f"The action's process exited with code {e['code']} before answering."
        return "The action's process ended before answering."

    def kill(self) -> None:
        """SIGKILL the worker and every process it started (orphans in the sandbox included)."""
        if not self.dead:
            self.dead = True
            self.zygote.kill_worker(self.pid)

    def close(self) -> None:
        """Let the worker end by itself (it exits when its control socket closes)."""
        self.dead = True
        if self.transport is not None:
            self.transport.close()
        else:
            self.ctl.close()


class Zygote:
    """The process that has loaded one action version and forks its workers."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket, init_ms: float, jail: Jail) -> None:
        self.proc = proc
        self.sock = sock
        self.init_ms = init_ms
        self.jail = jail
        self.workers: dict[int, Worker] = {}
        self._forks: dict[int, asyncio.Future[int]] = {}
        self._tag = 0
        self.task = asyncio.create_task(self._listen())

    @classmethod
    async def start(cls, spec: ActionSpec, sandbox: Sandbox) -> Zygote:
        """Start the zygote of `spec` in its sandbox and have it load the action: within the import time
        limit and, where a cgroup applies, the action's memory limit (raised to cover its workers after)."""
        jail = sandbox.prepare(key=spec.key, code_dir=spec.code_dir, owner_uid=spec.owner_uid, storage=spec.storage)
        mb = 1024 * 1024
        workers = max(1, spec.max_workers)
        try:
            if jail.group is not None:
                jail.group.set_memory(spec.memory_mb * mb)
                jail.group.set_pids(sandbox.settings.pids_per_worker * (workers + 1))
                jail.group.set_cpu(min(os.cpu_count() or 1, workers))
            if jail.socket_dir is not None:
                await jail.start_sockets(spec.door_url, spec.api_url)
        except BaseException:
            await jail.close()
            raise
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        environ = {**jail.env, **spec.env, CONTROL_FD_ENV: str(child.fileno())}
        try:
            proc = await asyncio.create_subprocess_exec(*jail.argv, pass_fds=(child.fileno(),), env=environ)
        except BaseException:
            parent.close()
            await jail.close()
            raise
        finally:
            child.close()
        jail.proc_pid = proc.pid
        parent.setblocking(False)
        loop = asyncio.get_running_loop()
        first: dict[str, Any] = {"dir": jail.code_dir, "main": spec.main}
        if jail.group is None:
            first["importMemory"] = spec.memory_mb * mb
        limit = min(sandbox.settings.init_seconds, max(spec.timeout_ms / 1000, 10.0))
        error = ""
        try:
            await loop.sock_sendall(parent, json.dumps(first).encode())
            reply = json.loads(await asyncio.wait_for(loop.sock_recv(parent, 65536), limit) or b'{"ok": false}')
        except TimeoutError:
            reply = {"ok": False}
            error = f"Initialization has failed: the action did not load within {limit:g} seconds."
        except BaseException:
            parent.close()
            await jail.close()
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if not reply.get("ok"):
            parent.close()
            if not error and jail.group is not None and jail.group.oom_kills():
                error = (
                    f"Initialization has failed: the action exceeded its memory limit of {spec.memory_mb} MB "
                    "while loading."
                )
            await jail.close()
            await proc.wait()
            raise InitError(error or reply.get("error") or "Initialization has failed: the zygote ended")
        if jail.group is not None:  # room for the workers now: each gets the action's memory limit
            per_worker = spec.memory_mb * mb * max(1, spec.concurrency)
            jail.group.set_memory(jail.group.memory_usage() + per_worker * workers + 16 * mb)
        return cls(proc, parent, float(reply["initMs"]), jail)

    def kill_worker(self, pid: int) -> None:
        keep = [p for p, w in self.workers.items() if p != pid and not w.dead]
        self.jail.kill_worker(pid, keep)

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                msg = await loop.sock_recv(self.sock, 65536)
            except OSError:
                msg = b""
            if not msg:
                for w in self.workers.values():
                    w.exited.set()
                for f in self._forks.values():
                    if not f.done():
                        f.set_exception(RuntimeError("the zygote ended"))
                return
            report = json.loads(msg)
            if "forked" in report:
                fut = self._forks.pop(int(report["tag"]), None)
                if fut is not None and not fut.done():
                    fut.set_result(int(report["forked"]))
            elif "exited" in report:
                gone: Worker | None = self.workers.pop(int(report["exited"]), None)
                if gone is not None:
                    w = gone
                    w.exit = report
                    w.dead = True
                    w.exited.set()

    async def fork(self, limits: dict[str, Any]) -> Worker:
        ctl_parent, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self._tag += 1
        tag = self._tag
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks[tag] = fut
        try:
            message = json.dumps({"op": "fork", "tag": tag, "limits": limits}).encode()
            socket.send_fds(self.sock, [message], [ctl_child.fileno(), out_w, err_w])
        finally:
            ctl_child.close()
            os.close(out_w)
            os.close(err_w)
        pid = await asyncio.wait_for(fut, 10)
        w = Worker(pid, ctl_parent, out_r, err_r, self)
        self.workers[pid] = w
        await w.connect()
        return w

    async def close(self) -> None:
        for w in list(self.workers.values()):
            w.close()
        # shutdown() first: under uvloop, close() alone does not end the connection while _listen's
        # sock_recv is pending, and the zygote would wait for EOF until killed 5 s later
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        await self.jail.close()  # whatever the action left running ends with it
        self.task.cancel()


@dataclass
class ActionSpec:
    """What the invoker needs of one action version."""

    key: str  # "<namespace>/<name>@<version>"
    code_dir: Path
    main: str = "main"
    timeout_ms: int = 60_000
    memory_mb: int = 256
    logs_mb: int = 10
    result_mb: int = 1
    concurrency: int = 1  # activations one worker runs at once
    env: dict[str, str] = field(default_factory=dict)
    max_workers: int = 4  # the most workers this pool may have (maxScale within the server's cap)
    owner_uid: int = -1  # the action's owner (its sandbox's uid is derived from it)
    storage: bool = False  # whether the sandbox gets the door and frontend sockets
    door_url: str = ""
    api_url: str = ""


_default_sandbox: Sandbox | None = None


def default_sandbox() -> Sandbox:
    """The sandbox of pools made without one (configured by the environment)."""
    global _default_sandbox
    if _default_sandbox is None:
        _default_sandbox = Sandbox()
    return _default_sandbox


class ActionPool:
    """The warm workers of one action version. Each runs up to `concurrency` activations at once; a new
    activation goes to the busiest worker with room (packing, so that idle ones can be stopped), else to
    a worker forked for it."""

    def __init__(self, spec: ActionSpec, sandbox: Sandbox | None = None) -> None:
        self.spec = spec
        self.sandbox = sandbox or default_sandbox()
        self.zygote: Zygote | None = None
        self.workers: list[Worker] = []
        self.starting = 0
        self._zygote_lock = asyncio.Lock()
        self._forking: list[tuple[asyncio.Future[Worker], list[int]]] = []

    @property
    def size(self) -> int:
        return len(self.workers) + self.starting

    @property
    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.load == 0]

    @property
    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.load > 0]

    async def _ensure_zygote(self) -> Zygote:
        async with self._zygote_lock:
            if self.zygote is None or self.zygote.proc.returncode is not None:
                if self.zygote is not None:
                    await self.zygote.close()
                self.zygote = None
                self.zygote = await Zygote.start(self.spec, self.sandbox)
            return self.zygote

    async def _fork(self) -> Worker:
        self.starting += 1
        try:
            zygote = await self._ensure_zygote()
            w = await zygote.fork({"memory": self.spec.memory_mb, "concurrency": self.spec.concurrency})
        finally:
            self.starting -= 1
        self.workers.append(w)
        return w

    async def _join_or_fork(self) -> Worker:
        """A worker being forked that still has room (reserving a place in it), or a new one."""
        for joinable, taken in self._forking:
            if taken[0] < self.spec.concurrency:
                taken[0] += 1
                return await asyncio.shield(joinable)
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        entry = (fut, [1])
        self._forking.append(entry)
        try:
            w = await self._fork()
            fut.set_result(w)
            return w
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: joiners get it from their own await
            raise
        finally:
            self._forking.remove(entry)

    async def warm(self, n: int) -> None:
        """Have at least `n` workers (never more than the pool's cap)."""
        while self.size < min(n, self.spec.max_workers):
            await self._fork()

    def shrink(self, n: int) -> int:
        """Stop idle workers, least recently used first, until at most `n` remain; how many stopped."""
        stopped = 0
        for w in sorted(self.idle, key=lambda w: w.last_used):
            if self.size <= n:
                break
            self.workers.remove(w)
            w.close()
            stopped += 1
        return stopped

    def _available(self) -> Worker | None:
        self.workers = [w for w in self.workers if not w.dead]
        room = [w for w in self.workers if w.load < self.spec.concurrency]
        return max(room, key=lambda w: (w.load, w.last_used)) if room else None

    async def run(self, request: dict[str, Any]) -> Outcome:
        start = int(time.time() * 1000)
        cold = False
        init_ms: float | None = None
        w = self._available()
        if w is None:
            cold = True
            fork_start = time.perf_counter()
            try:
                w = await self._join_or_fork()
            except (InitError, SandboxUnavailable) as exc:
                end = int(time.time() * 1000)
                code = DEVELOPER_ERROR if isinstance(exc, InitError) else INTERNAL_ERROR
                return Outcome(code, {"error": str(exc)}, [], start, end, True, sandbox=self.sandbox.annotation())
            except (RuntimeError, OSError, TimeoutError) as exc:
                end = int(time.time() * 1000)
                return Outcome(INTERNAL_ERROR, {"error": f"Could not start a worker: {exc}"}, [], start, end, True)
            init_ms = (time.perf_counter() - fork_start) * 1000
        answer, logs = await w.run(request, self.spec.timeout_ms / 1000, self.spec.logs_mb * 1024 * 1024)
        if w.dead:
            if w in self.workers:
                self.workers.remove(w)
            w.close()
        status = int(answer.get("status", INTERNAL_ERROR))
        result = answer.get("result")
        if not isinstance(result, dict):
            status, result = DEVELOPER_ERROR, {"error": "The action did not return a dictionary."}
        limit = self.spec.result_mb * 1024 * 1024
        # The result as json.dumps writes it (", " and ": ") is at most twice its compact form, a part of the
        # answer on the wire: an answer of up to half the limit needs no second encoding to be measured.
        wire_size = answer.get(SIZE)
        small = isinstance(wire_size, int) and wire_size <= limit // 2
        if status != APPLICATION_ERROR and not small and len(json.dumps(result)) > limit:
            status = DEVELOPER_ERROR
            result = {"error": f"The action produced a response that exceeded the allowed length: {limit} bytes."}
        end = int(time.time() * 1000)
        return Outcome(status, result, logs, start, end, cold, init_ms, w.pid, w.zygote.jail.annotation)

    async def close(self) -> None:
        for w in self.workers:
            w.kill() if w.load else w.close()
        self.workers.clear()
        if self.zygote is not None:
            await self.zygote.close()
            self.zygote = None
