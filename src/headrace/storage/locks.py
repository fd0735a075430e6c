"""WebDAV class 2: write locks (RFC 4918 sections 6, 7, 9.10, 9.11) and the If header (section 10.4).

macOS Finder mounts a class 1 server read-only, and the Windows mini-redirector and office suites lock a
file before they write it, so the door offers exclusive and shared write locks of depth 0 or infinity.

Locks are held in memory by the door process: they are advisory state for interactive clients, bounded by
timeouts, and gone after a restart (a client then sees 412 on its next If header and locks again). A
deployment with several doors behind one name needs them in the database instead.

The wire formats (lockinfo bodies, Timeout and If headers, activelock XML) are pure functions at the top;
`LockManager` below keeps the locks and says whether a change may go ahead.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from headrace.errors import BadRequest, HeadraceError, TooManyRequests
from headrace.storage.paths import is_within, parent_and_name
from headrace.storage.webdav_xml import parse_xml

DAV = "{DAV:}"
DEFAULT_TIMEOUT = 3600
MAX_TIMEOUT = 24 * 3600
NO_LOCK = "DAV:no-lock"  # a state token that never matches (used in "Not <DAV:no-lock>")


class Locked(HeadraceError):
    """423: the resource is locked and the request did not submit the lock's token."""

    status = 423
    title = "Locked"


# -- wire formats --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockRequest:
    exclusive: bool
    owner: str  # the inner XML of DAV:owner, kept as sent ("" when absent)


def parse_lockinfo(body: bytes) -> LockRequest:
    """A LOCK request body (DAV:lockinfo); an empty body is a refresh and is not parsed here."""
    root = parse_xml(body, "LOCK")
    if root.tag != f"{DAV}lockinfo":
        raise BadRequest(f"LOCK body must be a DAV:lockinfo element, not {root.tag}")
    scope = root.find(f"{DAV}lockscope")
    kinds = {child.tag for child in scope} if scope is not None else set()
    if kinds not in ({f"{DAV}exclusive"}, {f"{DAV}shared"}):
        raise BadRequest("DAV:lockscope must hold exactly one of DAV:exclusive or DAV:shared")
    locktype = root.find(f"{DAV}locktype")
    if locktype is None or [child.tag for child in locktype] != [f"{DAV}write"]:
        raise BadRequest("Only DAV:write locks are supported")
    owner = root.find(f"{DAV}owner")
    return LockRequest(f"{DAV}exclusive" in kinds, _inner_xml(owner) if owner is not None else "")


def _inner_xml(el: ET.Element) -> str:
    return escape(el.text or "") + "".join(ET.tostring(child, encoding="unicode") for child in el)


def parse_timeout(value: str | None) -> int:
    """Seconds for a `Timeout: Second-600, Infinite` header: the first usable choice, capped at MAX_TIMEOUT."""
    if not value:
        return DEFAULT_TIMEOUT
    for item in value.split(","):
        item = item.strip()
        if item.lower() == "infinite":
            return MAX_TIMEOUT
        if item.lower().startswith("second-"):
            try:
                n = int(item[7:])
            except ValueError:
                continue
            if n > 0:
                return min(n, MAX_TIMEOUT)
    return DEFAULT_TIMEOUT


def parse_lock_token(value: str | None) -> str:
    """The token of an UNLOCK's `Lock-Token: <opaquelocktoken:...>` header."""
    v = (value or "").strip()
    if len(v) < 3 or not (v.startswith("<") and v.endswith(">")):
        raise BadRequest("UNLOCK needs a Lock-Token header: <token>")
    return v[1:-1]


@dataclass(frozen=True)
class Condition:
    negate: bool
    token: str | None = None  # a state token (lock token, or DAV:no-lock)
    etag: str | None = None  # an entity tag, quotes included


@dataclass(frozen=True)
class IfList:
    resource: str | None  # the tag (a URL or path); None for the Request-URI
    conditions: tuple[Condition, ...]


def parse_if(value: str) -> list[IfList]:
    """The productions of RFC 4918 10.4.2: untagged lists `(<token> ["etag"])`, or tagged ones
    `<url> (Not <token>)`. Raises BadRequest on anything else."""
    lists: list[IfList] = []
    tag: str | None = None
    i, n = 0, len(value)

    def until(end: str, start: int) -> tuple[str, int]:
        j = value.find(end, start)
        if j < 0:
            raise BadRequest(f"Malformed If header: missing {end!r}")
        return value[start:j], j + 1

    while i < n:
        c = value[i]
        if c.isspace():
            i += 1
        elif c == "<":
            tag, i = until(">", i + 1)
            if not tag:
                raise BadRequest("Malformed If header: empty resource tag")
        elif c == "(":
            conditions: list[Condition] = []
            i += 1
            negate = False
            while True:
                while i < n and value[i].isspace():
                    i += 1
                if i >= n:
                    raise BadRequest("Malformed If header: missing ')'")
                c = value[i]
                if c == ")":
                    i += 1
                    break
                if value[i : i + 3].lower() == "not":
                    negate, i = True, i + 3
                elif c == "<":
                    token, i = until(">", i + 1)
                    conditions.append(Condition(negate, token=token))
                    negate = False
                elif c == "[":
                    etag, i = until("]", i + 1)
                    conditions.append(Condition(negate, etag=etag.strip()))
                    negate = False
                else:
                    raise BadRequest(f"Malformed If header at {value[i : i + 20]!r}")
            if not conditions or negate:
                raise BadRequest("Malformed If header: a list needs at least one condition")
            lists.append(IfList(tag, tuple(conditions)))
        else:
            raise BadRequest(f"Malformed If header at {value[i : i + 20]!r}")
    if not lists:
        raise BadRequest("Malformed If header: no condition list")
    if any(lst.resource is None for lst in lists) and any(lst.resource is not None for lst in lists):
        raise BadRequest("Malformed If header: tagged and untagged lists mixed")
    return lists


async def if_holds(
    lists: list[IfList],
    request_path: str,
    manager: LockManager,
    *,
    resolve: Callable[[str], str | None],
    etag_of: Callable[[str], Awaitable[str | None]],
) -> bool:
    """RFC 4918 10.4.3: whether some list holds, each for the resource it is tagged with (else the request's).
    `resolve` maps a tag to a namespace path (None: not one this request can name), `etag_of` gives the
    current entity tag of a path (None: no such resource). A state token holds when it names a lock
    covering the resource."""
    etags: dict[str, str | None] = {}
    for lst in lists:
        path = request_path if lst.resource is None else resolve(lst.resource)
        if path is None:
            continue
        holds = True
        for cond in lst.conditions:
            if cond.token is not None:
                lock = manager.get(cond.token)
                true = lock is not None and lock.covers(path)
            else:
                if path not in etags:
                    etags[path] = await etag_of(path)
                true = etags[path] is not None and (cond.etag or "").removeprefix("W/") == etags[path]
            if true == cond.negate:
                holds = False
                break
        if holds:
            return True
    return False


def submitted_tokens(lists: Iterable[IfList]) -> set[str]:
    """Every state token named in an If header: these are the lock tokens the request submits."""
    return {c.token for lst in lists for c in lst.conditions if c.token and c.token != NO_LOCK}


def render_activelock(lock: Lock, root_href: str, now: float) -> str:
    timeout = "Infinite" if lock.expires is None else f"Second-{max(0, round(lock.expires - now))}"
    owner = f"<D:owner>{lock.owner}</D:owner>" if lock.owner else ""
    return (
        "<D:activelock><D:locktype><D:write/></D:locktype>"
        f"<D:lockscope><D:{'exclusive' if lock.exclusive else 'shared'}/></D:lockscope>"
        f"<D:depth>{'infinity' if lock.infinite else '0'}</D:depth>{owner}"
        f"<D:timeout>{timeout}</D:timeout>"
        f"<D:locktoken><D:href>{escape(lock.token)}</D:href></D:locktoken>"
        f"<D:lockroot><D:href>{escape(root_href)}</D:href></D:lockroot></D:activelock>"
    )


def render_lock_response(lock: Lock, root_href: str, now: float) -> str:
    """The body of a successful LOCK: the new (or refreshed) lock in a DAV:lockdiscovery."""
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<D:prop xmlns:D="DAV:"><D:lockdiscovery>'
        f"{render_activelock(lock, root_href, now)}</D:lockdiscovery></D:prop>\n"
    )


# -- the locks -----------------------------------------------------------------------------------------------


@dataclass
class Lock:
    token: str
    root: str  # the locked namespace path
    is_dir: bool
    exclusive: bool
    infinite: bool  # Depth: infinity (else 0)
    owner: str
    username: str  # who took it: only they may use its token
    expires: float | None  # on the manager's clock

    def covers(self, path: str) -> bool:
        return path == self.root or (self.infinite and is_within(path, self.root))


class LockManager:
    """Active locks by root path and by token. Used from the door's event loop only: no thread locking."""

    #: Active locks one user may hold: shared locks never conflict, so without a cap one client could
    #: make the door hold any number of them (memory stays bounded, invariant 4).
    MAX_PER_USER = 1000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_token: dict[str, Lock] = {}
        self._by_root: dict[str, list[Lock]] = {}
        self._next_expiry: float | None = None

    def __len__(self) -> int:
        self._expire()
        return len(self._by_token)

    def _expire(self) -> None:
        now = self.clock()
        if self._next_expiry is None or now < self._next_expiry:
            return
        for lock in [lk for lk in self._by_token.values() if lk.expires is not None and lk.expires <= now]:
            self._remove(lock)
        pending = [lk.expires for lk in self._by_token.values() if lk.expires is not None]
        self._next_expiry = min(pending) if pending else None

    def _remove(self, lock: Lock) -> None:
        self._by_token.pop(lock.token, None)
        same_root = self._by_root.get(lock.root, [])
        if lock in same_root:
            same_root.remove(lock)
        if not same_root:
            self._by_root.pop(lock.root, None)

    def get(self, token: str) -> Lock | None:
        self._expire()
        return self._by_token.get(token)

    def covering(self, path: str) -> list[Lock]:
        """Locks on `path` itself and depth-infinity locks on its ancestors."""
        self._expire()
        if not self._by_root:
            return []
        found = list(self._by_root.get(path, ()))
        p = path
        while p != "/":
            p = parent_and_name(p)[0]
            found += [lk for lk in self._by_root.get(p, ()) if lk.infinite]
        return found

    def within(self, path: str) -> list[Lock]:
        """Locks rooted strictly below `path`."""
        self._expire()
        return [lk for root, locks in self._by_root.items() if root != path and is_within(root, path) for lk in locks]

    def conflicts(self, path: str, *, exclusive: bool, infinite: bool) -> list[Lock]:
        """Locks that would stand in the way of a new lock on `path`."""
        near = self.covering(path) + (self.within(path) if infinite else [])
        return [lk for lk in near if exclusive or lk.exclusive]

    def lock(
        self, path: str, *, is_dir: bool, exclusive: bool, infinite: bool, owner: str, username: str, timeout: int
    ) -> Lock:
        if sum(1 for lk in self._by_token.values() if lk.username == username) >= self.MAX_PER_USER:
            raise TooManyRequests(f"{username} holds {self.MAX_PER_USER} locks already; unlock some first")
        clash = self.conflicts(path, exclusive=exclusive, infinite=infinite)
        if clash:
            raise Locked(f"{clash[0].root} is already locked{' exclusively' if clash[0].exclusive else ''}")
        lock = Lock(
            token=f"opaquelocktoken:{uuid.uuid4()}",
            root=path,
            is_dir=is_dir,
            exclusive=exclusive,
            infinite=infinite,
            owner=owner,
            username=username,
            expires=self.clock() + timeout,
        )
        self._by_token[lock.token] = lock
        self._by_root.setdefault(path, []).append(lock)
        if lock.expires is not None and (self._next_expiry is None or lock.expires < self._next_expiry):
            self._next_expiry = lock.expires
        return lock

    def refresh(self, lock: Lock, timeout: int) -> None:
        lock.expires = self.clock() + timeout
        if self._next_expiry is None or lock.expires < self._next_expiry:
            self._next_expiry = lock.expires

    def unlock(self, lock: Lock) -> None:
        self._remove(lock)

    def drop(self, path: str) -> None:
        """Forget the locks on `path` and below (it was deleted, or moved away: locks do not follow)."""
        for lock in self.covering(path) + self.within(path):
            if is_within(lock.root, path):
                self._remove(lock)

    def check_write(
        self, path: str, tokens: set[str], username: str, *, membership: bool = False, subtree: bool = False
    ) -> None:
        """Raise Locked (423) unless the request submitted, as their owner, the token of every lock that
        guards this change: locks covering `path`; with `membership` (the change adds or removes `path` in
        its parent) also locks on the parent, of any depth; with `subtree` also locks below `path`."""
        self._expire()
        if not self._by_root:
            return
        # The resources the change touches, each with the locks that guard it. One submitted token per
        # resource is enough: several locks on one resource are all shared, and each holder writes with its own.
        guarded: dict[str, list[Lock]] = {path: self.covering(path)}
        if membership and path != "/":
            parent = parent_and_name(path)[0]
            guarded[parent] = [lk for lk in self._by_root.get(parent, ()) if not lk.infinite]  # infinite: above
        if subtree:
            for lk in self.within(path):
                guarded.setdefault(lk.root, []).append(lk)
        for resource, guards in guarded.items():
            if guards and not any(lk.token in tokens and lk.username == username for lk in guards):
                raise Locked(f"{resource} is locked; submit the lock token in an If header")

    def now(self) -> float:
        return self.clock()
