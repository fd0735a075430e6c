"""The processes that run functions: a zygote per action version, and the workers it forks.

`python -m headrace.functions.zygote` is started by the invoker with a SOCK_SEQPACKET control socket whose fd
number is in $HEADRACE_ZYGOTE_FD.
It loads the action's code once (so numpy, h5py and the module's own top-level work are paid once), reports how
long that took, and then forks a worker on each request: the invoker passes the worker's control socket and
the write ends of its stdout and stderr pipes along with the request (SCM_RIGHTS). A worker runs one
activation at a time: it reads a request, calls `main`, writes a sentinel line on stdout and stderr so that
the invoker knows the logs are complete, and answers with the result.

This module runs in the child processes: it imports nothing from the server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import logging
import os
import resource
import signal
import socket
import sys
import threading
import time
import traceback
from types import ModuleType
from typing import Any

from headrace.functions import wire

CONTROL_FD_ENV = "HEADRACE_ZYGOTE_FD"
UID_ENV, GID_ENV = "HEADRACE_SANDBOX_UID", "HEADRACE_SANDBOX_GID"  # set by functions/sandbox.py
TAG, TAG_END = "\x1e", "\x1f"  # the invoker reads "<TAG><activation id><TAG_END>text" lines of concurrent workers

# OpenWhisk's response status codes.
SUCCESS, APPLICATION_ERROR, DEVELOPER_ERROR, INTERNAL_ERROR = 0, 1, 2, 3


class _StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is when a record is emitted (a concurrent worker swaps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


class Context:
    """The second argument of `main(event, ctx)`."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.activation_id: str = request["id"]
        self.deadline: int = int(request["deadline"])  # ms since the epoch
        self.action_name: str = request.get("action", "")
        self.namespace: str = request.get("namespace", "")
        self.logger = logging.getLogger(f"headrace.fn.{self.action_name.rsplit('/', 1)[-1] or 'action'}")
        if not self.logger.handlers:  # INFO and up, to the activation's stderr (its logs)
            self.logger.addHandler(_StderrHandler())
            self.logger.setLevel(logging.INFO)
            self.logger.propagate = False
        self._storage: Any = None
        self._env: dict[str, str] = request.get("env", {})

    def remaining_ms(self) -> int:
        return max(0, self.deadline - int(time.time() * 1000))

    @property
    def storage(self) -> Any:
        """A headrace client for this server, acting as the action's owner; its writes name this activation
        as their cause."""
        if self._storage is None:
            from headrace.functions.storage import ActivationStorage

            self._storage = ActivationStorage.from_env(self.activation_id, {**os.environ, **self._env})
        return self._storage


def load(code_dir: str, main_name: str) -> tuple[ModuleType, Any]:
    """Import the action (`__main__.py`, or `main.py`, in `code_dir`) and find its entry point."""
    sys.path.insert(0, code_dir)
    venv = os.path.join(code_dir, "virtualenv")
    if os.path.isdir(venv):
        for root, dirs, _ in os.walk(venv):
            if root.endswith("site-packages"):
                sys.path.insert(1, root)
                dirs.clear()
    path = os.path.join(code_dir, "__main__.py")
    if not os.path.exists(path):
        path = os.path.join(code_dir, "main.py")
    spec = importlib.util.spec_from_file_location("__headrace_action__", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["__headrace_action__"] = module
    spec.loader.exec_module(module)
    fn = getattr(module, main_name, None)
    if not callable(fn):
        raise LookupError(f"The action has no function {main_name!r}")
    return module, fn


def _arity(fn: Any) -> int:
    try:
        params = [
            p
            for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return 1
    return 2 if len(params) >= 2 else 1


def _result(status: int, result: dict[str, Any]) -> dict[str, Any]:
    return {"status": status, "result": result}


def run_one(fn: Any, arity: int, request: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    os.environ.update(request.get("env", {}))
    args = request.get("args", {})
    ctx = Context(request)
    try:
        out = fn(args, ctx) if arity == 2 else fn(args)
    except MemoryError:
        return _result(DEVELOPER_ERROR, {"error": f"The action exceeded its memory limit of {memory_mb} MB."})
    except BaseException as exc:
        traceback.print_exc()
        return _result(APPLICATION_ERROR, {"error": f"{type(exc).__name__}: {exc}"})
    finally:
        if ctx._storage is not None:  # its downloads go with the activation
            with contextlib.suppress(Exception):
                ctx._storage.close()
    if out is None:
        out = {}
    if not isinstance(out, dict):
        return _result(DEVELOPER_ERROR, {"error": "The action did not return a dictionary."})
    return _result(SUCCESS, out)  # whether it is JSON: `answer`, which encodes it once


def answer(aid: str, result: dict[str, Any]) -> bytes:
    """The answer to the invoker (wire.py's framing) for activation `aid`, `result` being run_one's: a result
    that is not JSON (json.dumps refuses it) is a developer error."""
    result["id"] = aid
    try:
        return wire.encode(result)
    except (TypeError, ValueError) as exc:
        error = {"error": f"The action returned a result that is not JSON: {exc}"}
        return wire.encode({"id": aid, **_result(DEVELOPER_ERROR, error)})


def _end_of_logs() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            os.write(fd, f"\n{wire.SENTINEL}\n".encode())


_current = threading.local()  # the activation the running thread works for (concurrent workers)


class _TaggedOutput(io.TextIOBase):
    """stdout/stderr of a worker that runs several activations at once: each complete line goes out tagged
    with the id of the activation whose thread wrote it, so that the invoker can tell their logs apart."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.local = threading.local()

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        pending = getattr(self.local, "pending", "") + text
        *lines, self.local.pending = pending.split("\n")
        if lines:
            self._out(lines)
        return len(text)

    def _out(self, lines: list[str]) -> None:
        aid = getattr(_current, "id", None)
        tag = f"{TAG}{aid}{TAG_END}" if aid else ""
        os.write(self.fd, "".join(f"{tag}{line}\n" for line in lines).encode("utf-8", "replace"))

    def end(self) -> None:
        """This thread's activation is over: its last partial line, then its sentinel."""
        pending = getattr(self.local, "pending", "")
        self.local.pending = ""
        self._out([pending, wire.SENTINEL] if pending else [wire.SENTINEL])


def worker(ctl: socket.socket, fn: Any, limits: dict[str, Any]) -> None:
    """A forked worker's life: serve requests until the invoker hangs up."""
    memory_mb = int(limits.get("memory", 256))
    concurrency = max(1, int(limits.get("concurrency", 1)))
    if memory_mb > 0:
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = vsz + memory_mb * 1024 * 1024 * concurrency
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    arity = _arity(fn)
    if concurrency > 1:
        _concurrent_worker(ctl, fn, arity, memory_mb, concurrency)
    while True:
        request = wire.recv(ctl)
        if request is None:
            os._exit(0)
        result = run_one(fn, arity, request, memory_mb)
        _end_of_logs()
        ctl.sendall(answer(request["id"], result))


def _concurrent_worker(ctl: socket.socket, fn: Any, arity: int, memory_mb: int, concurrency: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    out, err = _TaggedOutput(1), _TaggedOutput(2)
    sys.stdout, sys.stderr = out, err
    send_lock = threading.Lock()

    def one(request: dict[str, Any]) -> None:
        _current.id = request["id"]
        try:
            result = run_one(fn, arity, request, memory_mb)
        finally:
            out.end()
            err.end()
            _current.id = None
        message = answer(request["id"], result)
        with send_lock:
            ctl.sendall(message)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="activation") as threads:
        while True:
            request = wire.recv(ctl)
            if request is None:
                os._exit(0)
            threads.submit(one, request)


def _fork(control: socket.socket, fn: Any, fds: list[int], limits: dict[str, Any]) -> int:
    ctl_fd, out_fd, err_fd = fds
    pid = os.fork()
    if pid == 0:  # the worker
        try:
            control.close()
            _die_with_parent()
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            for fd in (out_fd, err_fd):
                os.close(fd)
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            worker(socket.socket(fileno=ctl_fd), fn, limits)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(70)
    for fd in fds:
        os.close(fd)
    return pid


def _reap(control: socket.socket, lock: threading.Lock, forked: threading.Event) -> None:
    """Tell the invoker how each worker ended (exit code, or the signal that killed it)."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:  # no worker now: sleep until the next fork, not in a polling loop
            forked.wait()
            forked.clear()
            continue
        report: dict[str, Any] = {"exited": pid}
        if os.WIFSIGNALED(status):
            report["signal"] = os.WTERMSIG(status)
        else:
            report["code"] = os.WEXITSTATUS(status)
        with lock:
            try:
                control.send(json.dumps(report).encode())
            except OSError:
                return


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent ends, so that no zygote or worker outlives the
    server (a SIGKILLed server cannot clean up after itself)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _drop_privileges() -> None:
    """In a sandbox started by root: become the action's unprivileged uid/gid for good, before anything of
    the action is read (no supplementary groups, no way back through set-uid programs)."""
    uid, gid = os.environ.pop(UID_ENV, ""), os.environ.pop(GID_ENV, "")
    if not uid:
        return
    os.setgroups([])
    os.setresgid(int(gid or uid), int(gid or uid), int(gid or uid))
    os.setresuid(int(uid), int(uid), int(uid))
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")


def main() -> None:
    _drop_privileges()
    _die_with_parent()  # after the drop: a change of credentials clears the parent-death signal
    control = socket.socket(fileno=int(os.environ.pop(CONTROL_FD_ENV)))
    first = json.loads(control.recv(65536) or b"{}")
    started = time.perf_counter()
    import_cap = int(first.get("importMemory") or 0)  # no cgroup here: an address-space limit while loading
    if import_cap:
        with open("/proc/self/statm") as f:
            vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (vsz + import_cap, hard))
    try:
        _, fn = load(first["dir"], first.get("main") or "main")
    except MemoryError:
        mb = import_cap // (1024 * 1024)
        error = f"Initialization has failed: the action exceeded its memory limit of {mb} MB while loading."
        control.send(json.dumps({"ok": False, "error": error}).encode())
        return
    except BaseException as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        control.send(json.dumps({"ok": False, "error": f"Initialization has failed: {detail}"}).encode())
        return
    if import_cap:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    init_ms = (time.perf_counter() - started) * 1000
    with contextlib.suppress(ImportError):  # ctx.storage's client, so that workers do not import it each
        import headrace.functions.storage  # noqa: F401
    control.send(json.dumps({"ok": True, "initMs": round(init_ms, 3)}).encode())
    lock = threading.Lock()
    forked = threading.Event()
    threading.Thread(target=_reap, args=(control, lock, forked), daemon=True).start()
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(control, 65536, 3)
        except OSError:  # the invoker hung up (a server stopping): as at end of file
            return
        if not msg:
            return  # the invoker has gone: so do we (workers notice their own sockets closing)
        request = json.loads(msg)
        if request.get("op") != "fork" or len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        pid = _fork(control, fn, fds, request.get("limits", {}))
        forked.set()
        with lock:
            control.send(json.dumps({"forked": pid, "tag": request.get("tag")}).encode())


if __name__ == "__main__":
    main()
