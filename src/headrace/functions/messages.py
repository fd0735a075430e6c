"""The activation transport's messages, pure: what is published to the activation topic for invokers and to
the results topic for whoever waits, and which partition an activation goes to. No Kafka client here (that is
functions/kafka_transport.py and functions/kafka_invoker.py).

The database row is the activation; a message only says "activation <id> wants running" on the partition
where its ordering and its warm workers are. An invoker reads the row, claims it and runs it, so a message
published twice (a controller restarted, a frontend retrying) costs a look-up, never a second run.

Keys and partitions (the partition is chosen here and given to the producer, so that every publisher of one
activation, in any process, picks the same one):

- an action with `ordered` scaling: key `/<ns>/<name>` + NUL + the activation's path (order key), partition
  = crc32(key) mod partitions: one path's activations are on one partition, in the order they were
  published, and so with one invoker at a time, which runs them one after the other;
- any other action: key `/<ns>/<name>`, partition = (crc32(key) + lane) mod partitions, with the lane taken
  from the activation id mod `lanes` (0: the number of partitions): one action's activations spread over
  `lanes` consecutive partitions, and so over the invokers that hold them.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import NotRequired, Protocol, TypedDict, cast

from headrace.functions.entities import ActionRow, ActivationRow, Scaling

ACTIVATION_TOPIC = "headrace-activations"
RESULTS_TOPIC = "headrace-activation-results"
INVOKER_GROUP = "headrace-invokers"

Actions = Mapping[tuple[str, str], ActionRow]


class ActivationMessage(TypedDict):
    """On the activation topic: activation `id` of action /`ns`/`name` wants running."""

    id: str
    ns: str
    name: str
    created: int
    orderKey: NotRequired[str]  # an `ordered` action's activation: its path


class ResultMessage(TypedDict):
    """On the results topic: activation `id` has finished (its record is in the database)."""

    id: str
    ns: str
    name: str
    state: str | None
    statusCode: int | None
    attempt: int | None


class Publisher(Protocol):
    """What the controller (and a frontend) hands queued activations to when invokers run them."""

    #: Activations this process has sent whose message Kafka has not acknowledged yet (nor refused).
    unacknowledged: set[str]

    def submit(self, rows: list[ActivationRow], actions: Actions) -> None:
        """Publish these queued activations (in the background, retried until Kafka takes them)."""

    async def publish(self, rows: list[ActivationRow], actions: Actions) -> None:
        """Publish these queued activations and return once Kafka has acknowledged them."""


def is_ordered(action: ActionRow | None) -> bool:
    return action is not None and Scaling.of(action).ordered


def placement(row: ActivationRow, action: ActionRow | None, partitions: int, lanes: int = 0) -> tuple[str, int]:
    """The message key and partition of activation `row` of `action` (its row, or None if unknown)."""
    name = f"/{row['namespace']}/{row['name']}"
    order_key = row.get("order_key")
    if is_ordered(action) and order_key:
        key = f"{name}\0{order_key}"
        return key, zlib.crc32(key.encode()) % partitions
    spread = lanes if 0 < lanes < partitions else partitions
    lane = int(str(row["activation_id"])[:8], 16) % spread
    return name, (zlib.crc32(name.encode()) + lane) % partitions


def activation_message(row: ActivationRow, action: ActionRow | None) -> bytes:
    body: ActivationMessage = {
        "id": row["activation_id"],
        "ns": row["namespace"],
        "name": row["name"],
        "created": int(row.get("created") or 0),
    }
    order_key = row.get("order_key")
    if is_ordered(action) and order_key:
        body["orderKey"] = order_key
    return json.dumps(body, separators=(",", ":")).encode()


def parse_activation(value: bytes | None) -> ActivationMessage | None:
    """The message's fields, or None if it is not an activation message (it is then skipped)."""
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in ("id", "ns", "name")):
        return None
    return cast(ActivationMessage, body)  # id, ns, name checked above


def result_message(row: ActivationRow) -> bytes:
    """A finished invocation (its record is in the database already), for blocking invokes; activations a rule
    made have no notice (no one waits for them)."""
    body: ResultMessage = {
        "id": row["activation_id"],
        "ns": row["namespace"],
        "name": row["name"],
        "state": row.get("state"),
        "statusCode": row.get("status_code"),
        "attempt": row.get("attempt"),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def parse_result(value: bytes | None) -> ResultMessage | None:
    try:
        body = json.loads(value or b"")
    except ValueError:
        return None
    return cast(ResultMessage, body) if isinstance(body, dict) and isinstance(body.get("id"), str) else None
