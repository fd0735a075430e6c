"""The decisions every activation goes through, whoever runs it: the embedded controller
(functions/controller.py) and a `headrace invoker` (functions/kafka_invoker.py) differ only in how they get
an activation and write its row (in memory and plain updates, or Kafka messages and fenced claims), not in
what happens to it.

- What an activation row is when it is queued (`activation_row`), and what firing a trigger makes
  (`fire_plan`): used by the controller and by a frontend's `RemoteFunctions` (functions/gateway.py).
- Whether an attempt may run at all (`refusal`: the action is gone, or the event is older than the action's
  maxEventAge), and what follows an attempt that ran (`settle`: a retry after a full-jitter exponential
  backoff while attempts are left, else done, or dead for an event's activation that failed), with the
  metrics of both (`count_final`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from headrace.functions.invoker import Outcome
from headrace.functions.model import SCALING, as_dict
from headrace.functions.runner import internal, record_of
from headrace.functions.store import new_activation_id, now_ms
from headrace.metrics import FN_ACTIVATIONS, FN_COLD_STARTS, FN_LATENCY

BACKOFF_BASE_MS = 500
BACKOFF_MAX_MS = 5 * 60_000
#: An action's maxEventAge (seconds) when its scaling does not name one: the model's default.
DEFAULT_MAX_EVENT_AGE = SCALING["maxEventAge"][2]
#: An action's retries when its scaling does not name them: the model's default.
DEFAULT_RETRIES = int(SCALING["retries"][2])


def backoff_ms(attempt: int) -> int:
    """Full-jitter exponential backoff before attempt `attempt + 1`."""
    ceiling = min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** max(0, attempt - 1))
    return int(ceiling / 2 + random.random() * ceiling / 2)


def status_label(code: int, final: str) -> str:
    """The `outcome` label of FN_ACTIVATIONS for a finished activation."""
    if final == "dead":
        return "dead"
    return {0: "success", 1: "application_error", 2: "developer_error"}.get(code, "internal_error")


def activation_row(
    a: dict[str, Any] | None, namespace: str, action: str, args: dict[str, Any], *, depth: int = 0
) -> dict[str, Any] | None:
    """A new queued activation of the action row `a` (None if there is no such action)."""
    if a is None:
        return None
    retries = int(a["scaling"].get("retries", DEFAULT_RETRIES))
    stamp = now_ms()
    return {
        "activation_id": new_activation_id(),
        "namespace": namespace,
        "name": action,
        "version": f"0.0.{a['version']}",
        "subject": namespace,
        "state": "queued",
        "created": stamp,
        "not_before": stamp,
        "annotations": [],
        "args": args,
        "attempt": 1,
        "max_attempts": retries + 1,
        "depth": depth,
    }


def invocation_row(
    a: dict[str, Any] | None, namespace: str, action: str, args: dict[str, Any], cause: str | None
) -> dict[str, Any]:
    """A direct invocation through the API: one attempt (no retries, as OpenWhisk); LookupError if the
    action does not exist."""
    row = activation_row(a, namespace, action, args)
    if row is None:
        raise LookupError(action)
    row["max_attempts"] = 1
    row["cause"] = cause
    return row


def fire_plan(
    namespace: str,
    trigger: dict[str, Any],
    payload: dict[str, Any],
    rules: list[dict[str, Any]],
    actions: dict[tuple[str, str], dict[str, Any]],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Firing a trigger: its own (finished) activation record, and one queued activation per active rule."""
    trigger_id = new_activation_id()
    args = {**as_dict(trigger["parameters"]), **payload}
    rows = []
    logs = []
    for rule in rules:
        row = activation_row(actions.get((namespace, rule["action"])), namespace, rule["action"], args)
        if row is None:
            logs.append(_rule_log(rule, None, 3, f"action {rule['action']} not found"))
            continue
        row.update(rule=rule["name"], trigger=trigger["name"], cause=trigger_id)
        rows.append(row)
        logs.append(_rule_log(rule, row["activation_id"], 0, None))
    stamp = now_ms()
    record = {
        "activation_id": trigger_id,
        "namespace": namespace,
        "name": trigger["name"],
        "entity": "trigger",
        "version": f"0.0.{trigger['version']}",
        "subject": namespace,
        "state": "done",
        "created": stamp,
        "not_before": stamp,
        "start": stamp,
        "end": stamp,
        "status_code": 0,
        "result": args,
        "logs": logs,
    }
    return record, rows


def _rule_log(rule: dict[str, Any], activation_id: str | None, code: int, error: str | None) -> str:
    entry: dict[str, Any] = {
        "statusCode": code,
        "success": code == 0,
        "rule": f"{rule['namespace']}/{rule['name']}",
        "action": f"{rule['namespace']}/{rule['action']}",
    }
    if activation_id:
        entry["activationId"] = activation_id
    if error:
        entry["error"] = error
    return json.dumps(entry, separators=(",", ":"))


# -- an attempt ---------------------------------------------------------------------------------------------


def refusal(action: dict[str, Any] | None, name: str, row: dict[str, Any]) -> dict[str, Any] | None:
    """Why the activation `row` of the action `name` (its row `action`) must not run but go to the dead
    letters at once (the record of that), or None if it may run."""
    if action is None:
        return internal(f"The action {name} does not exist (any more).", code=2)
    max_age = float(action["scaling"].get("maxEventAge", DEFAULT_MAX_EVENT_AGE)) * 1000
    if row.get("event_time") and now_ms() - int(row["event_time"]) > max_age:
        return internal("The event is older than the action's maxEventAge.", code=2)
    return None


@dataclass
class Settled:
    """What follows an attempt: `state` queued (a retry, due at `values["not_before"]`), done or dead, and
    the values the activation's row gets (its record, `state` included)."""

    state: str
    values: dict[str, Any]

    @property
    def retry(self) -> bool:
        return self.state == "queued"


def settle(action: dict[str, Any], row: dict[str, Any], outcome: Outcome) -> Settled:
    """The record of an attempt that ran, and what follows it: another attempt after a backoff while the
    row has attempts left, else done; an event's activation (one with a rule) that failed is dead (a direct
    invoke is OpenWhisk's: done, whatever its outcome). Observes the attempt's latency and cold start."""
    FN_LATENCY.labels(action["name"]).observe((outcome.end - outcome.start) / 1000)
    if outcome.cold:
        FN_COLD_STARTS.labels(action["name"]).inc()
    record = record_of(action, row, outcome)
    attempt = int(row["attempt"])
    if outcome.status != 0 and attempt < int(row["max_attempts"]):
        record.update(state="queued", not_before=now_ms() + backoff_ms(attempt), attempt=attempt + 1)
        return Settled("queued", record)
    final = "done" if outcome.status == 0 or not row.get("rule") else "dead"
    return Settled(final, {**record, "state": final})


def count_retry(name: str) -> None:
    FN_ACTIVATIONS.labels(name, "retried").inc()


def count_final(name: str, values: dict[str, Any]) -> None:
    """Count a finished activation (its final `values`, with `state` and `status_code`)."""
    FN_ACTIVATIONS.labels(name, status_label(int(values.get("status_code") or 0), str(values["state"]))).inc()
