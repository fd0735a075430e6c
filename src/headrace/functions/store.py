"""Functions in the database: actions, triggers and rules (entities), and activations, which are also the
queue (state queued → running → done | dead). Blocking calls; callers run them with `db.read`/`db.write`.

An activation made for a storage event carries a `dedup` key (rule id, event offset) that is unique, so
replaying the event log after a crash never makes a second activation for one event and rule.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal, Unpack, overload

from sqlalchemy import Table, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import BindParameter

from headrace.db import driver
from headrace.db.batch import Batcher
from headrace.db.engine import Database
from headrace.db.schema import fn_actions, fn_activations, fn_packages, fn_rules, fn_triggers
from headrace.functions.entities import (
    ActionFields,
    ActionRow,
    ActivationFields,
    ActivationRow,
    EntityRow,
    PackageFields,
    PackageRow,
    RuleFields,
    RuleRow,
    TriggerFields,
    TriggerRow,
)

TABLES: dict[str, Table] = {
    "actions": fn_actions, "triggers": fn_triggers, "rules": fn_rules, "packages": fn_packages
}  # fmt: skip
Kind = Literal["actions", "triggers", "rules", "packages"]
JSON_COLUMNS = {
    "exec", "parameters", "annotations", "limits", "scaling", "feed_params", "result", "logs", "args", "binding",
}  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


def new_activation_id() -> str:
    return uuid.uuid4().hex


def _row(row: Any) -> Any:
    """A row's columns, its JSON columns decoded: the table's TypedDict (functions/entities.py), which the
    caller's annotation names."""
    out = dict(row._mapping)
    for k in JSON_COLUMNS & out.keys():
        if out[k] is not None:
            out[k] = json.loads(out[k])
    return out


def _dump(values: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: (json.dumps(v, separators=(",", ":")) if k in JSON_COLUMNS and v is not None else v)
        for k, v in values.items()
    }


# The statements of an activation's way (queue, claim, record) are built once and run with parameters:
# SQLAlchemy builds and caches the SQL of a statement object once, while a statement built per call costs
# more CPU (0.16 ms for a record's update) than SQLite takes to run it (issue 12's profiles).
_ACTIVATION: BindParameter[str] = bindparam("p_activation_id")
_DEDUP_EXISTS = select(fn_activations.c.activation_id).where(fn_activations.c.dedup == bindparam("p_dedup"))
_INSERT_ACTIVATION = insert(fn_activations)
_CLAIM_QUEUED = (
    update(fn_activations)
    .where(
        fn_activations.c.activation_id == _ACTIVATION,
        fn_activations.c.state == "queued",
        fn_activations.c.attempt == bindparam("p_attempt"),
    )
    .values(state="running", start=bindparam("p_start"))
)
_UPDATES: dict[tuple[tuple[str, ...], bool], Any] = {}


def _update(columns: tuple[str, ...], fenced: bool) -> Any:
    """UPDATE fn_activations SET <columns> WHERE activation_id = :p_activation_id (fenced: AND it is running
    as the attempt :p_attempt that started at :p_start); values under "v_<column>"."""
    stmt = _UPDATES.get((columns, fenced))
    if stmt is None:
        t = fn_activations
        where = [t.c.activation_id == _ACTIVATION]
        if fenced:
            where += [t.c.state == "running", t.c.attempt == bindparam("p_attempt"), t.c.start == bindparam("p_start")]
        stmt = update(t).where(*where).values({t.c[c]: bindparam(f"v_{c}") for c in columns})
        _UPDATES[(columns, fenced)] = stmt
    return stmt


def _update_params(activation_id: str, values: Mapping[str, Any]) -> dict[str, Any]:
    params = {f"v_{k}": v for k, v in _dump(values).items()}
    params["p_activation_id"] = activation_id
    return params


class Updates:
    """Updates of activation rows by this process (running marks, records), many to one call of the group
    commit (`headrace.db.batch`): while one such call is being written, the next gathers every update made
    meanwhile, so a burst of activations shares a savepoint and an executemany instead of a savepoint and a
    statement each. In order: an activation's updates land in the order they were made, after the calls of
    the group made before them."""

    def __init__(self, db: Database, store: FunctionStore) -> None:
        self._batch: Batcher[tuple[str, ActivationFields], None] = Batcher(
            lambda updates: db.group.run(store.update_many_in, updates)
        )

    async def update(self, activation_id: str, values: ActivationFields) -> None:
        """Update one activation's row; returns once that has committed."""
        await self._batch.submit((activation_id, values))


class Exists(Exception):
    """An entity of that name exists and overwrite was not asked for."""


class FunctionStore:
    def __init__(self, db: Database, *, via_kafka: bool = False) -> None:
        self.db = db
        #: Activations queued here are published to Kafka: they are written unpublished, and the publisher
        #: marks them once Kafka has acknowledged their message (`mark_published`).
        self.via_kafka = via_kafka

    # -- entities ---------------------------------------------------------------------------------------

    # Each takes the table's name and answers its rows (the overloads name their TypedDicts). Called through
    # db.read(store.get, kind, ...) mypy takes the first overload: the API calls them in a lambda instead.

    @overload
    def get(self, kind: Literal["actions"], namespace: str, name: str) -> ActionRow | None: ...
    @overload
    def get(self, kind: Literal["triggers"], namespace: str, name: str) -> TriggerRow | None: ...
    @overload
    def get(self, kind: Literal["rules"], namespace: str, name: str) -> RuleRow | None: ...
    @overload
    def get(self, kind: Literal["packages"], namespace: str, name: str) -> PackageRow | None: ...
    @overload
    def get(self, kind: Kind, namespace: str, name: str) -> EntityRow | None: ...
    def get(self, kind: Kind, namespace: str, name: str) -> EntityRow | None:
        t = TABLES[kind]
        with self.db.reader.connect() as conn:
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.name == name)).first()
        out: EntityRow | None = _row(row) if row else None
        return out

    @overload
    def entities(self, kind: Literal["actions"], namespace: str, limit: int = 30, skip: int = 0) -> list[ActionRow]: ...
    @overload
    def entities(
        self, kind: Literal["triggers"], namespace: str, limit: int = 30, skip: int = 0
    ) -> list[TriggerRow]: ...
    @overload
    def entities(self, kind: Literal["rules"], namespace: str, limit: int = 30, skip: int = 0) -> list[RuleRow]: ...
    @overload
    def entities(
        self, kind: Literal["packages"], namespace: str, limit: int = 30, skip: int = 0
    ) -> list[PackageRow]: ...
    def entities(self, kind: Kind, namespace: str, limit: int = 30, skip: int = 0) -> list[Any]:
        t = TABLES[kind]
        q = select(t).where(t.c.namespace == namespace).order_by(t.c.updated.desc(), t.c.name)
        if limit:
            q = q.limit(limit)
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q.offset(skip))]

    def count(self, kind: Kind, namespace: str) -> int:
        """How many entities of a kind the namespace has (OpenWhisk's `?count=true`)."""
        t = TABLES[kind]
        with self.db.reader.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(t.c.namespace == namespace)).scalar_one())

    def in_package(self, namespace: str, package: str) -> list[ActionRow]:
        """The actions inside a package (named "package/action")."""
        t = fn_actions
        q = select(t).where(t.c.namespace == namespace, t.c.name.startswith(package + "/", autoescape=True))
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q.order_by(t.c.name))]

    def shared_packages(self, limit: int = 0) -> list[PackageRow]:
        """Every published package (any namespace)."""
        t = fn_packages
        q = select(t).where(t.c.publish.is_(True)).order_by(t.c.namespace, t.c.name)
        if limit:
            q = q.limit(limit)
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    @overload
    def all(self, kind: Literal["actions"]) -> list[ActionRow]: ...
    @overload
    def all(self, kind: Literal["triggers"]) -> list[TriggerRow]: ...
    @overload
    def all(self, kind: Literal["rules"]) -> list[RuleRow]: ...
    @overload
    def all(self, kind: Literal["packages"]) -> list[PackageRow]: ...
    def all(self, kind: Kind) -> list[Any]:
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(select(TABLES[kind]))]

    @overload
    def put(
        self, kind: Literal["actions"], namespace: str, name: str, values: ActionFields, *, overwrite: bool
    ) -> ActionRow: ...
    @overload
    def put(
        self, kind: Literal["triggers"], namespace: str, name: str, values: TriggerFields, *, overwrite: bool
    ) -> TriggerRow: ...
    @overload
    def put(
        self, kind: Literal["rules"], namespace: str, name: str, values: RuleFields, *, overwrite: bool
    ) -> RuleRow: ...
    @overload
    def put(
        self, kind: Literal["packages"], namespace: str, name: str, values: PackageFields, *, overwrite: bool
    ) -> PackageRow: ...
    def put(self, kind: Kind, namespace: str, name: str, values: Mapping[str, Any], *, overwrite: bool) -> Any:
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

    @overload
    def remove(self, kind: Literal["actions"], namespace: str, name: str) -> ActionRow | None: ...
    @overload
    def remove(self, kind: Literal["triggers"], namespace: str, name: str) -> TriggerRow | None: ...
    @overload
    def remove(self, kind: Literal["rules"], namespace: str, name: str) -> RuleRow | None: ...
    @overload
    def remove(self, kind: Literal["packages"], namespace: str, name: str) -> PackageRow | None: ...
    @overload
    def remove(self, kind: Kind, namespace: str, name: str) -> EntityRow | None: ...
    def remove(self, kind: Kind, namespace: str, name: str) -> EntityRow | None:
        t = TABLES[kind]
        with self.db.engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.namespace == namespace, t.c.name == name)).first()
            if row is not None:
                conn.execute(delete(t).where(t.c.id == row.id))
        out: EntityRow | None = _row(row) if row else None
        return out

    def set_rule_status(self, namespace: str, name: str, status: str) -> RuleRow | None:
        with self.db.engine.begin() as conn:
            conn.execute(
                update(fn_rules)
                .where(fn_rules.c.namespace == namespace, fn_rules.c.name == name)
                .values(status=status, updated=now_ms())
            )
            row = conn.execute(
                select(fn_rules).where(fn_rules.c.namespace == namespace, fn_rules.c.name == name)
            ).first()
        out: RuleRow | None = _row(row) if row else None
        return out

    def stamp(self) -> tuple[Any, ...]:
        """Changes to actions, triggers or rules change this (rows and newest update of each table): how a
        process that did not make a change notices it."""
        with self.db.reader.connect() as conn:
            return tuple(
                tuple(conn.execute(select(func.count(), func.max(t.c.updated), func.max(t.c.version))).one())
                for t in TABLES.values()
            )

    def active_rules(self, namespace: str, trigger: str) -> list[RuleRow]:
        q = select(fn_rules).where(
            fn_rules.c.namespace == namespace, fn_rules.c.trigger == trigger, fn_rules.c.status == "active"
        )
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    # -- activations ------------------------------------------------------------------------------------

    def enqueue_in(self, conn: Connection, values: ActivationRow) -> bool:
        """Queue one activation in the caller's transaction; False if its dedup key exists already."""
        stamp = now_ms()
        defaults: ActivationFields = {
            "entity": "action",
            "state": "queued",
            "created": stamp,
            "not_before": stamp,
            "annotations": [],
            "attempt": 1,
            "max_attempts": 1,
            "depth": 0,
        }
        if self.via_kafka:
            defaults["published"] = False
        row: ActivationRow = {**defaults, **values}
        # Writers take turns (one SQLite writer; PostgreSQL's write lock): no other transaction can insert the
        # same dedup key between this check and the insert, so the insert needs no savepoint of its own.
        if row.get("dedup") and conn.execute(_DEDUP_EXISTS, {"p_dedup": row["dedup"]}).first():
            return False
        conn.execute(_INSERT_ACTIVATION, _dump(row))
        return True

    def redrive_in(self, conn: Connection, activation_id: str) -> ActivationFields:
        """A dead letter back to the queue as a fresh first attempt; the values it was given."""
        stamp = now_ms()
        values: ActivationFields = {
            "state": "queued", "attempt": 1, "not_before": stamp, "created": stamp, "status_code": None
        }  # fmt: skip
        if self.via_kafka:
            values["published"] = False
        self.update_in(conn, activation_id, **values)
        return values

    def mark_published(self, activation_ids: list[str]) -> None:
        """Kafka has acknowledged these activations' messages."""
        t = fn_activations
        with self.db.engine.begin() as conn:
            for at in range(0, len(activation_ids), 500):
                chunk = activation_ids[at : at + 500]
                conn.execute(
                    update(t).where(t.c.activation_id.in_(chunk), t.c.published.is_(False)).values(published=True)
                )

    def unpublished(self, created_before: int, limit: int = 1000) -> list[ActivationRow]:
        """Queued activations whose message Kafka never acknowledged, queued before `created_before` (ms):
        their publisher died between its commit and the acknowledgement."""
        t = fn_activations
        q = (
            select(t)
            .where(t.c.state == "queued", t.c.published.is_(False), t.c.created < created_before)
            .order_by(t.c.created, t.c.activation_id)
            .limit(limit)
        )
        with self.db.reader.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def record_in(self, conn: Connection, values: ActivationRow) -> None:
        """Write a finished activation (a trigger's, or a blocking invoke's) in one go."""
        conn.execute(
            insert(fn_activations).values(
                **_dump(
                    {"entity": "action", "annotations": [], "args": {}, "attempt": 1, "max_attempts": 1, "depth": 0}
                    | values
                )
            )
        )

    def queued(self, limit: int = 1000, after: tuple[int, str] | None = None) -> list[ActivationRow]:
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

    # -- activations run by invokers elsewhere (the Kafka transport) ------------------------------------
    # An invoker claims an activation before running it, and every later write of its attempt is fenced by
    # (state running, attempt, start): if the activation was handed back, or claimed again after the invoker
    # was presumed dead, the late write changes nothing, so exactly one final record is ever written.

    def claim_in(self, conn: Connection, activation_id: str, now: int) -> tuple[str, ActivationRow | None]:
        """In the caller's transaction: take an activation to run now. Returns (verdict, row):
        "run" (the row, now running with `start` = now: this call's claim), "later" (queued, due at
        row["not_before"]), "final" (done or dead: nothing to do), "missing", or "dead" (it was running
        when its invoker went away and no attempt is left: made dead here, the row as it is now)."""
        t = fn_activations
        found = conn.execute(select(t).where(t.c.activation_id == activation_id)).first()
        if found is None:
            return "missing", None
        row: ActivationRow = _row(found)
        if row["state"] in ("done", "dead"):
            return "final", row
        if row["state"] == "queued":
            if int(row["not_before"]) > now:
                return "later", row
            done = conn.execute(
                update(t)
                .where(t.c.activation_id == activation_id, t.c.state == "queued", t.c.attempt == row["attempt"])
                .values(state="running", start=now)
            ).rowcount
            if not done:
                return "final", row  # changed under us: whoever changed it runs it
            row.update({"state": "running", "start": now})
            return "run", row
        # running, and not by the caller: its invoker died or gave it up unfinished (a live invoker holds
        # its activations' offsets, so their messages reach no one else): run it as its next attempt
        fence: list[Any] = [t.c.activation_id == activation_id, t.c.state == "running", t.c.attempt == row["attempt"]]
        if row["start"] is not None:
            fence.append(t.c.start == row["start"])
        if int(row["attempt"]) < int(row["max_attempts"]):
            attempt = int(row["attempt"]) + 1
            if not conn.execute(update(t).where(*fence).values(attempt=attempt, start=now)).rowcount:
                return "final", row
            row.update({"attempt": attempt, "start": now})
            return "run", row
        dead: ActivationFields = {
            "state": "dead",
            "status_code": 3,
            "end": now,
            "result": {"error": "The invoker stopped while the activation ran, and no attempt is left."},
        }
        if not conn.execute(update(t).where(*fence).values(**_dump(dead))).rowcount:
            return "final", row
        return "dead", {**row, **dead}

    def claim_queued_in(self, conn: Connection, activation_id: str, attempt: int, start: int) -> bool:
        """In the caller's transaction: take a queued activation (its attempt `attempt`) to run from `start`;
        False if it is no longer queued at that attempt (someone else took it)."""
        return self.claim_queued_many_in(conn, [(activation_id, attempt, start)])[0]

    def update_fenced_in(
        self, conn: Connection, activation_id: str, fence: tuple[int, int], /, **values: Unpack[ActivationFields]
    ) -> bool:
        """Write an attempt's outcome (or hand it back) only if that attempt, `fence` = (attempt, start), is
        still the caller's claim."""
        return self.update_fenced_many_in(conn, [(activation_id, fence, values)])[0]

    def update(self, activation_id: str, **values: Unpack[ActivationFields]) -> None:
        with self.db.engine.begin() as conn:
            self.update_in(conn, activation_id, **values)

    def update_in(self, conn: Connection, activation_id: str, **values: Unpack[ActivationFields]) -> None:
        conn.execute(_update(tuple(values), False), _update_params(activation_id, values))

    def update_many_in(self, conn: Connection, updates: list[tuple[str, ActivationFields]]) -> list[None]:
        """`update_in` for each (activation id, values), in order; a run of updates of the same columns is one
        executemany."""
        i = 0
        while i < len(updates):
            columns = tuple(updates[i][1])
            j = i + 1
            while j < len(updates) and tuple(updates[j][1]) == columns:
                j += 1
            conn.execute(_update(columns, False), [_update_params(aid, values) for aid, values in updates[i:j]])
            i = j
        return [None] * len(updates)

    def claim_queued_many_in(self, conn: Connection, claims: list[tuple[str, int, int]]) -> list[bool]:
        """`claim_queued_in` for each (activation id, attempt, start), in one call (an invoker's batch)."""
        out = []
        for aid, attempt, start in claims:
            params = {"p_activation_id": aid, "p_attempt": attempt, "p_start": start}
            out.append(bool(driver.rowcount(conn, "claim-queued", lambda: _CLAIM_QUEUED, params)))
        return out

    def update_fenced_many_in(
        self, conn: Connection, writes: list[tuple[str, tuple[int, int], ActivationFields]]
    ) -> list[bool]:
        """`update_fenced_in` for each (activation id, fence, values), in one call (an invoker's batch)."""
        out = []
        for aid, fence, values in writes:
            columns = tuple(values)
            params = _update_params(aid, values)
            params["p_attempt"], params["p_start"] = fence
            build = functools.partial(_update, columns, True)
            out.append(bool(driver.rowcount(conn, f"update-fenced:{','.join(columns)}", build, params)))
        return out

    def activation(self, activation_id: str) -> ActivationRow | None:
        with self.db.reader.connect() as conn:
            row = conn.execute(select(fn_activations).where(fn_activations.c.activation_id == activation_id)).first()
        out: ActivationRow | None = _row(row) if row else None
        return out

    def activation_rows(self, ids: list[str]) -> list[ActivationRow | None]:
        """The rows of these activations, in the order of `ids` (None where there is none)."""
        found = {r["activation_id"]: r for r in self.activations_by_id(list(dict.fromkeys(ids)))}
        return [found.get(aid) for aid in ids]

    def activations_by_id(self, ids: list[str]) -> list[ActivationRow]:
        t = fn_activations
        out: list[ActivationRow] = []
        with self.db.reader.connect() as conn:
            for i in range(0, len(ids), 500):
                out += [_row(r) for r in conn.execute(select(t).where(t.c.activation_id.in_(ids[i : i + 500])))]
        return out

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
        by_subject: bool = False,
    ) -> list[ActivationRow]:
        """The namespace's activations (`by_subject`: those it made, in its own namespace or in a shared
        package's owner's, as the API lists them)."""
        t = fn_activations
        q = select(t).where((t.c.subject if by_subject else t.c.namespace) == namespace)
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
