"""The invoker with real zygote and worker processes: results, logs, cold and warm starts, and every limit."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from harness import wait_for
from headrace.functions.invoker import ActionPool, ActionSpec, Outcome

pytestmark = pytest.mark.db_independent("worker processes, no database")

T = TypeVar("T")

CODE = textwrap.dedent(
    """
    import os, signal, sys, time

    LOADED_AT = time.time()

    def main(args):
        what = args.get("what", "ok")
        print("hello", what)
        print("to stderr", file=sys.stderr)
        if what == "raise":
            raise ValueError("boom")
        if what == "loop":
            while True:
                pass
        if what == "exit":
            os._exit(3)
        if what == "signal":
            os.kill(os.getpid(), signal.SIGSEGV)
        if what == "memory":
            hog = bytearray(400 * 1024 * 1024)
            return {"size": len(hog)}
        if what == "nonjson":
            return {"x": object()}
        if what == "list":
            return [1, 2]
        if what == "big":
            return {"x": "y" * (2 * 1024 * 1024)}
        if what == "spam":
            line = "z" * 999
            for _ in range(100_000):  # ~100 MB
                print(line)
        if what == "nonewline":
            sys.stdout.write("no newline at the end")
        return {"pid": os.getpid(), "loaded": LOADED_AT, "id": os.environ.get("__OW_ACTIVATION_ID"), "args": args}
    """
)


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def request(what: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "id": f"act-{what}",
        "args": {"what": what, **extra},
        "deadline": 0,
        "env": {"__OW_ACTIVATION_ID": f"act-{what}"},
    }


@pytest.fixture(autouse=True)
def _readable(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # pytest makes it 0700: the sandbox's unprivileged uid reads the action there


@pytest.fixture
def code(tmp_path: Path) -> Path:
    (tmp_path / "__main__.py").write_text(CODE)
    return tmp_path


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def pool_for(code: Path, **kw: Any) -> ActionPool:
    return ActionPool(ActionSpec("ns/a@1", code, **kw))


def test_cold_then_warm_reuses_the_worker_and_the_loaded_module(code: Path) -> None:
    async def go() -> list[Outcome]:
        pool = pool_for(code)
        try:
            return [await pool.run(request()) for _ in range(3)]
        finally:
            await pool.close()

    first, second, third = run(go)
    assert first.status == second.status == 0
    assert first.cold and not second.cold and not third.cold
    assert first.init_ms is not None and second.init_ms is None
    assert first.result["pid"] == second.result["pid"] == third.result["pid"]
    assert first.result["loaded"] == third.result["loaded"]  # imported once, in the zygote
    assert first.result["id"] == "act-ok"
    assert [line.split(" ", 1)[1] for line in first.logs] == ["stdout: hello ok", "stderr: to stderr"]
    assert first.logs[0][:4].isdigit() and first.logs[0][19] == "."  # ISO timestamps


def test_errors_and_limits(code: Path) -> None:
    async def go() -> dict[str, Outcome]:
        pool = pool_for(code, timeout_ms=120_000, memory_mb=128, logs_mb=1)
        out: dict[str, Outcome] = {}
        try:
            for what in (
                "raise",
                "nonjson",
                "list",
                "big",
                "loop",
                "exit",
                "signal",
                "memory",
                "spam",
                "nonewline",
                "ok",
            ):
                # Only `loop` is meant to hit the time limit; the others get one that only catches a hang (`spam`
                # writes 100 MB of log lines: on a loaded machine that took longer than 1.5 s).
                pool.spec.timeout_ms = 1500 if what == "loop" else 120_000
                out[what] = await pool.run(request(what))
        finally:
            await pool.close()
        return out

    out = run(go)
    assert out["raise"].status == 1 and out["raise"].result == {"error": "ValueError: boom"}
    assert any("Traceback" in line for line in out["raise"].logs)
    assert out["nonjson"].status == 2 and "not JSON" in out["nonjson"].result["error"]
    assert out["list"].status == 2 and out["list"].result == {"error": "The action did not return a dictionary."}
    assert out["big"].status == 2 and "exceeded the allowed length" in out["big"].result["error"]
    assert out["loop"].status == 2
    assert out["loop"].result == {"error": "The action exceeded its time limits of 1500 milliseconds."}
    assert out["loop"].logs[0].endswith("stdout: hello loop")  # what it printed before is kept
    assert out["exit"].status == 2 and "exited with code 3" in out["exit"].result["error"]
    assert out["signal"].status == 2 and "SIGSEGV" in out["signal"].result["error"]
    assert out["memory"].status == 2 and "memory limit of 128 MB" in out["memory"].result["error"]
    spam = out["spam"]
    assert spam.status == 0
    assert spam.logs[-1].endswith(
        "Logs were truncated because the total bytes size exceeds the limit of 1048576 bytes."
    )
    assert sum(len(line) for line in spam.logs) < 1.2 * 1024 * 1024
    assert [line.split(" ", 1)[1] for line in out["nonewline"].logs if "stdout" in line] == [
        "stdout: hello nonewline",
        "stdout: no newline at the end",
    ]
    # after all that, the action still works, in a fresh worker where the old one died
    assert out["ok"].status == 0
    assert out["ok"].result["pid"] not in (out["exit"].worker, out["signal"].worker, out["loop"].worker)


def test_syntax_errors_and_missing_main_fail_initialisation(tmp_path: Path) -> None:
    (tmp_path / "__main__.py").write_text("def main(args):\n    return {\n")

    async def go() -> Outcome:
        pool = pool_for(tmp_path)
        try:
            return await pool.run(request())
        finally:
            await pool.close()

    out = run(go)
    assert out.status == 2 and out.result["error"].startswith("Initialization has failed: ")
    assert "line 2" in out.result["error"] or "SyntaxError" in out.result["error"]
    (tmp_path / "__main__.py").write_text("def handler(args):\n    return {}\n")
    out = run(go)
    assert out.status == 2 and "no function 'main'" in out.result["error"]


def test_two_argument_main_gets_a_context(tmp_path: Path) -> None:
    (tmp_path / "__main__.py").write_text(
        "def main(event, ctx):\n"
        "    ctx.logger.warning('via the logger')\n"
        "    ctx.logger.info('info too')\n"
        "    return {'id': ctx.activation_id, 'deadline': ctx.deadline, 'path': event['path']}\n"
    )

    async def go() -> Outcome:
        pool = pool_for(tmp_path)
        try:
            deadline = int(time.time() * 1000) + 5000
            return await pool.run({"id": "x1", "args": {"path": "/raw/a.h5"}, "deadline": deadline, "env": {}})
        finally:
            await pool.close()

    out = run(go)
    assert out.status == 0 and out.result["id"] == "x1" and out.result["path"] == "/raw/a.h5"
    assert any(line.endswith("stderr: WARNING via the logger") for line in out.logs)
    assert any(line.endswith("stderr: INFO info too") for line in out.logs)


def test_scale_up_shrink_and_no_orphans(code: Path) -> None:
    async def go() -> tuple[int, int, set[int], set[int | None], set[int | None]]:
        pool = pool_for(code)
        try:
            await pool.warm(3)
            warmed = pool.size
            outs = await asyncio.gather(*(pool.run(request("ok", n=i)) for i in range(3)))
            pids = {o.result["pid"] for o in outs}
            assert pool.zygote is not None
            host = {pool.zygote.jail.host_pid(p) for p in pids}  # the sandbox has a PID namespace of its own
            stopped = pool.shrink(1)
            await asyncio.sleep(0.3)
            return warmed, stopped, pids, {pool.zygote.jail.host_pid(w.pid) for w in pool.idle}, host
        finally:
            await pool.close()

    warmed, stopped, pids, left, host = run(go)
    assert warmed == 3 and stopped == 2 and len(pids) == 3 and len(left) == 1 and None not in host
    for pid in host:  # the stopped ones, and the one left when the pool closed: gone (waited for, not slept on)
        assert pid is not None
        wait_for(lambda pid=pid: not pid_exists(pid), f"worker {pid} to exit")


def test_a_concurrent_worker_runs_several_activations_and_keeps_their_logs_apart(tmp_path: Path) -> None:
    (tmp_path / "__main__.py").write_text(
        "import os, sys, threading\n"
        "gate = threading.Barrier(3, timeout=60)\n"
        "def main(args):\n"
        "    n = args['n']\n"
        "    print(f'start {n}')\n"
        "    gate.wait()  # all three are in the one worker at once\n"
        "    sys.stdout.write(f'partial {n}')\n"
        "    print(f' end {n}', file=sys.stderr)\n"
        "    return {'pid': os.getpid(), 'n': n}\n"
    )

    async def go() -> list[Outcome]:
        pool = pool_for(tmp_path, concurrency=3)
        try:
            reqs = [{"id": f"c{n}", "args": {"n": n}, "deadline": 0, "env": {}} for n in range(3)]
            return list(await asyncio.gather(*(pool.run(r) for r in reqs)))
        finally:
            await pool.close()

    outs = run(go)
    assert all(o.status == 0 for o in outs), [o.result for o in outs]
    assert len({o.result["pid"] for o in outs}) == 1
    for n, o in enumerate(outs):  # each activation's lines, and only its own (stdout and stderr may interleave)
        assert sorted(line.split(" ", 1)[1] for line in o.logs) == [
            f"stderr:  end {n}",
            f"stdout: partial {n}",
            f"stdout: start {n}",
        ]


def test_where_no_cgroup_is_writable_rlimits_still_hold_the_import(tmp_path: Path) -> None:
    from headrace.functions.sandbox import RlimitOnly, Sandbox

    (tmp_path / "__main__.py").write_text("HOG = b'x' * (700 * 1024 * 1024)\ndef main(args):\n    return {}\n")
    sandbox = Sandbox()
    sandbox._limits = RlimitOnly()  # as on a host whose cgroups are not delegated to the server

    async def go() -> Outcome:
        pool = ActionPool(ActionSpec("ns/a@1", tmp_path, memory_mb=128), sandbox)
        try:
            return await pool.run(request())
        finally:
            await pool.close()

    out = run(go)
    assert out.status == 2 and "exceeded its memory limit of 128 MB while loading" in out.result["error"]
    assert sandbox.annotation() == {"isolation": "bubblewrap", "limits": "rlimit"}
