"""The decisions every activation goes through, whoever runs it: the embedded controller
(functions/controller.py) and a `headrace invoker` (functions/kafka_invoker.py) differ only in how they get
an activation and write its row (in memory and plain updates, or Kafka messages and fenced claims), not in
what happens to it.

- The `Scheduler`: a queue per action, activations waiting for their retry, and the loop that starts them
  within each action's capacity and the process's worker cap (one `ordered` path at a time), plus the
  autoscaler's loop. What an activation is while queued (a row, or a Kafka message's job) and what running
  one means is the caller's: it hands the scheduler a `run` coroutine function.
- Whether an attempt may run at all (`refusal`: the action is gone, or the event is older than the action's
  maxEventAge), and what follows an attempt that ran (`settle`: a retry after a full-jitter exponential
  backoff while attempts are left, else done, or dead for an event's activation that failed), with the
  metrics of both (`count_final`); `attempt` is the whole of one attempt, over the caller's claim and write
  (a plain update here, a fenced one on Kafka).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from headrace.functions.entities import ActionRow, ActivationFields, ActivationRow, Scaling
from headrace.functions.invoker import Outcome
from headrace.functions.messages import Actions
from headrace.functions.runner import ActionQueue, Runner, internal, next_runnable, record_of
from headrace.functions.store import now_ms
from headrace.metrics import FN_ACTIVATIONS, FN_COLD_STARTS, FN_LATENCY

log = logging.getLogger("headrace.functions")

#: An action by (namespace, name).
Key = tuple[str, str]

#: What a scheduler queues: a mapping with at least `activation_id` and `order_key` (the embedded
#: controller's: the activation's row; the Kafka invoker's: its message's job).
Item = TypeVar("Item", bound=Mapping[str, Any])

BACKOFF_BASE_MS = 500
BACKOFF_MAX_MS = 5 * 60_000


def backoff_ms(attempt: int) -> int:
    """Full-jitter exponential backoff before attempt `attempt + 1`."""
    ceiling = min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** max(0, attempt - 1))
    return int(ceiling / 2 + random.random() * ceiling / 2)


def status_label(code: int, final: str) -> str:
    """The `outcome` label of FN_ACTIVATIONS for a finished activation."""
    if final == "dead":
        return "dead"
    return {0: "success", 1: "application_error", 2: "developer_error"}.get(code, "internal_error")


# -- an attempt ---------------------------------------------------------------------------------------------


def refusal(action: ActionRow | None, name: str, row: ActivationRow) -> ActivationFields | None:
    """Why the activation `row` of the action `name` (its row `action`) must not run but go to the dead
    letters at once (the record of that), or None if it may run."""
    if action is None:
        return internal(f"The action {name} does not exist (any more).", code=2)
    max_age = Scaling.of(action).max_event_age * 1000
    event_time = row.get("event_time")
    if event_time and now_ms() - int(event_time) > max_age:
        return internal("The event is older than the action's maxEventAge.", code=2)
    return None


@dataclass
class Settled:
    """What follows an attempt: `state` queued (a retry, due at `values["not_before"]`), done or dead, and
    the values the activation's row gets (its record, `state` included)."""

    state: str
    values: ActivationFields

    @property
    def retry(self) -> bool:
        return self.state == "queued"


def settle(action: ActionRow, row: ActivationRow, outcome: Outcome) -> Settled:
    """The record of an attempt that ran, and what follows it: another attempt after a backoff while the
    row has attempts left, else done; an event's activation (one with a rule) that failed is dead (a direct
    invoke is OpenWhisk's: done, whatever its outcome). Observes the attempt's latency and cold start."""
    FN_LATENCY.labels(action["name"]).observe((outcome.end - outcome.start) / 1000)
    if outcome.cold:
        FN_COLD_STARTS.labels(action["name"]).inc()
    record = record_of(action, row, outcome)
    attempt = int(row["attempt"])
    if outcome.status != 0 and attempt < int(row["max_attempts"]):
        record.update({"state": "queued", "not_before": now_ms() + backoff_ms(attempt), "attempt": attempt + 1})
        return Settled("queued", record)
    final = "done" if outcome.status == 0 or not row.get("rule") else "dead"
    return Settled(final, {**record, "state": final})


async def attempt(
    runner: Runner,
    action: ActionRow | None,
    name: str,
    row: ActivationRow,
    *,
    start: int,
    claim: Awaitable[bool],
    write: Callable[[ActivationFields], Awaitable[bool]],
    abandoned: Callable[[], bool] = lambda: False,
) -> Settled | None:
    """One attempt of the activation `row` of the action `name` (its row `action`, None if gone): run it on
    the runner's workers (unless `refusal` sends it to the dead letters) while `claim`, its mark as running
    that the caller has started, commits; settle it; `write` what follows (False: fenced out); count it.
    None if nothing was written: the claim was lost, the activation was given up meanwhile (`abandoned`,
    checked again after the run), or the write was fenced out."""
    failure = refusal(action, name, row)
    outcome: Outcome | None = None
    try:
        if action is not None and failure is None and not abandoned():
            outcome = await runner.execute(action, row["activation_id"], row["args"], start)
    finally:
        won = await claim
    if not won or abandoned():
        return None
    if action is None or outcome is None:
        settled = Settled("dead", {**(failure or internal("The action is gone.", 2)), "state": "dead"})
    else:
        settled = settle(action, row, outcome)
    if not await write(settled.values):
        return None
    if settled.retry:
        count_retry(name)
    else:
        count_final(name, settled.values)
    return settled


def count_retry(name: str) -> None:
    FN_ACTIVATIONS.labels(name, "retried").inc()


def count_final(name: str, values: ActivationFields) -> None:
    """Count a finished activation (its final `values`, with `state` and `status_code`)."""
    FN_ACTIVATIONS.labels(name, status_label(int(values.get("status_code") or 0), str(values["state"]))).inc()


# -- scheduling ---------------------------------------------------------------------------------------------


class Scheduler(Generic[Item]):
    """Per-action queues and the loop that starts their activations.

    Free slots go round the actions one at a time, from a starting point that moves on each pass: an action
    with a long queue cannot keep the others' activations waiting for every slot. An action starts no more
    than its `capacity` at once, the process no more than `max_workers`; an `ordered` action's activations
    for one path (the item's `order_key`) run one at a time in queue order. An item is a mapping with at
    least `activation_id` and `order_key` (`Item`); `run(key, item)` runs it (and deals with its failures)."""

    def __init__(
        self,
        runner: Runner,
        max_workers: int,
        *,
        run: Callable[[Key, Item], Awaitable[None]],
        capacity: Callable[[Key], int],
        ordered: Callable[[Key], bool],
        due: Callable[[Key, Item], bool] = lambda key, item: True,
        started: Callable[[Item, asyncio.Task[None]], None] = lambda item, task: None,
        name: str = "functions",
    ) -> None:
        self.runner = runner
        self.max_workers = max_workers
        self._run_item = run
        self._capacity = capacity
        self._ordered = ordered
        #: Whether an item whose retry became due still goes to its queue (False: its holder let it go).
        self._due = due
        self._started = started
        self.name = name
        self.queues: dict[Key, ActionQueue] = {}
        self.delayed: list[tuple[int, int, Key, Item]] = []  # (due, seq, key, item) heap
        self.running_total = 0
        self.wake = asyncio.Event()
        self._seq = itertools.count()
        self._turn = 0  # where the round over the actions starts
        self._runs: set[asyncio.Task[None]] = set()

    def push(self, key: Key, item: Item) -> None:
        """Queue an item that may start now: at once if nothing of its action waits ahead of it and there is
        room (what the next pass would do; waiting for that pass took half a millisecond of a warm
        activation's way on a busy loop), else on the next pass."""
        aq = self.queues.setdefault(key, ActionQueue())
        aq.items.append(item)
        if len(aq.items) == 1 and self.running_total < self.max_workers:
            self._start_one(key, aq)
        self.wake.set()

    def later(self, key: Key, item: Item, due: int) -> None:
        """Queue an item once `due` (ms since the epoch) has come."""
        heapq.heappush(self.delayed, (due, next(self._seq), key, item))
        self.wake.set()

    def forget(self, key: Key, gone: Callable[[Item], bool]) -> None:
        """Drop the items (queued or waiting for their retry) for which `gone` is true."""
        aq = self.queues.get(key)
        if aq is not None:
            aq.items = deque(i for i in aq.items if not gone(cast(Item, i)))
        kept = [d for d in self.delayed if not gone(d[3])]
        if len(kept) != len(self.delayed):
            self.delayed = kept
            heapq.heapify(self.delayed)

    async def schedule_forever(self) -> None:
        while True:
            timeout = None
            now = now_ms()
            while self.delayed and self.delayed[0][0] <= now:
                _, _, key, item = heapq.heappop(self.delayed)
                if self._due(key, item):
                    self.queues.setdefault(key, ActionQueue()).items.append(item)
            if self.delayed:
                timeout = max(0.001, (self.delayed[0][0] - now) / 1000)
            keys = list(self.queues)
            if keys:
                self._turn = (self._turn + 1) % len(keys)
                keys = keys[self._turn :] + keys[: self._turn]
            started = True
            while started and self.running_total < self.max_workers:
                started = False
                for key in keys:
                    if self.running_total >= self.max_workers:
                        break
                    started |= self._start_one(key, self.queues[key])
            self.runner.publish_metrics(self.queues)
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    def _start_one(self, key: Key, aq: ActionQueue) -> bool:
        """Start the next runnable item of one action, if it has one and room for it."""
        if not aq.items or aq.running >= self._capacity(key):
            return False
        ordered = self._ordered(key)
        found = next_runnable(aq, ordered)
        if found is None:
            return False
        item = cast(Item, found)  # the queues hold only what push and later were given
        aq.running += 1
        self.running_total += 1
        aq.last_work = time.monotonic()
        if ordered:
            aq.busy_keys.add(item.get("order_key") or item["activation_id"])
        task = asyncio.create_task(self._run(key, aq, item, ordered))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        self._started(item, task)
        return True

    async def _run(self, key: Key, aq: ActionQueue, item: Item, ordered: bool) -> None:
        try:
            await self._run_item(key, item)
        finally:
            aq.running -= 1
            self.running_total -= 1
            aq.last_work = time.monotonic()
            if ordered:
                aq.busy_keys.discard(item.get("order_key") or item["activation_id"])
            self.wake.set()

    async def autoscale_forever(self, actions: Callable[[], Mapping[Key, ActionRow]]) -> None:
        """Size the runner's pools every second (Runner.autoscale) for the actions `actions()` knows."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.autoscale(actions())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: autoscaler failed", self.name)

    async def autoscale(self, actions: Mapping[Key, ActionRow]) -> None:
        await self.runner.autoscale(actions, self.queues)

    async def stop(self) -> None:
        """Cancel the items that run."""
        for t in list(self._runs):
            t.cancel()
        await asyncio.gather(*self._runs, return_exceptions=True)


class InProcess:
    """The embedded transport (a `messages.Publisher`): queued activations go straight to this process's
    scheduler, those not due yet once they are."""

    def __init__(self, scheduler: Scheduler[ActivationRow]) -> None:
        self.scheduler = scheduler
        self.unacknowledged: set[str] = set()

    def submit(self, rows: list[ActivationRow], actions: Actions) -> None:
        now = now_ms()
        for row in rows:
            key = (row["namespace"], row["name"])
            if int(row["not_before"]) > now:
                self.scheduler.later(key, row, int(row["not_before"]))
            else:
                self.scheduler.push(key, row)

    async def publish(self, rows: list[ActivationRow], actions: Actions) -> None:
        self.submit(rows, actions)
