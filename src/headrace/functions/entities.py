"""Typed views of the functions layer's rows, as storage has `Inode`, so that mypy checks the engine's work
on them.

The rows of fn_actions, fn_triggers, fn_rules and fn_activations (functions/store.py reads them, JSON
columns decoded) are TypedDicts: they are handed on as they are read (to the runner, the scheduler's
queues, the records' rendering) and an activation's row is updated in place as it is claimed and
retried, so a TypedDict checks every key and value type at no cost at run time and with no conversion at
each hand-over. What the engine computes from a row is a frozen dataclass read once from it, with the
model's defaults for what the row does not name (`Scaling`; functions/model.py has the defaults).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from headrace.functions.model import SCALING, Exec, JSONObject, KeyValue, Limits, ScalingSettings


class ActionFields(TypedDict):
    """What an action PUT stores (functions/api.py validates it with functions/model.py)."""

    exec: Exec
    parameters: list[KeyValue]
    annotations: list[KeyValue]
    limits: Limits
    scaling: ScalingSettings


class ActionRow(ActionFields):
    """A version of an action, as fn_actions holds it: what the runner runs."""

    id: int
    namespace: str
    name: str
    version: int  # up by one on every update
    updated: int  # ms since the epoch


class TriggerFields(TypedDict):
    parameters: list[KeyValue]
    annotations: list[KeyValue]
    feed: str | None  # STORAGE_FEED for a trigger fed by storage events
    feed_params: JSONObject | None  # the feed's filter (model.feed_filter)


class TriggerRow(TriggerFields):
    id: int
    namespace: str
    name: str
    version: int
    updated: int


class RuleFields(TypedDict):
    trigger: str  # names in the rule's namespace
    action: str
    status: str  # active | inactive


class RuleRow(RuleFields):
    id: int
    namespace: str
    name: str
    version: int
    updated: int


class Binding(TypedDict):
    """The package a binding is bound to."""

    namespace: str
    name: str


class PackageFields(TypedDict):
    """A package (or, with `binding`, a binding of another package): its parameters are defaults of its
    actions' (an action's own override them, a binding's override the bound package's); `publish` shares it
    with every namespace, read only."""

    parameters: list[KeyValue]
    annotations: list[KeyValue]
    binding: Binding | None
    publish: bool


class PackageRow(PackageFields):
    id: int
    namespace: str
    name: str
    version: int
    updated: int


#: A row of any entity table (store.get's answer for a kind not known before run time).
EntityRow = ActionRow | TriggerRow | RuleRow | PackageRow


class ActivationFields(TypedDict, total=False):
    """Columns of fn_activations as they are written: any of them (an attempt's record, a state change)."""

    entity: str  # action | trigger
    version: str
    subject: str
    state: str  # queued | running | done | dead
    created: int  # ms: when it was queued
    not_before: int  # ms: a retry waits until then
    start: int | None
    end: int | None
    status_code: int | None  # 0 success, 1 application, 2 developer, 3 internal error
    result: JSONObject | None
    logs: list[str] | None
    annotations: list[KeyValue]
    args: JSONObject  # what it runs with: parameters and the event's fields
    attempt: int
    max_attempts: int
    cause: str | None
    rule: str | None
    trigger: str | None
    event_offset: int | None
    event_time: int | None  # ms
    order_key: str | None
    depth: int
    dedup: str | None
    published: bool


class ActivationRow(ActivationFields):
    """An activation: a row of fn_activations (whole when read; a new one names what it sets)."""

    activation_id: str
    namespace: str
    name: str  # the action's (or the trigger's)


def _default(name: str) -> float:
    return SCALING[name][2]


@dataclass(frozen=True)
class Scaling:
    """An action's scaling: its workers (minScale..maxScale, down to zero after idleSeconds without work),
    its retries, the oldest event it still runs for (maxEventAge, seconds), and `ordered` (one path's
    activations one at a time, in event order)."""

    min_scale: int = int(_default("minScale"))
    max_scale: int = int(_default("maxScale"))
    retries: int = int(_default("retries"))
    max_event_age: float = float(_default("maxEventAge"))
    idle_seconds: float = float(_default("idleSeconds"))
    ordered: bool = False

    @classmethod
    def of(cls, action: Mapping[str, Any] | None) -> Scaling:
        """The scaling of an action row (the defaults for None or a row without one)."""
        raw: Mapping[str, Any] = (action.get("scaling") if action is not None else None) or {}
        return cls(
            min_scale=int(raw.get("minScale", cls.min_scale)),
            max_scale=int(raw.get("maxScale", cls.max_scale)),
            retries=int(raw.get("retries", cls.retries)),
            max_event_age=float(raw.get("maxEventAge", cls.max_event_age)),
            idle_seconds=float(raw.get("idleSeconds", cls.idle_seconds)),
            ordered=bool(raw.get("ordered", False)),
        )
