"""Bulk requests (dCache's bulk API) and stage requests (the WLCG Tape REST API) on one persisted store.

A request is a `bulk_requests` row with its targets in `bulk_targets`, written at creation in one
transaction, so that a request survives restarts. Paths are resolved (and directories expanded) when the
request is made: a missing or unreadable file is a FAILED target at once, a directory a SKIPPED one (but
a DELETE removes directories too, after what they hold, unless `skipDirs`, as dCache's does).

Who runs the targets:
- STAGE targets, and PIN targets of files not on disk, are the pool's tape agent's (tape/agent.py): it claims
  CREATED STAGE targets, stages, pins and completes them. Nothing here stages.
- Every other activity is run here by `Runner`: PIN of a file on disk, UNPIN, RELEASE, UPDATE_QOS, DELETE,
  LOG_TARGET. A target is claimed (RUNNING, `claimed_by`, `lease`) before it runs and finished with a write
  fenced on that claim, so a target cancelled meanwhile stays CANCELLED. At start a runner takes back its own
  claims (a restart after a crash); another's are taken over once their lease has passed.
- The runner also rolls a request up: STARTED once a target has moved, COMPLETED (with `finished`) once all
  its targets are final, whoever finished them.

Rights: a user sees, cancels and clears only their own requests (admin: all); another's is 404 as if absent.
Targets are checked per file, as dCache's bulk service does: a file the user may not read (STAGE, PIN) or a
path the token does not allow is a FAILED target with a permission error, while the others of the request go
ahead. UPDATE_QOS and DELETE are checked when they run, by `Namespace.set_qos` / `Namespace.delete`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, and_, delete, exists, func, insert, or_, select, update

from headrace.auth.access import Principal
from headrace.auth.subject import Subject
from headrace.auth.users import Users
from headrace.db.schema import bulk_requests, bulk_targets, inodes, pins
from headrace.errors import BadRequest, Forbidden, HeadraceError, NotFound, TooManyRequests
from headrace.storage.namespace import Blob, Inode, Namespace, now_ms
from headrace.storage.paths import normalize
from headrace.tasks import stop_task

log = logging.getLogger("headrace.tape.requests")

ACTIVITIES = ("STAGE", "RELEASE", "PIN", "UNPIN", "UPDATE_QOS", "DELETE", "LOG_TARGET")
#: The token activity (macaroon `activity:` caveat) each request activity needs on its targets.
TOKEN_ACTIVITY = {
    "STAGE": "STAGE",
    "PIN": "STAGE",
    "RELEASE": "STAGE",
    "UNPIN": "STAGE",
    "UPDATE_QOS": "UPDATE_METADATA",
    "DELETE": "DELETE",
    "LOG_TARGET": "READ_METADATA",
}
#: What `Runner` runs; STAGE is the tape agent's.
RUNNER_ACTIVITIES = ("PIN", "UNPIN", "RELEASE", "UPDATE_QOS", "DELETE", "LOG_TARGET")
#: What `RequestStore.settle` runs, a batch in one transaction.
SETTLED = ("PIN", "UNPIN", "RELEASE", "LOG_TARGET")
ACTIVE = ("CREATED", "READY", "RUNNING")
FINAL = ("COMPLETED", "FAILED", "CANCELLED", "SKIPPED")
EXPAND = ("none", "targets", "all")
QOS_TARGETS = ("disk", "tape", "disk+tape")
ONLINE = ("ONLINE", "ONLINE_AND_NEARLINE")

#: A pin's lifetime when the request names none (ms).
DEFAULT_PIN_MS = 24 * 3600 * 1000
#: The longest pin a request may ask for (ms): ten years.
MAX_PIN_MS = 3650 * 86_400_000
#: Targets a user may have not yet final (CREATED, READY, RUNNING), over all their requests.
DEFAULT_MAX_ACTIVE = 100_000
#: Targets of one request at most, directories expanded (those not to run, SKIPPED and FAILED, included).
MAX_TARGETS = 1_000_000
#: Targets of one request shown per GET (dCache's page; `nextId` continues).
PAGE = 10_000
#: How long a runner's claim on a target holds before another runner may take it over (ms).
LEASE_MS = 60_000
_UNITS_MS = {"MILLISECONDS": 1, "SECONDS": 1000, "MINUTES": 60_000, "HOURS": 3_600_000, "DAYS": 86_400_000}
_ISO = re.compile(
    r"^P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
_ISO_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}


def runner_enabled_from_env() -> bool:
    """HEADRACE_BULK_RUNNER=0 makes a frontend that takes requests but runs none (another frontend does)."""
    return os.environ.get("HEADRACE_BULK_RUNNER", "1").strip().lower() not in ("0", "off", "false", "no")


def max_active_from_env() -> int:
    raw = os.environ.get("HEADRACE_BULK_MAX_ACTIVE", "")
    try:
        return int(raw) if raw.strip() else DEFAULT_MAX_ACTIVE
    except ValueError:
        return DEFAULT_MAX_ACTIVE


# -- lifetimes -------------------------------------------------------------------------------------------


def lifetime_ms(value: Any, unit: Any = None) -> int:
    """The bulk API's pin `lifetime` in `lifetimeUnit` (SECONDS, MINUTES, HOURS, DAYS as Java's TimeUnit; a
    number or a numeric string, as ada sends "7"), in ms. No unit: seconds."""
    try:
        if isinstance(value, bool):
            raise TypeError("a boolean")
        amount = float(value)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"lifetime must be a number, not {value!r}") from exc
    name = str(unit or "SECONDS").upper()
    name = {"S": "SECONDS", "M": "MINUTES", "H": "HOURS", "D": "DAYS", "MS": "MILLISECONDS"}.get(name, name)
    if name not in _UNITS_MS:
        raise BadRequest(f"lifetimeUnit must be one of {', '.join(_UNITS_MS)}, not {unit!r}")
    ms = amount * _UNITS_MS[name]
    if not 0 < ms <= MAX_PIN_MS:
        raise BadRequest(f"lifetime must be positive and at most {MAX_PIN_MS // 86_400_000} days")
    return int(ms)


def duration_ms(value: Any) -> int:
    """The Tape REST API's `diskLifetime`: an ISO-8601 duration ("PT1H", "P2D"), as the specification gives
    it; a number of seconds is taken too."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return lifetime_ms(value)
    text = str(value).strip().upper()
    if text.isdigit():
        return lifetime_ms(int(text))
    m = _ISO.match(text)
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise BadRequest(f"diskLifetime must be an ISO-8601 duration such as PT1H, not {value!r}")
    total = sum(float(v) * _ISO_MS[k] for k, v in m.groupdict().items() if v)
    if not 0 < total <= MAX_PIN_MS:
        raise BadRequest(f"diskLifetime must be positive and at most {MAX_PIN_MS // 86_400_000} days")
    return int(total)


# -- what a request is ---------------------------------------------------------------------------------------


@dataclass
class NewRequest:
    """A request as an API hands it over: paths are namespace paths (the principal's view resolved)."""

    activity: str
    paths: list[str]
    arguments: dict[str, Any] = field(default_factory=dict)
    expand: str = "none"
    api: str = "bulk"
    #: Cleared (deleted) by the runner once completed without a failed target (dCache's clearOnSuccess).
    clear_on_success: bool = False
    #: Cleared once completed with a failed target (clearOnFailure).
    clear_on_failure: bool = False
    #: Its targets not yet final cancelled as soon as one fails (cancelOnFailure).
    cancel_on_failure: bool = False


@dataclass
class _Target:
    path: str
    state: str
    activity: str
    pnfsid: str | None = None
    error: str | None = None


@dataclass
class Planned:
    """A request resolved into its targets, not yet written."""

    id: str
    owner: str
    request: NewRequest
    arguments: dict[str, Any]
    targets: list[_Target]


def _error(kind: str, message: str) -> str:
    """A target's error as stored: dCache's exception class name, then the sentence (see `split_error`)."""
    return f"{kind}: {message}"


def split_error(error: str | None) -> tuple[str | None, str | None]:
    """(errorType, errorMessage) of a stored error; one without a class name (the tape agent's) is a
    CacheException."""
    if not error:
        return None, None
    kind, sep, message = error.partition(": ")
    if sep and kind.endswith("Exception") and " " not in kind:
        return kind, message
    return "CacheException", error


def _exception_error(exc: HeadraceError) -> str:
    kind = {403: "PermissionDeniedCacheException", 404: "FileNotFoundCacheException"}.get(exc.status, "CacheException")
    return _error(kind, exc.detail)


class RequestStore:
    """Creating, reading, cancelling and clearing requests, and the runner's claims. Blocking: async callers
    run these through `Database.write` / `Database.read`."""

    def __init__(self, namespace: Namespace, *, max_active: int = DEFAULT_MAX_ACTIVE) -> None:
        self.ns = namespace
        self.db = namespace.db
        self.max_active = max_active
        #: Called (on the event loop) after a request was made or cancelled, to wake the runner.
        self.listeners: list[Callable[[], None]] = []

    def changed(self) -> None:
        """A request was made or cancelled here: wake this process's runner and tape agents."""
        from headrace.tape.agent import wake_all

        for listener in self.listeners:
            listener()
        wake_all()

    # -- creating ------------------------------------------------------------------------------------------

    def validate(self, req: NewRequest) -> None:
        """Refuse (400) what no target could fix: an unknown activity or expansion, no targets, bad arguments."""
        if req.activity not in ACTIVITIES:
            raise BadRequest(f"Unknown activity {req.activity!r}: one of {', '.join(ACTIVITIES)}")
        if req.expand not in EXPAND:
            raise BadRequest(f"expand_directories must be NONE, TARGETS or ALL, not {req.expand!r}")
        if not req.paths:
            raise BadRequest("request contains no targets.")
        if req.activity == "UPDATE_QOS":
            target = req.arguments.get("targetQos")
            if target not in QOS_TARGETS:
                raise BadRequest(f"UPDATE_QOS needs arguments.targetQos: one of {', '.join(QOS_TARGETS)}")
        if not isinstance(req.arguments.get("pin_ms", 0), int):
            raise BadRequest("pin_ms must be an integer")

    def plan(self, principal: Principal, req: NewRequest) -> Planned:
        """Resolve a request's targets (reads only: run it on a reader); 429 when the user's targets not yet
        final would pass the limit. `insert` then writes it."""
        self.validate(req)
        owner = principal.subject.username
        with self.db.reader.connect() as conn:
            active = self._active_targets(conn, owner)
        targets: list[_Target] = []
        new = 0
        for t in self._plan(principal, req):
            targets.append(t)
            new += t.state in ACTIVE
            self._check_room(owner, active, new)
            if len(targets) > MAX_TARGETS:
                raise BadRequest(f"A request may have at most {MAX_TARGETS} targets (directories expanded)")
        arguments = dict(req.arguments)
        for flag, on in (
            ("clearOnSuccess", req.clear_on_success),
            ("clearOnFailure", req.clear_on_failure),
            ("cancelOnFailure", req.cancel_on_failure),
        ):
            if on:
                arguments[flag] = True
        return Planned(str(uuid.uuid4()), owner, req, arguments, targets)

    def _check_room(self, owner: str, active: int, new: int) -> None:
        if active + new > self.max_active:
            raise TooManyRequests(
                f"Too many bulk targets: {owner} has {active} not yet finished, and this request's {new}"
                f" would pass the limit of {self.max_active}; wait for requests to finish, or cancel some",
                headers={"Retry-After": "60"},
            )

    @staticmethod
    def _active_targets(conn: Connection, owner: str) -> int:
        return int(
            conn.execute(
                select(func.count())
                .select_from(bulk_targets)
                .where(and_(bulk_targets.c.owner == owner, bulk_targets.c.state.in_(ACTIVE)))
            ).scalar_one()
        )

    def insert(self, p: Planned) -> str:
        """Write a planned request and its targets in one transaction (the limit checked again in it); its id."""
        t = now_ms()
        ts, req = p.targets, p.request
        done = all(x.state in FINAL for x in ts)
        with self.db.engine.begin() as conn:
            self._check_room(p.owner, self._active_targets(conn, p.owner), sum(x.state in ACTIVE for x in ts))
            conn.execute(
                insert(bulk_requests).values(
                    id=p.id,
                    owner=p.owner,
                    api=req.api,
                    activity=req.activity,
                    arguments=json.dumps(p.arguments, separators=(",", ":")),
                    expand=req.expand,
                    status="COMPLETED" if done else "QUEUED",
                    created=t,
                    started=t if done else None,
                    finished=t if done else None,
                )
            )
            rows = [
                {
                    "request_id": p.id,
                    "activity": x.activity,
                    "owner": p.owner,
                    "path": x.path,
                    "pnfsid": x.pnfsid,
                    "state": x.state,
                    "error": x.error,
                    "created": t,
                    "started": None,
                    "finished": t if x.state in FINAL else None,
                }
                for x in ts
            ]
            for i in range(0, len(rows), 500):
                conn.execute(insert(bulk_targets), rows[i : i + 500])
        return p.id

    def _plan(self, principal: Principal, req: NewRequest) -> Iterator[_Target]:
        """The targets of a request, in order: each path given, and after a directory its entries as far as
        `expand` asks (the directory itself is a SKIPPED target, as dCache lists it)."""
        seen: set[str] = set()
        for raw in req.paths:
            path = normalize(raw)
            if path in seen:  # duplicates are sanitized (the Tape REST API's words)
                continue
            seen.add(path)
            yield from self._resolve(principal, req, path, depth=0)

    def _resolve(self, principal: Principal, req: NewRequest, path: str, *, depth: int) -> Iterator[_Target]:
        subject = principal.subject
        try:
            principal.check(TOKEN_ACTIVITY[req.activity] if depth == 0 else "LIST", path)
            node = self.ns.stat(path, subject, sums=False)
        except (NotFound, Forbidden) as exc:
            yield _Target(path, "FAILED", req.activity, error=_exception_error(exc))
            return
        except HeadraceError as exc:  # not a directory on the way, a path too long...
            yield _Target(path, "FAILED", req.activity, error=_error("CacheException", exc.detail))
            return
        if node.is_dir:
            if req.expand == "none" or (req.expand == "targets" and depth > 0):
                yield self._dir(principal, req, node)
                return
            try:  # a directory to expand must be listable
                principal.check("LIST", path)
                self.ns.check_readable(node, subject)
            except Forbidden as exc:
                yield _Target(path, "FAILED", req.activity, pnfsid=node.pnfsid, error=_exception_error(exc))
                return
            # A DELETE removes a directory after what it holds (dCache's order); other activities skip it,
            # listed first (as ada's checks read them: the directory, then its files).
            last = self._deletes_dirs(req)
            if not last:
                yield self._dir(principal, req, node)
            subdirs: list[Inode] = []
            for child in self.ns.iter_children(node):
                if not principal.visible(child.path):
                    continue
                if child.is_dir:
                    if req.expand == "all":
                        subdirs.append(child)  # after the files of this directory: bounded memory per level
                    else:
                        yield self._dir(principal, req, child)
                else:
                    yield self._file(principal, req, child)
            for sub in subdirs:
                yield from self._resolve(principal, req, sub.path, depth=depth + 1)
            if last:
                yield self._dir(principal, req, node)
            return
        yield self._file(principal, req, node)

    @staticmethod
    def _deletes_dirs(req: NewRequest) -> bool:
        """dCache's DELETE removes directory targets too, unless `skipDirs` is true."""
        skip = req.arguments.get("skipDirs")
        return req.activity == "DELETE" and not (skip is True or str(skip).lower() == "true")

    def _dir(self, principal: Principal, req: NewRequest, node: Inode) -> _Target:
        if not self._deletes_dirs(req):
            return _Target(node.path, "SKIPPED", req.activity, pnfsid=node.pnfsid)
        try:
            principal.check("DELETE", node.path)
        except Forbidden as exc:
            return _Target(node.path, "FAILED", req.activity, pnfsid=node.pnfsid, error=_exception_error(exc))
        return _Target(node.path, "CREATED", req.activity, pnfsid=node.pnfsid)

    def _file(self, principal: Principal, req: NewRequest, node: Inode) -> _Target:
        activity = req.activity
        try:
            principal.check(TOKEN_ACTIVITY[activity], node.path)
            if activity in ("STAGE", "PIN"):
                self.ns.check_readable(node, principal.subject)
        except Forbidden as exc:
            return _Target(node.path, "FAILED", activity, pnfsid=node.pnfsid, error=_exception_error(exc))
        if activity == "PIN" and node.locality not in ONLINE:
            activity = "STAGE"  # a pin of a file only on tape is a stage (the tape agent's)
        return _Target(node.path, "CREATED", activity, pnfsid=node.pnfsid)

    # -- reading -------------------------------------------------------------------------------------------

    @staticmethod
    def _visible(principal: Principal, row: Any) -> bool:
        s = principal.subject
        return bool(s.admin or row.owner == s.username)

    def _request(self, conn: Connection, principal: Principal, rid: str, activity: str | None = None) -> Any:
        row = conn.execute(select(bulk_requests).where(bulk_requests.c.id == rid)).first()
        if row is None or not self._visible(principal, row) or (activity is not None and row.activity != activity):
            raise NotFound(f"No such request: {rid}")
        return row

    def get(
        self, principal: Principal, rid: str, *, offset: int = 0, limit: int = PAGE, activity: str | None = None
    ) -> tuple[Any, list[Any], int]:
        """The request row, its targets with an id above `offset` (at most `limit`), and the id to continue
        from (-1: no more)."""
        with self.db.reader.connect() as conn:
            row = self._request(conn, principal, rid, activity)
            targets = conn.execute(
                select(bulk_targets)
                .where(and_(bulk_targets.c.request_id == rid, bulk_targets.c.id > offset))
                .order_by(bulk_targets.c.id)
                .limit(limit + 1)
            ).all()
        more = len(targets) > limit > 0
        targets = targets[:limit]
        return row, list(targets), (int(targets[-1].id) if more else -1)

    def listing(
        self, principal: Principal, statuses: set[str] | None = None, owners: set[str] | None = None
    ) -> list[Any]:
        """The caller's requests (an admin: everyone's, or those of `owners`), oldest first, each with its
        count of targets not yet final."""
        active = (
            select(func.count())
            .select_from(bulk_targets)
            .where(and_(bulk_targets.c.request_id == bulk_requests.c.id, bulk_targets.c.state.in_(ACTIVE)))
            .scalar_subquery()
            .label("active")
        )
        q = select(bulk_requests, active).order_by(bulk_requests.c.created, bulk_requests.c.id)
        s = principal.subject
        if not s.admin:
            q = q.where(bulk_requests.c.owner == s.username)
        elif owners:
            q = q.where(bulk_requests.c.owner.in_(owners))
        if statuses:
            q = q.where(bulk_requests.c.status.in_(statuses))
        with self.db.reader.connect() as conn:
            return list(conn.execute(q.limit(PAGE)).all())

    # -- cancelling and clearing ---------------------------------------------------------------------------

    def cancel(
        self, principal: Principal, rid: str, paths: list[str] | None = None, *, activity: str | None = None
    ) -> int:
        """Cancel the request's targets not yet final (or those of `paths` only: 400 if one is not a target of
        the request); the number cancelled. A whole request cancelled is CANCELLED."""
        t = now_ms()
        with self.db.engine.begin() as conn:
            row = self._request(conn, principal, rid, activity)
            where = and_(bulk_targets.c.request_id == rid, bulk_targets.c.state.in_(ACTIVE))
            if paths is not None:
                wanted = {normalize(p) for p in paths}
                known = {
                    r.path
                    for r in conn.execute(
                        select(bulk_targets.c.path).where(
                            and_(bulk_targets.c.request_id == rid, bulk_targets.c.path.in_(wanted))
                        )
                    )
                }
                missing = sorted(wanted - known)
                if missing:
                    raise BadRequest(f"Not targets of request {rid}: {', '.join(missing)}")
                where = and_(where, bulk_targets.c.path.in_(wanted))
            n = conn.execute(update(bulk_targets).where(where).values(state="CANCELLED", finished=t)).rowcount
            if paths is None and row.status in ("QUEUED", "STARTED"):
                conn.execute(
                    update(bulk_requests)
                    .where(bulk_requests.c.id == rid)
                    .values(status="CANCELLED", finished=t, started=func.coalesce(bulk_requests.c.started, t))
                )
            return int(n or 0)

    def clear(self, principal: Principal, rid: str, *, cancel_if_running: bool, activity: str | None = None) -> None:
        """Forget a request and its targets (pins it made stay). One still running is cancelled first when
        `cancel_if_running`, else refused (400)."""
        with self.db.engine.begin() as conn:
            self._request(conn, principal, rid, activity)
            running = conn.execute(
                select(bulk_targets.c.id)
                .where(and_(bulk_targets.c.request_id == rid, bulk_targets.c.state.in_(ACTIVE)))
                .limit(1)
            ).first()
            if running is not None and not cancel_if_running:
                raise BadRequest(
                    f"Request {rid} is still running: cancel it first, or clear it with cancelIfRunning=true"
                )
            conn.execute(delete(bulk_targets).where(bulk_targets.c.request_id == rid))
            conn.execute(delete(bulk_requests).where(bulk_requests.c.id == rid))

    # -- the runner's side ---------------------------------------------------------------------------------

    def take_back(self, runner: str) -> int:
        """Targets this runner had claimed before it stopped (a crash or a restart): CREATED again."""
        with self.db.engine.begin() as conn:
            n = conn.execute(
                update(bulk_targets)
                .where(
                    and_(
                        bulk_targets.c.claimed_by == runner,
                        bulk_targets.c.state == "RUNNING",
                        bulk_targets.c.activity.in_(RUNNER_ACTIVITIES),
                    )
                )
                .values(state="CREATED", claimed_by=None, lease=None)
            ).rowcount
        return int(n or 0)

    def claim(self, runner: str, limit: int = 100) -> list[Any]:
        """Up to `limit` targets to run: CREATED ones, or RUNNING ones whose claim's lease has passed; now
        RUNNING and this runner's. Their requests are STARTED."""
        t = now_ms()
        cols = (bulk_targets.c.id, bulk_targets.c.request_id)
        with self.db.engine.begin() as conn:
            rows = conn.execute(
                select(*cols)
                .where(
                    and_(
                        bulk_targets.c.activity.in_(RUNNER_ACTIVITIES),
                        or_(
                            bulk_targets.c.state == "CREATED",
                            and_(bulk_targets.c.state == "RUNNING", bulk_targets.c.lease < t),
                        ),
                    )
                )
                .order_by(bulk_targets.c.id)
                .limit(limit)
            ).all()
            if not rows:
                return []
            ids = [r.id for r in rows]
            conn.execute(
                update(bulk_targets)
                .where(bulk_targets.c.id.in_(ids))
                .values(state="RUNNING", claimed_by=runner, lease=t + LEASE_MS, started=t)
            )
            self._start_requests(conn, {r.request_id for r in rows}, t)
            return list(
                conn.execute(
                    select(bulk_targets, bulk_requests.c.arguments)
                    .join(bulk_requests, bulk_requests.c.id == bulk_targets.c.request_id)
                    .where(bulk_targets.c.id.in_(ids))
                    .order_by(bulk_targets.c.id)
                ).all()
            )

    @staticmethod
    def _start_requests(conn: Connection, rids: set[str], t: int) -> None:
        conn.execute(
            update(bulk_requests)
            .where(and_(bulk_requests.c.id.in_(rids), bulk_requests.c.status == "QUEUED"))
            .values(status="STARTED", started=t)
        )

    @staticmethod
    def _fence(target_id: int, runner: str) -> Any:
        return and_(
            bulk_targets.c.id == target_id, bulk_targets.c.state == "RUNNING", bulk_targets.c.claimed_by == runner
        )

    def finish(self, target_id: int, runner: str, state: str, error: str | None = None) -> bool:
        """A claimed target's end, unless it was cancelled (or taken over) meanwhile."""
        with self.db.engine.begin() as conn:
            return self._finish_in(conn, target_id, runner, state, error)

    def _finish_in(self, conn: Connection, target_id: int, runner: str, state: str, error: str | None) -> bool:
        n = conn.execute(
            update(bulk_targets)
            .where(self._fence(target_id, runner))
            .values(state=state, error=error, finished=now_ms(), lease=None)
        ).rowcount
        return bool(n)

    def settle(self, targets: list[Any], runner: str) -> None:
        """Run claimed PIN, UNPIN, RELEASE and LOG_TARGET targets, all in one transaction (they only touch
        `pins` and the targets): a PIN of a file on disk pins it for the target's owner for the request's
        lifetime (one no longer on disk goes to the tape agent as a STAGE target instead); UNPIN and RELEASE
        drop the owner's pins of the file (only those of the request `arguments.id`, if given)."""
        t = now_ms()
        with self.db.engine.begin() as conn:
            nodes: dict[str, Any] = {}
            ids = sorted({x.pnfsid for x in targets if x.pnfsid})
            for i in range(0, len(ids), 500):
                q = select(inodes.c.id, inodes.c.pnfsid, inodes.c.locality).where(inodes.c.pnfsid.in_(ids[i : i + 500]))
                nodes.update((r.pnfsid, r) for r in conn.execute(q))
            for target in targets:
                args = json.loads(target.arguments or "{}")
                if target.activity == "LOG_TARGET":
                    log.info("bulk request %s: target %s (%s)", target.request_id, target.path, target.pnfsid)
                    self._finish_in(conn, target.id, runner, "COMPLETED", None)
                    continue
                node = nodes.get(target.pnfsid)
                if node is None:
                    error = _error("FileNotFoundCacheException", f"No such file or directory: {target.path}")
                    self._finish_in(conn, target.id, runner, "FAILED", error)
                elif target.activity == "PIN" and node.locality not in ONLINE:
                    conn.execute(
                        update(bulk_targets)
                        .where(self._fence(target.id, runner))
                        .values(activity="STAGE", state="CREATED", claimed_by=None, lease=None, started=None)
                    )
                elif not self._finish_in(conn, target.id, runner, "COMPLETED", None):
                    continue  # cancelled meanwhile
                elif target.activity == "PIN":
                    expires = t + int(args.get("pin_ms") or DEFAULT_PIN_MS)
                    conn.execute(
                        insert(pins).values(
                            inode_id=node.id, owner=target.owner, request_id=target.request_id, expires=expires
                        )
                    )
                else:
                    where = and_(pins.c.inode_id == node.id, pins.c.owner == target.owner)
                    if args.get("id"):
                        where = and_(where, pins.c.request_id == str(args["id"]))
                    conn.execute(delete(pins).where(where))

    def idle(self) -> tuple[bool, bool]:
        """(nothing to claim, nothing to roll up), read without the write lock: an idle runner's turns then
        take no write transaction (on PostgreSQL every writer waits for the one write lock)."""
        t = now_ms()
        claimable = exists().where(
            and_(
                bulk_targets.c.activity.in_(RUNNER_ACTIVITIES),
                or_(
                    bulk_targets.c.state == "CREATED",
                    and_(bulk_targets.c.state == "RUNNING", bulk_targets.c.lease < t),
                ),
            )
        )
        open_ = bulk_requests.c.status.in_(("QUEUED", "STARTED"))
        ripe = exists().where(
            or_(
                and_(open_, ~_pending()),
                and_(bulk_requests.c.status == "QUEUED", _moved()),
                and_(open_, _cancels_on_failure()),
            )
        )
        with self.db.reader.connect() as conn:
            row = conn.execute(select(claimable.label("claim"), ripe.label("ripe"))).one()
        return not row.claim, not row.ripe

    def roll_up(self) -> list[str]:
        """Requests with a target that moved: STARTED. Requests that asked to be cancelled on a failure and
        have one: their other targets CANCELLED, and so the request. Requests whose targets all ended:
        COMPLETED, then deleted if they asked to be cleared on success (none failed) or on failure. The ids
        completed."""
        t = now_ms()
        open_ = bulk_requests.c.status.in_(("QUEUED", "STARTED"))
        pending = _pending()
        with self.db.engine.begin() as conn:
            conn.execute(
                update(bulk_requests)
                .where(and_(bulk_requests.c.status == "QUEUED", _moved(), pending))
                .values(status="STARTED", started=t)
            )
            for r in conn.execute(select(bulk_requests.c.id).where(and_(open_, pending, _cancels_on_failure()))).all():
                conn.execute(
                    update(bulk_targets)
                    .where(and_(bulk_targets.c.request_id == r.id, bulk_targets.c.state.in_(ACTIVE)))
                    .values(state="CANCELLED", finished=t)
                )
                conn.execute(
                    update(bulk_requests)
                    .where(bulk_requests.c.id == r.id)
                    .values(status="CANCELLED", finished=t, started=func.coalesce(bulk_requests.c.started, t))
                )
            done = conn.execute(
                select(bulk_requests.c.id, bulk_requests.c.arguments).where(and_(open_, ~pending))
            ).all()
            if not done:
                return []
            ids = [r.id for r in done]
            conn.execute(
                update(bulk_requests)
                .where(and_(bulk_requests.c.id.in_(ids), open_))
                .values(status="COMPLETED", finished=t, started=func.coalesce(bulk_requests.c.started, t))
            )
            flags = {r.id: json.loads(r.arguments or "{}") for r in done}
            asking = [i for i, f in flags.items() if f.get("clearOnSuccess") or f.get("clearOnFailure")]
            if asking:
                failed = {
                    r.request_id
                    for r in conn.execute(
                        select(bulk_targets.c.request_id)
                        .where(and_(bulk_targets.c.request_id.in_(asking), bulk_targets.c.state == "FAILED"))
                        .distinct()
                    )
                }
                gone = [i for i in asking if flags[i].get("clearOnFailure" if i in failed else "clearOnSuccess")]
                if gone:
                    conn.execute(delete(bulk_targets).where(bulk_targets.c.request_id.in_(gone)))
                    conn.execute(delete(bulk_requests).where(bulk_requests.c.id.in_(gone)))
            return ids


def _pending() -> Any:
    """The request has a target not yet final (correlated to `bulk_requests`)."""
    return exists().where(and_(bulk_targets.c.request_id == bulk_requests.c.id, bulk_targets.c.state.in_(ACTIVE)))


def _moved() -> Any:
    return exists().where(and_(bulk_targets.c.request_id == bulk_requests.c.id, bulk_targets.c.state != "CREATED"))


def _cancels_on_failure() -> Any:
    """The request asked to be cancelled on a failure, and a target has failed."""
    failed = exists().where(and_(bulk_targets.c.request_id == bulk_requests.c.id, bulk_targets.c.state == "FAILED"))
    return and_(bulk_requests.c.arguments.like('%"cancelOnFailure":true%'), failed)


class Runner:
    """Runs the targets that are not the tape agent's, and rolls requests up; one per frontend. Wakes when a
    request is made here, and every `poll` seconds for requests made elsewhere and targets the tape agent
    finished."""

    def __init__(
        self,
        store: RequestStore,
        users: Users,
        drop_blobs: Callable[[list[Blob]], Awaitable[None]],
        *,
        name: str,
        poll: float = 0.5,
        enabled: bool = True,
    ) -> None:
        self.store = store
        self.db = store.db
        self.ns = store.ns
        self.users = users
        self.drop_blobs = drop_blobs
        self.name = name
        self.poll = poll
        self.enabled = enabled
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        store.listeners.append(self._wake.set)

    async def start(self) -> None:
        if not self.enabled:
            return
        taken = await self.db.write(self.store.take_back, self.name)
        if taken:
            log.warning("bulk requests: resuming %d targets this runner had begun before it stopped", taken)
        self._task = asyncio.create_task(self._loop(), name="bulk-runner")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup: try again at the next turn
                log.exception("bulk requests: runner turn failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll):
                    await self._wake.wait()
            self._wake.clear()

    async def run_once(self) -> None:
        """One turn: run what is claimable (batch after batch), then roll requests up."""
        nothing_to_claim, nothing_to_roll = await self.db.read(self.store.idle)
        if nothing_to_claim and nothing_to_roll:
            return
        while not nothing_to_claim:
            batch = await self.db.write(self.store.claim, self.name)
            simple = [t for t in batch if t.activity in SETTLED]
            if simple:
                try:
                    await self.db.write(self.store.settle, simple, self.name)
                except Exception:  # one bad target must not hold the others: each on its own
                    log.exception("bulk requests: a batch of %d targets failed; running them one by one", len(simple))
                    for target in simple:
                        await self._run(target)
            for target in batch:
                if target.activity not in SETTLED:
                    await self._run(target)
            if len(batch) < 100:
                break
        await self.db.write(self.store.roll_up)

    async def _run(self, target: Any) -> None:
        args = json.loads(target.arguments or "{}")
        activity = target.activity
        try:
            if activity in SETTLED:
                await self.db.write(self.store.settle, [target], self.name)
                return
            subject = await self._subject(target.owner)
            if activity == "UPDATE_QOS":
                await self.db.write(self.ns.set_qos, target.path, subject, str(args.get("targetQos")))
            elif activity == "DELETE":
                blobs = await self.db.write(self.ns.delete, target.path, subject)
                await self.drop_blobs(blobs)
            await self.db.write(self.store.finish, target.id, self.name, "COMPLETED")
        except HeadraceError as exc:
            await self.db.write(self.store.finish, target.id, self.name, "FAILED", _exception_error(exc))
        except Exception as exc:
            log.exception("bulk request %s: target %s failed", target.request_id, target.path)
            error = _error("CacheException", f"{type(exc).__name__}: {exc}")
            await self.db.write(self.store.finish, target.id, self.name, "FAILED", error)

    async def _subject(self, owner: str) -> Subject:
        try:
            user = await self.users.fetch(owner)
        except NotFound as exc:
            raise Forbidden(f"The request's owner {owner} no longer exists") from exc
        return user.subject
