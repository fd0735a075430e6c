"""Functions in the database: actions, triggers and rules (entities), and activations, which are also the
queue (state queued → running → done | dead). Blocking calls; callers run them with `db.read`/`db.write`.

An activation made for a storage event carries a `dedup` key (rule id, event offset) that is unique, so
replaying the event log after a crash never makes a second activation for one event and rule.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from headrace.db.engine import Database
from headrace.db.schema import fn_actions, fn_activations, fn_rules, fn_triggers

TABLES: dict[str, Table] = {"actions": fn_actions, "triggers": fn_triggers, "rules": fn_rules}
JSON_COLUMNS = {
    "exec", "parameters", "annotations", "limits", "scaling", "feed_params", "result", "logs", "args",
}  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


def new_activation_id() -> str:
    return uuid.uuid4().hex


def _row(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    for k in JSON_COLUMNS & out.keys():
        if out[k] is not None:
            out[k] = json.loads(out[k])
    return out


def _dump(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (json.dumps(v, separators=(",", ":")) if k in JSON_COLUMNS and v is not None else v)
        for k, v in values.items()
    }


class Exists(Exception):
    """An entity of that name exists and overwrite was not asked for."""


class FunctionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- entities ---------------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        t = TABLES[kind]
        with self.db.reader.connect() as conn:
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.name == name)).first()
        return _row(row) if row else None

    def entities(self, kind: str, namespace: str, limit: int = 30, skip: int = 0) -> list[dict[str, Any]]:
        t = TABLES[kind]
        q = select(t).where(t.c.namespace == namespace).order_by(t.c.updated.desc(), t.c.name)
        if limit:
            q = q.limit(limit)
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q.offset(skip))]

    def all(self, kind: str) -> list[dict[str, Any]]:
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(select(TABLES[kind]))]

    def put(self, kind: str, namespace: str, name: str, values: dict[str, Any], *, overwrite: bool) -> dict[str, Any]:
        """Create, or (with overwrite) replace; the version goes up by one on each replace."""
        t = TABLES[kind]
        with self.db.engine.begin() as conn:
            old = conn.execute(select(t.c.id, t.c.version).where(t.c.namespace == namespace, t.c.name == name)).first()
            stamp = now_ms()
            if old is None:
                conn.execute(
                    insert(t).values(namespace=namespace, name=name, version=1, updated=stamp, **_dump(values))
                )
            elif not overwrite:
                raise Exists(name)
            else:
                conn.execute(
                    update(t).where(t.c.id == old.id).values(version=old.version + 1, updated=stamp, **_dump(values))
                )
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.name == name)).one()
        return _row(row)

    def remove(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        t = TABLES[kind]
        with self.db.engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.name == name)).first()
            if row is not None:
                conn.execute(delete(t).where(t.c.id == row.id))
        return _row(row) if row else None

    def set_rule_status(self, namespace: str, name: str, status: str) -> dict[str, Any] | None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(fn_rules)
                .where(fn_rules.c.namespace == namespace, fn_rules.c.name == name)
                .values(status=status, updated=now_ms())
            )
            row = conn.execute(
                select(fn_rules).where(fn_rules.c.namespace == namespace, fn_rules.c.name == name)
            ).first()
        return _row(row) if row else None

    def active_rules(self, namespace: str, trigger: str) -> list[dict[str, Any]]:
        q = select(fn_rules).where(
            fn_rules.c.namespace == namespace, fn_rules.c.trigger == trigger, fn_rules.c.status == "active"
        )
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # -- activations ------------------------------------------------------------------------------------

    def enqueue_in(self, conn: Connection, values: dict[str, Any]) -> bool:
        """Queue one activation in the caller's transaction; False if its dedup key exists already."""
        stamp = now_ms()
        row = {
            "entity": "action",
            "state": "queued",
            "created": stamp,
            "not_before": stamp,
            "annotations": [],
            "attempt": 1,
            "max_attempts": 1,
            "depth": 0,
            **values,
        }
        if row.get("dedup"):
            exists = conn.execute(
                select(fn_activations.c.activation_id).where(fn_activations.c.dedup == row["dedup"])
            ).first()
            if exists:
                return False
        try:
            with conn.begin_nested():
                conn.execute(insert(fn_activations).values(**_dump(row)))
        except IntegrityError:
            return False
        return True

    def record_in(self, conn: Connection, values: dict[str, Any]) -> None:
        """Write a finished activation (a trigger's, or a blocking invoke's) in one go."""
        conn.execute(
            insert(fn_activations).values(
                **_dump(
                    {"entity": "action", "annotations": [], "args": {}, "attempt": 1, "max_attempts": 1, "depth": 0}
                    | values
                )
            )
        )

    def queued(self, limit: int = 1000, after: tuple[int, str] | None = None) -> list[dict[str, Any]]:
        """Queued activations in queue order (oldest first), for loading the scheduler."""
        q = select(fn_activations).where(fn_activations.c.state == "queued")
        if after is not None:
            created, aid = after
            q = q.where(
                (fn_activations.c.created > created)
                | ((fn_activations.c.created == created) & (fn_activations.c.activation_id > aid))
            )
        q = q.order_by(fn_activations.c.created, fn_activations.c.activation_id).limit(limit)
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def running_to_queued(self) -> int:
        """At start: activations that were running when the server stopped go back to the queue as their next
        attempt (their worker died with the server), or to dead letters when no attempt is left."""
        with self.db.engine.begin() as conn:
            t = fn_activations
            n = conn.execute(
                update(t)
                .where(t.c.state == "running", t.c.attempt < t.c.max_attempts)
                .values(state="queued", attempt=t.c.attempt + 1, not_before=now_ms())
            ).rowcount
            conn.execute(
                update(t)
                .where(t.c.state == "running")
                .values(
                    state="dead",
                    status_code=3,
                    end=now_ms(),
                    result=json.dumps(
                        {"error": "The server stopped while the activation ran, and no attempt is left."}
                    ),
                )
            )
        return int(n or 0)

    def update(self, activation_id: str, **values: Any) -> None:
        with self.db.engine.begin() as conn:
            self.update_in(conn, activation_id, **values)

    def update_in(self, conn: Connection, activation_id: str, **values: Any) -> None:
        conn.execute(
            update(fn_activations).where(fn_activations.c.activation_id == activation_id).values(**_dump(values))
        )

    def activation(self, activation_id: str) -> dict[str, Any] | None:
        with self.db.reader.connect() as conn:
            row = conn.execute(select(fn_activations).where(fn_activations.c.activation_id == activation_id)).first()
        return _row(row) if row else None

    def activations(
        self,
        namespace: str,
        *,
        name: str | None = None,
        limit: int = 30,
        skip: int = 0,
        since: int | None = None,
        upto: int | None = None,
        states: tuple[str, ...] | None = None,
    ) -> list[dict[str, Any]]:
        t = fn_activations
        q = select(t).where(t.c.namespace == namespace)
        if name:
            q = q.where(t.c.name == name)
        if since is not None:
            q = q.where(t.c.created >= since)
        if upto is not None:
            q = q.where(t.c.created <= upto)
        if states:
            q = q.where(t.c.state.in_(states))
        q = q.order_by(t.c.created.desc(), t.c.activation_id.desc()).offset(skip)
        if limit:
            q = q.limit(limit)
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def count_by_state(self) -> dict[str, int]:
        t = fn_activations
        with self.db.reader.connect() as conn:
            return {s: int(n) for s, n in conn.execute(select(t.c.state, func.count()).group_by(t.c.state))}
