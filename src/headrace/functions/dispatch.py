"""The functions API's back end (api.Functions), written once: invoking an action, firing a trigger and
redriving dead letters, and what the rows they queue are (`activation_row`, `fire_plan`: the controller's
feed makes its rows with them too). Each writes the activation rows first (a client that gets an activation id can
always read its record), then hands them to where they run. What differs between back ends is a few hooks:

- where actions and rules are read: the embedded controller's memory, or the database (a frontend whose
  activations run on `headrace invoker` processes: functions/gateway.py);
- where queued activations go (`send`): this process's scheduler, or the activation topic;
- how a blocking invoke learns of its record (`waiter`): the controller's own, or the results topic;
- `refuse`: a back end that runs no activations at all (a standalone frontend without Kafka) says so
  before anything is written.
"""

from __future__ import annotations

import asyncio
import json
from typing import NotRequired, TypedDict

from sqlalchemy.engine import Connection

from headrace.db.engine import Database
from headrace.functions import names, packages
from headrace.functions.entities import ActionRow, ActivationRow, RuleRow, Scaling, TriggerRow
from headrace.functions.model import JSONObject, as_dict
from headrace.functions.store import FunctionStore, new_activation_id, now_ms

Actions = dict[tuple[str, str], ActionRow]


def activation_row(
    a: ActionRow | None, namespace: str, action: str, args: JSONObject, *, depth: int = 0
) -> ActivationRow | None:
    """A new queued activation of the action row `a` (None if there is no such action)."""
    if a is None:
        return None
    retries = Scaling.of(a).retries
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
    a: ActionRow | None, namespace: str, action: str, args: JSONObject, cause: str | None
) -> ActivationRow:
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
    trigger: TriggerRow,
    payload: JSONObject,
    rules: list[RuleRow],
    actions: Actions,
) -> tuple[ActivationRow, list[ActivationRow]]:
    """Firing a trigger: its own (finished) activation record, and one queued activation per active rule."""
    trigger_id = new_activation_id()
    args = {**as_dict(trigger["parameters"]), **payload}
    rows = []
    logs = []
    for rule in rules:
        home = names.parse(rule["action"], namespace)
        row = activation_row(actions.get((home.namespace, home.path)), home.namespace, home.path, args)
        if row is None:
            logs.append(_rule_log(rule, None, 3, f"action {rule['action']} not found"))
            continue
        row.update({"rule": rule["name"], "trigger": trigger["name"], "cause": trigger_id, "subject": namespace})
        rows.append(row)
        logs.append(_rule_log(rule, row["activation_id"], 0, None))
    stamp = now_ms()
    record: ActivationRow = {
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


class _RuleLog(TypedDict):
    """A line of a trigger activation's logs: what one rule did (OpenWhisk's)."""

    statusCode: int
    success: bool
    rule: str
    action: str
    activationId: NotRequired[str]
    error: NotRequired[str]


def _rule_log(rule: RuleRow, activation_id: str | None, code: int, error: str | None) -> str:
    entry: _RuleLog = {
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


class Dispatcher:
    """invoke, fire and redrive over the hooks below (the defaults read entities from the database)."""

    db: Database
    store: FunctionStore
    max_workers: int

    # -- hooks ----------------------------------------------------------------------------------------------

    def refuse(self) -> None:
        """Raise if this back end runs no activations."""

    async def action(self, namespace: str, name: str) -> ActionRow | None:
        """The action with its package's parameters under its own."""
        found = await self.db.read(lambda: self.store.get("actions", namespace, name))
        pkg = name.rpartition("/")[0]
        if found is None or not pkg:
            return found
        holder = await self.db.read(lambda: self.store.get("packages", namespace, pkg))
        return packages.inherit(found, {(namespace, pkg): holder} if holder else {})

    async def active_rules(self, namespace: str, trigger: str) -> list[RuleRow]:
        return await self.db.read(self.store.active_rules, namespace, trigger)

    def waiter(self, activation_id: str, namespace: str) -> asyncio.Future[ActivationRow]:
        """A future of the activation's final record, counted in the namespace's invocations in flight."""
        raise NotImplementedError

    def unwait(self, activation_id: str, future: asyncio.Future[ActivationRow]) -> None:
        """The invocation was not queued after all: its waiter goes."""
        future.cancel()

    async def send(self, rows: list[ActivationRow], actions: Actions) -> None:
        """Hand these queued activations (their rows committed) to where they run."""
        raise NotImplementedError

    async def reload(self) -> None:
        """An entity changed through the API."""

    def invocations_in_flight(self, namespace: str) -> int:
        """The namespace's invocations through the API that have not finished (OpenWhisk's in-flight count)."""
        return 0

    # -- the API's calls --------------------------------------------------------------------------------------

    async def invoke(
        self, namespace: str, action: str, params: JSONObject, *, cause: str | None = None, subject: str | None = None
    ) -> tuple[str, asyncio.Future[ActivationRow]]:
        """Queue one activation of `action` (no retries, as OpenWhisk); its id and a future of its record."""
        self.refuse()
        a = await self.action(namespace, action)
        if a is None:
            raise LookupError(action)
        row = invocation_row(a, namespace, action, params, cause)
        row["subject"] = subject or namespace  # who invoked it: whose list shows it
        aid = str(row["activation_id"])
        fut = self.waiter(aid, row["subject"])
        try:
            await self.db.group.run(self.store.enqueue_in, row)
        except BaseException:
            self.unwait(aid, fut)
            raise
        await self.send([row], {(namespace, action): a})
        return aid, fut

    async def fire(self, namespace: str, trigger: TriggerRow, payload: JSONObject) -> str | None:
        """Fire a trigger: one activation per active rule (with the action's retries); None if no rule."""
        self.refuse()
        rules = await self.active_rules(namespace, trigger["name"])
        if not rules:
            return None
        actions: Actions = {}
        for rule in rules:
            home = names.parse(rule["action"], namespace)
            found = await self.action(home.namespace, home.path)
            if found is not None:
                actions[(home.namespace, home.path)] = found
        record, rows = fire_plan(namespace, trigger, payload, rules, actions)

        def write(conn: Connection) -> None:
            self.store.record_in(conn, record)
            for row in rows:
                self.store.enqueue_in(conn, row)

        await self.db.group.run(write)
        await self.send(rows, actions)
        return str(record["activation_id"])

    async def redrive(self, namespace: str, ids: list[str] | None) -> int:
        """Dead letters back to the queue as a fresh first attempt (all of the namespace's, or those named)."""
        self.refuse()
        dead = await self.db.read(self.store.activations, namespace, limit=0, states=("dead",))
        chosen = [d for d in dead if ids is None or d["activation_id"] in ids]
        actions: Actions = {}
        queued: list[ActivationRow] = []
        for d in chosen:
            values = await self.db.group.run(self.store.redrive_in, d["activation_id"])
            queued.append({**d, **values})
            key = (namespace, d["name"])
            if key not in actions:
                found = await self.action(namespace, d["name"])
                if found is not None:
                    actions[key] = found
        await self.send(queued, actions)
        return len(queued)
