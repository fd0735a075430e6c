"""The namespace's side of tape: which files wait for a flush, may be evicted or are to be staged, and the
transactions that record each step with its event. Blocking calls, as `Namespace`'s; run them through
`Database.write` / `Database.read`.

A file's tape state lives on its inode: `qos` is the target (disk | tape | disk+tape), `locality` where its
data is (ONLINE: disk only, NEARLINE: tape only, ONLINE_AND_NEARLINE: both), `hsm_uri` its tape copy.
Every step is fenced on what the step started from (generation, blob, locality): a file overwritten, moved
to another pool or deleted while its copy was being made is left alone, and a tape copy nobody refers to
goes to `hsm_trash` for the HSM's `remove`. Each step is an ATTRIB event whose `detail` says what happened
(`tape`: store | restore | evict | remove), so SSE watchers, triggers, CloudEvents and billing see it.

The staging queue is `bulk_targets` with activity STAGE, whoever made the request (the bulk API, the tape
REST API, a read at the door, a QoS change): pools claim targets with a lease, so a pool that dies loses
none of them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, or_, select, update

from headrace.auth.subject import Subject
from headrace.db.schema import bulk_requests, bulk_targets, checksums, flush_failures, hsm_trash, inodes, pins
from headrace.events.model import EventKind
from headrace.storage.namespace import REGULAR, Inode, Namespace, now_ms, trash_tape_copy
from headrace.storage.paths import join

TAPE_QOS = ("tape", "disk+tape")
#: Who the tape steps are done by, in their events (dCache bills them to the pool).
SYSTEM = Subject("headrace", 0, (0,), admin=True)
#: A staged file stays on disk at least this long when its request gives no lifetime (dCache's default pin).
DEFAULT_PIN_MS = 24 * 3600 * 1000
ACTIVE = ("CREATED", "RUNNING")


def _path(conn: Connection, parent_id: int | None, name: str, cache: dict[int, str]) -> str:
    """The path of an entry called `name` in directory `parent_id`."""
    if parent_id is None:
        return "/"
    chain: list[tuple[int, str]] = []
    pid: int | None = parent_id
    while pid is not None and pid not in cache:
        row = conn.execute(select(inodes.c.parent_id, inodes.c.name).where(inodes.c.id == pid)).one()
        chain.append((pid, row.name))
        pid = row.parent_id
    base = cache.get(pid, "/") if pid is not None else "/"
    for did, dname in reversed(chain):
        base = join(base, dname) if dname else "/"
        cache[did] = base
    return join(cache[parent_id], name)


def _nodes(conn: Connection, rows: Sequence[Any]) -> list[Inode]:
    cache: dict[int, str] = {}
    out = [Inode.from_row(r, _path(conn, r.parent_id, r.name, cache)) for r in rows]
    by_id = {n.id: n for n in out}
    if by_id:
        for r in conn.execute(select(checksums).where(checksums.c.inode_id.in_(list(by_id)))):
            by_id[r.inode_id].checksums[r.type] = r.value
    return out


def _event(ns: Namespace, conn: Connection, node: Inode, what: str, **detail: Any) -> None:
    ns._emit(
        conn,
        (EventKind.ATTRIB,),
        node,
        SYSTEM,
        detail={"changed": ["locality"], "tape": what, "locality": node.locality, **detail},
        cause=f"tape:{what}",
    )


def _fenced(node: Inode) -> Any:
    return and_(
        inodes.c.id == node.id,
        inodes.c.generation == node.generation,
        inodes.c.locality == node.locality,
        inodes.c.blob.is_(None) if node.blob is None else inodes.c.blob == node.blob,
    )


# -- flush ----------------------------------------------------------------------------------------------------


def flush_queue(ns: Namespace, pool: str, limit: int) -> list[Inode]:
    """Files of `pool` whose QoS wants a tape copy they do not have, oldest first, but for those whose last
    flush failed and that wait out their backoff."""
    now = now_ms()
    waiting = select(flush_failures.c.inode_id).where(flush_failures.c.not_before > now)
    q = (
        select(inodes)
        .where(
            inodes.c.qos.in_(TAPE_QOS),
            inodes.c.locality == "ONLINE",
            inodes.c.type == REGULAR,
            inodes.c.pool == pool,
            inodes.c.blob.is_not(None),
            inodes.c.id.not_in(waiting),
        )
        .order_by(inodes.c.mtime)
        .limit(limit)
    )
    with ns.db.reader.connect() as conn:
        return _nodes(conn, conn.execute(q).all())


def flushed(ns: Namespace, node: Inode, uri: str, *, pool: str, hsm: dict[str, str], millis: int) -> bool:
    """Record `uri` as the tape copy of `node` as it was when the copy started; False (and the copy goes to
    the trash) if the file changed since."""
    with ns.db.engine.begin() as conn:
        n = conn.execute(
            update(inodes).where(_fenced(node)).values(hsm_uri=uri, locality="ONLINE_AND_NEARLINE", accessed=now_ms())
        ).rowcount
        if n != 1:
            trash_tape_copy(conn, uri)
            return False
        conn.execute(delete(flush_failures).where(flush_failures.c.inode_id == node.id))
        node.hsm_uri, node.locality = uri, "ONLINE_AND_NEARLINE"
        _event(ns, conn, node, "store", hsm=hsm, uri=uri, pool=pool, transferTime=millis)
        return True


def flush_failed(ns: Namespace, node: Inode, error: str) -> int:
    """Count a failed flush of `node` and set when it may be tried again (doubling from 1 s up to 10 min);
    the attempts so far."""
    with ns.db.engine.begin() as conn:
        row = conn.execute(select(flush_failures.c.attempts).where(flush_failures.c.inode_id == node.id)).first()
        attempts = (row.attempts if row else 0) + 1
        wait = min(600_000, 1000 * 2 ** (attempts - 1))
        values = {"attempts": attempts, "not_before": now_ms() + wait, "error": error}
        if row is None:
            if conn.execute(select(inodes.c.id).where(inodes.c.id == node.id)).first() is None:
                return attempts  # deleted meanwhile: nothing to retry
            conn.execute(insert(flush_failures).values(inode_id=node.id, **values))
        else:
            conn.execute(update(flush_failures).where(flush_failures.c.inode_id == node.id).values(**values))
        return attempts


def flush_failures_of(ns: Namespace, ids: list[int]) -> dict[int, dict[str, Any]]:
    """The failed flushes of these files: attempts, next try (ms) and the last error."""
    if not ids:
        return {}
    with ns.db.reader.connect() as conn:
        rows = conn.execute(select(flush_failures).where(flush_failures.c.inode_id.in_(ids))).all()
    return {r.inode_id: {"attempts": r.attempts, "notBefore": r.not_before, "error": r.error} for r in rows}


# -- eviction ---------------------------------------------------------------------------------------------------


def _unpinned(now: int) -> Any:
    live = select(pins.c.inode_id).where(or_(pins.c.expires.is_(None), pins.c.expires > now))
    return inodes.c.id.not_in(live)


def eviction_candidates(ns: Namespace, pool: str, limit: int) -> list[Inode]:
    """Files of `pool` whose disk copy is a cache (QoS tape, on tape too, not pinned), least recently used
    first."""
    q = (
        select(inodes)
        .where(
            inodes.c.qos == "tape",
            inodes.c.locality == "ONLINE_AND_NEARLINE",
            inodes.c.pool == pool,
            _unpinned(now_ms()),
        )
        .order_by(inodes.c.accessed.is_(None).desc(), inodes.c.accessed, inodes.c.id)
        .limit(limit)
    )
    with ns.db.reader.connect() as conn:
        return _nodes(conn, conn.execute(q).all())


def evicted(ns: Namespace, node: Inode, *, pool: str) -> bool:
    """Drop the disk copy of `node` from the namespace (the caller then removes the blob): False if the file
    changed, was pinned or read meanwhile (its `accessed` moved)."""
    with ns.db.engine.begin() as conn:
        n = conn.execute(
            update(inodes)
            .where(
                _fenced(node),
                inodes.c.qos == "tape",
                inodes.c.accessed.is_(None) if node.accessed is None else inodes.c.accessed == node.accessed,
                _unpinned(now_ms()),
            )
            .values(pool=None, blob=None, locality="NEARLINE")
        ).rowcount
        if n != 1:
            return False
        node.locality = "NEARLINE"
        _event(ns, conn, node, "evict", pool=pool)
        node.pool = node.blob = None
        return True


def touch(conn: Connection, ids: list[int]) -> None:
    """Reads of files whose disk copy may be evicted: they become the most recently used (for
    `GroupCommit.post`, in its transaction)."""
    conn.execute(update(inodes).where(inodes.c.id.in_(ids)).values(accessed=now_ms()))


# -- stage ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageTarget:
    id: int
    request_id: str
    owner: str
    pnfsid: str | None
    pin_ms: int


def queue_stage(ns: Namespace, owner: str, node: Inode, *, api: str) -> int:
    """A STAGE target for `node` (a read at the door, a QoS change), unless one is queued or running: the
    target's id, to wait on."""
    with ns.db.engine.begin() as conn:
        row = conn.execute(
            select(bulk_targets.c.id).where(
                bulk_targets.c.activity == "STAGE",
                bulk_targets.c.pnfsid == node.pnfsid,
                bulk_targets.c.state.in_(ACTIVE),
            )
        ).first()
        if row is not None:
            return int(row.id)
        rid, t = uuid.uuid4().hex, now_ms()
        conn.execute(
            insert(bulk_requests).values(
                id=rid,
                owner=owner,
                api=api,
                activity="STAGE",
                arguments=json.dumps({"pin_ms": 0}),
                expand="none",
                status="STARTED",
                created=t,
                started=t,
            )
        )
        cur = conn.execute(
            insert(bulk_targets)
            .values(
                request_id=rid,
                activity="STAGE",
                owner=owner,
                path=node.path,
                pnfsid=node.pnfsid,
                state="CREATED",
                created=t,
            )
            .returning(bulk_targets.c.id)
        )
        return int(cur.scalar_one())


def target_state(ns: Namespace, target: int) -> tuple[str, str | None]:
    with ns.db.reader.connect() as conn:
        row = conn.execute(select(bulk_targets.c.state, bulk_targets.c.error).where(bulk_targets.c.id == target)).one()
    return str(row.state), row.error


def claim_stages(ns: Namespace, me: str, limit: int, lease_ms: int) -> list[StageTarget]:
    """Take up to `limit` STAGE targets nobody holds (new, or whose holder's lease ran out)."""
    now = now_ms()
    claimed: list[StageTarget] = []
    with ns.db.engine.begin() as conn:
        rows = conn.execute(
            select(bulk_targets, bulk_requests.c.arguments)
            .join(bulk_requests, bulk_requests.c.id == bulk_targets.c.request_id)
            .where(
                bulk_targets.c.activity == "STAGE",
                or_(
                    bulk_targets.c.state == "CREATED",
                    and_(bulk_targets.c.state == "RUNNING", bulk_targets.c.lease < now),
                ),
            )
            .order_by(bulk_targets.c.id)
            .limit(limit)
        ).all()
        for r in rows:
            n = conn.execute(
                update(bulk_targets)
                .where(bulk_targets.c.id == r.id, bulk_targets.c.state == r.state)
                .where(bulk_targets.c.lease.is_(None) if r.lease is None else bulk_targets.c.lease == r.lease)
                .values(state="RUNNING", claimed_by=me, lease=now + lease_ms, started=r.started or now)
            ).rowcount
            if n == 1:
                try:
                    pin_ms = int(json.loads(r.arguments or "{}").get("pin_ms", DEFAULT_PIN_MS))
                except (ValueError, TypeError, AttributeError):
                    pin_ms = DEFAULT_PIN_MS
                claimed.append(StageTarget(r.id, r.request_id, r.owner, r.pnfsid, pin_ms))
    return claimed


def renew(ns: Namespace, me: str, ids: list[int], lease_ms: int) -> None:
    if ids:
        with ns.db.engine.begin() as conn:
            conn.execute(
                update(bulk_targets)
                .where(bulk_targets.c.id.in_(ids), bulk_targets.c.claimed_by == me, bulk_targets.c.state == "RUNNING")
                .values(lease=now_ms() + lease_ms)
            )


def stage_done(ns: Namespace, me: str, target: StageTarget, node: Inode | None, error: str | None) -> None:
    """Settle a claimed target: COMPLETED with a pin of the file for the request's lifetime, or FAILED."""
    now = now_ms()
    with ns.db.engine.begin() as conn:
        n = conn.execute(
            update(bulk_targets)
            .where(bulk_targets.c.id == target.id, bulk_targets.c.state == "RUNNING", bulk_targets.c.claimed_by == me)
            .values(state="FAILED" if error else "COMPLETED", error=error, finished=now, lease=None)
        ).rowcount
        if n == 1 and error is None and node is not None and target.pin_ms > 0:
            conn.execute(
                insert(pins).values(
                    inode_id=node.id, owner=target.owner, request_id=target.request_id, expires=now + target.pin_ms
                )
            )


def file_by_pnfsid(ns: Namespace, pnfsid: str) -> Inode | None:
    with ns.db.reader.connect() as conn:
        rows = conn.execute(select(inodes).where(inodes.c.pnfsid == pnfsid)).all()
        return _nodes(conn, rows)[0] if rows else None


def staged(ns: Namespace, node: Inode, *, pool: str, blob: str, hsm: dict[str, str], millis: int) -> bool:
    """Record the disk copy restored from `node.hsm_uri`; False if the file changed meanwhile (the caller
    drops the blob)."""
    with ns.db.engine.begin() as conn:
        n = conn.execute(
            update(inodes)
            .where(_fenced(node), inodes.c.hsm_uri == node.hsm_uri)
            .values(pool=pool, blob=blob, locality="ONLINE_AND_NEARLINE", accessed=now_ms())
        ).rowcount
        if n != 1:
            return False
        node.pool, node.blob, node.locality = pool, blob, "ONLINE_AND_NEARLINE"
        _event(ns, conn, node, "restore", hsm=hsm, uri=node.hsm_uri, pool=pool, transferTime=millis)
        return True


# -- QoS transitions and the trash --------------------------------------------------------------------------------


def transitions(ns: Namespace, pool: str, limit: int) -> tuple[list[Inode], list[Inode]]:
    """(files of `pool` whose QoS became disk and still have a tape copy; files anywhere whose QoS wants a
    disk copy they do not have)."""
    with ns.db.reader.connect() as conn:
        drop = conn.execute(
            select(inodes)
            .where(inodes.c.qos == "disk", inodes.c.locality == "ONLINE_AND_NEARLINE", inodes.c.pool == pool)
            .limit(limit)
        ).all()
        stage = conn.execute(
            select(inodes).where(inodes.c.qos.in_(("disk", "disk+tape")), inodes.c.locality == "NEARLINE").limit(limit)
        ).all()
        return _nodes(conn, drop), _nodes(conn, stage)


def drop_tape_copy(ns: Namespace, node: Inode) -> bool:
    """A file whose QoS became disk: its tape copy goes to the trash."""
    with ns.db.engine.begin() as conn:
        n = conn.execute(
            update(inodes)
            .where(_fenced(node), inodes.c.qos == "disk")
            .values(hsm_uri=None, locality="ONLINE", accessed=None)
        ).rowcount
        if n != 1 or node.hsm_uri is None:
            return False
        trash_tape_copy(conn, node.hsm_uri)
        node.locality, node.hsm_uri = "ONLINE", None
        _event(ns, conn, node, "remove")
        return True


def trash(ns: Namespace, limit: int) -> list[tuple[int, str]]:
    with ns.db.reader.connect() as conn:
        rows = conn.execute(select(hsm_trash.c.id, hsm_trash.c.uri).order_by(hsm_trash.c.id).limit(limit)).all()
    return [(int(r.id), str(r.uri)) for r in rows]


def trashed(ns: Namespace, ids: list[int]) -> None:
    if ids:
        with ns.db.engine.begin() as conn:
            conn.execute(delete(hsm_trash).where(hsm_trash.c.id.in_(ids)))


def expire_pins(ns: Namespace) -> int:
    with ns.db.engine.begin() as conn:
        return int(conn.execute(delete(pins).where(pins.c.expires.is_not(None), pins.c.expires <= now_ms())).rowcount)
