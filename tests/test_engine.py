"""functions/engine.py and functions/entities.py on their own: the decisions every activation goes through
(embedded or on an invoker), and the scheduler's order and caps, with a stand-in `run` (no workers)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from headrace.functions import engine
from headrace.functions.dispatch import activation_row
from headrace.functions.entities import Scaling
from headrace.functions.invoker import Outcome
from headrace.functions.store import now_ms

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def action(**scaling: Any) -> dict[str, Any]:
    return {
        "namespace": "ns",
        "name": "act",
        "version": 3,
        "exec": {"kind": "python:3"},
        "limits": {"timeout": 1000, "concurrency": 1},
        "scaling": scaling,
    }


def outcome(status: int) -> Outcome:
    stamp = now_ms()
    return Outcome(status, {"error": "no"} if status else {"ok": True}, [], stamp, stamp + 5)


def test_scaling_defaults_are_the_models() -> None:
    assert Scaling.of(None) == Scaling.of({"scaling": {}}) == Scaling()
    assert (Scaling().max_scale, Scaling().retries, Scaling().max_event_age) == (4, 2, 6 * 3600)
    s = Scaling.of(action(maxScale=7, retries=0, ordered=True, maxEventAge=60))
    assert (s.max_scale, s.retries, s.ordered, s.max_event_age) == (7, 0, True, 60.0)


def test_backoff_is_jittered_exponential_and_capped() -> None:
    for attempt in range(1, 30):
        ceiling = min(engine.BACKOFF_MAX_MS, engine.BACKOFF_BASE_MS * 2 ** (attempt - 1))
        assert ceiling // 2 <= engine.backoff_ms(attempt) <= ceiling


def test_refusal_names_a_missing_action_and_an_event_past_max_event_age() -> None:
    row = activation_row(action(), "ns", "act", {})
    assert row is not None
    assert engine.refusal(action(), "act", row) is None
    gone = engine.refusal(None, "act", row)
    assert gone is not None and gone["status_code"] == 2 and "does not exist" in gone["result"]["error"]
    old = {**row, "event_time": now_ms() - 61_000}
    assert engine.refusal(action(maxEventAge=120), "act", old) is None
    late = engine.refusal(action(maxEventAge=60), "act", old)
    assert late is not None and late["result"] == {"error": "The event is older than the action's maxEventAge."}


def test_settle_retries_while_attempts_are_left_then_decides_the_final_state() -> None:
    a = action(retries=1)
    row = activation_row(a, "ns", "act", {})
    assert row is not None and row["max_attempts"] == 2
    first = engine.settle(a, row, outcome(1))
    assert first.retry and first.values["attempt"] == 2 and first.values["not_before"] > now_ms()
    assert first.values["annotations"][-1] == {"key": "attempt", "value": 1}
    last = {**row, "attempt": 2}
    assert engine.settle(a, last, outcome(1)).state == "done"  # a direct invoke: done whatever its outcome
    assert engine.settle(a, {**last, "rule": "r"}, outcome(1)).state == "dead"  # an event's: a dead letter
    ok = engine.settle(a, {**row, "rule": "r"}, outcome(0))
    assert ok.state == "done" and ok.values["state"] == "done" and ok.values["status_code"] == 0


def test_status_labels() -> None:
    assert [engine.status_label(c, "done") for c in (0, 1, 2, 3)] == [
        "success", "application_error", "developer_error", "internal_error",
    ]  # fmt: skip
    assert engine.status_label(0, "dead") == "dead"


class _Runner:
    """What the scheduler needs of a Runner: its metrics and autoscaler (no workers here)."""

    def publish_metrics(self, queues: Any) -> None:
        pass

    async def autoscale(self, actions: Any, queues: Any) -> None:
        pass


async def test_scheduler_keeps_capacity_the_worker_cap_and_one_path_at_a_time() -> None:
    release = asyncio.Event()
    running: list[str] = []
    most = {"a": 0, "b": 0, "total": 0}
    ran: list[str] = []

    async def run(key: engine.Key, item: dict[str, Any]) -> None:
        running.append(key[1])
        most[key[1]] = max(most[key[1]], running.count(key[1]))
        most["total"] = max(most["total"], len(running))
        await release.wait()
        ran.append(item["activation_id"])
        running.remove(key[1])

    sched = engine.Scheduler(
        _Runner(),  # type: ignore[arg-type]
        3,
        run=run,
        capacity=lambda key: 2,
        ordered=lambda key: key[1] == "b",
    )
    queue = engine.InProcess(sched)
    rows = [{"namespace": "ns", "name": "a", "activation_id": f"a{i}", "order_key": None} for i in range(4)]
    rows += [{"namespace": "ns", "name": "b", "activation_id": f"b{i}", "order_key": "/p"} for i in range(3)]
    for r in rows:
        r["not_before"] = now_ms()
    later = {"namespace": "ns", "name": "a", "activation_id": "late", "order_key": None, "not_before": now_ms() + 50}
    queue.submit([*rows, later], {})
    task = asyncio.create_task(sched.schedule_forever())
    try:
        async with asyncio.timeout(30):
            while len(running) < 3:
                await asyncio.sleep(0.01)
            assert running.count("b") == 1  # one path of the ordered action at a time
            release.set()
            while len(ran) < len(rows) + 1:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await sched.stop()
    assert most["a"] <= 2 and most["b"] == 1 and most["total"] <= 3
    assert [i for i in ran if i.startswith("b")] == ["b0", "b1", "b2"]  # in queue order
    assert "late" in ran and sched.running_total == 0


class _Executes(_Runner):
    def __init__(self, status: int) -> None:
        self.status = status
        self.runs = 0

    async def execute(self, action: Any, aid: str, args: Any, start: int) -> Outcome:
        self.runs += 1
        return outcome(self.status)


async def _won(value: bool = True) -> bool:
    return value


async def test_attempt_runs_settles_writes_and_counts_over_the_callers_claim_and_write() -> None:
    a = action(retries=1, maxEventAge=60)
    row = {**(activation_row(a, "ns", "act", {}) or {}), "rule": "r"}
    written: list[dict[str, Any]] = []

    async def write(values: dict[str, Any]) -> bool:
        written.append(values)
        return True

    async def fenced(values: dict[str, Any]) -> bool:
        return False

    failing = _Executes(1)

    def attempt(r: dict[str, Any], **kw: Any) -> Any:
        return engine.attempt(failing, kw.pop("action", a), "act", r, start=now_ms(), **kw)  # type: ignore[arg-type]

    retry = await attempt(row, claim=_won(), write=write)
    assert retry is not None and retry.retry and written[-1]["state"] == "queued" and failing.runs == 1
    dead = await attempt({**row, "attempt": 2}, claim=_won(), write=write)
    assert dead is not None and dead.state == "dead" and written[-1]["status_code"] == 1
    # refused: not run, dead at once
    old = await attempt({**row, "event_time": now_ms() - 120_000}, claim=_won(), write=write)
    assert old is not None and old.state == "dead" and failing.runs == 2
    gone = await attempt(row, action=None, claim=_won(), write=write)
    assert gone is not None and gone.state == "dead" and "does not exist" in written[-1]["result"]["error"]
    # a lost claim, a hand-back meanwhile, a fenced-out write: nothing follows
    before = len(written)
    assert await attempt(row, claim=_won(False), write=write) is None
    assert await attempt(row, claim=_won(), write=write, abandoned=lambda: True) is None
    assert len(written) == before
    assert await attempt(row, claim=_won(), write=fenced) is None
