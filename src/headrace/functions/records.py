"""The JSON clients get for functions entities and activations, in OpenWhisk's shapes (plus headrace's
own fields, named where they are added). Pure: rows from `FunctionStore` in, dicts out.

An activation record is OpenWhisk's: namespace, name, version, subject, activationId, start, end, duration,
response {status, statusCode 0..3, success, result}, logs, annotations, cause. headrace adds `attempt`,
`state` (queued | running | done | dead: OpenWhisk only ever shows finished ones) and `eventOffset` for
activations made by a storage event.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from headrace.functions.entities import ActionRow, ActivationRow, EntityRow, RuleRow, TriggerRow
from headrace.functions.model import (
    LIMITS,
    MAX_PARAMETERS_BYTES,
    SCALING,
    STORAGE_FEED,
    Exec,
    JSONObject,
    KeyValue,
    Limits,
    ScalingSettings,
)

STATUS = {0: "success", 1: "application error", 2: "action developer error", 3: "whisk internal error"}
FINAL_STATES = ("done", "dead")

# -- the documents (TypedDicts: the JSON as it goes out, its keys checked by mypy) ------------------------


class Response(TypedDict):
    """An activation's `response`; no statusCode while it has not run."""

    status: str
    statusCode: NotRequired[int]
    success: bool
    result: JSONObject


class _ActivationIdentity(TypedDict):
    """What every rendering of an activation starts with: whose, which, when."""

    namespace: str
    name: str
    version: str
    subject: str
    activationId: str
    start: int
    end: int
    duration: int


class ActivationSummary(_ActivationIdentity):
    """A listing's entry (OpenWhisk's `docs=false`)."""

    statusCode: int | None
    annotations: list[KeyValue]
    publish: bool
    cause: NotRequired[str]
    attempt: int  # headrace's: attempt, state, eventOffset
    state: str
    eventOffset: NotRequired[int]


class Activation(_ActivationIdentity):
    """The activation record, as GET .../activations/{id} and a blocking invoke return it."""

    response: Response
    logs: list[str]
    annotations: list[KeyValue]
    publish: bool
    cause: NotRequired[str]
    attempt: int  # headrace's: attempt, state, eventOffset
    state: str
    eventOffset: NotRequired[int]


class DeadLetter(Activation):
    args: JSONObject  # headrace's: what a redrive runs it with


class ActivationResult(TypedDict):
    result: JSONObject
    status: str
    success: bool


class _Entity(TypedDict):
    namespace: str
    name: str
    version: str
    annotations: list[KeyValue]
    publish: bool
    updated: int


class ActionDocument(_Entity):
    exec: Exec
    parameters: list[KeyValue]
    limits: Limits
    scaling: ScalingSettings  # headrace's own


class EntityRef(TypedDict):
    name: str
    path: str


class RuleStatus(TypedDict):
    action: EntityRef
    status: str


class TriggerDocument(_Entity):
    parameters: list[KeyValue]
    limits: JSONObject  # always {}
    feed: NotRequired[str]  # headrace's, for a trigger fed by the storage feed
    feedParameters: NotRequired[JSONObject]
    rules: NotRequired[dict[str, RuleStatus]]


class RuleDocument(_Entity):
    status: str
    trigger: EntityRef
    action: EntityRef


class Range(TypedDict):
    min: float
    max: float
    default: float


class NamespaceLimits(TypedDict):
    """GET .../namespaces/{ns}/limits: OpenWhisk's, plus the defaults, the scaling ranges and the worker cap."""

    concurrentInvocations: int
    invocationsPerMinute: int
    firesPerMinute: int
    minActionTimeout: int
    maxActionTimeout: int
    minActionMemory: int
    maxActionMemory: int
    minActionLogs: int
    maxActionLogs: int
    minActionConcurrency: int
    maxActionConcurrency: int
    maxParameterSize: int
    maxPayloadSize: int
    maxResultSize: int
    defaults: Limits
    scaling: dict[str, Range]
    maxWorkers: int


def status_name(code: int | None) -> str:
    return STATUS.get(code if code is not None else 3, "whisk internal error")


def response(row: ActivationRow) -> Response:
    """The record's `response`: that of the last attempt that ran. An activation that has not run yet has
    its state as status and no statusCode."""
    code = row.get("status_code")
    if code is None:
        return {"status": str(row.get("state") or "queued"), "success": False, "result": {}}
    code = int(code)
    result = row.get("result")
    return {
        "status": status_name(code),
        "statusCode": code,
        "success": code == 0,
        "result": result if isinstance(result, dict) else {},
    }


def _times(row: ActivationRow) -> tuple[int, int, int]:
    start = int(row.get("start") or row.get("created") or 0)
    end = int(row.get("end") or 0) if row.get("state") in FINAL_STATES or row.get("status_code") is not None else 0
    return start, end, max(0, end - start) if end else 0


class _Cause(TypedDict, total=False):
    cause: str


class _EventOffset(TypedDict, total=False):
    eventOffset: int


def _cause(row: ActivationRow) -> _Cause:
    cause = row.get("cause")
    return {"cause": cause} if cause else {}


def _event_offset(row: ActivationRow) -> _EventOffset:
    offset = row.get("event_offset")
    return {"eventOffset": int(offset)} if offset is not None else {}


def _identity(row: ActivationRow) -> _ActivationIdentity:
    """The record's `namespace` is the one it is kept in, the caller's (its subject), as OpenWhisk: an
    invocation of a shared action (another namespace's, /whisk.system's) is the caller's activation; the
    `path` annotation names the action in its owner's namespace."""
    start, end, duration = _times(row)
    return {
        "namespace": str(row.get("subject") or row["namespace"]),
        "name": row["name"],
        "version": str(row.get("version") or "0.0.1"),
        "subject": str(row.get("subject") or row["namespace"]),
        "activationId": row["activation_id"],
        "start": start,
        "end": end,
        "duration": duration,
    }


class _ActivationTail(TypedDict):
    """What every rendering of an activation ends with (after its own fields), in this order."""

    annotations: list[KeyValue]
    publish: bool
    cause: NotRequired[str]
    attempt: int
    state: str
    eventOffset: NotRequired[int]


def _tail(row: ActivationRow) -> _ActivationTail:
    return {
        "annotations": list(row.get("annotations") or []),
        "publish": False,
        **_cause(row),
        "attempt": int(row.get("attempt") or 1),
        "state": str(row.get("state") or "queued"),
        **_event_offset(row),
    }


def activation(row: ActivationRow) -> Activation:
    """The full activation record."""
    return {**_identity(row), "response": response(row), "logs": list(row.get("logs") or []), **_tail(row)}


def activation_summary(row: ActivationRow) -> ActivationSummary:
    """A listing's entry (OpenWhisk's `docs=false`): no result, no logs, the status code at the top."""
    return {**_identity(row), "statusCode": row.get("status_code"), **_tail(row)}


def dead_letter(row: ActivationRow) -> DeadLetter:
    """A dead letter: the activation record, plus the arguments it runs with when redriven (headrace's)."""
    return {**activation(row), "args": dict(row.get("args") or {})}


def activation_result(row: ActivationRow) -> ActivationResult:
    """GET .../activations/{id}/result."""
    r = response(row)
    return {"result": r["result"], "status": r["status"], "success": r["success"]}


def namespace_limits(concurrent: int, invokes_per_minute: int, fires_per_minute: int, workers: int) -> NamespaceLimits:
    """A namespace's limits (the server's settings) and the ranges of an action's (functions/model.py)."""
    (t_lo, t_hi, t_d), (m_lo, m_hi, m_d) = LIMITS["timeout"], LIMITS["memory"]
    (l_lo, l_hi, l_d), (c_lo, c_hi, c_d) = LIMITS["logs"], LIMITS["concurrency"]
    return {
        "concurrentInvocations": concurrent,
        "invocationsPerMinute": invokes_per_minute,
        "firesPerMinute": fires_per_minute,
        "minActionTimeout": t_lo,
        "maxActionTimeout": t_hi,
        "minActionMemory": m_lo,
        "maxActionMemory": m_hi,
        "minActionLogs": l_lo,
        "maxActionLogs": l_hi,
        "minActionConcurrency": c_lo,
        "maxActionConcurrency": c_hi,
        "maxParameterSize": MAX_PARAMETERS_BYTES,
        "maxPayloadSize": MAX_PARAMETERS_BYTES,
        "maxResultSize": MAX_PARAMETERS_BYTES,
        "defaults": {"timeout": t_d, "memory": m_d, "logs": l_d, "concurrency": c_d},
        "scaling": {k: {"min": lo, "max": hi, "default": d} for k, (lo, hi, d) in SCALING.items()},
        "maxWorkers": workers,
    }


# -- entities ---------------------------------------------------------------------------------------------


def _version(row: EntityRow) -> str:
    return f"0.0.{int(row.get('version') or 1)}"


def action(row: ActionRow, *, code: bool = True) -> ActionDocument:
    """An action as GET returns it (`code=False`: without exec.code, as `?code=false` asks)."""
    ex = row["exec"].copy()
    scaling: ScalingSettings = row["scaling"].copy() if row.get("scaling") else {}
    if not code:
        ex.pop("code", None)
    return {
        "namespace": row["namespace"],
        "name": row["name"],
        "version": _version(row),
        "exec": ex,
        "parameters": list(row.get("parameters") or []),
        "annotations": list(row.get("annotations") or []),
        "limits": row["limits"].copy(),
        "scaling": {**scaling, "ordered": bool(scaling.get("ordered", False))},  # headrace's own
        "publish": False,
        "updated": int(row.get("updated") or 0),
    }


def action_summary(row: ActionRow) -> ActionDocument:
    """An action in a listing: no code (OpenWhisk lists exec as {"binary"} only; the kind is kept here)."""
    full = action(row, code=False)
    ex = full["exec"]
    full["exec"] = {"kind": ex.get("kind", "python:3"), "binary": bool(ex.get("binary", False))}
    if ex.get("kind") == "sequence":
        full["exec"]["components"] = ex.get("components", [])
    return full


def trigger(row: TriggerRow, rules: list[RuleRow] | None = None) -> TriggerDocument:
    """A trigger; with `rules` (the namespace's rules on it), OpenWhisk's `rules` map. A trigger fed by
    the storage feed also carries headrace's `feed` and `feedParameters`."""
    annotations = list(row.get("annotations") or [])
    out: TriggerDocument = {
        "namespace": row["namespace"],
        "name": row["name"],
        "version": _version(row),
        "parameters": list(row.get("parameters") or []),
        "annotations": annotations,
        "limits": {},
        "publish": False,
        "updated": int(row.get("updated") or 0),
    }
    feed = row.get("feed")
    if feed:
        if not any(a.get("key") == "feed" for a in annotations):
            out["annotations"] = [*annotations, {"key": "feed", "value": feed}]
        out["feed"] = feed
        out["feedParameters"] = row.get("feed_params") or {}
    if rules is not None:
        out["rules"] = {
            f"{r['namespace']}/{r['name']}": {
                "action": {"name": r["action"], "path": r["namespace"]},
                "status": r["status"],
            }
            for r in rules
        }
    return out


def rule(row: RuleRow) -> RuleDocument:
    return {
        "namespace": row["namespace"],
        "name": row["name"],
        "version": _version(row),
        "status": row["status"],
        "trigger": {"name": row["trigger"], "path": row["namespace"]},
        "action": {"name": row["action"], "path": row["namespace"]},
        "annotations": [],
        "publish": False,
        "updated": int(row.get("updated") or 0),
    }


def is_storage_feed(name: Any) -> bool:
    """Whether a feed name names headrace's storage feed (with or without the leading slash)."""
    return isinstance(name, str) and "/" + name.strip("/") == STORAGE_FEED
